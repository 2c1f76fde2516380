"""Entering the lab's namespaces: from a subprocess (nsenter argv) or from this Python thread.

`in_netns("mlab-internet")` switches only the calling thread's network namespace (setns(2) allows
that for CLONE_NEWNET); a socket keeps the namespace it was created in, so tests can open an
IMAP or SMTP connection "from the internet" and use it after the `with` block.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
from collections.abc import Iterator
from pathlib import Path

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block's socket calls in network namespace `name` (this thread only)."""
    with open("/proc/thread-self/ns/net") as home, open(netns_path(name)) as target:
        _setns(target.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


def connect(netns: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection made from inside `netns`."""
    with in_netns(netns):
        return socket.create_connection((host, port), timeout=timeout)


def port_open(netns: str, host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        connect(netns, host, port, timeout).close()
    except OSError:
        return False
    return True


def nsenter(netns: str, mount_ns: Path | None = None, uts_ns: Path | None = None) -> list[str]:
    """argv prefix that runs a command in the host's namespaces (exec, no extra process)."""
    argv = ["nsenter", f"--net={netns_path(netns)}"]
    if mount_ns is not None:
        argv.append(f"--mount={mount_ns}")
    if uts_ns is not None:
        argv.append(f"--uts={uts_ns}")
    return [*argv, "--"]


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in(netns_names: list[str], mount_ns: list[Path]) -> list[int]:
    """Every process whose network namespace is one of `netns_names` or whose mount namespace is
    one of `mount_ns`: the processes the lab started, found without trusting a pid file."""
    wanted_net = {i for i in (_inode(str(netns_path(n))) for n in netns_names) if i is not None}
    wanted_mnt = {i for i in (_inode(str(p)) for p in mount_ns) if i is not None}
    own = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        net, mnt = _inode(f"{entry}/ns/net"), _inode(f"{entry}/ns/mnt")
        if (net is not None and net in wanted_net) or (mnt is not None and mnt in wanted_mnt):
            found.append(int(entry.name))
    return found
