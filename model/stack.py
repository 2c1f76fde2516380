"""The stack model: what `Pulumi.<stack>.yaml` describes, as typed objects.

Field names are the stack config keys (`mail-cluster:<key>`); every later layer trusts these
objects. Shape checks live on the fields; rules that span objects live in `model.rules`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from model.host_key import HostKey

# Free text is typed by what it is (model.values): host and site names are DNS labels.
from model.values import (
    HASH_TEXT,
    Address,
    BridgeName,
    CountryCode,
    DnsblReply,
    DnsName,
    HostName,
    HttpsUrl,
    HypervisorUri,
    ImageLocation,
    ImageReference,
    IPAddr,
    IPNetwork,
    IPv4Addr,
    IPv4Net,
    IPv6Addr,
    IPv6Net,
    Label,
    SshPublicKey,
    UnixUser,
)

Port = Annotated[int, Field(ge=1, le=65535)]
# What `doveadm pw` writes; Dovecot and the bcrypt check both read these schemes.
PASSWORD_SCHEMES = ("{BLF-CRYPT}", "{SHA512-CRYPT}", "{SHA256-CRYPT}", "{ARGON2ID}", "{CRYPT}")
DEVNULL = "/dev/null"
T = TypeVar("T")
# Debian's cloud image builds are named by date and build number: 20261110-2350.
DATED_IMAGE = re.compile(r"-(\d{8}-\d+)\.qcow2$")


class Strict(BaseModel):
    """Unknown keys are typos: refuse them instead of silently ignoring a setting."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteLocal(Strict):
    ipv4: IPv4Net
    ipv6: IPv6Net


class Site(Strict):
    name: Label
    country: CountryCode
    # One libvirt provider per hypervisor; remote ones are reached over SSH.
    hypervisor: HypervisorUri
    site_local: SiteLocal
    # Prefixes routed to the site from the internet; public host addresses must sit in one.
    public: list[IPNetwork] = []
    # The hypervisor's bridge onto the site-local network: each VM's one NIC joins it.
    bridge: BridgeName = "br0"
    # The libvirt storage pool that holds the Debian base image and the VMs' disks.
    pool: Label = "default"
    # DNS resolvers for the VMs (apt, cloud-init, the push's package install). Required: the VMs
    # take no router advertisements (a SLAAC address would not be the one the allow-lists name),
    # so nothing else would tell them one.
    resolvers: list[IPAddr] = Field(min_length=1)
    # The site routers: the VMs' static default routes. Absent: each prefix's first address.
    gateway_ipv4: IPv4Addr | None = None
    gateway_ipv6: IPv6Addr | None = None

    @property
    def router_ipv4(self) -> IPv4Address:
        """The site's IPv4 gateway to the egress NAT: `gateway_ipv4`, or the prefix's first address."""
        return self.gateway_ipv4 or next(self.site_local.ipv4.hosts())

    @property
    def router_ipv6(self) -> IPv6Address:
        """The site's IPv6 gateway: `gateway_ipv6`, or the prefix's first address."""
        return self.gateway_ipv6 or next(self.site_local.ipv6.hosts())


class Host(Strict):
    name: Label
    site: Label
    ipv4: IPv4Addr
    ipv6: IPv6Addr
    public_ipv4: IPv4Addr | None = None
    public_ipv6: IPv6Addr | None = None
    # maildrop: MX 10 and the frontends' non-backup upstream; smtp_out/frontend: non-backup upstream.
    primary: bool = False

    @property
    def label(self) -> str:
        """`smtp-out-chrma0` -> `smtp-out`: the case study names hosts `<label>.<site>.<domain>`."""
        return self.name.removesuffix(f"-{self.site}")

    @property
    def site_local_addresses(self) -> list[str]:
        return [str(self.ipv6), str(self.ipv4)]

    @property
    def public_addresses(self) -> list[str]:
        return [str(a) for a in (self.public_ipv6, self.public_ipv4) if a is not None]


