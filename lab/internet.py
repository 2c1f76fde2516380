"""The lab's internet: what sits outside the cluster, in the namespace `mlab-internet`.

The stack model does not describe the internet, so its addresses are defined here, once:
clients (one inside the webmail/ManageSieve allow-list of Pulumi.lab.yaml, one outside it, one
listed in the test DNSBL), the lab's DNS server, and a remote MTA for the domain `remote.test`
(a plain Postfix that drops every remote.test mail into one Maildir, so tests can read what
arrived; its `Delivered-To:` header names the recipient). Everything is in the documentation
prefixes 203.0.113.0/24 and 2001:db8:200::/64.
"""

from __future__ import annotations

import datetime
from email import message_from_bytes
from email.message import Message
from ipaddress import IPv4Interface, IPv6Interface, ip_interface, ip_network
from pathlib import Path, PurePosixPath

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lab import NETNS_PREFIX
from render.tree import Check, FileSpec, HostTree

NETNS = f"{NETNS_PREFIX}internet"
IPV4 = ip_network("203.0.113.0/24")
IPV6 = ip_network("2001:db8:200::/64")
# The fabric's side of the internet link: the internet's default gateway.
ROUTER = ("203.0.113.1", "2001:db8:200::1")
# Inside webmail.allow / managesieve_allow of the lab stack (203.0.113.0/25, 2001:db8:200::/65).
ALLOWED_CLIENT = ("203.0.113.10", "2001:db8:200::10")
# Outside both allow-lists: "everybody else".
OTHER_CLIENT = ("203.0.113.200", "2001:db8:200:0:8000::200")
# Listed in dnsbl.test (dns_server.LAB_ZONES): smtp-in must reject it.
LISTED_CLIENT = "203.0.113.66"
DNS_SERVER = ("203.0.113.53", "2001:db8:200::53")
REMOTE_DOMAIN = "remote.test"
REMOTE_MX = f"mx.{REMOTE_DOMAIN}"
REMOTE_MTA = ("203.0.113.25", "2001:db8:200::25")
REMOTE_MTA_HOST = "remote-mta"
# The Maildir every remote.test mail lands in (a path inside the remote MTA's host root).
REMOTE_MAILDIR = f"/var/mail/{REMOTE_DOMAIN}"
# nobody (Postfix's virtual delivery refuses uids below virtual_minimum_uid, 100) in group mail,
# which may create the Maildir in Debian's /var/mail (root:mail 2775).
REMOTE_MAIL_UID, REMOTE_MAIL_GID = 65534, 8


def addresses() -> list[IPv4Interface | IPv6Interface]:
    """The internet namespace's addresses; the allowed client's come first, so they are the
    default source of every connection a test opens (the others are deprecated for IPv6, which
    keeps them out of source selection, and secondary for IPv4)."""
    v4 = [ALLOWED_CLIENT[0], OTHER_CLIENT[0], LISTED_CLIENT, DNS_SERVER[0], REMOTE_MTA[0]]
    v6 = [ALLOWED_CLIENT[1], OTHER_CLIENT[1], DNS_SERVER[1], REMOTE_MTA[1]]
    return [ip_interface(f"{a}/{IPV4.prefixlen}") for a in v4] + [ip_interface(f"{a}/{IPV6.prefixlen}") for a in v6]


def _self_signed(name: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def remote_mta_tree() -> HostTree:
    """The remote MTA's files: Debian's stock master.cf and this main.cf. It offers STARTTLS
    (smtp-out sends with `smtp_tls_security_level = encrypt`) and accepts any local part."""
    cert, key = _self_signed(REMOTE_MX)
    v4, v6 = REMOTE_MTA
    main_cf = f"""\
# The lab's remote MTA: final destination for {REMOTE_DOMAIN}, one Maildir per local part.
compatibility_level = 3.6
myhostname = {REMOTE_MX}
mydomain = {REMOTE_DOMAIN}
myorigin = $mydomain
mydestination =
inet_interfaces = {v4}, [{v6}]
inet_protocols = all
mynetworks = 127.0.0.0/8 [::1]/128
biff = no
append_dot_mydomain = no
# No local delivery: no aliases (Postfix's default would read /etc/aliases and NIS).
alias_maps =
alias_database =
smtpd_banner = $myhostname ESMTP lab remote MTA
smtpd_tls_cert_file = /etc/postfix/remote-mta.pem
smtpd_tls_key_file = /etc/postfix/remote-mta.key
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = {REMOTE_DOMAIN}
# Every local part exists; one Maildir (trailing slash) for all of them. Postfix refuses
# regexp substitution in virtual_mailbox_maps, so there is no Maildir per local part.
virtual_mailbox_base = {PurePosixPath(REMOTE_MAILDIR).parent!s}
virtual_mailbox_maps = static:{PurePosixPath(REMOTE_MAILDIR).name}/
virtual_uid_maps = static:{REMOTE_MAIL_UID}
virtual_gid_maps = static:{REMOTE_MAIL_GID}
"""
    files = {
        "/etc/postfix/main.cf": FileSpec(main_cf),
        "/etc/postfix/master.cf": FileSpec(Path("/usr/share/postfix/master.cf.dist").read_text()),
        "/etc/postfix/remote-mta.pem": FileSpec(cert),
        "/etc/postfix/remote-mta.key": FileSpec(key, mode=0o600),
        "/etc/mailname": FileSpec(f"{REMOTE_DOMAIN}\n"),
    }
    return HostTree(
        host=REMOTE_MTA_HOST,
        role="remote_mta",
        files=files,
        checks=(Check("postfix check", ("postfix", "check")),),
        services={"postfix": "postfix reload"},
    )


def read_maildir(maildir: Path, recipient: str | None = None) -> list[Message]:
    """Messages delivered to a Maildir (seen from outside: HostRoot.outside(REMOTE_MAILDIR)), oldest
    first; only those for `recipient` when given (virtual(8) writes it as Delivered-To:)."""
    paths = [p for sub in ("new", "cur") for p in (maildir / sub).glob("*") if p.is_file()]
    messages = [message_from_bytes(p.read_bytes()) for p in sorted(paths, key=lambda p: p.stat().st_mtime)]
    if recipient is None:
        return messages
    return [m for m in messages if recipient.lower() in (v.lower() for v in m.get_all("Delivered-To", []))]
