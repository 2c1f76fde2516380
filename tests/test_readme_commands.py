"""Every lab command README.md and lab/README.md print runs as printed, from a fresh clone.

The commands are parsed from the fenced blocks of both files (so the docs cannot drift from what
works) and run in their order, as root, from a `git clone` of this commit with the venv linked in
(not installed again), and without the venv on PATH: as a newcomer who followed the quick start
runs them. The lab they bring up is this test's own (MAIL_LAB_ID of the session + "doc"), taken
down at the end whatever happens. A few minutes: three whole `lab up`s and one of a subset.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, lab_unavailable

pytestmark = pytest.mark.lab

READMES = ("README.md", "lab/README.md")
LAB = re.compile(r"^(MAIL_LAB_ID=(\w+) )?\.venv/bin/python -m lab\b")
# A command's own bound: `up` on a loaded 2-core machine takes a minute or two.
COMMAND_TIMEOUT = 420


def lab_commands(readme: Path) -> list[str]:
    """The lab command lines of the fenced blocks of `readme`, in order, comments left out."""
    commands, fenced = [], False
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and LAB.match(line):
            commands.append(shlex.join(shlex.split(line, comments=True)))
    return commands


def test_the_readmes_print_lab_commands():
    for name in READMES:
        commands = lab_commands(ROOT / name)
        assert any(c.endswith("-m lab up") for c in commands), name
        assert all("python3" not in c and "sudo" not in c for c in commands), name


def _run(line: str, clone: Path, doc_id: str) -> subprocess.CompletedProcess:
    """`line` as a shell would run it in the clone, its MAIL_LAB_ID (if it sets one) made this
    test's own: `MAIL_LAB_ID=2` becomes `<doc_id>2`."""
    argv = shlex.split(line)
    lab_id = doc_id
    if argv[0].startswith("MAIL_LAB_ID="):
        lab_id = doc_id + argv.pop(0).split("=", 1)[1]
    venv_bin = str(ROOT / ".venv" / "bin")
    path = [
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != Path(venv_bin).resolve()
    ]
    env = {**os.environ, "MAIL_LAB_ID": lab_id, "PATH": os.pathsep.join(path)}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)


def test_every_lab_command_of_the_readmes_works_from_a_fresh_clone():
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    doc_id = os.environ.get("MAIL_LAB_ID", "") + "doc"
    # Not under /tmp: every lab host gets a fresh /tmp, where the venv (found through the clone) would be hidden.
    (ROOT / "artifacts").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="readme-clone-", dir=ROOT / "artifacts"))
    clone = workdir / "mail-cluster"
    ids = {doc_id}
    try:
        # A CI container's root does not own the checkout: git would refuse it as "dubious".
        git = ["git", "-c", "safe.directory=*"]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        subprocess.run([*git, "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
        subprocess.run([*git, "checkout", "-q", commit.stdout.strip()], cwd=clone, check=True)
        (clone / ".venv").symlink_to((ROOT / ".venv").resolve())
        for name in READMES:
            for line in lab_commands(clone / name):
                if line.startswith("MAIL_LAB_ID="):
                    ids.add(doc_id + line.split()[0].split("=", 1)[1])
                result = _run(line, clone, doc_id)
                assert result.returncode == 0, f"{name}: `{line}` exited {result.returncode}:\n{result.stderr[-3000:]}"
    finally:
        for lab_id in sorted(ids):
            _run(".venv/bin/python -m lab down", clone if clone.exists() else ROOT, lab_id)
        shutil.rmtree(workdir, ignore_errors=True)
