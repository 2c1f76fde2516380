"""Throwaway key material for an offline render, the lab and the tests.

Same shapes as the Pulumi-generated material (components/keys.py): an internal CA and one
certificate for all public names and host FQDNs, RSA 2048 DKIM keys, random secrets, bcrypt hashes.
"""

from __future__ import annotations

import datetime
import secrets
from ipaddress import ip_address

import bcrypt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from model import Stack
from render.keys import KeyMaterial, SshHostKey
from render.names import certificate_names, service_users

# An RSA 2048 key costs about 50 ms of CPU to generate: a hosting provider's stack with 300 signing
# domains spent 16 s of its offline render making keys that nobody keeps, against well under a second
# for everything else. So at most this many distinct DKIM keys are made, then used again in turn: a
# stack with this many selectors or fewer (prod, lab) has a key each, and a domain's own selectors
# (a rotation) never share one. pulumi-tls still makes one key per selector in production.
DISTINCT_DKIM_KEYS = 16


def _pem_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _certificate(subject: str, key, issuer_name, issuer_key, sans: list[str], ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        entries = []
        for name in sans:
            try:
                entries.append(x509.IPAddress(ip_address(name)))
            except ValueError:
                entries.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(entries), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def ssh_host_key() -> SshHostKey:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return SshHostKey(private_openssh=private, public_openssh=public.decode())


def password(nbytes: int = 24) -> str:
    return secrets.token_urlsafe(nbytes)


def blf_crypt(plain: str, rounds: int = 10) -> str:
    # Dovecot reads $2y$; bcrypt writes $2b$ for the same algorithm.
    hashed = bcrypt.hashpw(plain.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return "{BLF-CRYPT}" + hashed.replace("$2b$", "$2y$", 1)


def throwaway_keys(stack: Stack, rsa_bits: int = 2048) -> KeyMaterial:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{stack.infra_domain} throwaway CA")])
    ca = _certificate(f"{stack.infra_domain} throwaway CA", ca_key, ca_name, ca_key, [], ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names = certificate_names(stack)
    cert = _certificate(names[0], key, ca_name, ca_key, names, ca=False)
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM).decode()  # noqa: E731
    pairs = [(d.name, k.selector) for d in stack.domains for k in d.dkim]
    distinct = [
        _pem_key(rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits))
        for _ in range(min(len(pairs), DISTINCT_DKIM_KEYS))
    ]
    dkim = {pair: distinct[n % len(distinct)] for n, pair in enumerate(pairs)}
    sasl = {user: password() for user in service_users(stack)}
    mailbox_passwords = {m.name: password(12) for m in stack.mailboxes if m.password_hash is None}
    hashes_ = {m.name: m.password_hash or blf_crypt(mailbox_passwords[m.name]) for m in stack.mailboxes}
    hashes_.update({user: blf_crypt(pw) for user, pw in sasl.items()})
    return KeyMaterial(
        tls_cert=pem(cert) + pem(ca),
        tls_key=_pem_key(key),
        ca_cert=pem(ca),
        dkim_keys=dkim,
        doveadm_password=password(),
        srs_secret=password(),
        roundcube_des_key=password(18)[:24],
        sasl_passwords=sasl,
        password_hashes=hashes_,
        mailbox_passwords=mailbox_passwords,
        ssh_host_keys={host.name: ssh_host_key() for _, host in stack.vm_hosts},
    )
