"""Names derived from the model that several roles and the keys share."""

from __future__ import annotations

from model import Stack

SERVICES = ("smtp-out", "smtp-in", "imap", "webmail", "maildrop")


def certificate_names(stack: Stack) -> list[str]:
    """Every name a client or peer may check the certificate against: services, then host FQDNs."""
    names = [stack.service_name(s) for s in SERVICES]
    names += [stack.fqdn(h) for _, h in stack.vm_hosts]
    names += [f"mta-sts.{d}" for d in stack.domain_names]
    return list(dict.fromkeys(names))


def service_users(stack: Stack) -> list[str]:
    """smtp-out SASL users that are services, not people: Roundcube and each relay group."""
    return list(dict.fromkeys(["roundcube", *(c.group for c in stack.relay_clients)]))


def tls_cert_path(stack: Stack) -> str:
    """Where every role installs the certificate chain (the case study's wildcard under /etc/certs)."""
    return f"/etc/certs/{stack.infra_domain}/fullchain.pem"


def tls_key_path(stack: Stack) -> str:
    return f"/etc/certs/{stack.infra_domain}/privkey.pem"
