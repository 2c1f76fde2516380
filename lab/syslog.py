"""The hosts' syslog: one collector process serving every lab host's /dev/log.

Postfix, Dovecot, OpenDKIM, unbound and postsrsd log to syslog (a Postfix start failure is silent
otherwise). On a VM journald receives it; here this process binds `<host>/journal/dev-log`
(which the host sees as /run/systemd/journal/dev-log, the target of its /dev/log) and appends
each message to `<host>/log/syslog`.

    python3 -m lab.syslog HOST_DIR...      (runs until SIGTERM)
"""

from __future__ import annotations

import re
import selectors
import signal
import socket
import sys
import time
from pathlib import Path

PRIORITY = re.compile(rb"^<(\d{1,3})>")
SEVERITY = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


def line(datagram: bytes) -> bytes:
    """`<PRI>Mon DD HH:MM:SS tag[pid]: text` -> `HH:MM:SS.mmm severity tag[pid]: text`."""
    severity = "info"
    match = PRIORITY.match(datagram)
    if match:
        severity = SEVERITY[int(match.group(1)) & 7]
        datagram = datagram[match.end() :]
        # The sender's own timestamp ("Jan  2 03:04:05 "): ours has milliseconds.
        if len(datagram) > 16 and datagram[3:4] == b" " and datagram[15:16] == b" ":
            datagram = datagram[16:]
    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    return f"{stamp} {severity} ".encode() + datagram.rstrip(b"\n\0") + b"\n"


def serve(host_dirs: list[Path]) -> None:
    selector = selectors.DefaultSelector()
    for d in host_dirs:
        path = d / "journal" / "dev-log"
        path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        path.chmod(0o666)  # every daemon user may log
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        (d / "log").mkdir(exist_ok=True)
        selector.register(sock, selectors.EVENT_READ, open(d / "log" / "syslog", "ab", buffering=0))  # noqa: SIM115
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            key.data.write(line(key.fileobj.recv(65536)))


if __name__ == "__main__":
    serve([Path(a) for a in sys.argv[1:]])
