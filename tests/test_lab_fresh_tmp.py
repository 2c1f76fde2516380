"""A lab host's /tmp is a fresh tmpfs, except for the venv the lab runs from when that lies under
/tmp (a checkout there): the push finds pip-installed checkers (check-jsonschema) in it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lab import host_root

pytestmark = pytest.mark.lab


def _in_fresh_tmp(kept: list[str], check: str) -> subprocess.CompletedProcess:
    """`check` in a mount namespace of its own, after host_root.fresh_tmp's lines."""
    with tempfile.TemporaryDirectory(dir="/run") as aside:
        script = "\n".join(["set -e", *host_root.fresh_tmp(Path(aside), kept), check])
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True
        )


def test_a_venv_under_tmp_stays_visible_and_nothing_else_does(tmp_path, monkeypatch):
    assert tmp_path.is_relative_to("/tmp"), "pytest's tmp_path is expected under /tmp"
    venv = tmp_path / "clone" / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "check-jsonschema").write_text("#!/bin/sh\n")
    (tmp_path / "clone" / "other").write_text("not for the host\n")
    monkeypatch.setattr(sys, "prefix", str(venv))
    kept = host_root._kept_in_tmp()
    assert kept == [str(venv)]
    seen = _in_fresh_tmp(kept, f"test -f {venv}/bin/check-jsonschema && ! test -e {tmp_path}/clone/other")
    assert seen.returncode == 0, seen.stderr
    # Without it, the host sees none of it.
    hidden = _in_fresh_tmp([], f"! test -e {venv}/bin/check-jsonschema")
    assert hidden.returncode == 0, hidden.stderr


def test_a_linked_venv_is_bound_at_both_paths(tmp_path, monkeypatch):
    real = tmp_path / "checkout" / ".venv"
    (real / "bin").mkdir(parents=True)
    (real / "bin" / "check-jsonschema").write_text(f"#!{real}/bin/python\n")
    link = tmp_path / "clone" / ".venv"
    link.parent.mkdir()
    link.symlink_to(real)
    monkeypatch.setattr(sys, "prefix", str(link))
    kept = host_root._kept_in_tmp()
    assert kept == [str(link), str(real)]
    seen = _in_fresh_tmp(kept, f"test -f {link}/bin/check-jsonschema && test -f {real}/bin/check-jsonschema")
    assert seen.returncode == 0, seen.stderr


def test_a_venv_elsewhere_is_not_bound(monkeypatch):
    monkeypatch.setattr(sys, "prefix", "/opt/mail-cluster/.venv")
    assert host_root._kept_in_tmp() == []
