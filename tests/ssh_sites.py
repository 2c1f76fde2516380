"""A managed host and a bastion running Debian's real sshd, and an operator's machine, in network
namespaces that the SSH push tests create and remove themselves.

    client  --2001:db8:ff:1::/64--  host      the operator's machine dials the host directly
    client  --2001:db8:ff:2::/64--  bastion
    bastion --2001:db8:ff:3::/64--  host      only the bastion reaches this address of the host

The host's sshd serves the VM's generated host key (KeyMaterial.ssh_host_keys) and runs in the lab's
kind of host root (lab.host_root: this machine's Debian below, the host's own writable layer on
top, fresh /run and /tmp), so a push installs its tree there and runs the real checkers without
touching this machine's /etc. Documentation prefixes only; nothing routes to the root namespace.

`OpenSsh` is the operator's side: OpenSSH's client with a known_hosts file that holds only the
pinned key (`StrictHostKeyChecking yes`), as pulumi-command's connection with `host_key` set
accepts that key and nothing else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab import LAB_ID, host_root
from lab.host_root import HostRoot
from lab.netns import NETNS_DIR, nsenter, port_open
from render.tree import FileSpec

STATE = Path(f"/run/mail-sshtest{LAB_ID}")
PREFIX = f"mssh{LAB_ID}-"
CLIENT, HOST, BASTION = (f"{PREFIX}{n}" for n in ("client", "host", "bastion"))
# (namespace, address) pairs joined by one veth each.
LINKS = (
    ((CLIENT, "2001:db8:ff:1::1"), (HOST, "2001:db8:ff:1::2")),
    ((CLIENT, "2001:db8:ff:2::1"), (BASTION, "2001:db8:ff:2::2")),
    ((BASTION, "2001:db8:ff:3::1"), (HOST, "2001:db8:ff:3::2")),
)
HOST_ADDRESS, BASTION_ADDRESS, HOST_BEHIND_BASTION = "2001:db8:ff:1::2", "2001:db8:ff:2::2", "2001:db8:ff:3::2"
TOOLS = ("ip", "unshare", "nsenter", "/usr/sbin/sshd", "ssh", "ssh-keygen", "nginx")
SSHD_CONFIG = "/etc/ssh/push_test_sshd_config"
# The push's reloads call systemctl; here, as in the lab, the daemons are not running.
SHIM = "#!/bin/sh\nexit 0\n"


def unavailable() -> str | None:
    """Why these tests cannot run here, or None. In CI a missing piece is a failure, never a skip."""
    missing = [t for t in TOOLS if not shutil.which(t)]
    if os.geteuid() == 0 and not missing:
        return None
    return f"the SSH push tests need root, namespaces and openssh-server (missing: {missing or 'root'})"


@dataclass(frozen=True)
class SshRoot(HostRoot):
    """A lab-style host root under this module's own state directory, not a running lab's."""

    state: Path = STATE

    @property
    def base(self) -> Path:
        return self.state / "hosts" / self.name

    @property
    def mount_ns(self) -> Path:
        return self.state / "ns" / f"{self.name}.mnt"

    @property
    def uts_ns(self) -> Path:
        return self.state / "ns" / f"{self.name}.uts"


@dataclass
class Sshd:
    root: SshRoot
    address: str
    public_key: str
    process: subprocess.Popen

    @property
    def log(self) -> Path:
        return self.root.base / "sshd.log"

    def accepted(self) -> int:
        """How many logins this sshd has accepted so far."""
        return self.log.read_text().count("Accepted publickey")


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _ip(netns: str, *args: str) -> None:
    _run(["ip", "-n", netns, *args])


def destroy() -> None:
    """Remove everything a run (or an interrupted one) left: processes, namespaces, the state dir."""
    for netns in (CLIENT, HOST, BASTION):
        if (NETNS_DIR / netns).exists():
            # sshd and its sessions: the only processes started in these namespaces.
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
    if STATE.exists():
        for ns in sorted(STATE.glob("ns/*")):
            subprocess.run(["umount", str(ns)], capture_output=True)
        subprocess.run(["umount", "-l", str(STATE)], capture_output=True)
        if not os.path.ismount(STATE):
            shutil.rmtree(STATE, ignore_errors=True)


def create_network() -> None:
    for netns in (CLIENT, HOST, BASTION):
        _run(["ip", "netns", "add", netns])
        _ip(netns, "link", "set", "lo", "up")
    for n, ((left, left_address), (right, right_address)) in enumerate(LINKS):
        # veth names are at most 15 characters, and unique on the machine until moved.
        a, b = f"{PREFIX}{n}a", f"{PREFIX}{n}b"
        _run(["ip", "link", "add", a, "netns", left, "type", "veth", "peer", "name", b, "netns", right])
        for netns, dev, address in ((left, a, left_address), (right, b, right_address)):
            _ip(netns, "address", "add", f"{address}/64", "dev", dev, "nodad")
            _ip(netns, "link", "set", dev, "up")


def prepare_state() -> None:
    """STATE as a private tmpfs: overlay upper layers and nsfs bind mounts need one (host_root)."""
    STATE.mkdir(parents=True, exist_ok=True)
    _run(["mount", "-t", "tmpfs", "-o", "mode=0700", "mail-sshtest", str(STATE)])
    _run(["mount", "--make-private", str(STATE)])
    (STATE / "ns").mkdir()


def new_key(path: Path, comment: str) -> str:
    """An ED25519 key pair at path (and path.pub); returns the public line `<type> <base64>`."""
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


def start_sshd(name: str, netns: str, addresses: list[str], private_openssh: str, public_openssh: str, client_key: str):
    """Debian's sshd in a fresh host root in `netns`, serving `private_openssh` as its only host key
    and letting in root with `client_key`."""
    root = SshRoot(name=name, netns=netns, hostname=name)
    host_root.create(root)
    config = "\n".join(
        [
            *(f"ListenAddress [{a}]:22" for a in addresses),
            "HostKey /etc/ssh/push_test_host_key",
            "AuthorizedKeysFile /etc/ssh/push_test_authorized_keys/%u",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PidFile /run/sshd.pid",
            "LogLevel VERBOSE",
            "",
        ]
    )
    host_root.write(
        root,
        {
            SSHD_CONFIG: FileSpec(config),
            "/etc/ssh/push_test_host_key": FileSpec(private_openssh, mode=0o600),
            "/etc/ssh/push_test_authorized_keys/root": FileSpec(client_key + "\n"),
            "/usr/local/sbin/systemctl": FileSpec(SHIM, mode=0o755),
        },
    )
    root.check(["mkdir", "-p", "-m", "0755", "/run/sshd"], "making sshd's privilege separation directory")
    root.check(["/usr/sbin/sshd", "-t", "-f", SSHD_CONFIG], "sshd -t")
    log = open(root.base / "sshd.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [*root.enter(), "/usr/sbin/sshd", "-D", "-e", "-f", SSHD_CONFIG],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=host_root.DAEMON_ENV,
        cwd="/",
    )
    sshd = Sshd(root, addresses[0], public_openssh, process)
    for _ in range(100):
        if port_open(netns, addresses[0], 22, timeout=0.5):
            return sshd
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{name}: sshd did not listen on [{addresses[0]}]:22: {sshd.log.read_text()[-2000:]}")


def stop_sshd(sshd: Sshd) -> None:
    sshd.process.terminate()
    try:
        sshd.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        sshd.process.kill()
        sshd.process.wait(timeout=10)
    host_root.release(sshd.root)


@dataclass
class Pushed:
    returncode: int
    stdout: str
    stderr: str
    # Bytes of the manifest OpenSSH's client read from its stdin: 0 when it never opened a session.
    stdin_read: int
    stdin_size: int


@dataclass(frozen=True)
class OpenSsh:
    """The operator's ssh: its own identity, ssh_config and known_hosts files, run in `netns`
    (None: this namespace, e.g. for a VM on a forwarded port)."""

    workdir: Path
    identity: Path
    netns: str | None = None

    def config(self, hosts: dict[str, dict[str, str]]) -> Path:
        """An ssh_config with one `Host` block per alias (options as ssh_config spells them), then
        the settings every connection shares: only the pinned key is trusted, no prompt, no agent."""
        lines = []
        for alias, options in hosts.items():
            lines.append(f"Host {alias}")
            lines += [f"  {k} {v}" for k, v in options.items()]
        lines += [
            "Host *",
            "  User root",
            f"  IdentityFile {self.identity}",
            "  IdentitiesOnly yes",
            "  IdentityAgent none",
            "  BatchMode yes",
            "  StrictHostKeyChecking yes",
            "  GlobalKnownHostsFile /dev/null",
            "  UpdateHostKeys no",
            "  ConnectTimeout 5",
            "  ConnectionAttempts 1",
            "",
        ]
        path = self.workdir / f"ssh_config.{len(list(self.workdir.glob('ssh_config.*')))}"
        path.write_text("\n".join(lines))
        return path

    def known_hosts(self, name: str, entries: dict[str, str]) -> Path:
        """A known_hosts file: host pattern (`addr` or `[addr]:port`) -> the one key pinned for it."""
        path = self.workdir / f"known_hosts.{name}"
        path.write_text("".join(f"{pattern} {key}\n" for pattern, key in entries.items()))
        return path

    def push(self, config: Path, alias: str, command: str, stdin: str, timeout: float = 300) -> Pushed:
        """`command` on `alias` with `stdin`, as pulumi-command's session.Run does (the remote
        user's shell runs the command text; stdin is the manifest)."""
        data = self.workdir / "stdin"
        data.write_text(stdin)
        argv = ["ssh", "-F", str(config), alias, command]
        if self.netns is not None:
            argv = [*nsenter(self.netns), *argv]
        with open(data, "rb") as source:
            result = subprocess.run(argv, stdin=source, capture_output=True, text=True, timeout=timeout)
            # The child shared this open file: its offset is how much of the manifest ssh read.
            read = os.lseek(source.fileno(), 0, os.SEEK_CUR)
        return Pushed(result.returncode, result.stdout, result.stderr, read, data.stat().st_size)
