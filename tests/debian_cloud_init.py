"""Debian 12's own cloud-init (22.4.2, unpacked from Debian's package by .ci/install-vm), run by
Debian's python3 as a guest runs it: what its renderers make of the network-config the program writes.

A Debian 12 guest picks the first available renderer of `eni` (ifupdown) and `netplan` (then
systemd-networkd); which one depends on the image's packages, so the program's config must work
under both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

PREFIX = Path("/opt/debian-cloud-init")
SITE_PACKAGES = PREFIX / "usr/lib/python3/dist-packages"
PYTHON = "/usr/bin/python3"

# The same path a guest takes: network_state from the seed's network-config, then each renderer's
# render_network_state into a scratch root (no post-commands: nothing is applied here).
RENDER = """
import json, sys, tempfile, pathlib, yaml
from cloudinit.net import eni, netplan, network_state
from cloudinit import version
state = network_state.parse_net_config_data(yaml.safe_load(sys.stdin.read()))
out = {"version": version.version_string()}
with tempfile.TemporaryDirectory() as root:
    eni.Renderer().render_network_state(state, target=root)
    netplan.Renderer({"postcmds": False}).render_network_state(state, target=root)
    out["eni"] = pathlib.Path(root, "etc/network/interfaces").read_text()
    out["netplan"] = pathlib.Path(root, "etc/netplan/50-cloud-init.yaml").read_text()
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Rendered:
    version: str
    eni: str  # /etc/network/interfaces
    netplan: str  # /etc/netplan/50-cloud-init.yaml


def unavailable() -> str | None:
    """Why Debian's cloud-init cannot run here, or None. In CI a missing piece is a failure."""
    if (SITE_PACKAGES / "cloudinit").is_dir() and shutil.which(PYTHON):
        return None
    reason = f"Debian's cloud-init is not unpacked in {PREFIX} (bash .ci/install-vm)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the cloud-init renderer tests: {reason}")
    return reason


def render(network_config: str) -> Rendered:
    result = subprocess.run(
        [PYTHON, "-c", RENDER],
        input=network_config,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(SITE_PACKAGES)},
        check=False,
    )
    assert result.returncode == 0, f"cloud-init could not render the network-config:\n{result.stderr}"
    return Rendered(**json.loads(result.stdout))


def eni_stanzas(interfaces: str) -> dict[tuple[str, str], list[str]]:
    """(interface, inet|inet6) -> the option lines of its `iface` stanzas, in order."""
    stanzas: dict[tuple[str, str], list[str]] = {}
    current: list[str] | None = None
    for line in interfaces.splitlines():
        words = line.split()
        if words[:1] == ["iface"]:
            current = stanzas.setdefault((words[1], words[2]), [])
        elif not words or words[0] in ("auto", "allow-hotplug") or words[0].startswith("#"):
            current = None
        elif current is not None:
            current.append(" ".join(words))
    return stanzas


# cloud-init's own schema check of a cloud-config (what `cloud-init schema --config-file` runs), strict.
VALIDATE = """
import sys, yaml
from cloudinit.config.schema import SchemaValidationError, get_schema, validate_cloudconfig_schema
try:
    validate_cloudconfig_schema(yaml.safe_load(sys.stdin.read()), get_schema(), strict=True, log_details=False)
except SchemaValidationError as e:
    print(e)
"""


def schema_errors(user_data: str) -> str:
    """Debian's cloud-init's schema errors for a cloud-config, or the empty string."""
    result = subprocess.run(
        [PYTHON, "-c", VALIDATE],
        input=user_data,
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(SITE_PACKAGES)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
