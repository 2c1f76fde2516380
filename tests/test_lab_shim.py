"""The lab's `systemctl` inside a host (lab.host_root.SHIM): hands the request to the lab listening
on the host's socket and returns its answer; with nobody listening it does nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import threading

from lab import host_root


def _shim(tmp_path, sock):
    shim = tmp_path / "systemctl"
    shim.write_text(host_root.SHIM.format(socket=str(sock)))
    shim.chmod(0o755)
    return shim


def test_the_request_goes_to_the_lab_and_its_answer_comes_back(tmp_path):
    path = tmp_path / "systemctl.sock"
    asked = []
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()

        def answer():
            conn, _ = server.accept()
            with conn:
                asked.append(json.loads(b"".join(iter(lambda: conn.recv(65536), b""))))
                conn.sendall(json.dumps({"rc": 3, "output": "postfix is not running\n"}).encode())

        thread = threading.Thread(target=answer)
        thread.start()
        result = subprocess.run([_shim(tmp_path, path), "reload", "postfix"], capture_output=True, text=True)
        thread.join()
    assert asked == [["reload", "postfix"]]
    assert (result.returncode, result.stderr) == (3, "postfix is not running\n")


def test_with_nobody_listening_it_does_nothing(tmp_path):
    result = subprocess.run([_shim(tmp_path, tmp_path / "none.sock"), "reload", "postfix"], capture_output=True)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
