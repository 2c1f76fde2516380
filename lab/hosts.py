"""One host of the running lab down and up again: what an operator does to try a failover, and
what the failover tests and benchmarks do.

    .venv/bin/python -m lab stop maildrop0-chbtl0     # every daemon of that host, as its units stop them
    .venv/bin/python -m lab start maildrop0-chbtl0    # started again, ready, their new pids in the state

lab.daemons starts and stops one daemon, lab.cluster the whole lab; this module keeps the lab's
state file true in between, so that `lab status` (and the tests' `lab` fixture) see the lab whole
again after a start.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lab import daemons, state
from lab.host_root import HostRoot
from model import load_stack_file


class UnknownHost(LookupError):
    """No such host in a running lab."""


def _host_entry(record: dict | None, host: str) -> dict:
    entry = next((h for h in (record or {"hosts": []})["hosts"] if h["name"] == host), None)
    if entry is None:
        raise UnknownHost(f"no host {host!r} in a running lab (.venv/bin/python -m lab status)")
    return entry


def descendants(pid: int) -> set[int]:
    """pid and every process below it (read before a stop: orphans lose their parent link)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo += children.get(p, [])
    return found


def alive(pid: int) -> bool:
    return daemons.Running("", "", pid, "").alive()


def stop(host: str, names: Iterable[str] | None = None, timeout: float = 30) -> list[str]:
    """Stop the host's daemons (all, or `names`) in reverse start order, as its unit's ExecStop or
    SIGTERM does, and wait until every process of each daemon is gone. Returns what it stopped."""
    record = state.load()
    entry = _host_entry(record, host)
    root = HostRoot(entry["name"], entry["netns"], entry["name"])
    wanted = set(names) if names is not None else {d["name"] for d in entry["daemons"]}
    stopped = []
    for d in reversed(entry["daemons"]):
        if d["name"] not in wanted or not alive(d["pid"]):
            continue
        tree = descendants(d["pid"])
        daemons.stop(root, daemons.DAEMONS[d["name"]], d["pid"])
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in tree):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{host}/{d['name']}: still running {timeout:.0f}s after the stop")
            time.sleep(0.05)
        stopped.append(d["name"])
    return stopped


def start(host: str, names: Iterable[str] | None = None, timeout: float = 120) -> dict[str, int]:
    """Start the host's stopped daemons (all, or `names`) in start order, wait until each listens
    where the stack model says, and write their new pids to the state file."""
    record = state.load()
    entry = _host_entry(record, host)
    stack = load_stack_file(record["stack"])
    root = HostRoot(entry["name"], entry["netns"], entry["name"])
    wanted = set(names) if names is not None else {d["name"] for d in entry["daemons"]}
    started: dict[str, int] = {}
    for d in entry["daemons"]:
        if d["name"] not in wanted or alive(d["pid"]):
            continue
        pid = daemons.start(root, daemons.DAEMONS[d["name"]])
        ready = daemons.readiness(stack, entry["role"], d["name"])
        daemons.wait_ready([daemons.Running(host, d["name"], pid, entry["netns"], ready)], timeout)
        daemons.post_start(root, daemons.DAEMONS[d["name"]])
        d["pid"] = started[d["name"]] = pid
    record = state.load()  # written by nobody else meanwhile; re-read to change only these pids
    for d in _host_entry(record, host)["daemons"]:
        d["pid"] = started.get(d["name"], d["pid"])
    state.save(record)
    return started


def restore_whole(timeout: float = 120) -> list[str]:
    """Start every daemon of the lab that is not running (what a failed test may leave behind)."""
    restarted = []
    for entry in (state.load() or {"hosts": []})["hosts"]:
        if entry["role"] == "webmail":
            continue  # lab.webmail's own processes; no test here stops them
        dead = [d["name"] for d in entry["daemons"] if not alive(d["pid"])]
        if dead:
            start(entry["name"], dead, timeout)
            restarted += [f"{entry['name']}/{n}" for n in dead]
    return restarted


@contextlib.contextmanager
def stopped(*hosts: str) -> Iterator[Callable[[], None]]:
    """Hosts down for the block (every daemon); started again at its end, even on failure. The
    block may restart them earlier by calling what it is given."""
    done = []

    def restart() -> None:
        if not done:
            done.append(True)
            for host in hosts:
                start(host)

    try:
        for host in hosts:
            stop(host)
        yield restart
    finally:
        restart()
