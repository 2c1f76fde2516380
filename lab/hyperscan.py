"""rspamd's hyperscan cache: the slow part compiled once per machine, shared by every rspamd.

A first start of rspamd compiles, in its main process and before any worker runs, the public
suffix list and its regexp maps into hyperscan "multipattern" databases (Debian's options.inc:
hs_cache_dir = ${DBDIR}/, /var/lib/rspamd: *.hsmp, *.hsmc): about 7 s of CPU, and ~150 MiB the
main process keeps and every worker inherits. Every smtp-in and smtp-out loads the same list and
maps, so these are the same files (named by a hash of what they hold). The lab compiles them
once (`compile`): rspamd runs in the first rspamd host with the rendered config and a private,
empty cache directory until it answers /ping (its main process has compiled and written them),
then once more until it has loaded them (a start that finds them writes the .unser copies it
maps instead of deserializing: 43 MiB for the suffix list); each run is killed, not stopped.
Each rspamd host then finds those files in its /var/lib/rspamd as symlinks to one copy (`share`):
its rspamd is ready in ~0.3 s of CPU with ~60 MiB instead of ~240 MiB, its processes map the
same pages as every other rspamd's, as a VM's would from its second start on (rspamd 3.4 saves
each multipattern again after loading it, so a host ends up with its own .hsmp files; the
.unser it maps stay shared). Its hs_helper still compiles the regexp classes (*.hs) itself, in
the background after the start (~0.4 s of CPU, paced over a few seconds): waiting for the first
host's would put those seconds on every start's path. Should the compile fail, every rspamd
compiles for itself (slower, same result).

The compiled files also outlive the lab, in a cache of this machine (`MachineCache`,
/var/cache/mail-cluster/rspamd-hyperscan/<rspamd and hyperscan package versions>/, beside the VM
image cache): the compile run starts with them in its directory and, as a VM's rspamd from its
second start on, loads instead of compiling what still matches (0.4-0.6 s of CPU instead of
8.6-10.7 s, on the critical path of `lab up`). Only the serialized files (*.hsmp, *.hsmc) are kept: rspamd checks
them before use (a name is the hash of the patterns and of the CPU's hyperscan platform;
hyperscan checks the header's magic, version, platform, length and a CRC32C of the bytecode) and
compiles again whatever fails, which the lab then writes back. The .unser copies are not kept:
rspamd maps those unchecked. .ci/install fills the cache (a lab of the compiling host, up and
down), else the first `lab up` on a machine does; an upgrade of either package starts a new
directory (the old ones are removed).
"""

from __future__ import annotations

import filecmp
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lab.host_root import DAEMON_ENV, HostRoot

CACHE_DIR = "/var/lib/rspamd"
# What the main process compiles before it forks its workers: multipatterns (the public suffix
# list ...) and regexp maps, and the mappable copies a later start writes.
COMPILED = ("*.hsmp", "*.hsmc")
PATTERNS = (*COMPILED, *(f"{p}.unser" for p in COMPILED))
# The compile is what every rspamd host waits for.
NICE = "-10"
# The machine's caches for the lab (the VM image's is there too: tests/vm_guest.py).
MACHINE_CACHE = Path(os.environ.get("MAIL_LAB_CACHE", "/var/cache/mail-cluster")) / "rspamd-hyperscan"
# Files of the machine cache no lab has used for this long go (another stack's maps ...).
UNUSED_DAYS = 30


def package_versions() -> str:
    """What the compiled files depend on besides their names' hash: rspamd's package and the
    hyperscan (or vectorscan) library's, as `libhyperscan5=5.4.0-2+rspamd=3.4-1`."""
    fmt = "${db:Status-Abbrev} ${Package}=${Version}\n"
    result = subprocess.run(
        ["dpkg-query", "-W", "-f", fmt, "rspamd", "libhyperscan*", "libvectorscan*"],
        capture_output=True,
        text=True,
    )
    installed = sorted(line.split()[1] for line in result.stdout.splitlines() if line.startswith("ii "))
    if not any(p.startswith("rspamd=") for p in installed):
        raise RuntimeError(f"rspamd's package version not found: {result.stdout}{result.stderr}")
    return "+".join(installed).replace("/", "_")


