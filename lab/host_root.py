"""Each lab host's filesystem: this machine's Debian root with the host's own layer on top.

Many instances of the same daemon run on one machine, and each must find its files where the
rendered trees put them (/etc/postfix, /etc/dovecot, /var/spool/postfix, /etc/certs ...). So each
host gets a private mount namespace (and a UTS namespace for its hostname) in which

    /etc /var /usr /srv /opt   are overlays: this machine's directory below, the host's own
                               writable layer above (STATE_DIR/hosts/<host>/upper/<dir>)
    /run /tmp /dev/shm         are fresh tmpfs, as after a boot (a venv the lab runs from under
                               /tmp is bound back into the fresh /tmp, at its own path)
    /dev                       is a tmpfs with the usual device nodes and /dev/log -> the lab's
                               syslog collector (STATE_DIR/hosts/<host>/journal/dev-log)

A daemon there sees exactly what it would see on a Debian VM after the push: the packages'
files plus the rendered ones, at their real paths, with its own queue, state and runtime
directories. Nothing in the rendered files or in the daemons' command lines has to change for
the lab, and the files are installed by the production push script itself (render/push_host.py,
run inside the namespaces). Files a host writes land in its upper layer, where the lab and tests
read them from outside (`HostRoot.outside`).

The namespaces persist as bind mounts of their nsfs files (STATE_DIR/ns/<host>.mnt, .uts), like
`ip netns` does for network namespaces; processes enter them with nsenter.
"""

from __future__ import annotations

import grp
import io
import os
import pwd
import shlex
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab import STATE_DIR
from lab.netns import nsenter
from render.tree import FileSpec

# Directories of this machine each host sees with its own layer on top; a rendered file must lie
# under one of them.
OVERLAID = tuple(d for d in ("etc", "var", "usr", "srv", "opt") if Path("/", d).is_dir())
NS_DIR = STATE_DIR / "ns"
# What systemd would give a service: a clean environment with the standard PATH.
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# Inside each host, first in the PATH of the push (lab.cluster.push): the lab's `systemctl`. The
# push's reload commands (`systemctl reload postfix`, after sysusers, tmpfiles, sievec in some) run
# as on a VM, and the shim hands each systemctl request to the lab process that runs the push
# (lab.units, listening on the host's SYSTEMCTL_SOCKET), which carries it out on the lab's own
# daemons. With nobody listening (`lab up` installs before it starts the daemons) it does nothing.
SHIM_DIR = f"{STATE_DIR}/bin"
SYSTEMCTL_SOCKET = "systemctl.sock"
SHIM = """#!/bin/sh
# The lab's systemctl (lab/host_root.py, lab/units.py): the request goes to the lab, which carries
# it out on the lab's daemons; with no lab listening (daemons not started yet) it does nothing.
# That case in sh: a python start for each of the pushes' systemctl calls at `lab up` was ~1 s of
# its CPU.
[ -e '{socket}' ] || exit 0
exec /usr/bin/python3 - "$@" <<'PY'
import json, socket, sys
with socket.socket(socket.AF_UNIX) as s:
    s.connect({socket!r})
    s.sendall(json.dumps(sys.argv[1:]).encode())
    s.shutdown(socket.SHUT_WR)
    reply = json.loads(b"".join(iter(lambda: s.recv(65536), b"")) or b'{{"rc": 1, "output": "no answer"}}')
sys.stderr.write(reply["output"])
sys.exit(reply["rc"])
PY
"""
# Character devices a daemon may open (mode, major, minor), as a container runtime provides them.
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


