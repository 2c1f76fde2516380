"""rspamd's hyperscan cache: the slow part compiled once per lab, shared by every rspamd.

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
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lab.host_root import DAEMON_ENV, HostRoot

CACHE_DIR = "/var/lib/rspamd"
# What the main process compiles before it forks its workers: multipatterns (the public suffix
# list ...) and regexp maps, and the mappable copies a later start writes.
COMPILED = ("*.hsmp", "*.hsmc")
PATTERNS = (*COMPILED, *(f"{p}.unser" for p in COMPILED))
# The compile is what every rspamd host waits for.
NICE = "-10"


def shared_dir(root: HostRoot) -> Path:
    """Where a host holds the shared files (outside view; the same path inside the host)."""
    return root.base / "hyperscan"


def compile(root: HostRoot, argv: list[str], ready: Callable[[int], bool], timeout: float = 120) -> Path | None:
    """Run rspamd (argv: as lab.daemons starts it, User= included) in the host with an empty
    cache directory bind-mounted over /var/lib/rspamd in a mount namespace of its own: once
    until ready(pid), once more until every compiled file has its .unser copy. Returns that
    directory, None if the first run was not ready in time."""
    cache = shared_dir(root)
    cache.mkdir(mode=0o755)
    rspamd = pwd.getpwnam("_rspamd")
    os.chown(cache, rspamd.pw_uid, rspamd.pw_gid)
    deadline = time.monotonic() + timeout
    if not _run(root, cache, argv, ready, deadline):
        return None
    # Nothing compiled (a CPU hyperscan does not run on): nothing to load either.
    if _compiled(cache):
        _run(root, cache, argv, lambda _: _loaded(cache), min(deadline, time.monotonic() + 10))
    return cache


def _run(root: HostRoot, cache: Path, argv: list[str], done: Callable[[int], bool], deadline: float) -> bool:
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
    # Killed, not stopped: what it wrote is complete (written aside, then renamed), and a clean
    # exit would tidy the cache away.
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return finished


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
