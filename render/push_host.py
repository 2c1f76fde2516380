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
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


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


def _mount_dirs(paths: list[str]) -> list[Path]:
    """The outermost existing directories that hold the staged files (bind-mount points)."""
    dirs: set[Path] = set()
    for p in paths:
        d = Path(p).parent
        while not d.is_dir():
            d = d.parent
        dirs.add(d)
    return sorted(d for d in dirs if not any(o != d and o in d.parents for o in dirs))


def _overlay_and_check(manifest: dict, scratch: Path) -> None:
    """Inside a private mount namespace: copy each mount dir, overlay the staged files, bind it
    over the live dir, postmap the tables, then run the checks."""
    for n, live in enumerate(_mount_dirs(list(manifest["files"]))):
        copy = scratch / f"overlay{n}"
        shutil.copytree(live, copy, symlinks=True, ignore_dangling_symlinks=True)
        for path, spec in manifest["files"].items():
            if live == Path(path).parent or live in Path(path).parents:
                _write(copy / Path(path).relative_to(live), spec)
        subprocess.run(["mount", "--bind", str(copy), str(live)], check=True)
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
