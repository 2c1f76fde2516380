"""Starting, stopping and waiting for the real Debian daemons inside a lab host.

Each daemon starts the way its Debian systemd unit starts it (ExecStartPre, ExecStart, User=,
RuntimeDirectory=), in the foreground where the unit allows it so the lab knows its pid; once it
is ready, the ExecStartPost= lines of the unit's drop-ins that the host's tree holds run. Lab-only
differences, all of them here:

- unbound reads /etc/unbound/lab.conf, which includes the rendered unbound.conf unchanged and
  adds a forward of "." to the lab DNS (the lab has no root servers to recurse from), turns
  DNSSEC validation off (`module-config: "iterator"`: the lab's zones are unsigned, the root
  trust anchor would turn every answer bogus) and lifts unbound's built-in empty zones for
  test. and the documentation reverse zones the lab serves;
- redis runs with `--supervised no` instead of `--supervised systemd` (no systemd to notify);
- postfix starts with `postfix start` after Debian's configure-instance.sh, as its unit does;
  its chroot stays on (configure-instance.sh copies what the chroot needs).

A daemon is ready when it listens where the stack model says it does (TCP ports from
stack.ports, the Postfix/Dovecot unix sockets), and rspamd when its controller answers /ping;
every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path

from lab import internet
from lab.host_root import DAEMON_ENV, HostRoot
from lab.netns import connect
from model import Stack

HTTP, HTTPS = 80, 443


@dataclass(frozen=True)
class Daemon:
    name: str
    argv: tuple[str, ...]
    # ExecStartPre= of its unit, run to completion first.
    prestart: tuple[tuple[str, ...], ...] = ()
    # User= of its unit (otherwise the daemon drops privileges itself).
    user: str | None = None
    # RuntimeDirectory= of its unit or its tmpfiles.d entry: (path, owner:group, mode).
    runtime_dirs: tuple[tuple[str, str, str], ...] = ()
    # Type=forking: argv returns once the daemon runs; its pid is in this file.
    pidfile: str | None = None
    # ExecStop= (otherwise SIGTERM to its pid).
    stop: tuple[str, ...] | None = None
    # The Debian unit whose ExecReload= reloads it (otherwise the unit of its name).
    unit: str | None = None


# In start order: resolvers and backends before the daemons that use them.
DAEMONS = {
    d.name: d
    for d in (
        Daemon(
            "unbound",
            ("unbound", "-d", "-p", "-c", "/etc/unbound/lab.conf"),
            prestart=(("/usr/libexec/unbound-helper", "chroot_setup"),),
        ),
        Daemon(
            "redis",
            ("redis-server", "/etc/redis/redis.conf", "--supervised", "no", "--daemonize", "no"),
            user="redis",
            runtime_dirs=(("/run/redis", "redis:redis", "2755"),),
        ),
        Daemon(
            "rspamd",
            ("rspamd", "-c", "/etc/rspamd/rspamd.conf", "-f"),
            user="_rspamd",
            runtime_dirs=(("/run/rspamd", "_rspamd:_rspamd", "0755"),),
        ),
        Daemon("opendkim", ("opendkim", "-f"), runtime_dirs=(("/run/opendkim", "opendkim:opendkim", "0750"),)),
        Daemon("postsrsd", ("/usr/share/postsrsd/postsrsd-systemd-launcher",)),
        Daemon("dovecot", ("dovecot", "-F")),
        Daemon(
            "postfix",
            ("postfix", "start"),
            prestart=(("/usr/lib/postfix/configure-instance.sh", "-"),),
            pidfile="/var/spool/postfix/pid/master.pid",
            stop=("postfix", "stop"),
            # postfix.service only groups the instances; each instance's unit reloads it.
            unit="postfix@-",
        ),
        Daemon("nginx", ("nginx", "-g", "daemon off; master_process on;")),
        # The relay clients' unit runs `smtpd -f /etc/mail/smtpd.conf`; -d keeps it in the foreground.
        # Its chroot directory comes with Debian's package; .ci/install-opensmtpd unpacks the
        # package under /opt (it conflicts with postfix), so the lab makes it as the package would.
        Daemon(
            "opensmtpd",
            ("smtpd", "-d", "-f", "/etc/mail/smtpd.conf"),
            runtime_dirs=(("/var/lib/opensmtpd/empty", "root:root", "0755"),),
        ),
    )
}


# unbound answers these from its built-in local zones (RFC 6761 special-use names, RFC 6303
# reverse zones of documentation prefixes); the lab serves names under them.
LAB_LOCAL_ZONES = ("test.", "113.0.203.in-addr.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa.")


def lab_unbound_conf(rendered: str = "/etc/unbound/unbound.conf") -> str:
    servers = "".join(f"    forward-addr: {a}\n" for a in internet.DNS_SERVER)
    zones = "".join(f'    local-zone: "{z}" nodefault\n' for z in LAB_LOCAL_ZONES)
    return (
        "# The lab's additions to the rendered unbound.conf (lab/daemons.py): there is no internet to\n"
        "# recurse from, so every query goes to the lab DNS; its zones are not signed and there is no\n"
        "# root to build a chain of trust from, so no validator; and names under test. and the\n"
        "# documentation prefixes' reverse zones are the lab's, not unbound's built-in empty zones.\n"
        f'include: "{rendered}"\n'
        'server:\n    module-config: "iterator"\n'
        f"{zones}"
        f'forward-zone:\n    name: "."\n{servers}'
    )


@dataclass(frozen=True)
class Readiness:
    tcp: tuple[int, ...] = ()
    unix: tuple[str, ...] = ()
    # HTTP GET on a TCP port of this daemon, and the body it must start with.
    http: tuple[int, str, str] | None = None


def readiness(stack: Stack, role: str, daemon: str) -> Readiness:
    """Where the daemon listens on this role's hosts, by the stack model."""
    p = stack.ports
    table: dict[tuple[str, str], Readiness] = {
        ("smtp_in", "postfix"): Readiness(tcp=(p.smtp, p.smtps)),
        ("smtp_out", "postfix"): Readiness(tcp=(p.submission,)),
        ("maildrop", "postfix"): Readiness(tcp=(p.smtp,)),
        ("remote_mta", "postfix"): Readiness(tcp=(p.smtp,)),
        ("smtp_out", "dovecot"): Readiness(unix=("/var/spool/postfix/private/auth",)),
        ("maildrop", "dovecot"): Readiness(
            tcp=(p.imaps, p.managesieve, p.doveadm), unix=("/var/spool/postfix/private/dovecot-lmtp",)
        ),
        ("frontend", "nginx"): Readiness(tcp=(p.submission, p.imaps, p.managesieve, HTTP, HTTPS)),
        ("relay_client", "opensmtpd"): Readiness(tcp=(p.smtp,)),
        # Roundcube (lab.webmail waits for its login page itself).
        ("webmail", "nginx"): Readiness(tcp=(stack.webmail.port,)),
    }
    generic = {
        "opendkim": Readiness(tcp=(p.opendkim,)),
        "rspamd": Readiness(tcp=(p.rspamd_milter, p.rspamd_controller), http=(p.rspamd_controller, "/ping", "pong")),
        "redis": Readiness(tcp=(6379,)),
        "postsrsd": Readiness(tcp=(p.srs_forward, p.srs_reverse)),
        "unbound": Readiness(tcp=(53,)),
    }
    return table.get((role, daemon)) or generic.get(daemon) or Readiness()


