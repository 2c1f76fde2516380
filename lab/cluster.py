"""up / down / status: the lab as a whole.

`up` renders the stack once (render.render_stack with throwaway keys), builds the network, gives
every host its filesystem (lab.host_root), serves the zones, and brings every host up at once:
installs its tree with the production push script, then starts its daemons; it waits until each
listens. The first rspamd host is installed ahead of the others and compiles rspamd's hyperscan
cache for all of them (lab.hyperscan) while they install; each rspamd starts last, from it.
`down` removes everything `up` created, found from the state file and, should that be lost, from
the names (namespaces `mlab-*`, mounts under STATE_DIR) alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lab import (
    NETNS_PREFIX,
    STATE_DIR,
    daemons,
    dns_server,
    host_root,
    hyperscan,
    internet,
    network,
    state,
    units,
    webmail,
)
from lab.host_root import HostRoot
from lab.netns import nsenter, pids_in
from lab.progress import Heartbeat
from model import Stack, load_stack_file
from render import render_host, render_stack
from render.cloud_init import PACKAGES
from render.keys import KeyMaterial
from render.throwaway import throwaway_keys
from render.tree import FileSpec, HostTree

PUSH_HOST = Path(__file__).resolve().parent.parent / "render" / "push_host.py"
HOST_PUSH_SCRIPT = "/var/lib/mail-push/push_host.py"
DNS_DIR = STATE_DIR / "dns"
Progress = Callable[[str], None]


def say(text: str) -> None:
    """print, at once even when stdout is a pipe (`lab up | tee`)."""
    print(text, flush=True)


@dataclass
class LabHost:
    name: str
    role: str
    fqdn: str
    tree: HostTree | None
    addresses: list[str] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return internet.NETNS if self.role == "remote_mta" else network.netns_name(self.name)

    @property
    def root(self) -> HostRoot:
        return HostRoot(self.name, self.netns, self.name)


def daemon_names(stack: Stack, host: LabHost) -> list[str]:
    """The daemons a host runs: those its tree configures (HostTree.services), plus redis where
    the role's VM installs it (render.cloud_init.PACKAGES) next to an rspamd that uses it."""
    if host.tree is None:
        return []
    wanted = set(host.tree.services)
    if "rspamd" in wanted and "redis-server" in PACKAGES.get(host.role, ()):
        wanted.add("redis")
    return [name for name in daemons.DAEMONS if name in wanted]


def lab_hosts(stack: Stack, trees: dict[str, HostTree], topology: network.Topology) -> list[LabHost]:
    roles = {h.name: role for role, h in stack.vm_hosts}
    roles[stack.webmail.host] = "webmail"
    roles.update({c.name: "relay_client" for c in stack.relay_clients})
    fqdns = {h.name: stack.fqdn(h) for _, h in stack.vm_hosts}
    hosts = []
    for nic in topology.nics:
        if nic.host == "internet":
            continue
        fqdn = fqdns.get(nic.host, f"{nic.host}.{stack.infra_domain}")
        hosts.append(LabHost(nic.host, roles[nic.host], fqdn, trees.get(nic.host), [str(a.ip) for a in nic.addresses]))
    hosts.append(
        LabHost(
            internet.REMOTE_MTA_HOST,
            "remote_mta",
            internet.REMOTE_MX,
            internet.remote_mta_tree(),
            list(internet.REMOTE_MTA),
        )
    )
    return hosts


def provisioning(host: LabHost, keys: KeyMaterial) -> dict[str, FileSpec]:
    """What the VM image and cloud-init give a host before the first push, plus the lab's own
    files (all listed in lab/README.md): hostname and /etc/hosts (cloud-init manage_etc_hosts),
    resolv.conf to the lab DNS (cloud-init's network-config; a tree that renders its own replaces
    it), the lab CA in the system trust store (production certificates are publicly trusted),
    and unbound's lab.conf."""
    short = host.fqdn.split(".")[0]
    files = {
        "/etc/hostname": FileSpec(f"{host.name}\n"),
        "/etc/hosts": FileSpec(
            f"127.0.0.1 localhost\n127.0.1.1 {host.fqdn} {short} {host.name}\n"
            "::1 localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n"
        ),
        "/etc/resolv.conf": FileSpec("".join(f"nameserver {a}\n" for a in internet.DNS_SERVER)),
        "/etc/ssl/certs/ca-certificates.crt": FileSpec(
            Path("/etc/ssl/certs/ca-certificates.crt").read_text() + keys.ca_cert
        ),
    }
    if host.tree is not None and "/etc/unbound/unbound.conf" in host.tree.files:
        files["/etc/unbound/lab.conf"] = FileSpec(daemons.lab_unbound_conf())
    return files


