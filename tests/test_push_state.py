"""The push keeps its promises (issue 15): what it installed it may remove, a reload it owes it
carries out next time, what it replaced it keeps, and a probe that fails after the reload brings
the previous files back. A small tree with shell services and argv probes, under --root."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import PUSH_HOST, run_push

from render.tree import FileSpec, HostTree, Probe

pytestmark = pytest.mark.checkers  # the push stages its checks in a private mount namespace (root)

HOST = "demo-host"


def _tree(root: Path, files: dict[str, str], *, probe_needs: str | None = None) -> HostTree:
    """Files under /etc/demo with service `demo` (logs each reload to root/reloads, and fails
    while root/broken exists) and, with probe_needs, a probe that passes while /etc/demo/app
    contains that text."""
    services = {"demo": f"[ ! -e {root}/broken ] && echo reloaded >> {root}/reloads"}
    probes = ()
    if probe_needs:
        argv = ("grep", "-q", probe_needs, f"{root}/etc/demo/app")
        probes = (Probe("demo answers", "argv", {"argv": argv, "within": 2, "timeout": 2}),)
    return HostTree(
        host=HOST,
        role="demo",
        files={f"/etc/demo/{name}": FileSpec(text, mode=0o640, reload=("demo",)) for name, text in files.items()},
        services=services,
        probes=probes,
    )


def _reloads(root: Path) -> int:
    path = root / "reloads"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _state(root: Path) -> dict:
    return json.loads((root / "var/lib/mail-cluster/push-state.json").read_text())


def test_a_file_dropped_from_the_tree_is_removed_and_files_the_push_never_installed_stay(tmp_path):
    assert run_push(_tree(tmp_path, {"app": "v1\n", "old-key": "k\n"}), "--root", str(tmp_path)).returncode == 0
    foreign = tmp_path / "etc/demo/operator-notes"
    foreign.write_text("mine\n")
    result = run_push(_tree(tmp_path, {"app": "v1\n"}), "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] == ["/etc/demo/old-key"]
    assert json.loads(result.stdout)["reload"] == ["demo"]  # the service that read the removed file
    assert not (tmp_path / "etc/demo/old-key").exists()
    assert foreign.read_text() == "mine\n"
    assert sorted(_state(tmp_path)["installed"]) == ["/etc/demo/app"]


def test_a_failed_reload_is_owed_and_carried_out_by_the_next_push(tmp_path):
    (tmp_path / "broken").touch()
    tree = _tree(tmp_path, {"app": "v1\n"})
    failed = run_push(tree, "--root", str(tmp_path))
    assert failed.returncode == 1
    assert f"{HOST}: reload 'demo' failed" in failed.stderr
    assert _state(tmp_path)["pending"] == ["demo"]
    (tmp_path / "broken").unlink()
    # Nothing changed since: before, this push found nothing to do and the reload was lost.
    again = run_push(tree, "--root", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["changed"] == [] and json.loads(again.stdout)["reload"] == ["demo"]
    assert _reloads(tmp_path) == 1
    assert _state(tmp_path)["pending"] == []
    assert json.loads(run_push(tree, "--root", str(tmp_path)).stdout)["reload"] == []


def test_each_push_keeps_the_previous_version_of_what_it_replaced(tmp_path):
    run_push(_tree(tmp_path, {"app": "v1\n"}), "--root", str(tmp_path))
    run_push(_tree(tmp_path, {"app": "v2\n"}), "--root", str(tmp_path))
    kept = tmp_path / "var/lib/mail-cluster/previous/etc/demo/app"
    assert kept.read_text() == "v1\n"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    assert (tmp_path / "etc/demo/app").read_text() == "v2\n"


def test_a_failed_probe_puts_the_previous_files_back_reloads_and_fails_naming_host_and_probe(tmp_path):
    good = _tree(tmp_path, {"app": "good v1\n", "gone-next": "x\n"}, probe_needs="good")
    first = run_push(good, "--root", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["probes"] == ["demo answers"]
    bad = _tree(tmp_path, {"app": "bad v2\n", "new-file": "y\n"}, probe_needs="good")
    result = run_push(bad, "--root", str(tmp_path))
    assert result.returncode == 1
    assert f"{HOST}: probe 'demo answers' failed" in result.stderr
    assert "exited 1" in result.stderr  # the probe's own output
    assert "rolled back to the previous files, reloaded: probes pass again" in result.stderr
    demo = tmp_path / "etc/demo"
    assert (demo / "app").read_text() == "good v1\n"
    assert (demo / "gone-next").read_text() == "x\n"  # removed by the push, put back
    assert not (demo / "new-file").exists()  # created by the push, taken away
    assert _reloads(tmp_path) == 3  # first push, the bad files, the good ones again
    assert sorted(_state(tmp_path)["installed"]) == ["/etc/demo/app", "/etc/demo/gone-next"]
    # The next push of the good tree finds it installed: nothing to do.
    assert json.loads(run_push(good, "--root", str(tmp_path)).stdout)["changed"] == []


@pytest.fixture
def push_host(monkeypatch, tmp_path):
    """render/push_host.py as a module, with fake system commands first on PATH."""
    spec = importlib.util.spec_from_file_location("push_host", PUSH_HOST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def fake(name: str, script: str) -> None:
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)

    module.fake = fake
    return module


def test_missing_packages_fail_the_push_naming_them_and_apts_words(push_host):
    # As dpkg-query -W with several packages: a line for each one it knows, exit 1 for any other.
    push_host.fake("dpkg-query", 'for p; do [ "$p" = postfix ] && echo "postfix install ok installed"; done; exit 1')
    push_host.fake("apt-get", 'case "$*" in *install*) echo "E: Unable to locate package rspamd-nope"; exit 100;; esac')
    with pytest.raises(push_host.PushFailed, match=r"(?s)packages rspamd-nope not installed.*Unable to locate"):
        push_host.ensure_packages(["postfix", "rspamd-nope"])
    assert push_host.ensure_packages(["postfix"]) == []


def test_missing_packages_are_installed_with_apt(push_host, tmp_path):
    done = tmp_path / "installed"
    push_host.fake("dpkg-query", f'for p; do grep -qx "$p" {done} 2>/dev/null && echo "$p install ok installed"; done')
    apt = f'[ "$DEBIAN_FRONTEND" = noninteractive ] && shift 5 && echo "$@" | tr " " "\\n" > {done}'
    push_host.fake("apt-get", apt)
    assert push_host.ensure_packages(["unbound", "dns-root-data"]) == ["unbound", "dns-root-data"]


def test_cloud_init_errors_fail_the_push(push_host):
    push_host.fake("cloud-init", 'echo "status: error"; exit 1')
    with pytest.raises(push_host.PushFailed, match=r"(?s)cloud-init failed.*status: error"):
        push_host.wait_for_cloud_init()
    push_host.fake("cloud-init", 'echo "status: done"; exit 0')
    push_host.wait_for_cloud_init()


class _SMTPServer:
    """A one-line-per-command SMTP server on localhost answering RCPT with `rcpt_answer`; counts
    the connections it took."""

    def __init__(self, rcpt_answer: str):
        import socket
        import threading

        self.rcpt_answer, self.connections = rcpt_answer, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, conn.makefile("rwb") as f:
                f.write(b"220 test ESMTP\r\n")
                f.flush()
                for line in f:
                    verb = line[:4].upper()
                    answer = {b"EHLO": b"250 test", b"RCPT": self.rcpt_answer.encode(), b"QUIT": b"221 bye"}
                    f.write(answer.get(verb, b"250 ok") + b"\r\n")
                    f.flush()
                    if verb == b"QUIT":
                        break

    def probe(self) -> dict:
        return {
            "name": "rcpt",
            "kind": "smtp",
            "address": "127.0.0.1",
            "port": self.port,
            "helo": "probe.test",
            "rcpt": ["alice@example.com"],
            "within": 3,
            "timeout": 2,
        }


def test_an_smtp_probe_passes_on_an_accepted_rcpt_and_names_the_answer_it_got_otherwise(push_host):
    assert push_host.run_probe(_SMTPServer("250 2.1.5 ok").probe()) == (True, "RCPT TO:<alice@example.com>: 250")
    temporary = _SMTPServer("451 4.3.5 Server configuration problem")
    passed, seen = push_host.run_probe(temporary.probe())
    assert not passed and seen == "RCPT TO:<alice@example.com>: 451 4.3.5 Server configuration problem"
    assert temporary.connections == 2  # tried again after 2 s, not after 4 (past `within`)
    refused = _SMTPServer("550 5.1.1 no such user")
    assert push_host.run_probe(refused.probe())[0] is False
    assert refused.connections == 1  # a 5xx is final: no second connection


def test_a_milter_probe_fails_on_a_port_that_takes_the_connection_but_does_not_speak_milter(push_host):
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))

    def close_each() -> None:
        while True:
            conn, _ = server.accept()
            conn.close()

    threading.Thread(target=close_each, daemon=True).start()
    probe = {"name": "m", "kind": "milter", "address": "127.0.0.1", "port": server.getsockname()[1], "within": 1}
    passed, seen = push_host.run_probe(probe)
    assert not passed and f"[127.0.0.1]:{probe['port']}" in seen and "milter session" in seen