class DebianImage(Strict):
    """The Debian 12 generic cloud image every new root disk clones, pinned: a dated build and its
    checksum (from the build directory's SHA512SUMS). A moving `latest` URL would change what a new
    VM runs without any edit of the stack."""

    url: ImageLocation
    sha512: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")]

    @field_validator("url")
    @classmethod
    def _dated(cls, value: str) -> str:
        if not DATED_IMAGE.search(value.rsplit("/", 1)[-1]):
            raise ValueError(
                f"{value!r} is not a dated image: pin a build such as "
                ".../bookworm/20261110-2350/debian-12-genericcloud-amd64-20261110-2350.qcow2, not `latest`"
            )
        return value

    @property
    def version(self) -> str:
        """`20261110-2350`: names the base image volumes, so a new image is a new volume."""
        return DATED_IMAGE.search(self.url.rsplit("/", 1)[-1]).group(1)

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


class VmShape(Strict):
    """One host's VM size. Every field absent: the stack-wide `vm_*` value."""

    memory_mib: int | None = Field(default=None, ge=512)
    vcpus: int | None = Field(default=None, ge=1, le=64)
    disk_gib: int | None = Field(default=None, ge=4)
    # maildrops only: the mail volume (mdbox, Sieve scripts, indexes).
    mail_gib: int | None = Field(default=None, ge=1)
    # Raise to rebuild this host's VM from the current image: a new root disk and seed, the domain
    # recreated (the maildrops' mail volume is kept and attached again).
    rebuild: int = Field(default=0, ge=0)


class Hosts(Strict):
    smtp_out: list[Host] = Field(min_length=1)
    smtp_in: list[Host] = Field(min_length=1)
    maildrop: list[Host] = Field(min_length=2, max_length=2)
    frontend: list[Host] = Field(min_length=1)

    def by_role(self) -> dict[str, list[Host]]:
        return {
            "smtp_out": self.smtp_out,
            "smtp_in": self.smtp_in,
            "maildrop": self.maildrop,
            "frontend": self.frontend,
        }


class Webmail(Strict):
    """Roundcube runs on an existing Docker host, reached over SSH (no VM of ours)."""

    host: Label
    address: IPAddr
    # Its SSH host key (/etc/ssh/ssh_host_ed25519_key.pub there): the push pins it. Not ours to
    # generate, so the stack must name it.
    host_key: HostKey
    port: Port = 9002
    # Written into the compose file: a reference, nothing that could add YAML keys of its own.
    image: ImageReference = "roundcube/roundcubemail:latest"
    # The case study's geo allow-list: VPN and office/home networks.
    allow: list[IPNetwork] = Field(min_length=1)
    # Where the geo block bounces everyone else (NGINX's `rewrite`: a URL, never a directive).
    redirect: HttpsUrl = "https://ipng.ch/"


class RelayClient(Strict):
    """An existing server that sends its mail through smtp-out with opensmtpd."""

    name: Label
    address: IPAddr
    # Its SSH host key, pinned by its push (as the webmail host's).
    host_key: HostKey
    # The SASL user on smtp-out; the case study names these after the server's group (`bastion`).
    group: Label
    # The only sender smtp-out lets this group use (smtpd_sender_login_maps).
    mail_from: Address


class Bastion(Strict):
    """A jump host every push goes through (pulumi-command's `proxy`), with its own pinned key."""

    # An address or a DNS name, as the operator's ssh would dial it.
    host: IPAddr | HostName
    user: UnixUser = "root"
    port: Port = 22
    host_key: HostKey


class DkimKey(Strict):
    selector: Label
    # During rotation a domain lists the new selector beside the active one: both are published,
    # only the active one signs.
    active: bool = True


