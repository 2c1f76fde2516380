"""Replication lag between the maildrops: how long after a message lands on the primary it is on
the peer (targets: p50 < 2 s, p99 < 5 s).

    MAIL_LAB_ID=x .venv/bin/python benchmarks/lab_replication.py [--messages 200] [--interval 0.1]

Mail goes the real way in (internet MTAs -> MX -> smtp-in -> the primary maildrop, MX 10 ->
LMTP), one message every --interval seconds spread over a few internet client addresses. Two
watchers hold an IMAPS session on each maildrop (straight to it, as NGINX connects) and poll for
new UIDs every 10 ms, noting when each Message-ID first shows up there; the lag of a message is
(seen on the peer) - (seen on the primary). Reuses the running lab of this MAIL_LAB_ID, or brings
one up and takes it down at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _lab_common as common
from lab import clients, internet, traffic

PRIMARY, PEER = "maildrop0-chbtl0", "maildrop1-ddln0"
TARGETS = {50: 2.0, 99: 5.0}
POLL = 0.01


class Watcher(threading.Thread):
    """First-seen time of each Message-ID containing `tag` in the account's INBOX on one maildrop."""

    def __init__(self, status: dict, drop: traffic.Maildrop, account: dict, tag: str):
        super().__init__(daemon=True)
        self.client = traffic.maildrop_imap(status, drop, account)
        self.tag = tag
        self.seen: dict[str, float] = {}
        self.running = True
        _, data = self.client.uid("SEARCH", "ALL")
        uids = [int(u) for u in data[0].split()]
        self.next_uid = max(uids, default=0) + 1

    def poll(self) -> None:
        self.client.noop()
        _, data = self.client.uid("SEARCH", "UID", f"{self.next_uid}:*")
        now = time.monotonic()
        uids = [int(u) for u in data[0].split() if int(u) >= self.next_uid]
        if not uids:
            return
        _, fetched = self.client.uid("FETCH", ",".join(map(str, uids)), "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        for item in fetched:
            if isinstance(item, tuple) and (m := traffic.MESSAGE_ID.search(item[1])):
                message_id = m.group(1).decode()
                if self.tag in message_id:
                    self.seen.setdefault(message_id, now)
        self.next_uid = max(uids) + 1

    def run(self) -> None:
        while self.running:
            self.poll()
            time.sleep(POLL)

    def stop(self) -> None:
        self.running = False
        self.join(10)
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            self.client.logout()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two messages")
    parser.add_argument("--clients", type=int, default=5, help="internet client addresses sending")
    args = parser.parse_args()
    with common.running_lab() as status:
        account = status["accounts"][0]
        drops = traffic.maildrops(status)
        tag = f"repl{time.time_ns() % 10**10}"
        watchers = {host: Watcher(status, drops[host], account, tag) for host in (PRIMARY, PEER)}
        for w in watchers.values():
            w.start()
        sent: dict[str, float] = {}
        try:
            with traffic.extra_clients(status, args.clients, first=150) as sources:
                mtas = traffic.senders(status, sources, account["address"].split("@")[1])
                # One thread per MTA: an SMTP session is used by one thread at a time.
                pools = [ThreadPoolExecutor(max_workers=1) for _ in mtas]
                futures = []
                for n in range(args.messages):
                    sender = f"{tag}-{n}@{internet.REMOTE_DOMAIN}"
                    message_id, text = clients.message(sender, account["address"], f"replication {n}", tag)
                    sent[message_id] = time.monotonic()
                    deadline = time.monotonic() + 120
                    mta, pool = mtas[n % len(mtas)], pools[n % len(mtas)]
                    futures.append(pool.submit(mta.send, sender, account["address"], text, message_id, deadline))
                    time.sleep(args.interval)
                for f in futures:
                    f.result()
                for mta, pool in zip(mtas, pools, strict=True):
                    pool.submit(mta.close).result()
                    pool.shutdown()
            deadline = time.monotonic() + 120
            while any(len(w.seen) < len(sent) for w in watchers.values()) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            for w in watchers.values():
                w.stop()
    primary, peer = watchers[PRIMARY].seen, watchers[PEER].seen
    both = [m for m in sent if m in primary and m in peer]
    lags = [peer[m] - primary[m] for m in both]
    delivery = [primary[m] - sent[m] for m in both]
    print(f"replication lag primary -> peer, {len(sent)} messages, one every {args.interval} s")
    print(f"  on the primary {len(primary)}, on the peer {len(peer)}, on both {len(both)}")
    if not lags:
        print("  no message reached both maildrops")
        return 1
    for p, target in TARGETS.items():
        value = common.percentile(lags, p)
        print(
            f"  lag p{p:<3}            {value:6.3f} s   target < {target:.0f} s  {'PASS' if value < target else 'MISS'}"
        )
    print(f"  lag max              {max(lags):6.3f} s   (min {min(lags):.3f} s; negative: the peer saw it first)")
    print(
        f"  send -> primary p50  {common.percentile(delivery, 50):6.2f} s   p99 {common.percentile(delivery, 99):.2f} s"
    )
    return 0 if len(both) == len(sent) else 1


if __name__ == "__main__":
    sys.exit(main())
