"""A single box with the features of the lab's inbound path, for benchmarks/lab_throughput.py.

One host (its own mount and UTS namespace, like the lab's) doing alone what the path spreads over
smtp-in and the primary maildrop: Postfix taking mail from the internet with STARTTLS (the lab's
certificate and key), the rspamd milter (smtp-in's rendered local.d, with redis), LMTP into
Dovecot with the maildrop's Sieve scripts (sieve_before, sieve_after, the default script),
compiled as the maildrop's push compiles them, mdbox. What it leaves out is what only a cluster
has: the second Postfix hop with TLS between the two, replication to a peer, PostSRSd and
smtp-in's Unbound (its rspamd asks the lab DNS directly).

It sits in the internet namespace on an address of its own (BOX_ADDRESS), so that its rspamd
reaches the lab DNS as smtp-in's does through Unbound, and its rspamd starts from a copy of
smtp-in's compiled hyperscan cache, as the lab's start from the shared one.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from lab import daemons, host_root, hyperscan, internet, state
from lab.host_root import DAEMON_ENV, HostRoot
from lab.netns import pids_in
from model import load_stack_file
from render import render_host
from render.tree import FileSpec

BOX = "bench-featured-box"
BOX_ADDRESS = str(internet.IPV4[77])
LMTP_SOCKET = "/var/spool/postfix/private/dovecot-lmtp"
CERT, KEY = "/etc/certs/box/fullchain.pem", "/etc/certs/box/privkey.pem"
SMTP_IN, MAILDROP = "smtp-in-chrma0", "maildrop0-chbtl0"
# The name the clients check the certificate against: one the lab's certificate carries.
TLS_NAME = "smtp-in.example.com"

MAIN_CF = f"""\
# Featured single box (benchmarks/_featured_box.py): STARTTLS in, the rspamd milter, every
# example.com address to Dovecot's LMTP (Sieve there).
compatibility_level = 3.6
myhostname = box.example.com
mydomain = example.com
myorigin = $myhostname
mydestination =
inet_interfaces = {BOX_ADDRESS}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
biff = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = example.com
virtual_mailbox_maps = static:mailbox
virtual_transport = lmtp:unix:private/dovecot-lmtp
smtpd_tls_cert_file = {CERT}
smtpd_tls_key_file = {KEY}
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
smtpd_tls_session_cache_database = btree:$data_directory/smtpd_scache
smtpd_milters = inet:localhost:11332
milter_default_action = accept
maillog_file = /var/log/postfix.log
"""

DOVECOT_CONF = f"""\
# Featured single box (benchmarks/_featured_box.py): LMTP into mdbox with the maildrop's Sieve.
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
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
}}
plugin {{
  sieve = ~/.dovecot.sieve
  sieve_global_path = /etc/dovecot/sieve/default.sieve
  sieve_dir = ~/sieve
  sieve_global_dir = /etc/dovecot/sieve/
  sieve_extensions = +editheader
  sieve_before = /etc/dovecot/sieve/before.d
  sieve_after = /etc/dovecot/sieve/after.d
}}
"""


def _files(status: dict) -> dict[str, FileSpec]:
    """The box's files: its own Postfix and Dovecot configs, smtp-in's rspamd and the maildrop's
    Sieve scripts as the lab rendered them (the lab's keys)."""
    stack, keys = load_stack_file(status["stack"]), state.load_keys()
    hosts = {h.name: (role, h) for role, h in stack.vm_hosts}
    smtp_in = render_host(stack, *hosts[SMTP_IN], keys).files
    maildrop = render_host(stack, *hosts[MAILDROP], keys).files
    files = {p: spec for p, spec in smtp_in.items() if p.startswith("/etc/rspamd/")}
    files["/etc/rspamd/local.d/options.inc"] = FileSpec(
        smtp_in["/etc/rspamd/local.d/options.inc"].content.replace(
            '"127.0.0.1:53", "[::1]:53"', f'"{internet.DNS_SERVER[0]}:53"'
        )
    )
    # The controller on loopback only: smtp-in's site-local addresses are not the box's.
    controller = "/etc/rspamd/local.d/worker-controller.inc"
    files[controller] = FileSpec(
        "".join(
            line
            for line in smtp_in[controller].content.splitlines(keepends=True)
            if not line.startswith("bind_socket") or "127.0.0.1" in line or "[::1]" in line
        )
    )
    # What runs on delivery (the IMAPSieve spam/ham reports run on IMAP copies, not here).
    delivery = ("/etc/dovecot/sieve/default.sieve", "/etc/dovecot/sieve/before.d/", "/etc/dovecot/sieve/after.d/")
    files |= {p: spec for p, spec in maildrop.items() if p.startswith(delivery) and p.endswith(".sieve")}
    return files | {
        "/etc/hostname": FileSpec(f"{BOX}\n"),
        "/etc/resolv.conf": FileSpec(f"nameserver {internet.DNS_SERVER[0]}\n"),
        "/etc/postfix/main.cf": FileSpec(MAIN_CF),
        "/etc/postfix/master.cf": FileSpec(Path("/usr/share/postfix/master.cf.dist").read_text()),
        "/etc/dovecot/dovecot.conf": FileSpec(DOVECOT_CONF),
        CERT: FileSpec(keys.tls_cert),
        KEY: FileSpec(keys.tls_key, mode=0o600),
    }


@contextlib.contextmanager
def featured_box(status: dict) -> Iterator[tuple[HostRoot, list[dict]]]:
    """The box started, ready, and stopped after: (its root, its host entry as the state file has them)."""
    netns = status["client_netns"]
    root = HostRoot(BOX, netns, BOX)
    subprocess.run(["ip", "-n", netns, "addr", "add", f"{BOX_ADDRESS}/32", "dev", "eth0"], check=True)
    try:
        host_root.create(root)
        files = _files(status)
        if "/etc/rspamd/local.d/options.inc" not in files:
            raise RuntimeError(f"{SMTP_IN}'s tree has no rspamd options")
        host_root.write(root, files)
        root.check(["install", "-d", "-o", "mail", "-g", "mail", "-m", "0770", "/var/mail/box"], "mail home")
        for path in files:
            if path.startswith("/etc/dovecot/sieve/"):
                root.check(["sievec", path], "compile the maildrop's Sieve scripts")
        # smtp-in's compiled hyperscan cache, so that this rspamd starts as the lab's did.
        cache, own = _smtp_in_cache(status), root.outside(hyperscan.CACHE_DIR)
        own.mkdir(parents=True, exist_ok=True)
        for compiled in {f for pattern in (*hyperscan.PATTERNS, "*.hs") for f in cache.glob(pattern)}:
            shutil.copy(compiled, own / compiled.name)  # the file a shared cache's link points at
        root.check(["chown", "-R", "_rspamd:_rspamd", hyperscan.CACHE_DIR], "hyperscan cache")
        running = []
        stack = load_stack_file(status["stack"])
        for name, ready in (
            ("redis", daemons.readiness(stack, "smtp_in", "redis")),
            ("rspamd", daemons.readiness(stack, "smtp_in", "rspamd")),
            ("dovecot", daemons.Readiness(unix=(LMTP_SOCKET,))),
            ("postfix", daemons.Readiness(tcp=(25,))),
        ):
            pid = daemons.start(root, daemons.DAEMONS[name])
            running.append(daemons.Running(BOX, name, pid, netns, ready))
        daemons.wait_ready(running, 300)
        yield root, [{"name": BOX, "role": "box", "daemons": [{"name": r.daemon, "pid": r.pid} for r in running]}]
    finally:
        _stop(root, netns)


def _smtp_in_cache(status: dict) -> Path:
    entry = next(h for h in status["hosts"] if h["name"] == SMTP_IN)
    return HostRoot(entry["name"], entry["netns"], entry["name"]).outside(hyperscan.CACHE_DIR)


def _stop(root: HostRoot, netns: str) -> None:
    """Every process of the box (found by its mount namespace: it shares the internet's network)."""
    with contextlib.suppress(Exception):
        root.run(["postfix", "stop"], env=DAEMON_ENV, timeout=30)
    mount_ns = [root.mount_ns] if root.mount_ns.exists() else []
    for pid in pids_in([], mount_ns) if mount_ns else []:
        with contextlib.suppress(ProcessLookupError):
            subprocess.run(["kill", "-TERM", str(pid)], capture_output=True)
    deadline = time.monotonic() + 10
    while mount_ns and pids_in([], mount_ns) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids_in([], mount_ns) if mount_ns else []:
        subprocess.run(["kill", "-KILL", str(pid)], capture_output=True)
    host_root.release(root)
    subprocess.run(["ip", "-n", netns, "addr", "del", f"{BOX_ADDRESS}/32", "dev", "eth0"], capture_output=True)
    shutil.rmtree(root.base, ignore_errors=True)
