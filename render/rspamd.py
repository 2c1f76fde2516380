"""rspamd pieces shared by smtp-out and smtp-in: templates/shared/rspamd/local.d/ (variables at their top).

Debian's /etc/rspamd/rspamd.conf reads local.d/<file> over its defaults; only what differs is written.
"""

from __future__ import annotations

from collections.abc import Iterable

from model import Stack
from render.templates import render
from render.tree import Check, FileSpec

LOCAL_D = "/etc/rspamd/local.d"
SERVICE = {"rspamd": "systemctl reload rspamd"}
CHECKS = (Check("rspamadm configtest", ("rspamadm", "configtest")),)
LOOPBACK = ("127.0.0.1", "::1")
# rspamd's own defaults, written out so the thresholds are visible where they act (score: action).
ACTIONS = (("greylist", 4), ("add_header", 6), ("reject", 15))
# Modules switched off on every host (reasons in their templates).
DISABLED = ("fuzzy_check", "url_redirector", "external_services", "dkim_signing", "arc")


def local_d(
    stack: Stack,
    *,
    controller_addresses: Iterable[str] = LOOPBACK,
    secure_ips: Iterable[str] = LOOPBACK,
) -> dict[str, FileSpec]:
    """/etc/rspamd/local.d/*: the milter on localhost, redis, the local resolver, the actions."""
    reload = ("rspamd",)
    port = stack.ports.rspamd_controller
    values = {
        "milter_port": stack.ports.rspamd_milter,
        "controller_sockets": [f"{_bracket(a)}:{port}" for a in controller_addresses],
        "secure_ips": list(secure_ips),
        "nameservers": [f"{_bracket(a)}:53" for a in LOOPBACK],
        "actions": list(ACTIONS),
    }
    names = ["worker-proxy.inc", "worker-controller.inc", "redis.conf", "options.inc", "actions.conf"]
    names += [f"{m}.conf" for m in DISABLED]
    return {
        f"{LOCAL_D}/{name}": FileSpec(render("shared", f"/rspamd/local.d/{name}", **values), reload=reload)
        for name in names
    }


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address
