"""Figures for the lab: cold start by phase, slowest daemons, CPU, memory, mail latency, teardown.

    MAIL_LAB_ID=x .venv/bin/python benchmarks/lab_startup.py [--only HOST,...] [--keep]

Starts from nothing (takes down a running lab first), brings the lab up, sends one mail each way
(internet -> smtp-in -> maildrop -> IMAPS through the frontend; submission through the frontend ->
smtp-out -> remote MTA, DKIM-checked), then takes it down unless --keep.

The wall-clock cold start depends on what else runs on the machine; the CPU time the start cost
(`up` itself, the commands it waited for, and every lab process still running) does not, and
divided by the cores it is the floor of the wall-clock figure on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _lab_common as common
from lab import clients, cluster, internet, state
from lab import hosts as lab_hosts
from lab.host_root import NS_DIR
from lab.netns import pids_in


def _lab_pids() -> list[int]:
    record = state.load() or {"netns": []}
    pids = pids_in(record["netns"], sorted(NS_DIR.glob("*.mnt")))
    return pids + [p for p in (record.get("collector_pid"),) if p and p not in pids]


def _daemon_kinds() -> dict[int, str]:
    """pid -> the daemon it belongs to (a daemon's processes are its pid and that pid's descendants)."""
    record = state.load() or {"hosts": []}
    return {p: d["name"] for h in record["hosts"] for d in h["daemons"] for p in lab_hosts.descendants(d["pid"])}


def memory() -> tuple[int, dict[str, int]]:
    """PSS (KiB) of every lab process, in total and by daemon (others by command name)."""
    kinds = _daemon_kinds()
    by_name: dict[str, int] = {}
    for pid in _lab_pids():
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            name = kinds.get(pid) or Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        pss = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
        by_name[name] = by_name.get(name, 0) + pss
    return sum(by_name.values()), by_name


def cpu_seconds() -> tuple[float, dict[str, float]]:
    """CPU time of this process and the children it waited for (`up`), and of every running lab
    process with the children those waited for (by daemon, others by command name)."""
    kinds = _daemon_kinds()
    up = sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    by_name = {"up": up}
    for pid in _lab_pids():
        try:
            name = kinds.get(pid) or Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        by_name[name] = by_name.get(name, 0) + common.cpu_of(pid)
    return sum(by_name.values()), by_name


def state_dir_size() -> int:
    """Bytes of the lab's tmpfs, a file with several links (rspamd's shared cache) once."""
    sizes = {}
    for p in Path(cluster.STATE_DIR).rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            sizes[(st.st_dev, st.st_ino)] = st.st_size
    return sum(sizes.values())


def inbound(status: dict) -> float:
    alice = status["accounts"][0]
    message_id = f"<bench-in-{time.time_ns()}@{internet.REMOTE_DOMAIN}>"
    text = f"From: dave@{internet.REMOTE_DOMAIN}\r\nTo: {alice['address']}\r\nMessage-ID: {message_id}\r\n\r\nx\r\n"
    started = time.monotonic()
    client = clients.smtp(status, status["endpoints"]["mx"][1])
    client.sendmail(f"dave@{internet.REMOTE_DOMAIN}", [alice["address"]], text)
    client.quit()
    if clients.imap_message(status, alice, message_id) is None:
        raise SystemExit("inbound mail did not arrive")
    return time.monotonic() - started


def outbound(status: dict) -> float:
    alice = status["accounts"][0]
    recipient = f"eve@{internet.REMOTE_DOMAIN}"
    message_id = f"<bench-out-{time.time_ns()}@example.com>"
    text = f"From: {alice['address']}\r\nTo: {recipient}\r\nMessage-ID: {message_id}\r\nSubject: b\r\n\r\nx\r\n"
    started = time.monotonic()
    with clients.submission(status, alice) as client:
        client.sendmail(alice["address"], [recipient], text)
    message = clients.remote_message(status, recipient, message_id)
    elapsed = time.monotonic() - started
    if message is None or not clients.dkim_verify(status, message.as_bytes()):
        raise SystemExit("outbound mail did not arrive DKIM-signed")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated hosts (.venv/bin/python -m lab up --only)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    args = parser.parse_args()
    cluster.down(progress=lambda _: None)
    cpu_before, _ = cpu_seconds()
    started = time.monotonic()
    status = cluster.up(only=args.only.split(",") if args.only else None, progress=lambda _: None)
    cold = time.monotonic() - started
    cpu, cpu_by_name = cpu_seconds()
    cpu -= cpu_before
    cpu_by_name["up"] -= cpu_before
    record = state.load()
    daemon_count = sum(len(h["daemons"]) for h in status["hosts"])
    print(f"cold start                 {cold:6.1f} s  ({daemon_count} daemons; load average {os.getloadavg()[0]:.1f})")
    print(f"cpu time of the start      {cpu:6.1f} s  ({cpu / os.cpu_count():.1f} s on {os.cpu_count()} cores)")
    top_cpu = sorted(cpu_by_name.items(), key=lambda kv: -kv[1])[:6]
    print("  cpu by daemon: " + ", ".join(f"{n} {t:.1f}" for n, t in top_cpu))
    for phase, at in record["timings"].items():
        print(f"  {phase:<24} {at:6.1f} s after start")
    if "hyperscan_seconds" in record:
        hs = record.get("hyperscan", {})
        print(
            f"  rspamd's hyperscan cache compiled in {record['hyperscan_seconds']:.1f} s (once, shared; "
            f"{hs.get('seeded', 0)} files from this machine's cache, {hs.get('saved', 0)} new to it; "
            f"rspamd's CPU {' + '.join(f'{c:.1f}' for c in hs.get('cpu', []))} s)"
        )
    slowest = sorted(record["ready_seconds"].items(), key=lambda kv: -kv[1])[:5]
    print("  ready last: " + ", ".join(f"{name} {t:.1f}s" for name, t in slowest))
    hosts = [h for h in record["hosts"] if "install_seconds" in h]
    print(
        "  install + start per host: "
        + ", ".join(f"{h['name']} {h['install_seconds']:.1f}+{h.get('start_seconds', 0):.1f}" for h in hosts)
    )
    total, by_name = memory()
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:8]
    instances = {}
    for h in record["hosts"]:
        for d in h["daemons"]:
            instances[d["name"]] = instances.get(d["name"], 0) + 1
    print(
        f"memory (PSS)               {total / 1024:6.0f} MiB  "
        + ", ".join(
            f"{n} {k / 1024:.0f}"
            + (f" ({instances[n]}x {k / 1024 / instances[n]:.0f})" if instances.get(n, 0) > 1 else "")
            for n, k in top
        )
    )
    print(f"state dir (tmpfs)          {state_dir_size() / 2**20:6.0f} MiB")
    if not args.only:
        print(f"internet -> IMAPS          {inbound(status):6.2f} s")
        print(f"submission -> remote MTA   {outbound(status):6.2f} s")
    if not args.keep:
        started = time.monotonic()
        cluster.down(progress=lambda _: None)
        print(f"down                       {time.monotonic() - started:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