class MachineCache:
    """The compiled multipatterns kept on this machine between labs, one directory per package
    versions. Every failure here is a cold cache, never a failed `lab up`."""

    def __init__(self, top: Path = MACHINE_CACHE, key: str | None = None) -> None:
        self.top = top
        self.key = key
        self.error: str | None = None

    @property
    def dir(self) -> Path:
        if self.key is None:
            self.key = package_versions()
        return self.top / self.key

    def seed(self, into: Path, uid: int, gid: int) -> int:
        """Copy the cached files into an empty compile directory; returns how many."""
        try:
            found = sorted(f for pattern in COMPILED for f in self.dir.glob(pattern) if f.is_file())
            for f in found:
                target = into / f.name
                shutil.copyfile(f, target)
                os.chown(target, uid, gid)
            return len(found)
        except (OSError, RuntimeError) as failed:
            self.error = f"not read: {failed}"
            for f in _compiled(into):
                f.unlink(missing_ok=True)
            return 0

    def save(self, compiled: Path) -> int:
        """Write what rspamd compiled (new files, or files it compiled again because the cached
        ones failed its checks) to the cache, each atomically; mark the files it used (those it
        has mapped: a .unser copy beside them); drop other versions' directories and files no lab
        used for UNUSED_DAYS. Returns how many files were written."""
        written = 0
        try:
            self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            for f in _compiled(compiled):
                kept = self.dir / f.name
                if kept.is_file() and filecmp.cmp(f, kept, shallow=False):
                    if f.with_name(f"{f.name}.unser").exists():
                        os.utime(kept)
                    continue
                # Written aside, then renamed: another lab reading it meanwhile sees a whole file.
                fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{f.name}.")
                try:
                    with os.fdopen(fd, "wb") as out, f.open("rb") as src:
                        shutil.copyfileobj(src, out)
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, kept)
                finally:
                    Path(tmp).unlink(missing_ok=True)
                written += 1
            for other in self.top.iterdir():
                # Only what looks like one of these directories (`top` may be shared).
                if other.is_dir() and "rspamd=" in other.name and other.name != self.key:
                    shutil.rmtree(other, ignore_errors=True)
            too_old = time.time() - UNUSED_DAYS * 86400
            for f in self.dir.iterdir():
                if f.stat().st_mtime < too_old:
                    f.unlink(missing_ok=True)
        except (OSError, RuntimeError) as failed:
            self.error = f"not written: {failed}"
        return written


@dataclass
class Compiled:
    """What `compile` did: `dir` holds the files (None: rspamd was not ready in time), `seeded`
    files came from the machine cache, `saved` were written to it, `retried`: rspamd did not
    start from the seeded directory and compiled from an empty one, `error`: the machine cache
    could not be read or written (the compile went on without it)."""

    dir: Path | None
    seeded: int = 0
    saved: int = 0
    retried: bool = False
    error: str | None = None
    # CPU seconds of each rspamd run's main process: compiling, or loading what it found.
    cpu: list[float] = field(default_factory=list)


def shared_dir(root: HostRoot) -> Path:
    """Where a host holds the shared files (outside view; the same path inside the host)."""
    return root.base / "hyperscan"


