"""Every DNS record the mail service needs, built from the stack model in one place, and BIND zone text.

Zones are the infra domain and every mail domain; a record lands in the longest zone that holds
its name. Values are in zone-file presentation form (TXT as quoted strings), so the same records
feed the Pulumi stack output and the zone files in dns/.

Host names: a host with public addresses (smtp-in, frontends) publishes only those under its FQDN.
The smtp-in FQDNs are the MX targets and the MTA-STS `mx:` names, and a remote MTA handed a
site-local address it cannot reach pays a connect timeout for each. smtp-out and the maildrops
publish their site-local addresses: only site-local peers use those names (smtp-in -> maildrop MX).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from model import Domain, Stack
from render.keys import KeyMaterial
from render.mta_sts import policy_id

ZONE_TEMPLATES = Path(__file__).resolve().parent.parent / "dns"
# refresh, retry, expire, negative-answer TTL: RFC 1912's suggested ranges.
SOA_TIMERS = (3600, 600, 1209600, 300)
TXT_STRING_MAX = 255
# Order of types under one name in the zone text.
TYPE_ORDER = ("NS", "MX", "A", "AAAA", "TXT", "SRV")
TYPE_RANK = {type_: n for n, type_ in enumerate(TYPE_ORDER)}

# (domain, selector) -> public key: PEM (SubjectPublicKeyInfo) or base64 DER.
DkimPublic = Mapping[tuple[str, str], str]
# (owner FQDN, type, ttl, value) before it is placed in a zone.
Rr = tuple[str, str, int, str]


@dataclass(frozen=True)
class Record:
    zone: str
    # Relative to the zone; "@" is the zone apex.
    name: str
    type: str
    ttl: int
    value: str

    @property
    def fqdn(self) -> str:
        return self.zone if self.name == "@" else f"{self.name}.{self.zone}"


# ---- values ----------------------------------------------------------------------------------
def txt(text: str, *, at_spaces: bool = False) -> str:
    """TXT presentation value: quoted strings of at most 255 bytes, which receivers concatenate.

    Receivers add nothing between strings, so an SPF record is cut after a space (at_spaces).
    """
    if not text.isascii():
        raise ValueError(f"TXT text must be ASCII: {text!r}")
    strings, rest = [], text
    while len(rest) > TXT_STRING_MAX:
        cut = rest.rfind(" ", 0, TXT_STRING_MAX) + 1 if at_spaces else 0
        cut = cut or TXT_STRING_MAX
        strings.append(rest[:cut])
        rest = rest[cut:]
    strings.append(rest)
    return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in strings)


def spf(stack: Stack) -> str:
    """The egress prefixes and nothing else: every mail leaves site-local through them."""
    mechanisms = [
        f"ip{net.version}:{net.network_address if net.prefixlen == net.max_prefixlen else net}"
        for net in stack.egress_prefixes
    ]
    return " ".join(["v=spf1", *mechanisms, "~all"])


def dkim_key_base64(public: str) -> str:
    """PEM or base64 DER public key -> base64 DER SubjectPublicKeyInfo, as DKIM's `p=` wants it."""
    text = public.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
    else:
        key = serialization.load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"DKIM keys are RSA (k=rsa), not {type(key).__name__}")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def dkim_public_from_private(pem: str) -> str:
    """base64 DER SubjectPublicKeyInfo of a private key PEM: the DKIM record for an offline render."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def dkim_public_keys(keys: KeyMaterial) -> dict[tuple[str, str], str]:
    # Each distinct key once: loading a private key checks it (about 0.1 s for RSA 2048), and
    # throwaway material reuses its keys across a large stack's domains (render.throwaway).
    public = {pem: dkim_public_from_private(pem) for pem in set(keys.dkim_keys.values())}
    return {pair: public[pem] for pair, pem in keys.dkim_keys.items()}


def dmarc(stack: Stack) -> str:
    tags = ["v=DMARC1", f"p={stack.dns.dmarc_policy}"]
    if stack.dns.report_address:
        tags.append(f"rua=mailto:{stack.dns.report_address}")
    return "; ".join(tags)


def srv(port: int | None = None, target: str | None = None) -> str:
    """RFC 6186 SRV value; without a target the service is not offered (target `.`, RFC 2782)."""
    return f"0 1 {port} {target}." if target else "0 0 0 ."


# ---- records ---------------------------------------------------------------------------------
def zones(stack: Stack) -> list[str]:
    return list(dict.fromkeys([stack.infra_domain, *stack.domain_names]))


def _addresses(name: str, addresses: Iterable[str], ttl: int) -> Iterator[Rr]:
    for address in addresses:
        # Presentation form: only IPv6 has a colon (the model hands over str() of parsed addresses).
        yield name, "AAAA" if ":" in address else "A", ttl, address


def _frontend_public(stack: Stack) -> list[str]:
    return [a for h in stack.hosts.frontend for a in h.public_addresses]


def _infra(stack: Stack, spf_text: str) -> Iterator[Rr]:
    host_ttl = stack.dns.host_ttl
    for _, host in stack.vm_hosts:
        yield from _addresses(stack.fqdn(host), host.public_addresses or host.site_local_addresses, host_ttl)
    # Clients reach submission, IMAP and webmail only through the frontends.
    frontend_public = _frontend_public(stack)
    for service in ("smtp-out", "imap", "webmail"):
        yield from _addresses(stack.service_name(service), frontend_public, host_ttl)
    smtp_in = [a for h in stack.hosts.smtp_in for a in h.public_addresses]
    yield from _addresses(stack.service_name("smtp-in"), smtp_in, host_ttl)
    # smtp-in forwards to this name: the primary replica is preferred, the backup takes over.
    maildrop, ttl = stack.service_name("maildrop"), stack.dns.maildrop_mx_ttl
    yield maildrop, "MX", ttl, f"10 {stack.fqdn(stack.maildrop_primary)}."
    yield maildrop, "MX", ttl, f"20 {stack.fqdn(stack.maildrop_backup)}."
    # smtp-out greets as smtp-out.<infra_domain>; bounces (empty MAIL FROM) are SPF-checked on that name.
    yield stack.service_name("smtp-out"), "TXT", stack.dns.ttl, spf_text


def _mail_domains(stack: Stack, dkim_public: DkimPublic, spf_text: str) -> Iterator[Rr]:
    """Every mail domain's records. What they share is worked out once: a stack may have hundreds."""
    ttl, host_ttl, report = stack.dns.ttl, stack.dns.host_ttl, stack.dns.report_address
    # No load balancer in front of smtp-in (DNSBLs need the client address): equal MX, round robin.
    mx = [f"10 {stack.fqdn(host)}." for host in stack.hosts.smtp_in]
    dmarc_text = txt(dmarc(stack))
    mta_sts = txt(f"v=STSv1; id={policy_id(stack)}")
    tls_rpt = txt(f"v=TLSRPTv1; rua=mailto:{report}") if report else None
    frontend_public = _frontend_public(stack)
    # RFC 6186 / RFC 8314 client autoconfiguration: only what the frontends offer; RFC 5804:
    # ManageSieve (the frontends let only allowed networks through).
    services = [
        ("_submission", srv(stack.ports.submission, stack.service_name("smtp-out"))),
        ("_imaps", srv(stack.ports.imaps, stack.service_name("imap"))),
        ("_sieve", srv(stack.ports.managesieve, stack.service_name("imap"))),
        *((service, srv()) for service in ("_submissions", "_imap", "_pop3", "_pop3s")),
    ]
    for domain in stack.domains:
        name = domain.name
        for value in mx:
            yield name, "MX", stack.dns.mx_ttl, value
        yield name, "TXT", ttl, spf_text
        yield from _dkim(domain, dkim_public, ttl)
        yield f"_dmarc.{name}", "TXT", ttl, dmarc_text
        yield f"_mta-sts.{name}", "TXT", ttl, mta_sts
        # The frontends serve the policy over HTTPS (their certificate carries mta-sts.<domain>).
        yield from _addresses(f"mta-sts.{name}", frontend_public, host_ttl)
        if tls_rpt:
            yield f"_smtp._tls.{name}", "TXT", ttl, tls_rpt
        for service, value in services:
            yield f"{service}._tcp.{name}", "SRV", ttl, value