class Domain(Strict):
    """A mail domain. Its aliases must name who reads `postmaster` (RFC 5321): model.rules requires
    the entry and adds none by itself, since a hosted domain's postmaster is the operator's call."""

    name: DnsName
    # Empty: a receive-only domain (mail to it is accepted, forwarded and delivered; mail from it
    # leaves unsigned): no key, no DKIM record, no entry in OpenDKIM's tables.
    dkim: list[DkimKey] = []
    # local part -> targets: a mailbox name, an address, or /dev/null (model.rules checks each whole).
    # Every address here may also be used as a sender by the mailboxes it delivers to.
    aliases: dict[str, list[str]] = {}


class Mailbox(Strict):
    name: Label
    # Hash as written by `doveadm pw -s BLF-CRYPT`; absent: the program generates a password.
    password_hash: str | None = None

    @field_validator("password_hash")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(PASSWORD_SCHEMES):
            raise ValueError(f"must be a hash starting with one of {', '.join(PASSWORD_SCHEMES)}, not plain text")
        # The passwd-file line is `name:hash::::`: a `:` or a newline in it would add fields or users.
        if value is not None and not HASH_TEXT.fullmatch(value.partition("}")[2]):
            raise ValueError("is not a password hash: only crypt(3)/Argon2 characters after the {SCHEME}")
        return value


class Dnsbl(Strict):
    zone: DnsName
    # Only these answers reject: a DNSBL's error codes (e.g. 127.255.255.254) must never block mail.
    reply: DnsblReply


class Ports(Strict):
    smtp: Port = 25
    smtps: Port = 465
    submission: Port = 587
    imaps: Port = 993
    managesieve: Port = 4190
    doveadm: Port = 63301
    srs_forward: Port = 10001
    srs_reverse: Port = 10002
    opendkim: Port = 8891
    rspamd_milter: Port = 11332
    rspamd_controller: Port = 11334


class Nameserver(Strict):
    name: DnsName
    # Glue: required when the name lies inside a zone the stack publishes (named refuses the zone otherwise).
    addresses: list[IPAddr] = []


class Dns(Strict):
    ttl: int = Field(default=3600, ge=60, le=86400)
    mx_ttl: int = Field(default=86400, ge=60, le=604800)
    host_ttl: int = Field(default=600, ge=60, le=86400)
    # The case study keeps the maildrop MX short (300 s) so a failover can be steered quickly.
    maildrop_mx_ttl: int = Field(default=300, ge=60, le=86400)
    # NS (and SOA primary) of every zone the program writes. Empty: ns1/ns2.<infra_domain> stand in,
    # see Stack.nameservers. The lab serves the zones from its own server whatever is listed here.
    nameservers: list[Nameserver] = []
    dmarc_policy: Literal["none", "quarantine", "reject"] = "quarantine"
    # Where DMARC aggregate and TLS-RPT reports go, and the hosts' own mail (root, postmaster):
    # /etc/postfix/aliases names it, where a `|command` or a /file would be run or written.
    report_address: Address | None = None
    mta_sts_mode: Literal["testing", "enforce", "none"] = "enforce"
    mta_sts_max_age: int = Field(default=604800, ge=86400, le=31557600)