# Packages of a libvirt VM that mean nothing in a namespace (and are not installed here): the lab's
# push leaves them out of the manifest's package list (lab/README.md, lab-only differences).
VM_ONLY_PACKAGES = ("qemu-guest-agent",)


class PushFailed(RuntimeError):
    """A push that failed: the message names the host and what failed; `result` is what the push
    script reported (changed, removed, reload, probes) when it got that far."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result or {}


def push(host: LabHost, tree: HostTree, *, probes: bool = False) -> dict:
    """Install a tree inside the host with render/push_host.py, as production does on a VM: its
    package check, its checks, its files, its postmaps, its reload commands and, with `probes`,
    its probes (and roll-back). The reloads go to the lab's `systemctl` (host_root.SHIM): while the
    push runs the lab carries them out on the host's running daemons (lab.units); at `up`, before
    the daemons start, they do nothing. The webmail host's reload is `docker compose up`: the lab
    runs Debian's Roundcube instead (lab.webmail), so that tree is installed and checked only.
    Returns the push script's result; raises PushFailed naming the host."""
    # Then the directory of the interpreter running the lab (the venv): checkers installed with pip
    # (check-jsonschema, for the webmail tree) are there, whether or not the venv is on PATH.
    path = [host_root.SHIM_DIR, str(Path(sys.executable).parent), os.environ.get("PATH", host_root.DAEMON_ENV["PATH"])]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    # The host's own python3 runs it, from a path inside the host, as on a VM: the project's
    # checkout (and its venv) may sit where the host's fresh /tmp hides it.
    script = host.root.outside(HOST_PUSH_SCRIPT)
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(PUSH_HOST.read_text())
    flags = ["--no-reload"] if tree.role == "webmail" else [] if probes else ["--no-probes"]
    manifest = tree.manifest()
    manifest["packages"] = [p for p in manifest["packages"] if p not in VM_ONLY_PACKAGES]
    with units.serving([host.root]) if probes else contextlib.nullcontext():
        result = host.root.run(
            ["/usr/bin/python3", HOST_PUSH_SCRIPT, *flags], input=json.dumps(manifest), env=env, timeout=600
        )
    reported = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else None
    if result.returncode != 0:
        raise PushFailed(f"{host.name}: push of the {tree.role} tree failed:\n{result.stderr.strip()}", reported)
    return reported or {}


# ---- up ----------------------------------------------------------------------------------------


def _parallel(fn, items) -> list:
    """fn over items, all at once: most of a host's bring-up waits on its commands."""
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def _start_collector(hosts: list[LabHost]) -> int:
    log = open(STATE_DIR / "syslog-collector.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "lab.syslog", *(str(h.root.base) for h in hosts)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
    )
    if process.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"the syslog collector did not start, see {log.name}")
    return process.pid


