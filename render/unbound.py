"""The host's own resolver (smtp-out, smtp-in): templates/shared/unbound/ (variables at their top)."""

from __future__ import annotations

from render.templates import render
from render.tree import Check, FileSpec

SERVICES = {
    "unbound": "systemctl reload unbound",
    # Postfix's chrooted clients read the chroot's copy of resolv.conf, which Debian's postfix unit
    # refreshes only when the instance starts.
    "postfix-chroot": "systemctl restart postfix",
}
CHECKS = (Check("unbound-checkconf", ("unbound-checkconf", "/etc/unbound/unbound.conf")),)


def files() -> dict[str, FileSpec]:
    """unbound listening on loopback for this host only, and resolv.conf pointing at it."""
    return {
        "/etc/unbound/unbound.conf": FileSpec(render("shared", "/unbound/unbound.conf"), reload=("unbound",)),
        "/etc/resolv.conf": FileSpec(render("shared", "/unbound/resolv.conf"), reload=("postfix-chroot",)),
    }
