"""python -m render STACK OUTDIR: write what would be pushed, per host, plus the zone files.

STACK is a stack name (Pulumi.<stack>.yaml here) or the path of a stack file elsewhere.

    OUTDIR/hosts/<host>/<path on the host>   every file, as the host gets it
    OUTDIR/hosts/<host>.json                 its checks, reloads, modes and owners
    OUTDIR/dns/<zone>.zone                   BIND zone text

Keys and secrets are throwaway (generated for this render); files that hold them are written 0600.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from model import StackConfigError, load_stack_file
from render import render_stack
from render.dns_records import dkim_public_keys, zone_texts
from render.throwaway import throwaway_keys
from render.tree import HostTree


def write_tree(tree: HostTree, outdir: Path) -> None:
    base = outdir / "hosts" / tree.host
    for path, spec in tree.files.items():
        target = base / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(spec.content)
        # Not world-readable on the host: it holds a secret, so 0600 here.
        target.chmod(spec.mode if spec.mode & 0o004 else 0o600)
    meta = tree.manifest()
    for spec in meta["files"].values():
        del spec["content"]
    (outdir / "hosts" / f"{tree.host}.json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m render", description=__doc__.splitlines()[0])
    parser.add_argument("stack", help="stack name (reads Pulumi.<stack>.yaml) or a stack file's path")
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    try:
        stack = load_stack_file(args.stack)
    except (StackConfigError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 2
    keys = throwaway_keys(stack)
    trees = render_stack(stack, keys)
    for tree in trees.values():
        write_tree(tree, args.outdir)
    for zone, text in zone_texts(stack, dkim_public_keys(keys)).items():
        path = args.outdir / "dns" / f"{zone}.zone"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"rendered {len(trees)} hosts into {args.outdir}/hosts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