@dataclass(frozen=True)
class HostRoot:
    name: str
    netns: str
    hostname: str

    @property
    def base(self) -> Path:
        return STATE_DIR / "hosts" / self.name

    def upper(self, top: str) -> Path:
        return self.base / "upper" / top

    @property
    def journal(self) -> Path:
        """Bind-mounted at /run/systemd/journal inside: holds the dev-log socket /dev/log points to."""
        return self.base / "journal"

    @property
    def logs(self) -> Path:
        return self.base / "log"

    @property
    def systemctl_socket(self) -> Path:
        """Where the host's `systemctl` sends its requests (the same path inside and outside)."""
        return self.base / SYSTEMCTL_SOCKET

    @property
    def mount_ns(self) -> Path:
        return NS_DIR / f"{self.name}.mnt"

    @property
    def uts_ns(self) -> Path:
        return NS_DIR / f"{self.name}.uts"

    def outside(self, path: str) -> Path:
        """Where a file the host wrote at `path` is seen from outside its namespace."""
        top, _, rest = path.lstrip("/").partition("/")
        if top not in OVERLAID:
            raise ValueError(f"{path}: not on a host layer (only /{', /'.join(OVERLAID)})")
        return self.upper(top) / rest

    def enter(self) -> list[str]:
        """argv prefix: run a command in this host's network, mount and UTS namespaces."""
        return nsenter(self.netns, self.mount_ns, self.uts_ns)

    def run(self, argv: list[str], *, input: str | None = None, env: dict | None = None, timeout: float = 120):
        return subprocess.run(
            [*self.enter(), *argv], input=input, capture_output=True, text=True, env=env, timeout=timeout, cwd="/"
        )

    def check(self, argv: list[str], what: str, *, input: str | None = None) -> str:
        """argv in the host as a unit's command runs (DAEMON_ENV); its output, or an error naming
        the host, `what` and the command's own words."""
        result = self.run(argv, input=input, env=DAEMON_ENV)
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: {what} failed: {(result.stdout + result.stderr).strip()}")
        return result.stdout


def _kept_in_tmp() -> list[str]:
    """What a host must still see under its fresh /tmp: the venv the lab runs from, when it lies
    there (a checkout under /tmp), since the push finds pip-installed checkers (check-jsonschema) in
    it and their scripts name its python."""
    # Both its path and, when that is a link, where it leads: the checkers' scripts name the latter.
    venv = Path(sys.prefix).absolute()
    paths = dict.fromkeys(str(p) for p in (venv, venv.resolve()) if p.is_relative_to("/tmp") and p != Path("/tmp"))
    return list(paths)


def fresh_tmp(aside: Path, kept: list[str]) -> list[str]:
    """Shell lines: a fresh tmpfs on /tmp with each of `kept` (paths under /tmp) bound into it at its
    own path. Built at `aside` and moved into place, since the old /tmp is out of sight once covered."""
    lines = [f"mkdir -p {aside}/tmp", f"mount -n -t tmpfs -o mode=1777 tmp {aside}/tmp"]
    for path in kept:
        inside = shlex.quote(f"{aside}/tmp{path.removeprefix('/tmp')}")
        lines += [f"mkdir -p {inside}", f"mount -n --bind {shlex.quote(path)} {inside}"]
    return [*lines, f"mount -n --move {aside}/tmp /tmp"]


def _setup_script(root: HostRoot) -> str:
    """Runs once, inside the new mount and UTS namespaces, to lay out the host's filesystem."""
    b = root.base
    lines = ["set -e", f"hostname {root.hostname}"]
    lines += fresh_tmp(b, _kept_in_tmp())
    for top in OVERLAID:
        lines.append(
            f"mount -n -t overlay {root.name}-{top} -o lowerdir=/{top},upperdir={root.upper(top)},"
            f"workdir={b}/work/{top} /{top}"
        )
    lines += ["mount -n -t tmpfs -o mode=0755,size=1m dev /dev"]
    lines += [f"mknod -m 0666 /dev/{n} c {major} {minor}" for n, (major, minor) in DEVICES.items()]
    lines += [
        "ln -s /proc/self/fd /dev/fd",
        "ln -s /proc/self/fd/0 /dev/stdin",
        "ln -s /proc/self/fd/1 /dev/stdout",
        "ln -s /proc/self/fd/2 /dev/stderr",
        "mkdir /dev/shm /dev/pts",
        "mount -n -t tmpfs -o mode=1777 shm /dev/shm",
        # Debian's /dev/log is this symlink into journald's directory; the lab's collector serves it.
        "ln -s /run/systemd/journal/dev-log /dev/log",
        # /run is built aside and moved into place: once it covers /run, STATE_DIR is out of sight.
        f"mount -n -t tmpfs -o mode=0755 run {b}/run",
        f"mkdir -p {b}/run/systemd/journal {b}/run/lock {b}/run{SHIM_DIR.removeprefix('/run')}",
        f"printf '%s' {shlex.quote(SHIM.format(socket=str(root.systemctl_socket)))}"
        f" > {b}/run{SHIM_DIR.removeprefix('/run')}/systemctl",
        f"chmod 0755 {b}/run{SHIM_DIR.removeprefix('/run')}/systemctl",
        f"mount -n --bind {root.journal} {b}/run/systemd/journal",
        # The host's own lab directory at the same path inside: files the lab writes for a daemon
        # (lab.webmail's work dir) have one name on both sides.
        f"mkdir -p {b}/run{str(b).removeprefix('/run')}",
        f"mount -n --bind {b} {b}/run{str(b).removeprefix('/run')}",
        f"mount -n --move {b}/run /run",
    ]
    return "\n".join(lines)


