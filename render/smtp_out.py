"""smtp-out: the case study's "1. Outbound: smtp-out".

Postfix takes submission (587) only, authenticates against Dovecot (sasl-users), passes mail
through rspamd and OpenDKIM (signing with each domain's active key) and delivers by MX.
"""

from __future__ import annotations

from collections.abc import Callable

from model import Host, Stack
from render import postfix, probes, rspamd, unbound
from render.dovecot import USERS_FILE_GROUP, USERS_FILE_MODE, passwd_file
from render.keys import KeyMaterial
from render.templates import render as template
from render.tree import Check, FileSpec, HostTree, Probe

ROLE = "smtp_out"
SASL_USERS = "/etc/dovecot/sasl-users"
OPENDKIM_DIR = "/etc/opendkim"
KEY_TABLE = f"{OPENDKIM_DIR}/keytable"
SIGNING_TABLE = f"{OPENDKIM_DIR}/signers"
# MAIL FROM address -> the SASL logins that may use it (smtpd_sender_login_maps).
SENDER_LOGINS = "/etc/postfix/sender-logins"

SERVICES = {
    **postfix.SERVICE,
    "dovecot": "systemctl reload dovecot",
    "opendkim": "systemctl reload opendkim",
    **rspamd.SERVICE,
    **unbound.SERVICES,
}
CHECKS = (
    *postfix.CHECKS,
    Check("doveconf", ("doveconf", "-n", "-c", "/etc/dovecot/dovecot.conf")),
    Check("opendkim -n", ("opendkim", "-n", "-x", "/etc/opendkim.conf")),
    *rspamd.CHECKS,
    *unbound.CHECKS,
)


def render(stack: Stack, host: Host, keys: KeyMaterial) -> HostTree:
    files = {
        **postfix_files(stack, host, keys),
        **dovecot_files(keys),
        **opendkim_files(stack, keys),
        **rspamd.local_d(stack),
        **unbound.files(),
    }
    return HostTree(
        host=host.name, role=ROLE, files=files, checks=CHECKS, services=SERVICES, probes=host_probes(stack, host)
    )


def host_probes(stack: Stack, host: Host) -> tuple[Probe, ...]:
    """Submission as the frontends reach it (site-local address, a PROXY header first): the
    greeting, STARTTLS, AUTH offered; then the milters and the resolver on its path."""
    ports = stack.ports
    return (
        probes.smtp(
            f"submission {ports.submission} STARTTLS",
            str(host.ipv6),
            ports.submission,
            helo=stack.fqdn(host),
            tls_name=stack.service_name("smtp-out"),
            auth=True,
            proxy_protocol=True,
        ),
        probes.milter("opendkim answers", probes.LOCALHOST, ports.opendkim),
        *rspamd.host_probes(stack),
        unbound.probe(stack, host),
    )


def postfix_files(stack: Stack, host: Host, keys: KeyMaterial) -> dict[str, FileSpec]:
    values = postfix.base_values(stack, host, "smtp-out")
    values["submission"] = postfix.listener("submission", stack.ports.submission)
    # The case study's order: OpenDKIM, then rspamd.
    values["milters"] = [f"inet:localhost:{stack.ports.opendkim}", f"inet:localhost:{stack.ports.rspamd_milter}"]
    values["sender_logins"] = SENDER_LOGINS
    values["event_limit_exceptions"] = ["$mynetworks", *limit_exceptions(stack)]
    reload = ("postfix",)
    return {
        "/etc/postfix/main.cf": FileSpec(template(ROLE, "/etc/postfix/main.cf", **values), reload=reload),
        "/etc/postfix/master.cf": FileSpec(template(ROLE, "/etc/postfix/master.cf", **values), reload=reload),
        SENDER_LOGINS: sender_logins_file(stack),
        **postfix.aliases_file(stack),
        **postfix.tls_files(stack, keys, reload),
    }


def limit_exceptions(stack: Stack) -> list[str]:
    """Clients the per-client limits (4 connections at once, 10 a minute) would throttle for doing
    their job: the webmail host submits for all its users, a relay client for a whole server."""
    hosts = [stack.webmail.address, *(c.address for c in stack.relay_clients)]
    return [f"[{a}]/128" if a.version == 6 else f"{a}/32" for a in hosts]


def mailboxes_reached(stack: Stack) -> Callable[[str], frozenset[str]]:
    """A function from an alias target to the mailboxes it delivers to: a mailbox name,
    `<mailbox>@<maildrop domain>`, or (through that domain's aliases) an address of a mail domain
    of the stack; none for /dev/null or an address elsewhere. The stack's tables are read once."""
    mailboxes = frozenset(stack.mailbox_names)
    aliases = {d.name: d.aliases for d in stack.domains}
    maildrop = stack.service_name("maildrop")

    def reached(target: str, seen: frozenset[str] = frozenset()) -> frozenset[str]:
        if target in mailboxes:
            return frozenset({target})
        local, _, domain = target.partition("@")
        if domain == maildrop:
            return frozenset({local}) & mailboxes
        table = aliases.get(domain, {})
        if local not in table or target in seen:
            return frozenset()
        return frozenset(m for t in table[local] for m in reached(t, seen | {target}))

    return reached