# ---- what a network namespace listens on (read from outside through /proc/<pid>/net) ---------


def _hex_address(text: str) -> str:
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ip_address(raw[::-1]))
    # IPv6: four 32-bit words, each in host (little-endian) order.
    return str(ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))))


def tcp_listeners(pid: int) -> set[tuple[str, int]]:
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                address, port = fields[1].split(":")
                found.add((_hex_address(address), int(port, 16)))
    return found


def unix_listeners(pid: int) -> set[str]:
    try:
        lines = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    except OSError:
        return set()
    # Flags 00010000: a listening socket (SO_ACCEPTCON).
    return {f[7] for f in (line.split() for line in lines) if len(f) >= 8 and f[3] == "00010000"}


def _http_get(netns: str, address: str, port: int, path: str) -> str:
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
    try:
        with connect(netns, host, port, timeout=1.0) as sock:
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return ""
    return data.partition(b"\r\n\r\n")[2].decode(errors="replace")


def missing(netns: str, pid: int, ready: Readiness) -> list[str]:
    """What the daemon does not do yet: '' when ready."""
    tcp = tcp_listeners(pid)
    ports = {port for _, port in tcp}
    absent = [f"tcp {port}" for port in ready.tcp if port not in ports]
    unix = unix_listeners(pid)
    absent += [f"unix {path}" for path in ready.unix if path not in unix]
    if ready.http and not absent:
        port, path, expect = ready.http
        address = next(a for a, p in sorted(tcp) if p == port)
        if not _http_get(netns, address, port, path).startswith(expect):
            absent.append(f"http {port}{path}")
    return absent


# ---- running ---------------------------------------------------------------------------------


@dataclass
class Running:
    host: str
    daemon: str
    pid: int
    netns: str
    ready: Readiness = field(default_factory=Readiness)

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists() and _state(self.pid) not in ("Z", "X", None)


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def prepare(root: HostRoot, daemon: Daemon) -> None:
    """What the unit does before ExecStart: RuntimeDirectory=, ExecStartPre=."""
    if daemon.runtime_dirs:
        script = " && ".join(
            f"install -d -o {o.split(':')[0]} -g {o.split(':')[1]} -m {m} {p}" for p, o, m in daemon.runtime_dirs
        )
        root.check(["sh", "-c", script], f"{daemon.name} runtime directories")
    for argv in daemon.prestart:
        root.check(list(argv), f"{daemon.name} {argv[0]}")


