"""systemctl for the lab: a unit's reload, restart, start or stop, carried out on the lab's own
daemons while a push runs.

Inside each host, the push's reload commands call the lab's `systemctl` (host_root.SHIM), which
sends its arguments to the host's socket (HostRoot.systemctl_socket). `serving(hosts)` answers
there for the duration of a push, from the lab process itself:

    reload X               the unit's ExecReload= (lab.daemons.exec_reload) on the running daemon;
                           fails, as systemd does, when the daemon does not run
    restart X, start X     lab.hosts.stop / lab.hosts.start: as the unit stops and starts it,
                           waiting until it listens again, its new pid in the lab's state
    reload-or-restart X    reload when it runs, otherwise start
    daemon-reload          nothing: the lab reads a unit's drop-ins each time it starts it
A unit the host does not run fails as an unknown unit does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator

from lab import daemons, hosts, state
from lab.host_root import DAEMON_ENV, HostRoot


def _entry(host: str) -> dict:
    return next(h for h in (state.load() or {"hosts": []})["hosts"] if h["name"] == host)


def _reload(host: str, name: str) -> tuple[int, str]:
    entry = _entry(host)
    running = next((d for d in entry["daemons"] if d["name"] == name), None)
    if running is None or not hosts.alive(running["pid"]):
        return 1, f"{name}.service is not active, cannot reload.\n"
    argv = daemons.exec_reload(daemons.DAEMONS[name], running["pid"])
    if argv is None:
        return 1, f"Failed to reload {name}.service: Job type reload is not applicable for unit {name}.service.\n"
    result = HostRoot(entry["name"], entry["netns"], entry["name"]).run(argv, env=DAEMON_ENV, timeout=60)
    return result.returncode, result.stdout + result.stderr


def carry_out(host: str, argv: list[str]) -> tuple[int, str]:
    """One systemctl command on the lab host: (exit status, output)."""
    args = [a for a in argv if not a.startswith("-")]
    if not args:
        return 1, "the lab's systemctl needs a command\n"
    verb, units = args[0], [u.removesuffix(".service") for u in args[1:]]
    if verb == "daemon-reload":
        return 0, ""
    known = {d["name"] for d in _entry(host)["daemons"]}
    for unit in units:
        if unit not in known:
            return 5, f"Failed to {verb} {unit}.service: Unit {unit}.service not loaded (no such lab daemon).\n"
        try:
            if verb == "reload" or (verb == "reload-or-restart" and _alive(host, unit)):
                rc, output = _reload(host, unit)
                if rc != 0:
                    return rc, output
            elif verb in ("restart", "reload-or-restart", "try-restart"):
                hosts.stop(host, [unit])
                hosts.start(host, [unit])
            elif verb == "start":
                hosts.start(host, [unit])
            elif verb == "stop":
                hosts.stop(host, [unit])
            else:
                return 1, f"the lab's systemctl does not {verb}\n"
        except (RuntimeError, TimeoutError) as err:
            return 1, f"{verb} {unit}: {err}\n"
    return 0, ""


def _alive(host: str, name: str) -> bool:
    return any(d["name"] == name and hosts.alive(d["pid"]) for d in _entry(host)["daemons"])


def _serve(host: str, server: socket.socket, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with conn:
            data = b"".join(iter(lambda c=conn: c.recv(65536), b""))
            try:
                rc, output = carry_out(host, json.loads(data))
            except Exception as err:  # the answer the push needs, whatever went wrong here
                rc, output = 1, f"the lab's systemctl failed: {err!r}\n"
            conn.sendall(json.dumps({"rc": rc, "output": output}).encode())


@contextlib.contextmanager
def serving(roots: list[HostRoot]) -> Iterator[None]:
    """Answer the hosts' systemctl requests for the block."""
    stop = threading.Event()
    servers, threads = [], []
    try:
        for root in roots:
            path = root.systemctl_socket
            path.unlink(missing_ok=True)
            server = socket.socket(socket.AF_UNIX)
            server.bind(str(path))
            server.listen()
            server.settimeout(0.2)
            servers.append((path, server))
            thread = threading.Thread(target=_serve, args=(root.name, server, stop), daemon=True)
            thread.start()
            threads.append(thread)
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        for path, server in servers:
            server.close()
            path.unlink(missing_ok=True)