def _dkim(domain: Domain, dkim_public: DkimPublic, ttl: int) -> Iterator[Rr]:
    # Every listed selector, active or not: a rotation publishes the new key before it signs.
    for key in domain.dkim:
        public = dkim_public.get((domain.name, key.selector))
        if public is None:
            raise ValueError(f"no DKIM public key for domain {domain.name!r} selector {key.selector!r}")
        value = txt(f"v=DKIM1; k=rsa; p={dkim_key_base64(public)}")
        yield f"{key.selector}._domainkey.{domain.name}", "TXT", ttl, value


def _report_authorizations(stack: Stack, zone_names: Collection[str]) -> Iterator[Rr]:
    """RFC 7489 7.1: a report domain accepts other domains' DMARC reports only if it says so."""
    if not stack.dns.report_address:
        return
    report_domain = stack.dns.report_address.rsplit("@", 1)[1]
    if report_domain not in zone_names:
        return  # not ours to publish
    for name in stack.domain_names:
        if name != report_domain and not name.endswith(f".{report_domain}"):
            yield f"{name}._report._dmarc.{report_domain}", "TXT", stack.dns.ttl, txt("v=DMARC1")


def _holding(fqdn: str, zone_names: Collection[str]) -> Iterator[str]:
    """The zones that hold `fqdn`, longest first: its own name, then each parent name, that is a zone."""
    name = fqdn
    while True:
        if name in zone_names:
            yield name
        if "." not in name:
            return
        name = name.split(".", 1)[1]


def _zone_of(fqdn: str, zone_names: Collection[str]) -> str | None:
    """The longest zone that holds `fqdn` (the first of _holding, without a generator per record)."""
    name = fqdn
    while name not in zone_names:
        if "." not in name:
            return None
        name = name.split(".", 1)[1]
    return name


def _relative(fqdn: str, zone: str) -> str:
    return "@" if fqdn == zone else fqdn.removesuffix(f".{zone}")


