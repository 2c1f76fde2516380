"""Pulumi mocks for the component tests: the engine and providers replaced by real-looking outputs.

    mocks = MailMocks()
    pulumi.runtime.set_mocks(mocks, project="mail-cluster", stack="lab", preview=False)
    ... build components inside a @pulumi.runtime.test function ...
    mocks.of_type(PRIVATE_KEY)          # inventory: every resource registered, with its inputs

What the mock engine does not do, this does: it refuses a second resource of the same type and
name, and it answers pulumi-tls with real keys and certificates (cryptography) and pulumi-random
with real passwords and bcrypt hashes, so a consumer can load, sign and verify with them.
It cannot mark outputs secret: components must wrap private outputs in `pulumi.Output.secret`.

Inputs arrive under their wire names (camelCase) and numbers as floats (`rsaBits: 2048.0`).
Add a handler for a new resource type to HANDLERS (type token -> function(args) -> outputs).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets
import string
from collections.abc import Callable
from ipaddress import ip_address

import bcrypt
import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pulumi.runtime import MockCallArgs, MockResourceArgs

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
SELF_SIGNED_CERT = "tls:index/selfSignedCert:SelfSignedCert"
CERT_REQUEST = "tls:index/certRequest:CertRequest"
LOCALLY_SIGNED_CERT = "tls:index/locallySignedCert:LocallySignedCert"
RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"
RANDOM_STRING = "random:index/randomString:RandomString"
CURVES = {"P224": ec.SECP224R1, "P256": ec.SECP256R1, "P384": ec.SECP384R1, "P521": ec.SECP521R1}
SUBJECT_FIELDS = {
    "commonName": NameOID.COMMON_NAME,
    "organization": NameOID.ORGANIZATION_NAME,
    "organizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "country": NameOID.COUNTRY_NAME,
    "locality": NameOID.LOCALITY_NAME,
    "province": NameOID.STATE_OR_PROVINCE_NAME,
}
# How a secret input arrives at the mock: wrapped in the RPC layer's secret signature.
SECRET_SIG = "4dabf18193072939515e22adb298388d"
# Cheap but real: bcrypt.checkpw accepts them; cost 4 keeps the tests fast.
BCRYPT_ROUNDS = 4


# ---- pulumi-tls ------------------------------------------------------------------------------
def _pem(data: bytes) -> str:
    return data.decode()


def private_key(args: MockResourceArgs) -> dict:
    """Like the provider: `privateKeyPem` is PKCS#1 for RSA, SEC1 for ECDSA, PKCS#8 for ED25519."""
    algorithm = args.inputs.get("algorithm", "RSA")
    if algorithm == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(args.inputs.get("rsaBits", 2048)))
        legacy = serialization.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "ECDSA":
        key = ec.generate_private_key(CURVES[args.inputs.get("ecdsaCurve", "P224")]())
        legacy = serialization.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "ED25519":
        key = ed25519.Ed25519PrivateKey.generate()
        legacy = serialization.PrivateFormat.PKCS8
    else:
        raise ValueError(f"{args.name}: unknown algorithm {algorithm!r}")
    public = key.public_key()
    none = serialization.NoEncryption()
    openssh = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    fingerprint = base64.b64encode(hashlib.sha256(base64.b64decode(openssh.split()[1])).digest()).decode()
    return {
        "privateKeyPem": _pem(key.private_bytes(serialization.Encoding.PEM, legacy, none)),
        "privateKeyPemPkcs8": _pem(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none)
        ),
        "privateKeyOpenssh": _pem(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, none)
        ),
        "publicKeyPem": _pem(
            public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        ),
        "publicKeyOpenssh": openssh.decode() + "\n",
        "publicKeyFingerprintSha256": f"SHA256:{fingerprint.rstrip('=')}",
    }


def _subject(inputs: dict) -> x509.Name:
    subject = inputs.get("subject") or {}
    return x509.Name(
        [x509.NameAttribute(SUBJECT_FIELDS[k], v) for k, v in subject.items() if k in SUBJECT_FIELDS and v]
    )


def _load_key(pem: str):
    return serialization.load_pem_private_key(pem.encode(), password=None)


def _sign(builder: x509.CertificateBuilder, inputs: dict, public_key, issuer_key) -> tuple[str, dict]:
    now = datetime.datetime.now(datetime.UTC)
    end = now + datetime.timedelta(hours=float(inputs.get("validityPeriodHours", 24)))
    is_ca = bool(inputs.get("isCaCertificate", False))
    uses = set(inputs.get("allowedUses") or [])
    builder = (
        builder.public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    usages = {u: u in uses for u in ("digital_signature", "key_encipherment", "cert_signing", "crl_signing")}
    if any(usages.values()):
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=usages["digital_signature"],
                content_commitment=False,
                key_encipherment=usages["key_encipherment"],
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=usages["cert_signing"],
                crl_sign=usages["crl_signing"],
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    extended = [
        o
        for u, o in (("server_auth", ExtendedKeyUsageOID.SERVER_AUTH), ("client_auth", ExtendedKeyUsageOID.CLIENT_AUTH))
        if u in uses
    ]
    if extended:
        builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
    certificate = builder.sign(issuer_key, hashes.SHA256())
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), {
        "validityStartTime": now.isoformat(),
        "validityEndTime": end.isoformat(),
        "readyForRenewal": False,
    }


