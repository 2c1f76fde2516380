#!/usr/bin/env python3
"""Install a host's rendered tree safely. Runs ON the host (Python 3 stdlib only).

    python3 push_host.py [--root DIR] [--no-reload] < manifest.json

1. stage every file in a private directory;
2. in a private mount namespace, lay the staged files over the live ones and run each daemon's
   own checker (postfix check, doveconf, nginx -t, ...) -- the running services see nothing;
3. only if every check passes: install the changed files atomically (mode, owner), postmap the
   changed lookup tables, and reload exactly the services whose files changed.
A failed check changes nothing on disk and exits 1 with the checker's message.
The manifest is HostTree.manifest() (render/tree.py); it arrives on stdin so that its secrets
never appear in a command line, the Pulumi state or a log.
"""

from __future__ import annotations

import argparse
import ctypes
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Postfix tools pause while main.cf looks "hot" (modified in the last second or two: maybe still
# being edited) before they trust it. Every file here appears complete, by an atomic rename, so its
# mtime is set that far back: postmap and `postfix check` right after a write do not sleep ~2 s.
SETTLED_SECONDS = 2
# mount(2) flags: a recursive bind mount (the live subdirectories of a mirrored directory).
MS_BIND, MS_REC = 0x1000, 0x4000


class CheckFailed(Exception):
    pass


def _ids(spec: dict) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(spec["owner"]).pw_uid
    except KeyError:
        uid = 0
    try:
        gid = grp.getgrnam(spec["group"]).gr_gid
    except KeyError:
        gid = 0
    return uid, gid


def _write(path: Path, spec: dict) -> None:
    """Atomic write with mode and owner set before the file appears under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(spec["content"])
        os.chmod(tmp, spec["mode"])
        os.chown(tmp, *_ids(spec))
        settled = time.time() - SETTLED_SECONDS
        os.utime(tmp, (settled, settled))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _changed(root: Path, manifest: dict) -> list[str]:
    changed = []
    for path, spec in manifest["files"].items():
        target = root / path.lstrip("/")
        try:
            st = target.stat()
            same = (
                target.read_text() == spec["content"]
                and (st.st_mode & 0o7777) == spec["mode"]
                and (st.st_uid, st.st_gid) == _ids(spec)
            )
        except (FileNotFoundError, UnicodeDecodeError):
            same = False
        if not same:
            changed.append(path)
    return changed


def _mirror_dirs(paths: list[str]) -> dict[Path, list[str]]:
    """Existing directory -> the staged files that land in it: each file's parent or, for a file
    in a directory still to be created, its deepest existing ancestor."""
    dirs: dict[Path, list[str]] = {}
    for p in paths:
        d = Path(p).parent
        while not d.is_dir():
            d = d.parent
        dirs.setdefault(d, []).append(p)
    return dirs


def _bind(source: str | Path, target: Path) -> None:
    # The syscall itself: a mirrored /etc binds a hundred subdirectories, a `mount` process each is slow.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount {source} on {target}: {os.strerror(err)}")


def _mirror(live: Path, copy: Path) -> None:
    """A private copy of one directory level, bind-mounted over the live one: its files copied
    (owner, mode, mtime), its subdirectories and other nodes the live ones (bind mounts), so the
    staged files and whatever the checks write there (postmap's .db) never reach the live dir."""
    st = live.stat()
    copy.mkdir()
    # Owner first: a chown clears set-id bits the mode then restores.
    os.chown(copy, st.st_uid, st.st_gid)
    os.chmod(copy, st.st_mode & 0o7777)
    with os.scandir(live) as entries:
        for entry in entries:
            target = copy / entry.name
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif entry.is_dir():
                target.mkdir()
                _bind(entry.path, target)
            elif entry.is_file():
                shutil.copyfile(entry.path, target)
                est = entry.stat()
                os.chown(target, est.st_uid, est.st_gid)
                shutil.copystat(entry.path, target)
            else:
                target.touch()
                _bind(entry.path, target)


def _overlay_and_check(manifest: dict, scratch: Path) -> None:
    """Inside a private mount namespace: give each directory that receives staged files a private
    copy of its own level with the staged files in it (shallowest first, so a deeper one mirrors
    what the outer mirror shows), postmap the tables, then run the checks."""
    dirs = _mirror_dirs(list(manifest["files"]))
    for n, live in enumerate(sorted(dirs, key=lambda d: len(d.parts))):
        copy = scratch / f"dir{n}"
        _mirror(live, copy)
        for path in dirs[live]:
            _write(copy / Path(path).relative_to(live), manifest["files"][path])
        _bind(copy, live)
    for path, spec in manifest["files"].items():
        if spec["postmap"]:
            _run(["postmap", path], f"postmap {path}")
    for check in manifest["checks"]:
        _run(check["argv"], check["name"])


def _run(argv: list[str], name: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    output = "\n".join(dict.fromkeys((result.stdout + result.stderr).strip().splitlines()))
    # Postfix and doveconf report many problems as warnings and still exit 0: a warning is a failure here.
    if result.returncode != 0 or "warning:" in output.lower():
        raise CheckFailed(f"check {name!r} failed ({' '.join(argv)}):\n{output}")


def check(manifest: dict) -> None:
    """Run every check of the manifest against its files, without touching the live system."""
    with tempfile.TemporaryDirectory(prefix="mail-push-") as scratch:
        Path(scratch, "manifest.json").write_text(json.dumps(manifest))
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", sys.executable, __file__, "--inside", scratch],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise CheckFailed(result.stderr.strip() or result.stdout.strip())


def install(manifest: dict, root: Path) -> dict:
    """Check, then install what changed; returns {"changed": paths, "reload": services}."""
    changed = _changed(root, manifest)
    if not changed:
        return {"changed": [], "reload": []}
    check(manifest)
    for path in changed:
        _write(root / path.lstrip("/"), manifest["files"][path])
    config_dir = root / "etc/postfix"  # postmap reads main.cf for its defaults
    for path in changed:
        if manifest["files"][path]["postmap"]:
            subprocess.run(["postmap", "-c", str(config_dir), str(root / path.lstrip("/"))], check=True)
    reload = sorted({s for p in changed for s in manifest["files"][p]["reload"]})
    return {"changed": changed, "reload": reload}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/"), help="install under this directory")
    parser.add_argument("--no-reload", action="store_true", help="print the reload list, do not reload")
    parser.add_argument("--check-only", action="store_true", help="run the checks, install nothing")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.inside:
            _overlay_and_check(json.loads(Path(args.inside, "manifest.json").read_text()), Path(args.inside))
            return 0
        manifest = json.load(sys.stdin)
        if args.check_only:
            check(manifest)
            print(json.dumps({"checked": len(manifest["checks"])}))
            return 0
        result = install(manifest, args.root)
    except CheckFailed as err:
        print(err if args.inside else f"{manifest['host']}: refused, nothing installed: {err}", file=sys.stderr)
        return 1
    if not args.no_reload:
        for service in result["reload"]:
            subprocess.run(manifest["services"][service], shell=True, check=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