def compile(
    root: HostRoot,
    argv: list[str],
    ready: Callable[[int], bool],
    timeout: float = 120,
    *,
    into: Path | None = None,
    machine: MachineCache | None = None,
) -> Compiled:
    """Run rspamd (argv: as lab.daemons starts it, User= included) in the host with a cache
    directory (`into`, by default the host's shared_dir) bind-mounted over /var/lib/rspamd in a
    mount namespace of its own, holding what the machine cache has: once until ready(pid), once
    more, if needed, until every compiled file has its .unser copy. Then what it compiled goes to
    the machine cache."""
    cache = into or shared_dir(root)
    cache.mkdir(mode=0o755)
    rspamd = pwd.getpwnam("_rspamd")
    os.chown(cache, rspamd.pw_uid, rspamd.pw_gid)
    result = Compiled(cache)
    if machine is not None:
        result.seeded = machine.seed(cache, rspamd.pw_uid, rspamd.pw_gid)
    deadline = time.monotonic() + timeout
    if not _run(root, cache, argv, ready, deadline, result.cpu):
        if not result.seeded:
            return Compiled(None, cpu=result.cpu)
        # rspamd compiles again what fails its checks, so this should not happen; should a
        # cached file still keep it from starting, compile from nothing rather than fail `up`.
        shutil.rmtree(cache)
        cache.mkdir(mode=0o755)
        os.chown(cache, rspamd.pw_uid, rspamd.pw_gid)
        result.retried = True
        if not _run(root, cache, argv, ready, time.monotonic() + timeout, result.cpu):
            return Compiled(None, result.seeded, retried=True, cpu=result.cpu)
    # Nothing compiled (a CPU hyperscan does not run on): nothing to load either. A run that
    # loaded cached files has written their .unser copies already; a file it rejected left an
    # empty one, which no later start would fill (rspamd creates them O_EXCL).
    for f in cache.glob("*.unser"):
        if f.stat().st_size == 0:
            f.unlink()
    if _compiled(cache) and not _loaded(cache):
        _run(root, cache, argv, lambda _: _loaded(cache), min(deadline, time.monotonic() + 10), result.cpu)
    if machine is not None:
        result.saved = machine.save(cache)
        result.error = machine.error
    return result


def _run(
    root: HostRoot, cache: Path, argv: list[str], done: Callable[[int], bool], deadline: float, cpu: list[float]
) -> bool:
    """Run rspamd until done(pid) or the deadline; appends the CPU seconds its main process (where
    the multipatterns are compiled or loaded) and the children it waited for spent to `cpu`."""
    script = f'mount --bind {cache} {CACHE_DIR} && exec "$@"'
    private = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    process = subprocess.Popen(
        ["nice", "-n", NICE, *root.enter(), *private, "sh", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=DAEMON_ENV,
        cwd="/",
        # Its own process group (to kill it whole) in the lab's session: the scheduler's
        # per-session group then weighs its nice against the lab's other work, not the machine's.
        process_group=0,
    )
    finished = False
    while process.poll() is None and time.monotonic() < deadline and not finished:
        time.sleep(0.1)
        finished = done(process.pid)
    cpu.append(_cpu_seconds(process.pid))
    # Killed, not stopped: what it wrote is complete (written aside, then renamed), and a clean
    # exit would tidy the cache away.
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return finished


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime, cutime, cstime (fields 14-17 of proc(5); [0] here is field 3).
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _compiled(cache: Path) -> list[Path]:
    return [f for pattern in COMPILED for f in cache.glob(pattern)]


def _loaded(cache: Path) -> bool:
    return all(f.with_name(f"{f.name}.unser").exists() for f in _compiled(cache))


def share(root: HostRoot, compiled: Path) -> int:
    """Give the host the compiled files before its rspamd starts: hard links in its own lab
    directory (one copy on the lab's tmpfs, one in the page cache), symlinks to them in
    /var/lib/rspamd. Returns how many. Files rspamd writes itself (the regexp classes, a
    multipattern it saves again) are the host's own."""
    own = shared_dir(root)
    files = sorted(f for pattern in PATTERNS for f in compiled.glob(pattern))
    if own != compiled:
        own.mkdir(mode=0o755, exist_ok=True)
        for f in files:
            os.link(f, own / f.name)
    if files:
        # The host's lab directory is at the same path inside it (lab.host_root).
        links = [str(own / f.name) for f in files]
        root.check(["ln", "-sf", "-t", CACHE_DIR, "--", *links], "sharing the hyperscan cache")
    return len(files)


def tidy(compiled: Path, roots: list[HostRoot]) -> int:
    """Once every rspamd runs: drop the shared copies rspamd 3.4 does not keep using. It saves
    each multipattern (*.hsmp) again after loading it, over the symlink, so every host has its
    own; the shared one is only kept while some host still links to it. The .unser copies the
    processes map stay. Returns the bytes freed on the lab's tmpfs."""
    freed = 0
    for f in compiled.glob("*.hsmp"):
        if any(r.outside(f"{CACHE_DIR}/{f.name}").is_symlink() for r in roots):
            continue
        freed += f.stat().st_size
        for r in roots:
            (shared_dir(r) / f.name).unlink(missing_ok=True)
    return freed
