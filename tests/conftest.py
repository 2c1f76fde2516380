"""Shared fixtures: the two stacks, their throwaway keys and rendered trees, the daemon checkers."""

from __future__ import annotations

import json
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

PUSH_HOST = ROOT / "render" / "push_host.py"
STACKS = ("prod", "lab")


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


def run_push(tree: HostTree, *args: str) -> subprocess.CompletedProcess:
    """The push script itself, as a host runs it, with the manifest on stdin."""
    return subprocess.run(
        [sys.executable, str(PUSH_HOST), *args], input=json.dumps(tree.manifest()), capture_output=True, text=True
    )


def assert_checks_pass(tree: HostTree) -> None:
    """Every checker of the tree, against its staged files (the push script's own check step)."""
    result = run_push(tree, "--check-only")
    assert result.returncode == 0, f"{tree.host}: {result.stderr}"
