"""The push: a host's rendered tree, installed by render/push_host.py over SSH.

One remote Command per host. Its trigger is the tree's digest, so a push re-runs only when that
host's files change: a one-alias change previews as a change to the smtp-in pushes alone.
The manifest (with its keys and secrets) travels on the command's stdin, a secret input, never on a
command line; the command itself carries only the push script, readable in a preview's diff.
stdin is the manifest gzipped and base64-encoded: a quarter of the size in the state and on the wire.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command.remote as remote

from model import Stack
from render import render_host
from render.keys import KeyMaterial
from render.tree import HostTree

PUSH_HOST = Path(__file__).resolve().parent.parent / "render" / "push_host.py"
_END = "PUSH_HOST_PY"
DIAL_ATTEMPTS = 40


# A new VM answers SSH before cloud-init has installed its packages: the checks need the daemons.
WAIT_FOR_CLOUD_INIT = "if command -v cloud-init >/dev/null; then cloud-init status --wait >/dev/null || true; fi"


@cache
def push_command() -> str:
    """Shell for the host: write the push script to a temp file, run it on the manifest (stdin, packed)."""
    script = PUSH_HOST.read_text().rstrip("\n")
    if _END in script.splitlines():
        raise ValueError(f"push_host.py contains the heredoc delimiter {_END}")
    return "\n".join(
        [
            WAIT_FOR_CLOUD_INIT,
            f"f=$(mktemp) && trap 'rm -f \"$f\"' EXIT && cat > \"$f\" <<'{_END}'",
            script,
            _END,
            'base64 -d | gzip -dc | python3 "$f"',
            "",
        ]
    )


def payload(tree: HostTree) -> tuple[str, str]:
    """(stdin: the manifest JSON packed, its digest): the digest is HostTree.digest(), hashed once."""
    text = json.dumps(tree.manifest(), sort_keys=True).encode()
    # mtime=0: the same manifest packs to the same bytes, so an unchanged push stays unchanged.
    # Level 1: rendered configs repeat a lot; higher levels gain a few percent at many times the time.
    packed = base64.b64encode(gzip.compress(text, compresslevel=1, mtime=0)).decode()
    return packed, hashlib.sha256(text).hexdigest()


def unpack(stdin: str) -> dict:
    """The manifest a push's stdin carries (what the host's `base64 -d | gzip -dc` hands push_host.py)."""
    return json.loads(gzip.decompress(base64.b64decode(stdin)))


@dataclass(frozen=True)
class Pushes:
    """What every push of a stack shares: the model, the key material, the operator's SSH key."""

    stack: Stack
    material: pulumi.Output[KeyMaterial]
    # From the secret `mail-cluster:ssh_private_key`; None: the SSH agent's keys.
    ssh_private_key: pulumi.Output[str] | None = None

    def tree(self, role: str, host: Any) -> pulumi.Output[HostTree]:
        return self.material.apply(lambda keys: render_host(self.stack, role, host, keys))

    def payload(self, role: str, host: Any) -> pulumi.Output[tuple[str, str]]:
        """The host's tree, rendered once and packed once: (stdin, digest)."""
        return self.material.apply(lambda keys: payload(render_host(self.stack, role, host, keys)))

    def push(
        self,
        name: str,
        role: str,
        host: Any,
        address: str,
        parent: pulumi.Resource,
        depends_on: list[pulumi.Resource] | None = None,
        rebuilt: pulumi.Input[str] | None = None,
    ) -> remote.Command:
        """The Command that installs `host`'s tree at `address` (after `depends_on`, e.g. its VM).
        `rebuilt`: the VM's domain id, so that a rebuilt VM (a new id) is pushed again."""
        data = self.payload(role, host)
        return remote.Command(
            f"{name}-push",
            connection=remote.ConnectionArgs(
                host=address,
                user="root",
                private_key=self.ssh_private_key,
                # A VM created in the same run boots first: keep dialling for a few minutes.
                dial_error_limit=DIAL_ATTEMPTS,
            ),
            # No `update`: a change of the script itself runs create again (the push is idempotent).
            create=push_command(),
            stdin=pulumi.Output.secret(data[0]),
            # A hash of files full of random secrets reveals none of them; kept plain so that a
            # preview shows which pushes change.
            triggers=[pulumi.Output.unsecret(data[1]), *([rebuilt] if rebuilt is not None else [])],
            # stdout lists changed paths and reloaded services; stderr may quote a file (a
            # checker's message): it stays out of the logs, and secret in the state.
            logging=remote.Logging.STDOUT,
            opts=pulumi.ResourceOptions(
                parent=parent, depends_on=depends_on or [], additional_secret_outputs=["stderr"]
            ),
        )
