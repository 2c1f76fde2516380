"""The order in which a change rolls through a role's hosts, one host at a time.

Backups first, the primary last: a change that breaks a host shows on a host that carries no
traffic (or a share of it) and stops there, before the host every client reaches first. Roles
without a primary (smtp-in: three equal MXs) roll in the stack's order. The Pulumi program makes
each push depend on the one before it (components.vm.VmRole), and `python -m lab apply` pushes in
the same order.
"""

from __future__ import annotations

from model import Host, Stack


def order(stack: Stack, role: str) -> list[Host]:
    hosts = list(getattr(stack.hosts, role))
    return [h for h in hosts if not h.primary] + [h for h in hosts if h.primary]