def _start_dns(stack: Stack, keys: KeyMaterial) -> subprocess.Popen:
    conf = dns_server.write_config(DNS_DIR, dns_server.zones(stack, keys))
    log = open(DNS_DIR / "nsd.log", "ab")  # noqa: SIM115
    with log:
        return subprocess.Popen(
            [*nsenter(internet.NETNS), *dns_server.command(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_dns(stack: Stack, process: subprocess.Popen, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not dns_server.answers(stack.infra_domain):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nsd does not answer, see {DNS_DIR / 'nsd.log'}")
        time.sleep(0.1)


def _start_webmail(stack: Stack, keys: KeyMaterial, host: LabHost, progress: Progress) -> list[dict]:
    """Roundcube as lab.webmail runs it (Debian's package on php-fpm + nginx), in the webmail host."""
    try:
        webmail.php_fpm_binary()
        if not webmail.SCHEMA.exists():
            raise FileNotFoundError(webmail.SCHEMA)
    except FileNotFoundError as missing:
        progress(f"webmail: not started, Debian's Roundcube is not installed ({missing}; .ci/install-browser)")
        return []
    wm = webmail.write(host.root.base / "webmail", stack, keys, host.netns, enter=tuple(host.root.enter()))
    webmail.start(wm)
    progress(f"webmail: Roundcube on {wm.url}")
    return [
        {"name": name, "pid": int(wm.path("run", f"{name}.pid").read_text().split()[0])}
        for name in ("nginx", "php-fpm")
    ]


def _render(stack: Stack, stack_name: str, keys: KeyMaterial, only: list[str] | None) -> dict[str, HostTree]:
    """render.render_stack, or only the named hosts' trees (render.render_host)."""
    if not only:
        return render_stack(stack, keys)
    every = {h.name: (role, h) for role, h in stack.vm_hosts}
    every[stack.webmail.host] = ("webmail", stack.webmail)
    every.update({c.name: ("relay_client", c) for c in stack.relay_clients})
    unknown = sorted(set(only) - set(every))
    if unknown:
        raise ValueError(f"no such hosts in stack {stack_name}: {unknown}")
    return {name: render_host(stack, *every[name], keys) for name in only}


class _SharedHyperscan:
    """rspamd's hyperscan cache, compiled once by the first rspamd host for all (lab.hyperscan):
    that host is installed first, alone, and compiles right after; the other hosts start their
    installs then (`started`), and every rspamd host waits for the cache before its rspamd
    starts. A single rspamd host (`up --only`) goes the same way: it then starts from the
    machine's cache too (lab.hyperscan.MachineCache)."""

    def __init__(self, stack: Stack, hosts: list[LabHost]) -> None:
        self.users = [h.name for h in hosts if "rspamd" in daemon_names(stack, h)]
        self.compiler = self.users[0] if self.users else None
        self.result = hyperscan.Compiled(None)
        self.started = threading.Event()
        self.done = threading.Event()
        self.seconds = 0.0
        if self.compiler is None:
            self.started.set()

    @property
    def compiled(self) -> Path | None:
        """The directory every rspamd host starts from, None: each compiles its own."""
        return self.result.dir

    def start_compile(self, stack: Stack, host: LabHost, beat: Heartbeat) -> None:
        def run() -> None:
            started = time.monotonic()
            beat.doing("hyperscan", f"rspamd compiling its hyperscan cache once for all on {host.name}")
            try:
                daemons.prepare(host.root, daemons.DAEMONS["rspamd"])
                ready = daemons.readiness(stack, host.role, "rspamd")
                self.result = hyperscan.compile(
                    host.root,
                    daemons.command(daemons.DAEMONS["rspamd"]),
                    lambda pid: not daemons.missing(host.netns, pid, ready),
                    machine=hyperscan.MachineCache(),
                )
            finally:
                self.seconds = round(time.monotonic() - started, 2)
                beat.doing("hyperscan", None)
                self.done.set()

        threading.Thread(target=run, name="hyperscan-compile", daemon=True).start()
        self.started.set()

    def wait_started(self, host: LabHost) -> None:
        if host.name != self.compiler:
            self.started.wait()

    def before_rspamd(self, host: LabHost, timeout: float) -> None:
        if self.compiler is None:
            return
        if not self.done.wait(timeout):
            raise TimeoutError(f"{host.name}: rspamd's hyperscan cache not compiled after {timeout:.0f}s")
        if self.compiled is not None:
            hyperscan.share(host.root, self.compiled)

    def tidy(self, hosts: list[LabHost]) -> None:
        if self.compiled is not None:
            hyperscan.tidy(self.compiled, [h.root for h in hosts if h.name in self.users])

    def release(self) -> None:
        """Unblock the hosts waiting should the compiling host fail before it compiles."""
        self.started.set()
        self.done.set()


def _bring_up_host(
    stack: Stack,
    keys: KeyMaterial,
    host: LabHost,
    entry: dict,
    cache: _SharedHyperscan,
    beat: Heartbeat,
    timeout: float,
) -> list:
    """Install the host's trees, then start its daemons (not waiting for them); rspamd last, once
    the shared hyperscan cache is there."""
    beat.doing(host.name, "waiting for the first rspamd host's install")
    cache.wait_started(host)
    started = time.monotonic()
    try:
        beat.doing(host.name, "installing its tree (push_host.py: checks, files, postmaps)")
        host_root.write(host.root, provisioning(host, keys))
        if host.tree is None:
            beat.doing(host.name, None)
            return []
        push(host, host.tree)
        # What `lab apply` compares a new render with (lab.apply): only changed hosts are pushed.
        entry["digest"] = host.tree.digest()
        if host.name == cache.compiler:
            cache.start_compile(stack, host, beat)
    except BaseException:
        if host.name == cache.compiler:
            cache.release()
        raise
    entry["install_seconds"] = round(time.monotonic() - started, 2)
    names = daemon_names(stack, host)
    running = []
    for name in [n for n in names if n != "rspamd"] + [n for n in names if n == "rspamd"]:
        if name == "rspamd":
            beat.doing(host.name, "waiting for the hyperscan cache to start rspamd")
            cache.before_rspamd(host, timeout)
        beat.doing(host.name, f"starting {name}")
        pid = daemons.start(host.root, daemons.DAEMONS[name])
        entry["daemons"].append({"name": name, "pid": pid})
        running.append(daemons.Running(host.name, name, pid, host.netns, daemons.readiness(stack, host.role, name)))
    if host.role == "webmail":
        entry["daemons"] += _start_webmail(stack, keys, host, beat.say)
    beat.doing(host.name, None)
    entry["start_seconds"] = round(time.monotonic() - started - entry["install_seconds"], 2)
    return running


def up(stack_name: str = "lab", only: list[str] | None = None, progress: Progress = say, timeout: float = 180) -> dict:
    """Bring the lab up (a no-op when it already runs); returns status(). `only`: render and run
    just these hosts (the network, the DNS and the remote MTA are always whole). Says what it does
    at least every few seconds (lab.progress)."""
    with Heartbeat(progress) as beat:
        return _up(stack_name, only, beat, timeout)


def _up(stack_name: str, only: list[str] | None, beat: Heartbeat, timeout: float) -> dict:
    progress = beat.say
    current = state.load()
    if current and current.get("phase") == "up" and healthy(current):
        progress("the lab is already up")
        return status()
    if current or network.existing() or STATE_DIR.exists():
        progress("removing what is left of a previous lab")
        down(progress=lambda _: None)
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(phase: str) -> float:
        timings[phase] = round(time.monotonic() - started, 2)
        return timings[phase]

    stack = load_stack_file(stack_name)
    topology = network.plan(stack)  # refuses non-documentation addresses before anything exists
    keys = throwaway_keys(stack)
    trees = _render(stack, stack_name, keys, only)
    hosts = lab_hosts(stack, trees, topology)
    progress(f"rendered {len(trees)} hosts of stack {stack_name} ({lap('rendered')}s)")

    host_root.prepare_state_dir()
    state.save_keys(keys)
    record: dict = {"stack": stack_name, "phase": "starting", "netns": list(topology.namespaces), "hosts": []}
    record["hosts"] = [
        {"name": h.name, "role": h.role, "netns": h.netns, "fqdn": h.fqdn, "addresses": h.addresses}
        | {"rendered": h.tree is not None, "daemons": []}
        for h in hosts
    ]
    state.save(record)  # from here on, `down` finds everything
    network.create(topology)
    dns = _start_dns(stack, keys)
    record["dns_pid"] = dns.pid
    _parallel(lambda h: host_root.create(h.root), hosts)
    record["collector_pid"] = _start_collector(hosts)
    progress(f"network: {len(topology.namespaces)} namespaces, fabric {topology.fabric} ({lap('network')}s)")
    state.save(record)

    cache = _SharedHyperscan(stack, hosts)
    try:
        pairs = list(zip(hosts, record["hosts"], strict=True))
        per_host = _parallel(lambda p: _bring_up_host(stack, keys, *p, cache, beat, timeout), pairs)
        running = [r for rs in per_host for r in rs]
    finally:
        state.save(record)
    progress(f"installed every tree with render/push_host.py, started {len(running)} daemons ({lap('started')}s)")
    if cache.compiler:
        r = cache.result
        how = "NOT compiled (each rspamd compiles its own)"
        if r.dir:
            how = f"compiled, {r.seeded} files from this machine's cache, {r.saved} new to it"
            how += f" (machine cache {r.error})" if r.error else ""
        progress(f"rspamd: hyperscan cache {how}, once on {cache.compiler} ({cache.seconds}s), shared")
        record["hyperscan_seconds"] = cache.seconds
        record["hyperscan"] = {
            "seeded": r.seeded,
            "saved": r.saved,
            "retried": r.retried,
            "error": r.error,
            "cpu": [round(c, 2) for c in r.cpu],
        }
    beat.doing("dns", "waiting for nsd to answer")
    _wait_dns(stack, dns)
    beat.doing("dns", None)
    progress(f"dns: nsd on {', '.join(internet.DNS_SERVER)} ({lap('dns')}s)")

    def listening(pending: list[daemons.Running]) -> None:
        for host in {r.host for r in running}:
            waiting = [r.daemon for r in pending if r.host == host]
            beat.doing(host, f"waiting for {' '.join(waiting)} to listen" if waiting else None)

    ready = daemons.wait_ready(running, timeout, listening)
    roots = {h.name: h.root for h in hosts}
    beat.doing("post-start", "running the units' ExecStartPost (the maildrops' sync with their peer)")
    _parallel(lambda r: daemons.post_start(roots[r.host], daemons.DAEMONS[r.daemon]), running)
    beat.doing("post-start", None)
    cache.tidy(hosts)
    record["ready_seconds"] = {f"{host}/{name}": round(t + timings["started"], 2) for (host, name), t in ready.items()}
    lap("up")
    record.update(phase="up", up_seconds=timings["up"], timings=timings)
    state.save(record)
    progress(f"the lab is up ({timings['up']}s)")
    return status()


def save_logs(dest: Path) -> Path:
    """Copy every host's logs (its syslog, daemon output, /var/log) and the DNS's to dest/<host>/."""
    for name, root in host_roots().items():
        target = dest / name
        if root.logs.is_dir():
            shutil.copytree(root.logs, target, dirs_exist_ok=True, ignore_dangling_symlinks=True)
        var_log = root.outside("/var/log")
        if var_log.is_dir():
            shutil.copytree(var_log, target / "var-log", dirs_exist_ok=True, ignore_dangling_symlinks=True)
    if DNS_DIR.is_dir():
        shutil.copytree(DNS_DIR, dest / "dns", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.zone"))
    return dest


def host_roots() -> dict[str, HostRoot]:
    """The running lab's hosts, to run commands in them or read the files they wrote."""
    record = state.load() or {"hosts": []}
    return {h["name"]: HostRoot(h["name"], h["netns"], h["name"]) for h in record["hosts"]}


def healthy(record: dict) -> bool:
    existing = set(network.existing())
    if not set(record.get("netns", [])) <= existing:
        return False
    return all(
        daemons.Running(h["name"], d["name"], d["pid"], h["netns"]).alive()
        for h in record["hosts"]
        for d in h["daemons"]
    )


# ---- down --------------------------------------------------------------------------------------


def _kill(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def down(progress: Progress = say, grace: float = 10) -> None:
    record = state.load() or {}
    netns_names = sorted(set(record.get("netns", [])) | set(network.existing()))
    mount_ns = sorted(host_root.NS_DIR.glob("*.mnt")) if host_root.NS_DIR.is_dir() else []
    for entry in record.get("hosts", []):
        root = HostRoot(entry["name"], entry["netns"], entry["name"])
        for d in reversed(entry.get("daemons", [])):
            # Roundcube's nginx and php-fpm (lab.webmail) go with the sweep below.
            if root.mount_ns.exists() and entry["role"] != "webmail":
                daemons.stop(root, daemons.DAEMONS[d["name"]], d["pid"])
    deadline = time.monotonic() + grace
    pids = pids_in(netns_names, mount_ns)
    _kill(pids, signal.SIGTERM)
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = pids_in(netns_names, mount_ns)
    _kill(pids, signal.SIGKILL)
    collector = record.get("collector_pid")
    if collector and b"lab.syslog" in _cmdline(collector):
        _kill([collector], signal.SIGTERM)
    host_root.remove_state_dir()
    network.destroy(netns_names)
    left = network.existing()
    progress("the lab is down" + (f" (namespaces still there: {left})" if left else ""))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# ---- status ------------------------------------------------------------------------------------


def _mailbox_address(stack: Stack, name: str) -> str:
    """The mailbox's own address: the first domain whose alias of that name delivers to it."""
    for domain in stack.domains:
        if name in domain.aliases.get(name, []):
            return f"{name}@{domain.name}"
    return f"{name}@{stack.domains[0].name}"


def whole(current: dict) -> bool:
    """A status() of a lab that is up, every daemon alive, with every host of its stack (not an
    `up --only` subset): one that tests and benchmarks can use as it is."""
    return bool(current.get("up")) and all(h["rendered"] for h in current["hosts"])


def status() -> dict:
    record = state.load()
    if record is None:
        return {"up": False, "hosts": []}
    stack = load_stack_file(record["stack"])
    keys = state.load_keys()
    frontend = stack.frontend_primary
    entry = str(frontend.public_ipv4 or frontend.public_ipv6)
    p = stack.ports
    hosts = []
    for h in record["hosts"]:
        ds = [
            {
                **d,
                "alive": daemons.Running(h["name"], d["name"], d["pid"], h["netns"]).alive(),
                "tcp": list(daemons.readiness(stack, h["role"], d["name"]).tcp),
            }
            for d in h["daemons"]
        ]
        hosts.append({**h, "daemons": ds, "logs": str(HostRoot(h["name"], h["netns"], h["name"]).logs)})
    return {
        "up": record.get("phase") == "up" and healthy(record),
        "stack": record["stack"],
        "hosts": hosts,
        "client_netns": internet.NETNS,
        "endpoints": {
            # host: an address the client namespace reaches; name: what the certificate says.
            "submission": {"host": entry, "port": p.submission, "name": stack.service_name("smtp-out")},
            "imaps": {"host": entry, "port": p.imaps, "name": stack.service_name("imap")},
            "managesieve": {"host": entry, "port": p.managesieve, "name": stack.service_name("imap")},
            "mx": [
                {"host": a, "port": p.smtp, "name": stack.service_name("smtp-in")}
                for h in stack.hosts.smtp_in
                for a in h.public_addresses
            ],
            # smtp-in's submissions port for inbound mail (TLS from the first byte), beside 25.
            "smtps": [
                {"host": a, "port": p.smtps, "name": stack.service_name("smtp-in")}
                for h in stack.hosts.smtp_in
                for a in h.public_addresses
            ],
            "webmail": {"host": entry, "port": 443, "name": stack.service_name("webmail")},
            # Port 80 only redirects to the webmail's 443; each mail domain's MTA-STS policy is on 443 too.
            "webmail_http": {"host": entry, "port": 80, "name": stack.service_name("webmail"), "tls": False},
            "mta_sts": {"host": entry, "port": 443, "name": f"mta-sts.{stack.domains[0].name}"},
            "dns": {"host": internet.DNS_SERVER[0], "port": 53},
            "remote_mta": {"host": internet.REMOTE_MTA[0], "port": p.smtp, "domain": internet.REMOTE_DOMAIN},
        },
        "accounts": [
            {"user": m.name, "address": _mailbox_address(stack, m.name), "password": keys.mailbox_passwords[m.name]}
            for m in stack.mailboxes
            if m.name in keys.mailbox_passwords
        ],
        "service_accounts": [{"user": u, "password": pw} for u, pw in keys.sasl_passwords.items()],
        "ca_file": str(state.CA_FILE),
        "internet": {
            "allowed_client": list(internet.ALLOWED_CLIENT),
            "other_client": list(internet.OTHER_CLIENT),
            "listed_client": internet.LISTED_CLIENT,
        },
        "remote_maildir": str(
            HostRoot(internet.REMOTE_MTA_HOST, internet.NETNS, internet.REMOTE_MTA_HOST).outside(
                internet.REMOTE_MAILDIR
            )
        ),
        "netns_prefix": NETNS_PREFIX,
        "up_seconds": record.get("up_seconds"),
    }