def sender_logins_file(stack: Stack) -> FileSpec:
    """The same on every smtp-out host, and for a hosting provider's stack thousands of lines:
    rendered once per stack. Postfix notices a rebuilt .db by itself: no reload."""
    return stack.derived(
        "smtp_out sender logins",
        lambda: FileSpec(template(ROLE, SENDER_LOGINS, owners=sender_logins(stack)), postmap=True),
    )


def sender_logins(stack: Stack) -> dict[str, list[str]]:
    """MAIL FROM address -> the SASL logins that may send as it: each mailbox its own addresses,
    i.e. every alias that delivers to it (`team@` to each member); each relay group its mail_from.
    An address no login owns (external ones, /dev/null aliases) is refused to every login, and so is
    every address to a login that owns none (Roundcube's service user: Roundcube submits as the
    user who is logged in, see render.webmail)."""
    reached = mailboxes_reached(stack)
    owners: dict[str, list[str]] = {}
    for domain in stack.domains:
        for local in domain.aliases:
            address = f"{local}@{domain.name}"
            if mailboxes := reached(address):
                owners[address] = sorted(mailboxes)
    for client in stack.relay_clients:
        owners.setdefault(client.mail_from, [])
        if client.group not in owners[client.mail_from]:
            owners[client.mail_from].append(client.group)
    return owners


def dovecot_files(keys: KeyMaterial) -> dict[str, FileSpec]:
    """Dovecot answers SASL for every mailbox and every service user (Roundcube, relay groups)."""
    conf = template(ROLE, "/etc/dovecot/dovecot.conf", users_file=SASL_USERS)
    return {
        "/etc/dovecot/dovecot.conf": FileSpec(conf, reload=("dovecot",)),
        # Dovecot re-reads a passwd-file that changed: no reload.
        SASL_USERS: FileSpec(
            passwd_file(sorted(keys.password_hashes), keys.password_hashes),
            mode=USERS_FILE_MODE,
            group=USERS_FILE_GROUP,
        ),
    }


def dkim_key_path(domain: str, selector: str) -> str:
    return f"{OPENDKIM_DIR}/keys/{domain}/{selector}.private"


def dkim_key_name(domain: str, selector: str) -> str:
    """Unique per key: two domains may share a selector name (lab: `lab`)."""
    return f"{selector}._domainkey.{domain}"


def opendkim_files(stack: Stack, keys: KeyMaterial) -> dict[str, FileSpec]:
    tables, entries = opendkim_tables(stack)
    files = dict(tables)
    reload = ("opendkim",)
    for _, domain, selector, path in entries:
        files[path] = FileSpec(
            keys.dkim_keys[(domain, selector)], mode=0o600, owner="opendkim", group="opendkim", reload=reload
        )
    return files


def opendkim_tables(stack: Stack) -> tuple[dict[str, FileSpec], list[tuple[str, str, str, str]]]:
    """opendkim.conf, its KeyTable and SigningTable (the same on every smtp-out host: once per
    stack), and the KeyTable's entries: (key name, domain, selector, key file)."""
    return stack.derived("smtp_out opendkim tables", lambda: _opendkim_tables(stack))


def _opendkim_tables(stack: Stack) -> tuple[dict[str, FileSpec], list[tuple[str, str, str, str]]]:
    reload = ("opendkim",)
    entries = [
        (dkim_key_name(d.name, k.selector), d.name, k.selector, dkim_key_path(d.name, k.selector))
        for d in stack.domains
        for k in d.dkim
    ]
    # Only the active key signs; a key being rotated in is in the KeyTable and DNS, not here.
    signers = [
        (pattern, dkim_key_name(d.name, k.selector))
        for d in stack.domains
        for k in d.dkim
        if k.active
        for pattern in (f"*@{d.name}", f"*@*.{d.name}")
    ]
    files = {
        "/etc/opendkim.conf": FileSpec(
            template(
                ROLE, "/etc/opendkim.conf", port=stack.ports.opendkim, key_table=KEY_TABLE, signing_table=SIGNING_TABLE
            ),
            reload=reload,
        ),
        KEY_TABLE: FileSpec(template(ROLE, KEY_TABLE, entries=entries), reload=reload),
        SIGNING_TABLE: FileSpec(template(ROLE, SIGNING_TABLE, signers=signers), reload=reload),
    }
    return files, entries
