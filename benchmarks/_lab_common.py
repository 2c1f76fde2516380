"""What the lab benchmarks share: CPU accounting per daemon, a running lab to measure on, summaries.
(Traffic and reading the maildrops: lab.traffic; one host down and up: lab.hosts.)"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

from lab import cluster
from lab import hosts as lab_hosts

# ---- CPU accounting -----------------------------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int, children: bool = True) -> float:
    """CPU seconds of a process (and of its reaped children: a Postfix or Dovecot master reaps the
    smtpd, cleanup, lmtp, doveadm ... processes it ran, so their time lands in its cutime/cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = [int(f) for f in fields[11:15]]  # utime stime cutime cstime
    return sum(ticks if children else ticks[:2]) / TICK


def cpu_by_daemon(hosts: list[dict]) -> dict[tuple[str, str], float]:
    """CPU seconds so far of each (host, daemon): its master, the live processes below it and the
    reaped ones ({"name", "daemons": [{"name", "pid"}]} per host, as in the state file)."""
    totals: dict[tuple[str, str], float] = {}
    for entry in hosts:
        for d in entry["daemons"]:
            tree = lab_hosts.descendants(d["pid"]) if lab_hosts.alive(d["pid"]) else set()
            totals[(entry["name"], d["name"])] = sum(cpu_of(p) for p in tree)
    return totals


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (/proc/stat), to tell how loaded it was."""
    fields = [int(f) for f in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / TICK, sum(fields) / TICK


# ---- benchmarks: a lab to measure on ------------------------------------------------------------


@contextlib.contextmanager
def running_lab(progress: Callable[[str], None] = print) -> Iterator[dict]:
    """The running lab of this MAIL_LAB_ID if it is whole, else one brought up here and taken down
    at the end (its logs kept)."""
    lab_id = os.environ.get("MAIL_LAB_ID", "")
    lab_hosts.restore_whole()  # a host an interrupted benchmark left stopped
    current = cluster.status()
    if cluster.whole(current):
        progress(f"reusing the running lab (MAIL_LAB_ID={lab_id!r})")
        yield current
        return
    progress(f"bringing the lab up (MAIL_LAB_ID={lab_id!r}) ...")
    cluster.up(progress=lambda _: None)
    try:
        yield cluster.status()
    finally:
        progress("taking the lab down")
        cluster.down(progress=lambda _: None)


def summary(values: list[float]) -> str:
    values = sorted(values)
    return f"min {values[0]:.3f} s  median {statistics.median(values):.3f} s  max {values[-1]:.3f} s  (n={len(values)})"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    values = sorted(values)
    rank = max(1, min(len(values), math.ceil(p / 100 * len(values))))
    return values[rank - 1]
