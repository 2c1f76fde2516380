"""Shared fixtures: the two stacks, their throwaway keys and rendered trees, the daemon checkers."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model import load_stack_file  # noqa: E402
from render import render_stack  # noqa: E402
from render.throwaway import throwaway_keys  # noqa: E402
from render.tree import HostTree  # noqa: E402
from tests.vm_fixtures import operator_key, vm_guest, vm_guests, vm_image, vm_stack  # noqa: E402, F401

PUSH_HOST = ROOT / "render" / "push_host.py"
STACKS = ("prod", "lab")

# Checkers installed with pip (check-jsonschema) live beside the interpreter running the tests,
# the venv's: `.venv/bin/python -m pytest` finds them without the venv on the caller's PATH.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session", params=STACKS)
def stack_name(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def stacks():
    return {name: load_stack_file(name) for name in STACKS}


@pytest.fixture(scope="session")
def keys(stacks):
    return {name: throwaway_keys(stack) for name, stack in stacks.items()}


@pytest.fixture(scope="session")
def trees(stacks, keys) -> dict[str, dict[str, HostTree]]:
    """stack name -> host -> HostTree."""
    return {name: render_stack(stack, keys[name]) for name, stack in stacks.items()}


def role_trees(stack_trees: dict[str, HostTree], role: str) -> list[HostTree]:
    """One stack's trees (host -> tree) of one role, in host order."""
    return [t for t in stack_trees.values() if t.role == role]


def run_push(tree: HostTree, *args: str) -> subprocess.CompletedProcess:
    """The push script itself, as a host runs it, with the manifest on stdin."""
    return subprocess.run(
        [sys.executable, str(PUSH_HOST), *args], input=json.dumps(tree.manifest()), capture_output=True, text=True
    )


def with_content(tree: HostTree, path: str, content: str) -> HostTree:
    """The tree with one file's content replaced (e.g. broken on purpose)."""
    return dataclasses.replace(tree, files={**tree.files, path: dataclasses.replace(tree.files[path], content=content)})


def check_with_content(tree: HostTree, path: str, content: str) -> subprocess.CompletedProcess:
    """The push script's checks of the tree with one file replaced."""
    return run_push(with_content(tree, path, content), "--check-only")


def assert_checks_pass(tree: HostTree) -> None:
    """Every checker of the tree, against its staged files (the push script's own check step)."""
    result = run_push(tree, "--check-only")
    assert result.returncode == 0, f"{tree.host}: {result.stderr}"


# ---- the lab: one running cluster for every lab test of the session -----------------------------

LAB_TOOLS = ("ip", "unshare", "nsenter", "nsd", "postfix", "dovecot", "rspamd", "nginx", "unbound")
LAB_ARTIFACTS = ROOT / "artifacts" / "lab-logs"


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None. In CI a missing piece is a failure, never a skip."""
    import os
    import shutil

    missing = [t for t in LAB_TOOLS if not shutil.which(t)]
    if os.geteuid() == 0 and not missing:
        return None
    reason = f"the lab needs root and the Debian daemons (missing: {missing or 'root'})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the lab tests: {reason}")
    return reason


@pytest.fixture(scope="session")
def lab():
    """The running lab (`python -m lab up`), brought up once unless it already runs whole; taken
    down at the end of the session if this session started it, its logs kept in artifacts/."""
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    from lab import cluster

    quiet = lambda _: None  # noqa: E731
    running = cluster.status()
    # A lab of a few hosts (`up --only`) is not enough: replace it with the whole one.
    started_here = not cluster.whole(running)
    if running.get("hosts") and started_here:
        cluster.down(progress=quiet)
    try:
        status = cluster.up(progress=quiet)
    except Exception:
        cluster.save_logs(LAB_ARTIFACTS)
        cluster.down(progress=quiet)
        raise
    yield status | {"started_here": started_here}
    if started_here and cluster.status().get("hosts"):
        cluster.save_logs(LAB_ARTIFACTS)
        cluster.down(progress=quiet)


def pytest_collection_modifyitems(items):
    # Tests that take the lab down run after every other test that needs it.
    items.sort(key=lambda item: item.get_closest_marker("lab_teardown") is not None)
