"""Inbound throughput of the whole path against single boxes, and the CPU a message costs each host.

    MAIL_LAB_ID=x .venv/bin/python benchmarks/lab_throughput.py [--messages 500] [--clients 20] [--warmup 100]
        [--detail]

Target: the CPU per message of the lab's busiest host is at most the featured single box's (1.0x):
spreading the work over hosts must not make any host slower than one box doing it all. (The first
target, the lab's rate at least 0.5x the bare single box's, compared a three-hop path on one shared
2-core machine with one bare hop; it is withdrawn, the ratio is still printed.)

Lab: --clients internet MTAs (one client address each, lab.internet's prefix) send --messages
messages to alice@example.com the way an MTA does (MX lookup in the lab DNS, STARTTLS, a session
reused for up to 10 messages): internet -> smtp-in (rspamd milter, PostSRSd) -> the primary
maildrop (SMTP with TLS) -> LMTP -> mdbox. A message counts when Dovecot has stored it on the
primary (`doveadm mailbox status`, polled every 0.2 s, then every 20 ms for the last fifth). Many
clients, because the case study's smtp-in takes at most 60 messages a minute from one client address.

Featured single box, started in the same run (benchmarks/_featured_box.py): one host with the
path's features, STARTTLS in, smtp-in's rspamd milter with redis, the maildrop's Sieve scripts on
LMTP into mdbox; the same clients send it the same messages with STARTTLS from the internet
namespace. Its CPU per message (all its daemons) is what the busiest lab host's is measured against.

Bare single box, started in the same run: one namespace with one Postfix (Debian's master.cf, a
minimal main.cf: every example.com address to LMTP) and one Dovecot (LMTP only, mdbox, a static
userdb), written here; the same number of clients send the same messages to its port 25 over
loopback, without TLS, rspamd or a second hop. Same count, counted the same way.

Both sides first take --warmup messages that are not measured: the figures are the steady state,
not the first scans of freshly started daemons (an rspamd worker's first messages cost it several
times the CPU of the later ones: 7-9 ms against 2-3 ms per message, measured).

Reuses the running lab of this MAIL_LAB_ID, or brings one up and takes it down at the end; the
single box lives in the lab's state directory under its prefix, so `lab down` sweeps a leftover.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _lab_common as common
from benchmarks._featured_box import BOX_ADDRESS, TLS_NAME, featured_box
from lab import NETNS_PREFIX, clients, daemons, host_root, internet, state, traffic
from lab.host_root import DAEMON_ENV, HostRoot
from lab.netns import pids_in
from render.tree import FileSpec

PRIMARY = "maildrop0-chbtl0"
TARGET = 1.0  # busiest lab host's CPU per message / the featured box's
WITHDRAWN_TARGET = 0.5  # lab rate / bare single box rate
BOX = "bench-single-box"
LMTP_SOCKET = "/var/spool/postfix/private/dovecot-lmtp"

BOX_MAIN_CF = """\
# Single-box baseline (benchmarks/lab_throughput.py): every example.com address to Dovecot's LMTP.
compatibility_level = 3.6
myhostname = box.example.com
mydomain = example.com
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
biff = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = example.com
virtual_mailbox_maps = static:mailbox
virtual_transport = lmtp:unix:private/dovecot-lmtp
maillog_file = /var/log/postfix.log
"""

BOX_DOVECOT_CONF = f"""\
# Single-box baseline (benchmarks/lab_throughput.py): LMTP into mdbox, nothing else.
protocols = lmtp
ssl = no
log_path = /var/log/dovecot.log
first_valid_uid = 8
mail_location = mdbox:~/mdbox
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home=/var/mail/box/%n
}}
service lmtp {{
  unix_listener {LMTP_SOCKET} {{
    mode = 0600
    user = postfix
    group = postfix
  }}
}}
"""


@contextlib.contextmanager
def single_box() -> Iterator[tuple[HostRoot, list[dict]]]:
    """One namespace (loopback only) with its own filesystem layer, Postfix and Dovecot."""
    netns = f"{NETNS_PREFIX}{BOX}"
    root = HostRoot(BOX, netns, BOX)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        host_root.create(root)
        host_root.write(
            root,
            {
                "/etc/hostname": FileSpec(f"{BOX}\n"),
                "/etc/postfix/main.cf": FileSpec(BOX_MAIN_CF),
                "/etc/postfix/master.cf": FileSpec(Path("/usr/share/postfix/master.cf.dist").read_text()),
                "/etc/dovecot/dovecot.conf": FileSpec(BOX_DOVECOT_CONF),
            },
        )
        root.run(["install", "-d", "-o", "mail", "-g", "mail", "-m", "0770", "/var/mail/box"]).check_returncode()
        running = []
        for name, ready in (
            ("dovecot", daemons.Readiness(unix=(LMTP_SOCKET,))),
            ("postfix", daemons.Readiness(tcp=(25,))),
        ):
            pid = daemons.start(root, daemons.DAEMONS[name])
            running.append(daemons.Running(BOX, name, pid, netns, ready))
        daemons.wait_ready(running, 60)
        yield root, [{"name": BOX, "role": "box", "daemons": [{"name": r.daemon, "pid": r.pid} for r in running]}]
    finally:
        with contextlib.suppress(Exception):
            root.run(["postfix", "stop"], env=DAEMON_ENV, timeout=30)
        for pid in pids_in([netns], [root.mount_ns] if root.mount_ns.exists() else []):
            with contextlib.suppress(ProcessLookupError):
                subprocess.run(["kill", "-TERM", str(pid)], capture_output=True)
        deadline = time.monotonic() + 10
        while pids_in([netns], [root.mount_ns] if root.mount_ns.exists() else []) and time.monotonic() < deadline:
            time.sleep(0.1)
        host_root.release(root)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        shutil.rmtree(root.base, ignore_errors=True)


def stored(root: HostRoot, user: str) -> int:
    """Messages Dovecot has stored in the user's INBOX."""
    result = root.run(["doveadm", "mailbox", "status", "-u", user, "messages", "INBOX"], env=DAEMON_ENV)
    return int(result.stdout.split("messages=")[1].split()[0]) if "messages=" in result.stdout else -1


