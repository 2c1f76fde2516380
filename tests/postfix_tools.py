"""Reading a rendered tree the way Postfix reads it: staged in a directory, tables postmap'ed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from render.tree import HostTree


def stage(tree: HostTree, root: Path) -> Path:
    """The tree's files under root, its Postfix tables built by postmap as the push builds them."""
    for path, spec in tree.files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(spec.content)
        target.chmod(spec.mode)
    for path, spec in tree.files.items():
        if spec.postmap:
            subprocess.run(["postmap", "-c", root / "etc/postfix", root / path.lstrip("/")], check=True)
    return root


def postconf(root: Path, *args: str) -> str:
    result = subprocess.run(["postconf", "-c", root / "etc/postfix", *args], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return result.stdout.strip()


def settings(root: Path, *names: str) -> dict[str, str]:
    """name -> value as Postfix reads it (`postconf -c DIR name...`)."""
    lines = postconf(root, *names).splitlines()
    return dict(line.split(" = ", 1) if " = " in line else (line.removesuffix(" ="), "") for line in lines)