def _place(rr: Rr, zone_names: Collection[str]) -> Record:
    fqdn, type_, ttl, value = rr
    zone = _zone_of(fqdn, zone_names)
    if zone is None:
        raise ValueError(f"{fqdn} lies in none of the zones {', '.join(zone_names)}")
    return Record(zone, _relative(fqdn, zone), type_, ttl, value)


def _order(record: Record) -> tuple:
    labels = () if record.name == "@" else tuple(reversed(record.name.split(".")))
    return labels, TYPE_RANK.get(record.type, len(TYPE_RANK))


def records(stack: Stack, dkim_public: DkimPublic) -> list[Record]:
    """The mail service's records, zone by zone in zone-file order (SOA and NS: see zone_texts)."""
    # zone -> its place in the zone order; also the set the lookups below test membership in.
    zone_index = {zone: n for n, zone in enumerate(zones(stack))}
    spf_text = txt(spf(stack), at_spaces=True)
    rrs = [
        *_infra(stack, spf_text),
        *_mail_domains(stack, dkim_public, spf_text),
        *_report_authorizations(stack, zone_index),
    ]
    placed = list(dict.fromkeys(_place(rr, zone_index) for rr in rrs))
    return sorted(placed, key=lambda r: (zone_index[r.zone], *_order(r)))


# ---- zone text -------------------------------------------------------------------------------
def _nameserver_records(stack: Stack, zone_names: Collection[str]) -> Iterator[tuple[str, Rr]]:
    """(zone, record) for the apex NS of every zone, the delegations to zones below another (the
    child's NS set also sits in its parent), and glue for in-zone nameservers (in every zone holding it)."""
    ttl, nameservers = stack.dns.ttl, stack.nameservers
    for zone in zone_names:
        parent = _zone_of(zone.split(".", 1)[1], zone_names) if "." in zone else None
        for holder in filter(None, (zone, parent)):
            for ns in nameservers:
                yield holder, (zone, "NS", ttl, f"{ns.name}.")
    for ns in nameservers:
        holders = list(_holding(ns.name, zone_names))
        if not holders:
            continue
        if not ns.addresses:
            raise ValueError(f"dns.nameservers: {ns.name} lies in a zone of this stack and needs addresses (glue)")
        for holder in holders:
            for rr in _addresses(ns.name, (str(a) for a in ns.addresses), ttl):
                yield holder, rr


def _zone_records(stack: Stack, mail_records: list[Record]) -> dict[str, list[Record]]:
    """zone -> its records in zone-file order: nameservers first, then the mail service's."""
    by_zone: dict[str, list[Record]] = {zone: [] for zone in zones(stack)}
    for zone, (fqdn, type_, ttl, value) in _nameserver_records(stack, by_zone):
        by_zone[zone].append(Record(zone, _relative(fqdn, zone), type_, ttl, value))
    for record in mail_records:
        by_zone[record.zone].append(record)
    # Stable sort: under one name and type, nameserver records, then the mail records' own order.
    return {zone: sorted(dict.fromkeys(held), key=_order) for zone, held in by_zone.items()}


def serial(zone: str, zone_records: list[Record]) -> int:
    """A hash of the zone's content: stable while nothing changes, new when anything does.

    It does not grow monotonically: secondaries fed by zone transfer need a serial bump by the
    operator's DNS; the lab and `named-checkzone` load each zone afresh.
    """
    # Field by field, as dataclasses.astuple lists them (astuple deep-copies, per record).
    rows = [[r.zone, r.name, r.type, r.ttl, r.value] for r in zone_records]
    digest = hashlib.sha256(json.dumps([zone, rows]).encode()).hexdigest()
    return int(digest[:8], 16) % 0xFFFFFFFF or 1


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(ZONE_TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def _rows(zone_records: list[Record]) -> tuple[int, list[tuple[str, str, str, str]]]:
    """(owner column width, one row per record): the columns padded as the zone file aligns them."""
    width = max(len(r.name) for r in zone_records)
    return width, [(r.name.ljust(width), f"{r.ttl:<6d}", r.type.ljust(4), r.value) for r in zone_records]


def zone_texts(stack: Stack, dkim_public: DkimPublic, mail_records: list[Record] | None = None) -> dict[str, str]:
    """zone -> BIND zone text (SOA, NS and the mail service's records) that named-checkzone accepts.

    mail_records: `records(stack, dkim_public)` if the caller has them already (the program
    publishes both and works them out once)."""
    if mail_records is None:
        mail_records = records(stack, dkim_public)
    template = _environment().get_template("zone.j2")
    ttl = stack.dns.ttl
    common = {
        "ttl": ttl,
        "apex_ttl": f"{ttl:<6d}",
        "primary": f"{stack.nameservers[0].name}.",
        "hostmaster": f"hostmaster.{stack.infra_domain}.",
        "timers": SOA_TIMERS,
    }
    texts = {}
    for zone, zone_records in _zone_records(stack, mail_records).items():
        width, rows = _rows(zone_records)
        texts[zone] = template.render(
            zone=zone, serial=serial(zone, zone_records), apex="@".ljust(width), rows=rows, **common
        )
    return texts
