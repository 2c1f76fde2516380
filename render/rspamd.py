"""rspamd pieces shared by smtp-out and smtp-in: templates/shared/rspamd/local.d/ (variables at their top).

Debian's /etc/rspamd/rspamd.conf reads local.d/<file> over its defaults; only what differs is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from model import Stack
from render import probes
from render.templates import render
from render.tree import Check, FileSpec, Probe

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
    controller_password: str = "",
) -> dict[str, FileSpec]:
    """/etc/rspamd/local.d/*: the milter on localhost, redis, the local resolver, the actions.
    With a controller_password, others than secure_ips may use the controller (e.g. to learn)."""
    reload = ("rspamd",)
    port = stack.ports.rspamd_controller
    values = {
        "milter_port": stack.ports.rspamd_milter,
        "controller_sockets": [f"{_bracket(a)}:{port}" for a in controller_addresses],
        "secure_ips": list(secure_ips),
        "password": controller_password,
        "nameservers": [f"{_bracket(a)}:53" for a in LOOPBACK],
        "actions": list(ACTIONS),
        # Mail from the cluster itself (smtp-out and smtp-in leave through these) is not greylisted:
        # a relay client's cron mail to a local alias would otherwise wait minutes.
        "local_addrs": ["127.0.0.0/8", "::1", *(str(p) for p in stack.egress_prefixes)],
    }
    names = ["worker-proxy.inc", "worker-controller.inc", "redis.conf", "options.inc", "actions.conf"]
    names += [f"{m}.conf" for m in DISABLED]
    files = {
        f"{LOCAL_D}/{name}": FileSpec(render("shared", f"/rspamd/local.d/{name}", **values), reload=reload)
        for name in names
    }
    if controller_password:
        # rspamd runs as _rspamd (Debian's unit) and must read the password; nobody else may.
        controller = f"{LOCAL_D}/worker-controller.inc"
        files[controller] = replace(files[controller], mode=0o640, group="_rspamd")
    return files


def host_probes(stack: Stack) -> tuple[Probe, ...]:
    """rspamd's controller answers (its main process and workers run on the reloaded config), and
    its proxy speaks milter where Postfix's smtpd_milters points."""
    return (
        probes.http("rspamd answers", "127.0.0.1", stack.ports.rspamd_controller, "/ping", body="pong"),
        probes.milter("rspamd milter answers", probes.LOCALHOST, stack.ports.rspamd_milter),
    )


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address
