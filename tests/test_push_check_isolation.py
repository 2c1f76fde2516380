"""The push's check runs against this machine's live paths (as on a VM), with the staged files
laid over the directories they land in, in a mount namespace of its own: the checkers see the
staged files next to the live ones, and nothing they stage or write reaches the live directories."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import run_push

from render.tree import Check, FileSpec, HostTree

pytestmark = pytest.mark.checkers


@pytest.fixture
def names():
    """Paths no test of this machine uses: a new directory under /etc, a new file in /etc/postfix."""
    tag = uuid.uuid4().hex[:8]
    paths = (Path(f"/etc/mail-push-test-{tag}"), Path(f"/etc/postfix/mail-push-test-{tag}"))
    assert not any(p.exists() for p in paths)
    yield paths
    assert not any(p.exists() for p in paths), "the check left files in the live /etc"


def _tree(*checks: tuple[str, ...], files: dict[str, FileSpec]) -> HostTree:
    return HostTree("test", "smtp_in", files, tuple(Check(f"check{i}", argv) for i, argv in enumerate(checks)))


def test_check_sees_staged_files_beside_the_live_ones(names):
    new_dir, new_file = names
    tree = _tree(
        # The staged files, in a new directory and beside the package's own files ...
        ("test", "-s", f"{new_dir}/sub/a.conf"),
        ("grep", "-qx", "staged", str(new_file)),
        # ... and the live files and subdirectories of the same directories, as they are.
        ("test", "-f", "/etc/postfix/postfix-files"),
        ("test", "-d", "/etc/postfix/postfix-files.d"),
        ("test", "-f", "/etc/passwd"),
        ("sh", "-c", "ls /etc/ssl/certs | grep -q ."),
        files={f"{new_dir}/sub/a.conf": FileSpec("x\n"), str(new_file): FileSpec("staged\n")},
    )
    result = run_push(tree, "--check-only")
    assert result.returncode == 0, result.stderr


def test_what_a_check_writes_beside_the_staged_files_stays_in_its_namespace(names):
    new_dir, new_file = names
    written = new_file.with_name(new_file.name + ".db")
    tree = _tree(
        ("touch", str(written)),
        ("test", "-f", str(written)),
        files={f"{new_dir}/a.conf": FileSpec("x\n"), str(new_file): FileSpec("staged\n")},
    )
    result = run_push(tree, "--check-only")
    assert result.returncode == 0, result.stderr
    assert not written.exists()


def test_a_failing_check_is_reported_and_leaves_nothing(names):
    _, new_file = names
    tree = _tree(("grep", "-q", "never", str(new_file)), files={str(new_file): FileSpec("staged\n")})
    result = run_push(tree, "--check-only")
    assert result.returncode == 1
    assert "grep -q never" in result.stderr