def create(root: HostRoot) -> None:
    """The host's layers and its mount + UTS namespaces (persisted as files under NS_DIR)."""
    for top in OVERLAID:
        root.upper(top).mkdir(parents=True, exist_ok=True)
        (root.base / "work" / top).mkdir(parents=True, exist_ok=True)
    for d in (root.journal, root.logs, root.base / "run"):
        d.mkdir(parents=True, exist_ok=True)
    for ns in (root.mount_ns, root.uts_ns):
        ns.touch()
    result = subprocess.run(
        [
            "unshare",
            f"--mount={root.mount_ns}",
            f"--uts={root.uts_ns}",
            "--propagation",
            "private",
            "sh",
            "-c",
            _setup_script(root),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        release(root)
        raise RuntimeError(f"{root.name}: setting up its mount namespace failed: {result.stderr.strip()}")


def write(root: HostRoot, files: dict[str, FileSpec]) -> None:
    """Write files inside the host, as root (the lab's provisioning, not a rendered tree: the
    push's staging and checks would add nothing). Written from inside, by one `tar` extracting
    them all, so a directory that exists on this machine keeps its owner and mode in the host's
    layer (tar makes missing ones as `mkdir -p` would)."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path, spec in files.items():
            data = spec.content.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), spec.mode, int(time.time())
            info.uname, info.gname = spec.owner, spec.group
            info.uid, info.gid = _id(pwd.getpwnam, spec.owner), _id(grp.getgrnam, spec.group)
            tar.addfile(info, io.BytesIO(data))
    result = subprocess.run(
        [*root.enter(), "tar", "-x", "-p", "--same-owner", "-C", "/", "-f", "-"],
        input=archive.getvalue(),
        capture_output=True,
        cwd="/",
    )
    if result.returncode != 0:
        raise RuntimeError(f"{root.name}: writing {', '.join(files)} failed: {result.stderr.decode().strip()}")


def _id(lookup, name: str) -> int:
    try:
        return lookup(name)[2]
    except KeyError:
        return 0


def release(root: HostRoot) -> None:
    """Drop the persistent namespace files; the namespaces end with their last process."""
    for ns in (root.mount_ns, root.uts_ns):
        if ns.exists():
            subprocess.run(["umount", str(ns)], capture_output=True)
            ns.unlink(missing_ok=True)


def prepare_state_dir() -> None:
    """STATE_DIR as its own private tmpfs: overlay upper layers need a filesystem that is not an
    overlay itself (CI runs in a container whose root is one), nsfs bind mounts need a mount that
    is not shared, and `down` removes everything with one umount."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(STATE_DIR):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0700", "mail-lab", str(STATE_DIR)], check=True)
        subprocess.run(["mount", "--make-private", str(STATE_DIR)], check=True)
    NS_DIR.mkdir(exist_ok=True)


def remove_state_dir() -> None:
    """Unmount whatever is left under STATE_DIR (deepest first), then STATE_DIR itself."""
    if not STATE_DIR.exists():
        return
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(STATE_DIR) or point.startswith(f"{STATE_DIR}/"):
            mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    if STATE_DIR.exists() and not os.path.ismount(STATE_DIR):
        subprocess.run(["rm", "-rf", "--one-file-system", str(STATE_DIR)], check=False)