def _sans(inputs: dict) -> list[x509.GeneralName]:
    names = [x509.DNSName(n) for n in inputs.get("dnsNames") or []]
    return names + [x509.IPAddress(ip_address(a)) for a in inputs.get("ipAddresses") or []]


def self_signed_cert(args: MockResourceArgs) -> dict:
    key = _load_key(args.inputs["privateKeyPem"])
    name = _subject(args.inputs)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name)
    if sans := _sans(args.inputs):
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    pem, times = _sign(builder, args.inputs, key.public_key(), key)
    return {"certPem": pem, **times}


def cert_request(args: MockResourceArgs) -> dict:
    key = _load_key(args.inputs["privateKeyPem"])
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject(args.inputs))
    if sans := _sans(args.inputs):
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return {"certRequestPem": csr.public_bytes(serialization.Encoding.PEM).decode()}


def locally_signed_cert(args: MockResourceArgs) -> dict:
    csr = x509.load_pem_x509_csr(args.inputs["certRequestPem"].encode())
    ca = x509.load_pem_x509_certificate(args.inputs["caCertPem"].encode())
    builder = x509.CertificateBuilder().subject_name(csr.subject).issuer_name(ca.subject)
    for extension in csr.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    pem, times = _sign(builder, args.inputs, csr.public_key(), _load_key(args.inputs["caPrivateKeyPem"]))
    return {"certPem": pem, **times}


# ---- pulumi-random ---------------------------------------------------------------------------
def _random_text(inputs: dict) -> str:
    alphabet = ""
    for flag, chars in (
        ("upper", string.ascii_uppercase),
        ("lower", string.ascii_lowercase),
        ("numeric", string.digits),
        ("special", inputs.get("overrideSpecial") or "!@#$%&*()-_=+[]{}<>:?"),
    ):
        if inputs.get(flag, True):
            alphabet += chars
    return "".join(secrets.choice(alphabet) for _ in range(int(inputs["length"])))


def random_password(args: MockResourceArgs) -> dict:
    result = _random_text(args.inputs)
    hashed = bcrypt.hashpw(result.encode(), bcrypt.gensalt(rounds=BCRYPT_ROUNDS)).decode()
    return {"result": result, "bcryptHash": hashed}


def random_string(args: MockResourceArgs) -> dict:
    return {"result": _random_text(args.inputs)}


HANDLERS: dict[str, Callable[[MockResourceArgs], dict]] = {
    PRIVATE_KEY: private_key,
    SELF_SIGNED_CERT: self_signed_cert,
    CERT_REQUEST: cert_request,
    LOCALLY_SIGNED_CERT: locally_signed_cert,
    RANDOM_PASSWORD: random_password,
    RANDOM_STRING: random_string,
}


def unsecret(value):
    """Inputs with the secret wrappers removed, so handlers and assertions see plain values."""
    if isinstance(value, dict):
        if SECRET_SIG in value and "value" in value:
            return unsecret(value["value"])
        return {k: unsecret(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unsecret(v) for v in value]
    return value


class MailMocks(pulumi.runtime.Mocks):
    """Records every resource (components too) and answers each type from HANDLERS."""

    def __init__(
        self,
        handlers: dict[str, Callable[[MockResourceArgs], dict]] | None = None,
        memo: dict | None = None,
    ):
        self.handlers = {**HANDLERS, **(handlers or {})}
        self.resources: list[MockResourceArgs] = []
        self.calls: list[MockCallArgs] = []
        # Shared between runs: a resource with the same type, name and inputs gets the same
        # outputs, as from a stack's state, so two runs of the program can be compared.
        self.memo = memo

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict]:
        # Stricter than the engine (whose URN also holds the parent's type): a name says which
        # one of its type a resource is across the whole stack.
        if any(r.typ == args.typ and r.name == args.name for r in self.resources):
            raise ValueError(f"duplicate resource name {args.name!r} for type {args.typ}")
        # The engine echoes inputs as outputs (secret ones stay secret); handlers see plain values.
        echoed = args.inputs
        args.inputs = unsecret(echoed)
        self.resources.append(args)
        handler = self.handlers.get(args.typ)
        if handler and self.memo is not None:
            key = (args.typ, args.name, json.dumps(args.inputs, sort_keys=True, default=str))
            if key not in self.memo:
                self.memo[key] = handler(args)
            outputs = self.memo[key]
        else:
            outputs = handler(args) if handler else {}
        return f"{args.name}-id", {**echoed, **outputs}

    def call(self, args: MockCallArgs) -> tuple[dict, list | None]:
        self.calls.append(args)
        return {}, None

    # ---- inventory ----------------------------------------------------------------------------
    def of_type(self, typ: str) -> list[MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]

    def named(self, typ: str, name: str) -> MockResourceArgs:
        return next(r for r in self.resources if r.typ == typ and r.name == name)
