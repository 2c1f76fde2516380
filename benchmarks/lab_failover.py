"""IMAP failover time through the frontend: how long a client cannot log in when the primary
maildrop goes away (target: < 2 s).

    MAIL_LAB_ID=x .venv/bin/python benchmarks/lab_failover.py [--rounds 5] [--mode stop|silent|both]

Each round, a client logs in over IMAPS through the frontend (nginx0-chrma0) back to back, then
the primary maildrop goes away:

  stop    its daemons stop (dovecot, postfix): connections are refused at once, as for a host
          whose services crashed or are shut down for maintenance;
  silent  its address stops answering (removed from its interface, daemons still running):
          connections time out, as for a VM that died or a partitioned site.

Figures per round: the time from the primary going away to the first login (started after that)
that succeeds, and the time until every login started from then on succeeds within a second. Then the
primary comes back and the next round waits until NGINX sends logins to it again (fail_timeout).
Reuses the running lab of this MAIL_LAB_ID, or brings one up and takes it down at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _lab_common as common
from lab import cluster, traffic
from lab import hosts as lab_hosts
from model import load_stack_file

PRIMARY = "maildrop0-chbtl0"
TARGET = 2.0
# A client gives up on a login after this long (a connection NGINX made to a vanished backend hangs).
LOGIN_TIMEOUT = 10.0
# How long each round watches the logins while the primary is away: past fail_timeout (10 s), when
# NGINX tries the primary again.
WINDOW = 12.0


class Prober(threading.Thread):
    """Starts an IMAPS login through the frontend every INTERVAL seconds, each in its own thread
    (a login that hangs does not hold up the next), recording (start, end, ok) of every attempt."""

    INTERVAL = 0.1

    def __init__(self, status: dict, account: dict):
        super().__init__(daemon=True)
        self.status, self.account = status, account
        self.attempts: list[tuple[float, float, bool]] = []
        self.running = True
        self.threads: list[threading.Thread] = []

    def _attempt(self) -> None:
        started = time.monotonic()
        ok = traffic.frontend_login(self.status, self.account, timeout=LOGIN_TIMEOUT)
        self.attempts.append((started, time.monotonic(), ok))

    def run(self) -> None:
        while self.running:
            thread = threading.Thread(target=self._attempt, daemon=True)
            thread.start()
            self.threads.append(thread)
            time.sleep(self.INTERVAL)

    def stop(self) -> None:
        self.running = False
        self.join(30)
        for thread in self.threads:
            thread.join(LOGIN_TIMEOUT + 5)


def primary_logins() -> int:
    """IMAP logins the primary's Dovecot logged so far (to see when NGINX sends clients back to it)."""
    log = cluster.host_roots()[PRIMARY].logs / "syslog"
    return log.read_text(errors="replace").count("imap-login: Login: user=<alice>")


class Silence:
    """The primary's site-local IPv6 address (the one NGINX connects to) off its interface and back."""

    def __init__(self, status: dict):
        entry = next(h for h in status["hosts"] if h["name"] == PRIMARY)
        stack = load_stack_file(status["stack"])
        self.netns = entry["netns"]
        self.address = str(next(h.ipv6 for h in stack.hosts.maildrop if h.name == PRIMARY))
        self.routes = self._routes()

    def _ip(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "-n", self.netns, *args], capture_output=True, text=True)

    def _routes(self) -> list[str]:
        return [r for r in self._ip("-6", "route", "show").stdout.splitlines() if r.strip()]

    def on(self) -> None:
        self._ip("-6", "addr", "del", f"{self.address}/64", "dev", "eth0").check_returncode()

    def off(self) -> None:
        self._ip("-6", "addr", "add", f"{self.address}/64", "dev", "eth0", "nodad").check_returncode()
        for route in self.routes:
            if route not in self._routes():
                self._ip("-6", "route", "replace", *route.replace(" pref medium", "").split())


def one_round(status: dict, account: dict, mode: str) -> dict:
    prober = Prober(status, account)
    prober.start()
    time.sleep(1.0)
    silence = Silence(status) if mode == "silent" else None
    try:
        if silence:
            gone = time.monotonic()
            silence.on()
        else:
            lab_hosts.stop(PRIMARY)
            gone = time.monotonic()  # every process of the primary's Dovecot has exited
        time.sleep(WINDOW)
    finally:
        prober.stop()
        if silence:
            silence.off()
        else:
            lab_hosts.start(PRIMARY)
    after = sorted(a for a in prober.attempts if a[0] >= gone)
    first_ok = next((end for _, end, ok in after if ok), None)
    # Recovered: from the first attempt on, every login succeeds within a second.
    recovered = next(
        (start for i, (start, _, _) in enumerate(after) if all(ok and e - s <= 1.0 for s, e, ok in after[i:])), None
    )
    return {
        "first_login_after": (first_ok - gone) if first_ok else float("inf"),
        "recovered_after": (recovered - gone) if recovered is not None else float("inf"),
        "failed_logins": sum(1 for _, _, ok in after if not ok),
        "slow_logins": sum(1 for s, e, ok in after if ok and e - s > 1.0),
        "logins": len(after),
    }


def wait_failback(status: dict, account: dict, timeout: float = 30) -> float:
    """Seconds until a login lands on the primary again (NGINX retries it after fail_timeout)."""
    started = time.monotonic()
    before = primary_logins()
    while time.monotonic() - started < timeout:
        traffic.frontend_login(status, account)
        time.sleep(0.2)
        if primary_logins() > before:
            return time.monotonic() - started
    return float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", choices=("stop", "silent", "both"), default="both")
    parser.add_argument("--json", action="store_true", help="also print the raw rounds as JSON")
    args = parser.parse_args()
    modes = ("stop", "silent") if args.mode == "both" else (args.mode,)
    results: dict[str, list[dict]] = {}
    with common.running_lab() as status:
        account = status["accounts"][0]
        for mode in modes:
            results[mode] = []
            for n in range(args.rounds):
                print(f"  {mode} round {n + 1}: failback to the primary after", end=" ", flush=True)
                print(f"{wait_failback(status, account):.1f} s", flush=True)
                results[mode].append(one_round(status, account, mode))
            wait_failback(status, account)
    print(f"IMAP failover through the frontend, {args.rounds} rounds per mode (target < {TARGET:.0f} s)")
    for mode, rounds in results.items():
        first = [r["first_login_after"] for r in rounds]
        recovered = [r["recovered_after"] for r in rounds]
        verdict = "PASS" if max(first) < TARGET else "MISS"
        print(f"  {mode:<6} first login after    {common.summary(first)}  {verdict}")
        print(f"  {mode:<6} all logins fast after {common.summary(recovered)}")
        print(
            f"  {mode:<6} failed logins {sum(r['failed_logins'] for r in rounds)}, logins over 1 s "
            f"{sum(r['slow_logins'] for r in rounds)}, of {sum(r['logins'] for r in rounds)}"
        )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
