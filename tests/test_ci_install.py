"""The CI install blocks service starts while it installs and leaves /usr/sbin/policy-rc.d as it found it.

The part of .ci/install that does it (.ci/policy-rc.d.bash) runs here against a temporary path
(POLICY_RC_D): no package is installed, the machine's own policy-rc.d is not touched.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / ".ci" / "install"
HELPER = ROOT / ".ci" / "policy-rc.d.bash"


def _install_part(policy: Path, exit_status: int = 0) -> subprocess.CompletedProcess:
    """What .ci/install does around its package installs: block, (install), exit with exit_status.
    Prints the blocking policy's exit status while it is in place."""
    script = (
        f'set -euo pipefail; source "{HELPER}"; block_service_starts; '
        f'"$POLICY_RC_D" || echo "blocked $?"; exit {exit_status}'
    )
    env = {**os.environ, "POLICY_RC_D": str(policy)}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)


def test_install_blocks_service_starts_before_it_installs_anything():
    lines = INSTALL.read_text().splitlines()
    block = lines.index("block_service_starts")
    assert lines[block - 1] == "source .ci/policy-rc.d.bash"
    commands = [line for line in lines[:block] if not line.lstrip().startswith("#")]
    assert not any(word in line for line in commands for word in ("apt-get ", "pip ", "install-"))
    assert not any("policy-rc.d" in line and ">" in line for line in lines), "writes policy-rc.d itself"


@pytest.mark.parametrize("exit_status", [0, 3])
def test_no_policy_before_means_none_after(tmp_path, exit_status):
    policy = tmp_path / "policy-rc.d"
    result = _install_part(policy, exit_status)
    assert result.returncode == exit_status, result.stderr
    assert "blocked 101" in result.stdout
    assert not policy.exists()


@pytest.mark.parametrize("exit_status", [0, 3])
def test_the_machines_own_policy_comes_back_unchanged(tmp_path, exit_status):
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\n# the operator's own\nexit 0\n")
    policy.chmod(0o700)
    result = _install_part(policy, exit_status)
    assert result.returncode == exit_status, result.stderr
    assert "blocked 101" in result.stdout
    assert policy.read_text() == "#!/bin/sh\n# the operator's own\nexit 0\n"
    assert policy.stat().st_mode & 0o777 == 0o700


def test_a_policy_that_is_a_link_stays_a_link_to_the_same_file(tmp_path):
    target = tmp_path / "shared-policy"
    target.write_text("#!/bin/sh\nexit 0\n")
    policy = tmp_path / "policy-rc.d"
    policy.symlink_to(target)
    result = _install_part(policy)
    assert result.returncode == 0, result.stderr
    assert policy.is_symlink() and policy.resolve() == target
    assert target.read_text() == "#!/bin/sh\nexit 0\n"
