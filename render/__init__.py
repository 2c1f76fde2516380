"""Render: the stack model + key material -> for every host, the files it must have.

Pure: no Pulumi, no I/O beyond reading templates. One module per role (render.smtp_out, ...),
each with `render(stack, host, keys) -> HostTree`; the relay clients and the webmail Docker host
are hosts of the stack too.
"""

from __future__ import annotations

import dataclasses
import importlib

from model import Stack
from render import cloud_init
from render.keys import KeyMaterial
from render.tree import Check, FileSpec, HostTree

# role -> module under render/ with render(stack, host, keys) -> HostTree
ROLES = ("smtp_out", "smtp_in", "maildrop", "frontend")


def render_host(stack: Stack, role: str, host, keys: KeyMaterial) -> HostTree:
    tree = importlib.import_module(f"render.{role}").render(stack, host, keys)
    if role in cloud_init.PACKAGES:
        # The push installs what cloud-init should have (a VM built before a package joined the list).
        tree = dataclasses.replace(tree, packages=tuple(cloud_init.packages(role)))
    return tree


def render_stack(stack: Stack, keys: KeyMaterial) -> dict[str, HostTree]:
    """host name -> HostTree for every host the program pushes to."""
    trees: dict[str, HostTree] = {}
    for role, host in stack.vm_hosts:
        trees[host.name] = render_host(stack, role, host, keys)
    trees[stack.webmail.host] = render_host(stack, "webmail", stack.webmail, keys)
    for client in stack.relay_clients:
        trees[client.name] = render_host(stack, "relay_client", client, keys)
    return trees


__all__ = ["ROLES", "Check", "FileSpec", "HostTree", "KeyMaterial", "render_host", "render_stack"]
