"""The host's own resolver (smtp-out, smtp-in): templates/shared/unbound/ (variables at their top)."""

from __future__ import annotations

from model import Host, Stack
from render import probes
from render.templates import render
from render.tree import Check, FileSpec, Probe

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


def probe(stack: Stack, host: Host) -> Probe:
    """unbound answers a recursive query for the host's own name (the DNSBL and MX lookups of the
    host's Postfix and rspamd go the same way)."""
    return probes.dns("unbound answers", "127.0.0.1", stack.fqdn(host))
