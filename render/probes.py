"""Probes: what a host must still do after its reload, as plain data for render/push_host.py.

Each role's module lists its own (render.smtp_in.probes, ...); rspamd and unbound, shared by
roles, keep theirs beside their checks. A probe exercises what the role exists for, not only a
listening port: smtp-in accepts a RCPT for a served address (restrictions, milters, alias maps and
DNS answer on the way), a maildrop's Postfix reaches Dovecot over the LMTP transport it is
configured with, and so on. Every probe is bounded in time (push_host.PROBE_WITHIN).
"""

from __future__ import annotations

from model import Stack
from render.tree import Probe

LOCALHOST = "::1"


def smtp(
    name: str,
    address: str,
    port: int,
    *,
    helo: str,
    tls_name: str | None = None,
    auth: bool = False,
    rcpt: tuple[str, ...] = (),
    proxy_protocol: bool = False,
) -> Probe:
    """EHLO, STARTTLS when tls_name (certificate checked against it), AUTH offered when auth,
    MAIL FROM:<> and RCPT TO each of rcpt accepted; then RSET and QUIT: nothing is sent.
    proxy_protocol: the listener takes its clients from the frontends, each connection opened by a
    PROXY header; the probe sends one naming itself."""
    args = {"address": address, "port": port, "helo": helo, "auth": auth, "rcpt": rcpt, "mail_from": ""}
    return Probe(name, "smtp", args | _optional(tls_name=tls_name, proxy_protocol=proxy_protocol))


def banner(
    name: str, address: str, port: int, expect: str, tls_name: str | None = None, proxy_protocol: bool = False
) -> Probe:
    """The first line the server sends (after a TLS handshake with tls_name) starts with expect."""
    args = {"address": address, "port": port, "expect": expect}
    return Probe(name, "banner", args | _optional(tls_name=tls_name, proxy_protocol=proxy_protocol))


def _optional(**args) -> dict:
    return {k: v for k, v in args.items() if v}


def tcp(name: str, address: str, port: int) -> Probe:
    return Probe(name, "tcp", {"address": address, "port": port})


def milter(name: str, address: str, port: int) -> Probe:
    """The milter negotiates options as Postfix asks it to at every SMTP session."""
    return Probe(name, "milter", {"address": address, "port": port})


def lmtp(name: str, postconf_parameter: str, helo: str) -> Probe:
    """LHLO where Postfix's `postconf_parameter` (an lmtp: transport) points: asked of Postfix on
    the host, so a transport that points at nothing fails."""
    return Probe(name, "lmtp", {"postconf": postconf_parameter, "helo": helo})


def http(
    name: str,
    address: str,
    port: int,
    path: str,
    *,
    tls_name: str | None = None,
    status_below: int = 400,
    body: str | None = None,
) -> Probe:
    args = {"address": address, "port": port, "path": path, "status_below": status_below}
    return Probe(name, "http", args | ({"tls_name": tls_name} if tls_name else {}) | ({"body": body} if body else {}))


def dns(name: str, server: str, query: str) -> Probe:
    """An A query to `server`; NOERROR or NXDOMAIN is an answer, SERVFAIL or silence is not."""
    return Probe(name, "dns", {"server": server, "query": query})


def served_address(stack: Stack) -> str:
    """An address the stack serves that reaches a mailbox: the first alias whose targets name one."""
    for domain in stack.domains:
        for local, targets in domain.aliases.items():
            if set(targets) & set(stack.mailbox_names):
                return f"{local}@{domain.name}"
    return f"postmaster@{stack.domains[0].name}"
