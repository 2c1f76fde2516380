"""Rules that span several objects of the stack: each one would otherwise break mail.

Every rule yields (key, problem) with the key written as the stack config spells it, so that the
operator can find the line: `hosts.maildrop[1].primary`, `domains[2].aliases.info`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from model.stack import DEVNULL, Stack
from model.values import is_address

Problem = tuple[str, str]


def problems(stack: Stack) -> list[Problem]:
    found: list[Problem] = []
    for rule in (
        _sites,
        _hosts,
        _vm_overrides,
        _maildrops,
        _domains,
        _aliases,
        _mailboxes,
        _relay_clients,
        _webmail,
        _ports,
    ):
        found.extend(rule(stack))
    return found


def _duplicates(values: list[str]) -> set[str]:
    return {v for v, n in Counter(values).items() if n > 1}


def _repeats(keyed: list[tuple[str, object]]) -> Iterator[tuple[str, object, str]]:
    """(key, value, key of its first use) for every value used again: the key to fix is the later one."""
    first: dict[object, str] = {}
    for key, value in keyed:
        if value in first:
            yield key, value, first[value]
        else:
            first[value] = key


def _sites(stack: Stack) -> Iterator[Problem]:
    for key, name, first in _repeats([(f"sites[{n}].name", s.name) for n, s in enumerate(stack.sites)]):
        yield key, f"site {name!r} is defined twice (also {first})"
    for n, site in enumerate(stack.sites):
        for field, prefix in (("gateway_ipv4", site.site_local.ipv4), ("gateway_ipv6", site.site_local.ipv6)):
            gateway = getattr(site, field)
            if gateway is not None and gateway not in prefix:
                yield f"sites[{n}].{field}", f"{gateway} is outside the site-local {prefix}: the VMs could not reach it"
    seen: set[str] = set()
    for n, site in enumerate(stack.sites):
        if site.hypervisor in seen:
            yield (
                f"sites[{n}].hypervisor",
                f"{site.hypervisor!r} is used by two sites: each site has its own hypervisor",
            )
        seen.add(site.hypervisor)


def _vm_overrides(stack: Stack) -> Iterator[Problem]:
    roles = {h.name: role for role, h in stack.vm_hosts}
    for name, shape in stack.vm_overrides.items():
        key = f"vm_overrides.{name}"
        if name not in roles:
            yield key, f"no VM host is named {name!r} (VM hosts: {', '.join(roles)})"
        elif shape.mail_gib is not None and roles[name] != "maildrop":
            yield f"{key}.mail_gib", f"{name} is a {roles[name]} host: only maildrops have a mail volume"


def _hosts(stack: Stack) -> Iterator[Problem]:
    names = [
        (f"hosts.{role}[{n}].name", h.name)
        for role, hosts in stack.hosts.by_role().items()
        for n, h in enumerate(hosts)
    ]
    names += [("webmail.host", stack.webmail.host)]
    names += [(f"relay_clients[{n}].name", r.name) for n, r in enumerate(stack.relay_clients)]
    for key, name, first in _repeats(names):
        yield key, f"host name {name!r} is used twice (also {first})"
    fields = ("ipv6", "ipv4", "public_ipv6", "public_ipv4")
    addresses = [
        (f"hosts.{role}[{n}].{field}", str(getattr(h, field)))
        for role, hosts in stack.hosts.by_role().items()
        for n, h in enumerate(hosts)
        for field in fields
        if getattr(h, field) is not None
    ]
    for key, address, first in _repeats(addresses):
        yield key, f"address {address} is used by more than one host (also {first})"
    for role, hosts in stack.hosts.by_role().items():
        for n, host in enumerate(hosts):
            key = f"hosts.{role}[{n}]"
            site = stack.site_by_name.get(host.site)
            if site is None:
                yield f"{key}.site", f"unknown site {host.site!r} (sites are: {', '.join(stack.site_by_name)})"
                continue
            if not host.name.endswith(f"-{host.site}") or host.label == host.name:
                yield (
                    f"{key}.name",
                    f"{host.name!r} must be <label>-{host.site} (the case study's <label>.<site> naming)",
                )
            if host.ipv4 not in site.site_local.ipv4:
                yield f"{key}.ipv4", f"{host.ipv4} is outside site {site.name}'s site-local {site.site_local.ipv4}"
            elif host.ipv4 == site.router_ipv4:
                yield f"{key}.ipv4", f"{host.ipv4} is site {site.name}'s router"
            if host.ipv6 not in site.site_local.ipv6:
                yield f"{key}.ipv6", f"{host.ipv6} is outside site {site.name}'s site-local {site.site_local.ipv6}"
            elif host.ipv6 == site.router_ipv6:
                yield f"{key}.ipv6", f"{host.ipv6} is site {site.name}'s router"
            for field in ("public_ipv4", "public_ipv6"):
                address = getattr(host, field)
                if address is not None and not any(address in p for p in site.public if p.version == address.version):
                    yield f"{key}.{field}", f"{address} is in none of site {site.name}'s public prefixes"
        # The case study spreads every role over separate hypervisors: one failure, one replica.
        sites = [h.site for h in hosts]
        for site in sorted(_duplicates(sites)):
            yield f"hosts.{role}", f"two {role} hosts on site {site!r}: replicas must be on separate hypervisors"
        if role in ("smtp_out", "frontend") and sum(h.primary for h in hosts) > 1:
            yield f"hosts.{role}", "more than one primary: the load balancer has one primary and backups"
    # Only smtp-in and the frontends face the internet.
    for role in ("smtp_in", "frontend"):
        for n, host in enumerate(getattr(stack.hosts, role)):
            if not host.public_addresses:
                yield f"hosts.{role}[{n}]", "needs public_ipv4 or public_ipv6: it is reached from the internet"
    for role in ("smtp_out", "maildrop"):
        for n, host in enumerate(getattr(stack.hosts, role)):
            if host.public_addresses:
                yield f"hosts.{role}[{n}]", "has a public address: it lives in site-local only and egresses via NAT"


def _maildrops(stack: Stack) -> Iterator[Problem]:
    primaries = sum(h.primary for h in stack.hosts.maildrop)
    if primaries != 1:
        yield "hosts.maildrop", f"needs exactly one primary (MX 10, IMAP upstream), found {primaries}"


def _domains(stack: Stack) -> Iterator[Problem]:
    for key, name, first in _repeats([(f"domains[{n}].name", d.name) for n, d in enumerate(stack.domains)]):
        yield key, f"domain {name!r} is listed twice (also {first})"
    selectors = Counter((d.name, k.selector) for d in stack.domains for k in d.dkim)
    for n, domain in enumerate(stack.domains):
        for k, key in enumerate(domain.dkim):
            if selectors[(domain.name, key.selector)] > 1:
                yield f"domains[{n}].dkim[{k}].selector", f"selector {key.selector!r} is used twice for {domain.name}"
        if domain.dkim and not any(k.active for k in domain.dkim):
            yield f"domains[{n}].dkim", "no active selector: outgoing mail would go unsigned"
        if sum(k.active for k in domain.dkim) > 1:
            yield f"domains[{n}].dkim", "more than one active selector: only one key signs, the others are published"
    # Webmail identities and postmaster notices are addresses in the first domain: it sends.
    if stack.domains and not stack.domains[0].dkim:
        yield "domains[0].dkim", "the first domain is the webmail users' domain: it sends and needs a selector"
    # RFC 5321 (4.5.1): every domain that takes mail takes postmaster@ too. Required rather than
    # added: who reads a hosted domain's postmaster mail is the operator's call, not a default's.
    for n, domain in enumerate(stack.domains):
        if "postmaster" not in domain.aliases:
            yield (
                f"domains[{n}].aliases",
                f"no postmaster: RFC 5321 requires postmaster@{domain.name} (add `postmaster: [<mailbox>]`)",
            )
    # The maildrop name is the internal next hop, not a mail domain.
    for n, domain in enumerate(stack.domains):
        if domain.name == stack.service_name("maildrop"):
            yield f"domains[{n}].name", f"{domain.name} is the maildrops' internal name, not a mail domain"


def _aliases(stack: Stack) -> Iterator[Problem]:
    local = {d.name: set(d.aliases) for d in stack.domains}
    mailboxes = set(stack.mailbox_names)
    for n, domain in enumerate(stack.domains):
        for local_part, targets in domain.aliases.items():
            key = f"domains[{n}].aliases.{local_part}"
            if not is_address(f"{local_part}@{domain.name}"):
                yield key, f"{local_part!r}@{domain.name} is not an address"
            if not targets:
                yield key, "has no targets (use /dev/null to drop mail)"
            if DEVNULL in targets and len(targets) > 1:
                yield key, "/dev/null must be the only target"
            for target in targets:
                if target == DEVNULL or target in mailboxes:
                    continue
                if "@" not in target:
                    yield key, f"{target!r} is neither a mailbox, an address nor /dev/null"
                elif not is_address(target):
                    yield key, f"{target!r} is not an address"
                else:
                    user, _, target_domain = target.partition("@")
                    if target_domain in local and user not in local[target_domain]:
                        yield key, f"{target!r} is in local domain {target_domain} but has no alias or mailbox there"
                    if target_domain == stack.service_name("maildrop") and user not in mailboxes:
                        yield key, f"{target!r}: no mailbox {user!r}"


def _mailboxes(stack: Stack) -> Iterator[Problem]:
    for key, name, first in _repeats([(f"mailboxes[{n}].name", m.name) for n, m in enumerate(stack.mailboxes)]):
        yield key, f"mailbox {name!r} is listed twice (also {first})"
    service_users = {"roundcube"} | {r.group for r in stack.relay_clients}
    for n, box in enumerate(stack.mailboxes):
        if box.name in service_users:
            yield f"mailboxes[{n}].name", f"{box.name!r} is a service user of smtp-out (roundcube or a relay group)"


def _relay_clients(stack: Stack) -> Iterator[Problem]:
    for n, client in enumerate(stack.relay_clients):
        domain = client.mail_from.partition("@")[2]
        signing = {d.name for d in stack.domains if d.dkim}
        if domain not in stack.domain_names:
            yield (
                f"relay_clients[{n}].mail_from",
                f"{domain} is not a mail domain of the stack: it would not be DKIM signed",
            )
        elif domain not in signing:
            yield f"relay_clients[{n}].mail_from", f"{domain} is receive-only (no dkim): it would not be DKIM signed"


def _webmail(stack: Stack) -> Iterator[Problem]:
    if any(a == stack.webmail.address for _, h in stack.vm_hosts for a in (h.ipv4, h.ipv6)):
        yield "webmail.address", f"{stack.webmail.address} belongs to a VM of the stack"


def _ports(stack: Stack) -> Iterator[Problem]:
    # Services that share a host must not share a port.
    groups = {
        "smtp_in": ("smtp", "smtps", "srs_forward", "srs_reverse", "rspamd_milter", "rspamd_controller"),
        "smtp_out": ("submission", "opendkim", "rspamd_milter", "rspamd_controller"),
        "maildrop": ("smtp", "imaps", "managesieve", "doveadm"),
        "frontend": ("submission", "imaps", "managesieve"),
    }
    for role, names in groups.items():
        values = [getattr(stack.ports, n) for n in names]
        for port in _duplicates([str(v) for v in values]):
            clash = [n for n in names if str(getattr(stack.ports, n)) == port]
            # Name the port the config sets: the other one is a default.
            moved = [n for n in clash if n in stack.ports.model_fields_set] or clash[-1:]
            other = next(n for n in clash if n != moved[0])
            yield f"ports.{moved[0]}", f"port {port} is also used by {other} on {role}"
    if stack.webmail.port in (80, 443):
        yield "webmail.port", "80/443 are the frontends' own; Roundcube listens behind them"