@dataclass
class Figures:
    rate: float  # messages/s
    seconds: float
    cpu: dict[tuple[str, str], float]  # CPU seconds by (host, daemon) during the run; ("client", "") this process
    machine_busy: float  # CPU seconds the whole machine spent during the run
    machine_total: float  # CPU seconds it had (cores x wall time)


def run(
    mtas: list[traffic.Sender],
    messages: list[tuple[str, str, str, str]],
    count: Callable[[], int],
    hosts: list[dict],
    timeout: float,
) -> Figures:
    """Messages per second from the first send until `count()` has grown by len(messages), with
    the CPU time each daemon of `hosts` spent meanwhile."""
    before = count()
    near = before + len(messages) - max(1, len(messages) // 5)
    cpu_before, machine_before = common.cpu_by_daemon(hosts), common.machine_cpu()
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:
        sending = pool.submit(traffic.send_from_many, mtas, messages, timeout)
        while (now := count()) < before + len(messages):
            if sending.done() and sending.exception():
                raise sending.exception()
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{now - before} of {len(messages)} stored after {timeout:.0f} s")
            # A count costs a doveadm process (about 6 ms of CPU): every 0.2 s until the last fifth,
            # then every 20 ms, so that the end is read to 20 ms and not to 0.2 s.
            time.sleep(0.2 if now < near else 0.02)
        seconds = time.monotonic() - started
        sending.result()
    cpu_after, machine_after = common.cpu_by_daemon(hosts), common.machine_cpu()
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {k: cpu_after.get(k, 0.0) - cpu_before.get(k, 0.0) for k in cpu_after}
    cpu[("client", "")] = sum(getattr(client_after, f) - getattr(client_before, f) for f in ("ru_utime", "ru_stime"))
    return Figures(
        len(messages) / seconds,
        seconds,
        cpu,
        machine_after[0] - machine_before[0],
        machine_after[1] - machine_before[1],
    )


def host_cpu(figures: Figures, messages: int) -> dict[str, float]:
    """ms of CPU per message by host (the clients left out)."""
    by_host: dict[str, float] = {}
    for (host, _), seconds in figures.cpu.items():
        if host != "client":
            by_host[host] = by_host.get(host, 0.0) + 1000 * seconds / messages
    return by_host


def report(name: str, figures: Figures, messages: int, detail: str, by_process: bool = False) -> None:
    per = {k: 1000 * v / messages for k, v in figures.cpu.items()}  # ms of CPU per message
    by_daemon: dict[str, float] = {}
    by_host: dict[str, float] = {}
    for (host, daemon), ms in per.items():
        by_daemon[daemon or host] = by_daemon.get(daemon or host, 0.0) + ms
        if host != "client":
            by_host[host] = by_host.get(host, 0.0) + ms
    print(f"{name:<12} {figures.rate:7.1f} messages/s  {figures.seconds:6.1f} s  ({detail})")
    print(
        f"{'':<12} CPU {sum(per.values()):6.1f} ms/message (daemons + client); the machine was busy "
        f"{100 * figures.machine_busy / figures.machine_total:.0f}% of {os.cpu_count()} cores"
    )
    top = sorted(by_daemon.items(), key=lambda kv: -kv[1])[:7]
    print(f"{'':<12} by daemon: " + ", ".join(f"{k} {v:.1f}" for k, v in top if v >= 0.05) + " ms/message")
    hosts = sorted(by_host.items(), key=lambda kv: -kv[1])[:4]
    print(f"{'':<12} busiest hosts: " + ", ".join(f"{k} {v:.1f}" for k, v in hosts) + " ms/message")
    if by_process:
        for (host, daemon), ms in sorted(per.items(), key=lambda kv: -kv[1]):
            if ms >= 0.05:
                print(f"{'':<14}{host:<22} {daemon:<10} {ms:5.2f} ms/message")


def cpu_per_message(figures: Figures, messages: int) -> float:
    return 1000 * sum(figures.cpu.values()) / messages


def batch(tag: str, recipient: str, n: int) -> list[tuple[str, str, str, str]]:
    out = []
    for i in range(n):
        sender = f"{tag}-{i}@{internet.REMOTE_DOMAIN}"  # a sender each: nothing for the greylist to repeat
        message_id, text = clients.message(sender, recipient, f"throughput {i}", tag)
        out.append((message_id, sender, recipient, text))
    return out


def measure_lab(status: dict, args: argparse.Namespace, first: int = 100, starttls: bool = True) -> Figures:
    """The lab path: --warmup, then --messages from --clients internet MTAs at 203.0.113.<first>..."""
    alice = status["accounts"][0]
    primary = HostRoot(PRIMARY, next(h["netns"] for h in status["hosts"] if h["name"] == PRIMARY), PRIMARY)
    tag = f"tput{time.time_ns() % 10**10}"
    with traffic.extra_clients(status, args.clients, first=first) as sources:
        mtas = traffic.senders(status, sources, "example.com", starttls=starttls)
        count = lambda: stored(primary, alice["user"])  # noqa: E731
        if args.warmup:
            run(mtas, batch(f"{tag}warm", alice["address"], args.warmup), count, [], args.timeout)
        return run(mtas, batch(tag, alice["address"], args.messages), count, state.load()["hosts"], args.timeout)


def measure_single_box(status: dict, args: argparse.Namespace) -> Figures:
    """The single box, started here and stopped after: the same clients' count and messages."""
    tag = f"tput{time.time_ns() % 10**10}"
    with single_box() as (box, box_hosts):
        box_mx = [(10, "box.example.com", ["127.0.0.1"])]
        mtas = [
            traffic.Sender(status, "127.0.0.1", box_mx, netns=box.netns, starttls=False) for _ in range(args.clients)
        ]
        count = lambda: stored(box, "alice@example.com")  # noqa: E731
        if args.warmup:
            run(mtas, batch(f"{tag}boxwarm", "alice@example.com", args.warmup), count, [], args.timeout)
        return run(mtas, batch(f"{tag}box", "alice@example.com", args.messages), count, box_hosts, args.timeout)


def measure_featured_box(status: dict, args: argparse.Namespace) -> Figures:
    """The featured box, started here and stopped after: the same clients, STARTTLS, the same messages."""
    tag = f"tput{time.time_ns() % 10**10}"
    with featured_box(status) as (box, box_hosts), traffic.extra_clients(status, args.clients) as sources:
        mx = [(10, TLS_NAME, [BOX_ADDRESS])]
        mtas = [traffic.Sender(status, source, mx, starttls=True) for source in sources]
        count = lambda: stored(box, "alice@example.com")  # noqa: E731
        if args.warmup:
            run(mtas, batch(f"{tag}fbwarm", "alice@example.com", args.warmup), count, [], args.timeout)
        return run(mtas, batch(f"{tag}fb", "alice@example.com", args.messages), count, box_hosts, args.timeout)


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument(
        "--warmup", type=int, default=100, help="messages sent first and not measured, on each side (default 100)"
    )
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--detail", action="store_true", help="CPU per message of every daemon of every host")
    return parser


def main() -> int:
    args = arguments(__doc__.splitlines()[0]).parse_args()
    with common.running_lab() as status:
        lab = measure_lab(status, args)
        sent = f"{args.messages} messages from {args.clients} internet MTAs"
        report("lab path", lab, args.messages, sent, args.detail)
        featured = measure_featured_box(status, args)
        what = "STARTTLS in, rspamd milter + redis, Sieve on LMTP, mdbox; one host"
        report("featured box", featured, args.messages, what, args.detail)
        single = measure_single_box(status, args)
        report("bare box", single, args.messages, "Postfix -> LMTP -> Dovecot, loopback, no TLS", args.detail)
        busiest, busiest_ms = max(host_cpu(lab, args.messages).items(), key=lambda kv: kv[1])
        box_ms = sum(host_cpu(featured, args.messages).values())
        ratio = busiest_ms / box_ms
        verdict = "PASS" if ratio <= TARGET else "MISS"
        print(
            f"busiest host {ratio:7.2f}x CPU per message: {busiest} {busiest_ms:.1f} ms against the featured box's "
            f"{box_ms:.1f} ms  target <= {TARGET}x  {verdict}"
        )
        print(
            f"{'':<12} {lab.rate / featured.rate:7.2f}x lab rate / featured box rate (one shared machine: not a target)"
        )
        print(
            f"{'':<12} {lab.rate / single.rate:7.2f}x lab rate / bare box rate "
            f"(withdrawn target >= {WITHDRAWN_TARGET}x: three hops against one bare one on the same cores)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