def command(daemon: Daemon) -> list[str]:
    """ExecStart=, as the unit's User= when it has one."""
    argv = list(daemon.argv)
    if daemon.user:
        argv = ["setpriv", f"--reuid={daemon.user}", f"--regid={daemon.user}", "--init-groups", "--", *argv]
    return argv


def start(root: HostRoot, daemon: Daemon) -> int:
    """Start one daemon in the host's namespaces; returns its pid (not waiting for readiness)."""
    prepare(root, daemon)
    argv = command(daemon)
    log = open(root.logs / f"{daemon.name}.log", "ab")  # noqa: SIM115 (handed to the daemon)
    with log:
        if daemon.pidfile:
            result = subprocess.run(
                [*root.enter(), *argv], stdout=log, stderr=subprocess.STDOUT, env=DAEMON_ENV, cwd="/"
            )
            if result.returncode != 0:
                raise RuntimeError(f"{root.name}: {daemon.name} did not start, see {log.name} and {root.logs}/syslog")
            return int(root.outside(daemon.pidfile).read_text().split()[0])
        process = subprocess.Popen(
            [*root.enter(), *argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=DAEMON_ENV,
            cwd="/",
            start_new_session=True,
        )
    return process.pid


UNIT_DIRS = (Path("/lib/systemd/system"), Path("/usr/lib/systemd/system"))


def exec_reload(daemon: Daemon, pid: int) -> list[str] | None:
    """ExecReload= of the daemon's Debian unit ($MAINPID the lab's pid, %i the instance); None when
    the unit has none (systemd refuses to reload it too)."""
    unit = daemon.unit or daemon.name
    template = unit.split("@")[0] + "@" if "@" in unit else unit
    instance = unit.partition("@")[2]
    for directory in UNIT_DIRS:
        path = directory / f"{template}.service"
        if path.exists():
            for line in path.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "ExecReload" and value.strip():
                    command = value.strip().lstrip("+-@!:")
                    command = command.replace("$MAINPID", str(pid)).replace("%i", instance)
                    return shlex.split(command)
            break
    return None


def exec_start_post(root: HostRoot, daemon: Daemon) -> list[tuple[bool, list[str]]]:
    """The ExecStartPost= lines of the drop-ins the host has for the daemon's unit, named as the
    daemon (rendered files, e.g. the maildrops' sync on start), in systemd's order: (failure
    ignored, argv)."""
    directory = root.outside(f"/etc/systemd/system/{daemon.name}.service.d")
    commands = []
    for drop_in in sorted(directory.glob("*.conf")) if directory.is_dir() else []:
        for line in drop_in.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ExecStartPost" and value.strip():
                value = value.strip()
                commands.append((value.startswith("-"), shlex.split(value.lstrip("-"))))
    return commands


def post_start(root: HostRoot, daemon: Daemon) -> None:
    """What the unit runs once the daemon is ready: its ExecStartPost= commands."""
    for ignore_failure, argv in exec_start_post(root, daemon):
        result = root.run(argv, env=DAEMON_ENV)
        if result.returncode != 0 and not ignore_failure:
            raise RuntimeError(f"{root.name}: {daemon.name} ExecStartPost {argv} failed: {result.stderr.strip()}")


def wait_ready(
    running: list[Running], timeout: float, pending_now: Callable[[list[Running]], None] | None = None
) -> dict[tuple[str, str], float]:
    """Until every daemon listens where it should; returns (host, daemon) -> seconds it took.
    Raises naming the daemons that exited or are not ready in time. pending_now: told, each round,
    which are not ready yet (lab up's progress)."""
    started = time.monotonic()
    deadline = started + timeout
    pending = list(running)
    ready: dict[tuple[str, str], float] = {}
    while pending:
        dead = [r for r in pending if not r.alive()]
        if dead:
            raise RuntimeError("exited during start: " + ", ".join(f"{r.host}/{r.daemon}" for r in dead))
        still = []
        for r in pending:
            if missing(r.netns, r.pid, r.ready):
                still.append(r)
            else:
                ready[(r.host, r.daemon)] = time.monotonic() - started
        pending = still
        if pending_now is not None:
            pending_now(pending)
        if pending and time.monotonic() > deadline:
            detail = "; ".join(f"{r.host}/{r.daemon}: {', '.join(missing(r.netns, r.pid, r.ready))}" for r in pending)
            raise TimeoutError(f"not ready after {timeout:.0f}s: {detail}")
        if pending:
            time.sleep(0.2)
    return ready


def stop(root: HostRoot, daemon: Daemon, pid: int) -> None:
    """Ask a daemon to stop (its ExecStop=, else SIGTERM); `lab down` kills what remains."""
    if daemon.stop:
        root.run(list(daemon.stop), env=DAEMON_ENV, timeout=30)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
