"""A one-alias change rehearsed with `lab apply`: how long the rollout takes, and the longest wait a
steady sender sees meanwhile.

    MAIL_LAB_ID=x .venv/bin/python benchmarks/lab_apply.py [--rounds 3] [--senders 16] [--pause 1.0] [--json]

Each round adds an alias forwarding elsewhere to a copy of Pulumi.lab.yaml and applies it (the three smtp-in hosts, one
at a time: check, install, postmap, probes), then applies the lab's own stack file again (the alias
removed: the same rollout). Meanwhile internet MTAs (lab.traffic.SteadySender, one client address
each) keep mailing alice, each message from its own sender; a message's wait is the time from its
MTA's first try to the 250 of an MX (fallback to another MX and retry after 2 s included). The same
sender runs for as long without an apply first, as the baseline. Every message sent is checked on
the primary maildrop at the end: none lost, none duplicated.
Reuses the running lab of this MAIL_LAB_ID, or brings one up and takes it down at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _lab_common as common
from lab import apply, traffic

ROOT = Path(__file__).resolve().parent.parent
PRIMARY = "maildrop0-chbtl0"


def edited_stack(directory: Path, alias: str) -> Path:
    document = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())
    # A forward elsewhere: the three smtp-in hosts alone (an alias to a mailbox also changes
    # smtp-out's sender-logins, who may send as it).
    document["config"]["mail-cluster:domains"][0]["aliases"][alias] = [f"{alias}@remote.test"]
    path = directory / "Pulumi.lab.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def waits(sent: list[traffic.Sent], start: float, end: float) -> list[float]:
    """Waits of the messages first tried within [start, end] (monotonic)."""
    return [s.accepted - s.first_try for s in sent if start <= s.first_try <= end]


def timed_apply(stack_file: Path | None) -> tuple[float, float, float, list[str]]:
    start = time.monotonic()
    outcomes = apply.apply(stack_file, progress=lambda _: None)
    end = time.monotonic()
    failed = [o.line() for o in outcomes if o.status == "failed"]
    if failed:
        raise SystemExit("lab apply failed:\n" + "\n".join(failed))
    return start, end, end - start, [o.host for o in outcomes if o.status == "pushed"]


def check_delivered(status: dict, sent: list[traffic.Sent], tag: str) -> tuple[int, int]:
    """(missing, duplicated) on the primary maildrop, waiting up to 2 minutes for stragglers."""
    want = {s.message_id for s in sent}
    drop = traffic.maildrops(status)[PRIMARY]
    deadline = time.monotonic() + 120
    while True:
        ids = traffic.ids_on(status, drop, status["accounts"][0], tag)
        if want <= set(ids) or time.monotonic() > deadline:
            return len(want - set(ids)), len(ids) - len(set(ids))
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds each MTA waits between messages")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    tag = f"bench-apply{time.time_ns() % 10**10}"
    rows = []
    with common.running_lab() as status, tempfile.TemporaryDirectory() as tmp:
        alice = status["accounts"][0]["address"]
        assert not [o for o in apply.apply(progress=lambda _: None) if o.status == "failed"]
        with traffic.extra_clients(status, args.senders) as sources:
            sender = traffic.SteadySender(status, sources, alice, tag, pause=args.pause)
            try:
                time.sleep(5)  # sessions open, the pace steady
                for n in range(args.rounds):
                    base_start = time.monotonic()
                    time.sleep(15)
                    baseline = waits(sender.sent, base_start, time.monotonic())
                    for what, stack_file in (("add", edited_stack(Path(tmp), f"bench{n}")), ("remove", None)):
                        start, end, seconds, pushed = timed_apply(stack_file)
                        during = waits(sender.sent, start, end)
                        rows.append(
                            {
                                "round": n + 1,
                                "change": f"alias {what}",
                                "apply_seconds": round(seconds, 2),
                                "pushed": pushed,
                                "messages_during": len(during),
                                "longest_wait_during": round(max(during, default=0), 3),
                                "longest_wait_baseline": round(max(baseline, default=0), 3),
                            }
                        )
                        print(
                            f"  round {n + 1} alias {what}: apply {seconds:.1f} s ({', '.join(pushed)}); "
                            f"{len(during)} messages meanwhile, longest wait {max(during, default=0):.2f} s "
                            f"(baseline {max(baseline, default=0):.2f} s)",
                            flush=True,
                        )
            finally:
                sent = sender.stop()
        missing, duplicated = check_delivered(status, sent, tag)
    applies = [r["apply_seconds"] for r in rows]
    during = [r["longest_wait_during"] for r in rows]
    print(f"lab apply of a one-alias change, {len(rows)} applies ({args.rounds} rounds of add + remove)")
    print(f"  apply time             {common.summary(applies)}")
    print(f"  longest wait during    {common.summary(during)}")
    print(f"  longest wait baseline  {max(r['longest_wait_baseline'] for r in rows):.3f} s")
    rate = len(sent) / (sent[-1].accepted - sent[0].first_try) if len(sent) > 1 else 0
    print(f"  messages {len(sent)} ({rate:.1f}/s from {args.senders} MTAs): {missing} missing, {duplicated} duplicated")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 1 if missing or duplicated else 0


if __name__ == "__main__":
    sys.exit(main())
