"""smtp-in: the case study's "2. Inbound: smtp-in".

Postfix on 25 and 465 for the stack's mail domains only: DNSBLs, the rspamd milter (greylist,
reject, tag), virtual aliases to the maildrops (by their MX) or onward, with PostSRSd rewriting
forwarded envelopes.
"""

from __future__ import annotations

from model import Host, Stack
from model.stack import DEVNULL
from render import postfix, probes, rspamd, unbound
from render.keys import KeyMaterial
from render.maildrop import rspamd_controller_password
from render.templates import render as template
from render.tree import Check, FileSpec, HostTree, Probe

ROLE = "smtp_in"
# What a /dev/null alias points at: virtual_alias_maps can only name addresses, so this one is
# handed to the discard transport (transport_maps). `.invalid` never resolves: should the
# transport table ever be missing, the mail bounces instead of leaving the host.
DISCARD_ADDRESS = "devnull@discard.invalid"
SRS_SECRET = "/etc/postsrsd.secret"
TABLES = ("/etc/postfix/virtual-domains", "/etc/postfix/virtual", "/etc/postfix/transport")

SERVICES = {
    **postfix.SERVICE,
    # PostSRSd has no reload: it reads its settings and secret at start.
    "postsrsd": "systemctl restart postsrsd",
    **rspamd.SERVICE,
    **unbound.SERVICES,
}
CHECKS = (
    *postfix.CHECKS,
    # Debian's launcher sources the file with sh.
    Check("postsrsd settings", ("sh", "-n", "/etc/default/postsrsd")),
    *rspamd.CHECKS,
    *unbound.CHECKS,
)


def render(stack: Stack, host: Host, keys: KeyMaterial) -> HostTree:
    files = {
        **postfix_files(stack, host, keys),
        **postsrsd_files(stack, keys),
        **rspamd_files(stack, host, keys),
        **unbound.files(),
    }
    return HostTree(
        host=host.name, role=ROLE, files=files, checks=CHECKS, services=SERVICES, probes=host_probes(stack, host)
    )


def host_probes(stack: Stack, host: Host) -> tuple[Probe, ...]:
    """The MX as the internet meets it, on the host's public address (not in mynetworks, so every
    restriction applies): a RCPT for a served address accepted on 25 after STARTTLS, the TLS
    greeting on 465; then the daemons on its path."""
    address = str(host.public_ipv4 or host.public_ipv6 or host.ipv6)
    name, helo, ports = stack.service_name("smtp-in"), stack.fqdn(host), stack.ports
    rcpt = probes.served_address(stack)
    return (
        probes.smtp(f"smtp {ports.smtp} RCPT TO {rcpt}", address, ports.smtp, helo=helo, tls_name=name, rcpt=(rcpt,)),
        probes.banner(f"smtps {ports.smtps} greeting", address, ports.smtps, "220 ", tls_name=name),
        *rspamd.host_probes(stack),
        probes.tcp("postsrsd answers", "127.0.0.1", ports.srs_forward),
        unbound.probe(stack, host),
    )


def postfix_files(stack: Stack, host: Host, keys: KeyMaterial) -> dict[str, FileSpec]:
    values = postfix.base_values(stack, host, "smtp-in")
    values.update(
        smtp=postfix.listener("smtp", stack.ports.smtp),
        smtps=postfix.listener("smtps", stack.ports.smtps),
        dnsbls=stack.dnsbls,
        rspamd_milter_port=stack.ports.rspamd_milter,
        srs_forward_port=stack.ports.srs_forward,
        srs_reverse_port=stack.ports.srs_reverse,
        maildrop_name=stack.service_name("maildrop"),
        discard_address=DISCARD_ADDRESS,
    )
    reload = ("postfix",)
    return {
        "/etc/postfix/main.cf": FileSpec(template(ROLE, "/etc/postfix/main.cf", **values), reload=reload),
        "/etc/postfix/master.cf": FileSpec(template(ROLE, "/etc/postfix/master.cf", **values), reload=reload),
        **lookup_tables(stack),
        **postfix.aliases_file(stack),
        **postfix.tls_files(stack, keys, reload),
    }


def lookup_tables(stack: Stack) -> dict[str, FileSpec]:
    """The domains, aliases and transports: the same on every smtp-in host, and for a hosting
    provider's stack thousands of lines, so rendered once per stack."""

    def tables() -> dict[str, FileSpec]:
        contents = {
            TABLES[0]: template(ROLE, TABLES[0], domains=stack.domain_names),
            TABLES[1]: template(ROLE, TABLES[1], tables=virtual_alias_tables(stack)),
            TABLES[2]: template(ROLE, TABLES[2], discard_address=DISCARD_ADDRESS),
        }
        # Postfix notices a rebuilt .db by itself: the tables need no reload.
        return {path: FileSpec(content, postmap=True) for path, content in contents.items()}

    return stack.derived("smtp_in lookup tables", tables)


def virtual_alias_tables(stack: Stack) -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """(domain, [(alias address, [targets])]) per mail domain, in the stack's order: a mailbox name
    goes to the maildrops, /dev/null to the discard address, an address stays."""
    mailboxes = frozenset(stack.mailbox_names)
    maildrop = stack.service_name("maildrop")

    def target(t: str) -> str:
        if t == DEVNULL:
            return DISCARD_ADDRESS
        return f"{t}@{maildrop}" if t in mailboxes else t

    return [
        (
            domain.name,
            [(f"{local}@{domain.name}", [target(t) for t in targets]) for local, targets in domain.aliases.items()],
        )
        for domain in stack.domains
    ]


def postsrsd_files(stack: Stack, keys: KeyMaterial) -> dict[str, FileSpec]:
    settings = template(
        ROLE,
        "/etc/default/postsrsd",
        srs_domain=stack.infra_domain,
        exclude_domains=[d for d in stack.domain_names if d != stack.infra_domain],
        srs_forward_port=stack.ports.srs_forward,
        srs_reverse_port=stack.ports.srs_reverse,
        secret_file=SRS_SECRET,
    )
    reload = ("postsrsd",)
    return {
        "/etc/default/postsrsd": FileSpec(settings, reload=reload),
        # Read by postsrsd as root before it drops privileges.
        SRS_SECRET: FileSpec(keys.srs_secret + "\n", mode=0o600, reload=reload),
    }


def rspamd_files(stack: Stack, host: Host, keys: KeyMaterial) -> dict[str, FileSpec]:
    """rspamd as on smtp-out, plus: its controller also listens on the site-local addresses, where
    the maildrops teach it spam and ham (rspamc learn_spam / learn_ham with the controller password
    of render.maildrop)."""
    files = rspamd.local_d(
        stack,
        controller_addresses=[*rspamd.LOOPBACK, *host.site_local_addresses],
        controller_password=rspamd_controller_password(keys),
    )
    path = f"{rspamd.LOCAL_D}/milter_headers.conf"
    files[path] = FileSpec(template(ROLE, path), reload=("rspamd",))
    return files