class Stack(Strict):
    infra_domain: DnsName
    debian_image: DebianImage
    ssh_public_key: SshPublicKey
    sites: list[Site] = Field(min_length=1)
    egress_prefixes: list[IPNetwork] = Field(min_length=1)
    hosts: Hosts
    webmail: Webmail
    relay_clients: list[RelayClient] = []
    # None: the pushes dial every host directly.
    bastion: Bastion | None = None
    domains: list[Domain] = Field(min_length=1)
    mailboxes: list[Mailbox] = Field(min_length=1)
    dnsbls: list[Dnsbl] = []
    # 4190 is only for the VPN and internal networks (case study); empty means everybody.
    managesieve_allow: list[IPNetwork] = []
    ports: Ports = Ports()
    dns: Dns = Dns()
    # Delays the case study sets on the load balancer: two failures in ten seconds mark a backend down.
    upstream_max_fails: int = Field(default=2, ge=1, le=100)
    upstream_fail_timeout: int = Field(default=10, ge=1, le=3600)
    # The VMs' size: the case study's 8 GB, 4 vCPUs, 16 GB disk. These defaults size NEW VMs;
    # a running VM changes shape only through its own `vm_overrides` entry, one host at a time.
    vm_memory_mib: int = Field(default=8192, ge=512)
    vm_vcpus: int = Field(default=4, ge=1, le=64)
    vm_disk_gib: int = Field(default=16, ge=4)
    vm_mail_gib: int = Field(default=32, ge=1)
    # host name -> its own shape (and rebuild counter).
    vm_overrides: dict[str, VmShape] = {}

    # ---- derived facts: one place each -------------------------------------------------------
    @property
    def site_by_name(self) -> dict[str, Site]:
        return {s.name: s for s in self.sites}

    @property
    def vm_hosts(self) -> list[tuple[str, Host]]:
        """(role, host) for every VM the program builds."""
        return [(role, h) for role, hosts in self.hosts.by_role().items() for h in hosts]

    def shape(self, host: Host) -> VmShape:
        """The host's VM size, every field resolved (its override, else the stack-wide default)."""
        own = self.vm_overrides.get(host.name, VmShape())
        return VmShape(
            memory_mib=own.memory_mib or self.vm_memory_mib,
            vcpus=own.vcpus or self.vm_vcpus,
            disk_gib=own.disk_gib or self.vm_disk_gib,
            mail_gib=own.mail_gib or self.vm_mail_gib,
            rebuild=own.rebuild,
        )

    def fqdn(self, host: Host) -> str:
        return f"{host.label}.{host.site}.{self.infra_domain}"

    def service_name(self, service: str) -> str:
        """Public names clients use and certificates carry: smtp-out, smtp-in, imap, webmail, maildrop."""
        return f"{service}.{self.infra_domain}"

    @property
    def maildrop_primary(self) -> Host:
        return next(h for h in self.hosts.maildrop if h.primary)

    @property
    def maildrop_backup(self) -> Host:
        return next(h for h in self.hosts.maildrop if not h.primary)

    def peer(self, maildrop: Host) -> Host:
        return next(h for h in self.hosts.maildrop if h.name != maildrop.name)

    @property
    def smtp_out_primary(self) -> Host:
        return next((h for h in self.hosts.smtp_out if h.primary), self.hosts.smtp_out[0])

    @property
    def frontend_primary(self) -> Host:
        return next((h for h in self.hosts.frontend if h.primary), self.hosts.frontend[0])

    @property
    def nameservers(self) -> list[Nameserver]:
        """dns.nameservers, or ns1/ns2.<infra_domain> on the first two frontends' public addresses.

        The stack does not model the operator's DNS servers; the stand-in keeps the emitted zones
        loadable (an in-zone NS needs addresses) until `dns.nameservers` names the real ones.
        """
        if self.dns.nameservers:
            return self.dns.nameservers
        frontends = (self.hosts.frontend * 2)[:2]
        return [
            Nameserver(name=f"ns{n}.{self.infra_domain}", addresses=[*filter(None, (h.public_ipv6, h.public_ipv4))])
            for n, h in enumerate(frontends, start=1)
        ]

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    @property
    def mailbox_names(self) -> list[str]:
        return [m.name for m in self.mailboxes]

    def derived(self, fact: str, compute: Callable[[], T]) -> T:
        """A fact derived from this stack (a set of names, a table every host of a role shares),
        worked out once. Kept in the instance dict beside the fields, as functools.cached_property
        keeps its values (pydantic leaves them out of ==, hash, repr and dumps), with the field
        values it was worked out from: model_copy() copies that dict, and a copy with any other
        value works the fact out again instead of reusing its original's."""
        key = f"_derived_{fact}"
        fields = tuple(self.__dict__[name] for name in type(self).model_fields)
        hit = self.__dict__.get(key)
        if hit is None or any(a is not b for a, b in zip(hit[0], fields, strict=True)):
            hit = self.__dict__[key] = (fields, compute())
        return hit[1]
