"""Postfix pieces shared by the roles that run it: smtp-out, smtp-in and maildrop.

Templates: templates/shared/postfix/ (main.cf.base.j2, main.cf.smtpd.j2, main.cf.smtp.j2,
main.cf.aliases.j2, master.cf.base.j2, aliases.j2; their variables are documented at their top).
A role's main.cf includes the pieces it needs and adds its own settings after them:

    values = postfix.base_values(stack, host, "smtp-in")
    render("smtp_in", "/etc/postfix/main.cf", **values, dnsbls=...)
"""

from __future__ import annotations

from typing import Any

from model import Host, Stack
from render import tls
from render.keys import KeyMaterial
from render.names import tls_cert_path, tls_key_path
from render.templates import render
from render.tree import Check, FileSpec

# The case study's value on every Postfix: no delivery in clear text (see main.cf.smtp.j2).
SMTP_TLS_SECURITY_LEVEL = "encrypt"
# mynetworks is only localhost (case study): everybody else authenticates or is an MX client.
LOCALHOST_NETWORKS = ("127.0.0.0/8", "[::1]/128")

SERVICE = {"postfix": "systemctl reload postfix"}
# Postfix's own checker: file ownership, main.cf/master.cf syntax; the push treats "warning:" as failure.
CHECKS = (Check("postfix check", ("postfix", "check")),)


def base_values(
    stack: Stack,
    host: Host,
    service: str,
    *,
    mynetworks: tuple[str, ...] = LOCALHOST_NETWORKS,
    chroot: str = "y",
) -> dict[str, Any]:
    """Every variable the shared postfix templates expect, for `host` serving `service` (e.g. "smtp-in")."""
    myhostname = stack.service_name(service)
    return {
        "myhostname": myhostname,
        "myorigin": myhostname,
        "host_fqdn": stack.fqdn(host),
        # The Debian installer's list for an Internet Site (case study: `$myhostname, <fqdn>,
        # localhost.<domain>, localhost`): the host's own names, so its cron mail stays local.
        "mydestination": [stack.fqdn(host), f"localhost.{host.site}.{stack.infra_domain}", "localhost"],
        "mynetworks": list(mynetworks),
        "tls_cert_file": tls_cert_path(stack),
        "tls_key_file": tls_key_path(stack),
        "smtp_tls_security_level": SMTP_TLS_SECURITY_LEVEL,
        **tls.postfix_values(),
        "event_limit_exceptions": ["$mynetworks"],
        "chroot": chroot,
    }


def root_address(stack: Stack) -> str:
    """Where the hosts' own mail (cron, bounces to postmaster) goes: a reader of the first domain."""
    return stack.dns.report_address or f"postmaster@{stack.domains[0].name}"


def tls_files(stack: Stack, keys: KeyMaterial, reload: tuple[str, ...]) -> dict[str, FileSpec]:
    """The certificate chain and its key. Postfix and Dovecot read the key as root before they drop
    privileges, so root-only is enough."""
    return {
        tls_cert_path(stack): FileSpec(keys.tls_cert, mode=0o644, reload=reload),
        tls_key_path(stack): FileSpec(keys.tls_key, mode=0o600, reload=reload),
    }


def aliases_file(stack: Stack) -> dict[str, FileSpec]:
    """/etc/postfix/aliases, built with postmap by the push; local(8) notices a new .db by itself."""
    content = render("shared", "/postfix/aliases", root_address=root_address(stack))
    return {"/etc/postfix/aliases": FileSpec(content, postmap=True)}


# master.cf names the listeners by service name; another port is written as a number.
WELL_KNOWN_PORTS = {"smtp": 25, "submission": 587, "smtps": 465}


def listener(service: str, port: int) -> str:
    """The master.cf service field for `service` on `port`: `submission`, or `2587` if moved."""
    return service if WELL_KNOWN_PORTS[service] == port else str(port)
