"""Figures for the lab: cold start by phase, slowest daemons, memory, mail latency, teardown.

    sudo python3 benchmarks/lab_startup.py [--only HOST,...] [--keep]

Starts from nothing (takes down a running lab first), brings the lab up, sends one mail each way
(internet -> smtp-in -> maildrop -> IMAPS through the frontend; submission through the frontend ->
smtp-out -> remote MTA, DKIM-checked), then takes it down unless --keep.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lab import clients, cluster, internet, state
from lab.host_root import NS_DIR
from lab.netns import pids_in


def memory() -> tuple[int, dict[str, int]]:
    """PSS (KiB) of every lab process, in total and by command name."""
    record = state.load() or {"netns": []}
    by_name: dict[str, int] = {}
    for pid in pids_in(record["netns"], sorted(NS_DIR.glob("*.mnt"))):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        pss = next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
        by_name[name] = by_name.get(name, 0) + pss
    return sum(by_name.values()), by_name


def state_dir_size() -> int:
    return sum(p.stat().st_size for p in Path(cluster.STATE_DIR).rglob("*") if p.is_file() and not p.is_symlink())


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
    parser.add_argument("--only", help="comma-separated hosts (python3 -m lab up --only)")
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    args = parser.parse_args()
    cluster.down(progress=lambda _: None)
    started = time.monotonic()
    status = cluster.up(only=args.only.split(",") if args.only else None, progress=lambda _: None)
    cold = time.monotonic() - started
    record = state.load()
    print(f"cold start                 {cold:6.1f} s  ({sum(len(h['daemons']) for h in status['hosts'])} daemons)")
    for phase, at in record["timings"].items():
        print(f"  {phase:<24} {at:6.1f} s after start")
    slowest = sorted(record["ready_seconds"].items(), key=lambda kv: -kv[1])[:5]
    print("  ready last: " + ", ".join(f"{name} {t:.1f}s" for name, t in slowest))
    total, by_name = memory()
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:5]
    print(f"memory (PSS)               {total / 1024:6.0f} MiB  " + ", ".join(f"{n} {k / 1024:.0f}" for n, k in top))
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
