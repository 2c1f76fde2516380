"""What each part of the inbound path costs, and the throughput ratio the lab reaches without it.

    MAIL_LAB_ID=x .venv/bin/python benchmarks/lab_path_costs.py [--messages 500] [--clients 20] [--warmup 100]

lab_throughput.py's measure, run once per variant of the running lab. A variant is a change made
to the running hosts and undone right after its run (the files are written back and the daemons
reloaded); none of them is something to deploy, they take away a part of the case study's path
to show what it costs:

    as pushed             the lab as `render` made it
    clients without TLS   the internet MTAs send without STARTTLS
    no rspamd milter      smtp-in: smtpd_milters emptied (postfix reload)
    no Sieve at delivery  maildrops: LMTP without the sieve plugin (doveadm reload)
    no replication        maildrops: mail_plugins without replication (doveadm reload)
    bare path             all four at once: internet -> smtp-in Postfix -> (TLS) -> maildrop
                          Postfix -> LMTP -> Dovecot

then the single box once, against which each variant's rate is set. Each variant sends from its
own client addresses (203.0.113.70 onwards, --clients per variant), so that smtp-in's per-client
limits of one variant's minute do not fall on the next.

On a machine where every host shares the same cores, the rate is the cores divided by the CPU a
message costs, so the ratio follows the CPU per message: the bare path's ratio is the ceiling of
what the lab could reach here whatever its settings.
"""

from __future__ import annotations

import contextlib
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _lab_common as common
from benchmarks import lab_throughput as throughput
from lab.host_root import HostRoot

DOVECOT_CONF = "/etc/dovecot/dovecot.conf"
POSTFIX_MAIN = "/etc/postfix/main.cf"
# Client addresses 203.0.113.70-199: above the lab's own (.66 is the DNSBL-listed one), below .200.
FIRST_CLIENT, OTHER_CLIENT = 70, 200
BOX = "single box"


@dataclass(frozen=True)
class Edit:
    """A change to one file of every host of a role, and the command that makes its daemon read it."""

    role: str
    path: str
    change: Callable[[str], str]
    reload: tuple[str, ...]


def without(pattern: str, replacement: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        changed, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        if n != 1:  # the rendered file changed shape: say so rather than measure nothing
            raise RuntimeError(f"{pattern!r} matched {n} times, expected once")
        return changed

    return change


NO_MILTER = Edit("smtp_in", POSTFIX_MAIN, without(r"^smtpd_milters = .*$", "smtpd_milters ="), ("postfix", "reload"))
NO_SIEVE = Edit(
    "maildrop",
    DOVECOT_CONF,
    without(r"^(protocol lmtp \{\n  mail_plugins = \$mail_plugins) sieve$", r"\1"),
    ("doveadm", "reload"),
)
NO_REPLICATION = Edit(
    "maildrop", DOVECOT_CONF, without(r"^(mail_plugins = .*) replication$", r"\1"), ("doveadm", "reload")
)

# (name, client STARTTLS, edits)
VARIANTS: list[tuple[str, bool, tuple[Edit, ...]]] = [
    ("as pushed", True, ()),
    ("clients without TLS", False, ()),
    ("no rspamd milter", True, (NO_MILTER,)),
    ("no Sieve at delivery", True, (NO_SIEVE,)),
    ("no replication", True, (NO_REPLICATION,)),
    ("bare path", False, (NO_MILTER, NO_SIEVE, NO_REPLICATION)),
]


@contextlib.contextmanager
def applied(status: dict, edits: tuple[Edit, ...]) -> Iterator[None]:
    """The edits made on every host of their role, undone (file written back, reload) on leaving.
    Files are read and written from inside the host: its /etc is an overlay, and a write to the
    layer underneath from outside is not what the daemons see."""
    saved: list[tuple[HostRoot, Edit, str]] = []
    try:
        for edit in edits:
            hosts = [h for h in status["hosts"] if h["role"] == edit.role]
            if not hosts:
                raise RuntimeError(f"no {edit.role} host in the lab")
            for host in hosts:
                root = HostRoot(host["name"], host["netns"], host["name"])
                original = root.check(["cat", edit.path], f"reading {edit.path}")
                saved.append((root, edit, original))
                write(root, edit, edit.change(original))
        yield
    finally:
        for root, edit, original in reversed(saved):
            write(root, edit, original)


def write(root: HostRoot, edit: Edit, text: str) -> None:
    """The file's new text (`tee` keeps its inode, owner and mode), then the daemon's reload."""
    root.check(["tee", edit.path], f"writing {edit.path}", input=text)
    root.check(list(edit.reload), " ".join(edit.reload))


def main() -> int:
    parser = throughput.arguments(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of every variant, interleaved (default 3)")
    args = parser.parse_args()
    if FIRST_CLIENT + len(VARIANTS) * args.clients > OTHER_CLIENT:
        raise SystemExit(f"--clients {args.clients}: {len(VARIANTS)} variants need more than 203.0.113.70-199")
    rates: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    last_used = [0.0] * len(VARIANTS)
    with common.running_lab() as status:
        for _ in range(args.rounds):
            for n, (name, starttls, edits) in enumerate(VARIANTS):
                # smtp-in counts a client's messages and connections per minute (anvil): a
                # variant's addresses rest a minute before its next round.
                time.sleep(max(0.0, last_used[n] + 61 - time.monotonic()))
                with applied(status, edits):
                    figures = throughput.measure_lab(
                        status, args, first=FIRST_CLIENT + n * args.clients, starttls=starttls
                    )
                last_used[n] = time.monotonic()
                rates.setdefault(name, []).append(figures.rate)
                cpus.setdefault(name, []).append(throughput.cpu_per_message(figures, args.messages))
                if args.detail:
                    throughput.report(name[:12], figures, args.messages, name, by_process=True)
            box = throughput.measure_single_box(status, args)
            rates.setdefault(BOX, []).append(box.rate)
            cpus.setdefault(BOX, []).append(throughput.cpu_per_message(box, args.messages))
    box_rate = statistics.median(rates[BOX])
    base_cpu = statistics.median(cpus[VARIANTS[0][0]])
    print(f"medians of {args.rounds} rounds, {args.messages} messages each (CPU: every daemon of every host + client)")
    print(f"{'variant':<22} {'messages/s':>10} {'CPU ms/message':>15} {'saves':>6} {'ratio':>6}")
    for name in rates:
        rate, cpu = statistics.median(rates[name]), statistics.median(cpus[name])
        saves = f"{base_cpu - cpu:5.1f}" if name not in (VARIANTS[0][0], BOX) else ""
        print(f"{name:<22} {rate:10.1f} {cpu:15.1f} {saves:>6} {rate / box_rate:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
