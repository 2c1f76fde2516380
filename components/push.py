"""The push: a host's rendered tree, installed by render/push_host.py over SSH.

One remote Command per host. Its trigger is the tree's digest, so a push re-runs only when that
host's files change: a one-alias change previews as a change to the smtp-in pushes alone.
The manifest (with its keys and secrets) travels on the command's stdin, a secret input, never on a
command line; the command itself carries only the push script, readable in a preview's diff.
stdin is the manifest gzipped and base64-encoded: a quarter of the size in the state and on the wire.

Every connection pins its host's SSH key (`host_key`): a VM's is the key the program generated for
it and cloud-init installed, another host's is the one its stack entry names. pulumi-command 1.2.1
accepts any key when `host_key` is unset (provider/pkg/provider/remote/connection.go:95-97); with it
set, a host presenting another key fails the SSH handshake (ssh.FixedHostKey, connection.go:93),
before a session, and so before any byte of stdin, exists (commandOutputs.go:31-34, 73-75).
With a bastion in the stack every connection goes through it (`proxy`, connection.go:204-242):
the bastion's own key is pinned the same way, and the host's key is still checked end to end.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command.remote as remote

from model import Stack
from model.host_key import fingerprint
from render import render_host
from render.keys import KeyMaterial
from render.tree import HostTree

PUSH_HOST = Path(__file__).resolve().parent.parent / "render" / "push_host.py"
_END = "PUSH_HOST_PY"
DIAL_ATTEMPTS = 40


@cache
def push_command() -> str:
    """Shell for the host: write the push script to a temp file, run it on the manifest (stdin, packed).
    The script itself waits for cloud-init (failing on its errors) and installs missing packages."""
    script = PUSH_HOST.read_text().rstrip("\n")
    if _END in script.splitlines():
        raise ValueError(f"push_host.py contains the heredoc delimiter {_END}")
    return "\n".join(
        [
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
    # host name -> the key its push pins, filled by push().
    pinned: dict[str, pulumi.Output[str]] = field(default_factory=dict)

    def tree(self, role: str, host: Any) -> pulumi.Output[HostTree]:
        return self.material.apply(lambda keys: render_host(self.stack, role, host, keys))

    def host_key(self, role: str, host: Any) -> pulumi.Output[str]:
        """The `<type> <base64>` key the push to `host` pins: generated for a VM, from the stack otherwise."""
        if role in self.stack.hosts.by_role():
            # Public, though it comes out of the (secret) key material: plain, so a preview shows it.
            return pulumi.Output.unsecret(
                self.material.apply(lambda keys: keys.ssh_host_keys[host.name].public_openssh)
            )
        return pulumi.Output.from_input(host.host_key)

    def host_keys(self) -> pulumi.Output[dict[str, dict[str, str]]]:
        """host -> its pinned key and fingerprint, for every push made so far (a plain stack output)."""
        return pulumi.Output.all(**self.pinned).apply(
            lambda keys: {host: host_key_summary(key) for host, key in sorted(keys.items())}
        )

    def proxy(self) -> remote.ProxyConnectionArgs | None:
        """The stack's bastion as pulumi-command's proxy, or None."""
        bastion = self.stack.bastion
        if bastion is None:
            return None
        return remote.ProxyConnectionArgs(
            host=str(bastion.host),
            user=bastion.user,
            port=bastion.port,
            host_key=bastion.host_key,
            private_key=self.ssh_private_key,
        )

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
        self.pinned[name] = self.host_key(role, host)
        return remote.Command(
            f"{name}-push",
            connection=remote.ConnectionArgs(
                host=address,
                user="root",
                # A new pin or bastion changes the connection: an update, which re-runs `create`
                # (no `update` here; commandController.go:62-80 at v1.2.1): one harmless re-push.
                host_key=self.pinned[name],
                proxy=self.proxy(),
                private_key=self.ssh_private_key,
                # A VM created in the same run boots first: keep dialling for a few minutes. The
                # provider retries every dial error alike (connection.go:150-174), a wrong host key
                # too: a host presenting another key fails the push after these attempts, not at once.
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


def host_key_summary(public_openssh: str) -> dict[str, str]:
    """A pinned key as the `ssh_host_keys` stack output lists it (compare with ssh's messages)."""
    return {"public_key": public_openssh, "fingerprint": fingerprint(public_openssh)}
