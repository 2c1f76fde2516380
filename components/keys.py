"""Keys: every key and generated secret of the stack, from pulumi-tls and pulumi-random.

Created once per stack and kept in its state, so a `pulumi up` does not rotate anything by itself:
- one RSA 2048 DKIM key per (domain, selector), shared by every smtp-out (not one per host);
- an internal CA (ECDSA P-256) and one service certificate for every public name and host FQDN
  (render.names.certificate_names), unless the operator supplied a certificate as the secrets
  `mail-cluster:tls_certificate` / `mail-cluster:tls_private_key` (e.g. the case study's wildcard);
- the doveadm password, the PostSRSd secret, Roundcube's des_key, a SASL password per service
  user and a password for each mailbox without a hash, with `{BLF-CRYPT}` hashes for Dovecot.

`material` is the render's KeyMaterial, secret as a whole; `dkim_public` feeds the DNS records.
"""

from __future__ import annotations

import re

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from model import NAMESPACE, Stack
from render.keys import KeyMaterial, SshHostKey
from render.names import certificate_names, service_users

# Config keys read here, not by the stack model (components.PROGRAM_KEYS must list them).
TLS_CONFIG_KEYS = ("tls_certificate", "tls_private_key")
DKIM_RSA_BITS = 2048
CA_HOURS = 10 * 8760
CERT_HOURS = 8760
# A `pulumi up` within the last 30 days of the certificate replaces it (and pushes the new one).
CERT_RENEWAL_HOURS = 720
PASSWORD_LENGTH = 32
DES_KEY_LENGTH = 24
MAILBOX_PASSWORD_LENGTH = 20
PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.DOTALL)


def dovecot_hash(bcrypt_hash: str) -> str:
    """bcrypt as Dovecot's BLF-CRYPT reads it: `$2a$`/`$2b$` are the same algorithm as `$2y$`."""
    if not re.match(r"^\$2[aby]\$\d\d\$", bcrypt_hash):
        raise ValueError("not a bcrypt hash")
    return "{BLF-CRYPT}$2y$" + bcrypt_hash[4:]


def dkim_resource_name(domain: str, selector: str) -> str:
    """The key's DNS name: readable, and unique because selectors are labels without dots."""
    return f"dkim-{selector}._domainkey.{domain}"


def issuer_chain(certificate_pem: str) -> str:
    """The certificates after the leaf (a fullchain's issuers), or the certificate itself if alone."""
    certificates = PEM_CERTIFICATE.findall(certificate_pem)
    chain = certificates[1:] or certificates
    return "".join(c if c.endswith("\n") else c + "\n" for c in chain)


def operator_certificate() -> tuple[pulumi.Output[str] | None, pulumi.Output[str] | None]:
    """The operator's certificate chain and key from the stack's secret config, if set."""
    config = pulumi.Config(NAMESPACE)
    return config.get_secret(TLS_CONFIG_KEYS[0]), config.get_secret(TLS_CONFIG_KEYS[1])


class Keys(pulumi.ComponentResource):
    material: pulumi.Output[KeyMaterial]
    dkim_public: dict[tuple[str, str], pulumi.Output[str]]
    ca_cert: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        stack: Stack,
        tls_certificate: pulumi.Input[str] | None = None,
        tls_private_key: pulumi.Input[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        """tls_certificate (full chain PEM) and tls_private_key: the operator's certificate; both
        None: read from the config (TLS_CONFIG_KEYS); absent there too: the internal CA issues one."""
        super().__init__("mail:keys:Keys", name, None, opts)
        self._child = pulumi.ResourceOptions(parent=self)
        if tls_certificate is None and tls_private_key is None:
            tls_certificate, tls_private_key = operator_certificate()
        if (tls_certificate is None) != (tls_private_key is None):
            raise ValueError(
                f"{NAMESPACE}:tls_certificate and {NAMESPACE}:tls_private_key are set together or not at all"
            )

        dkim = {
            (domain.name, key.selector): tls.PrivateKey(
                dkim_resource_name(domain.name, key.selector),
                algorithm="RSA",
                rsa_bits=DKIM_RSA_BITS,
                opts=self._child,
            )
            for domain in stack.domains
            for key in domain.dkim
        }
        self.dkim_public = {pair: key.public_key_pem for pair, key in dkim.items()}

        if tls_certificate is None:
            tls_cert, tls_key, self.ca_cert = self._internal_certificate(stack)
        else:
            tls_cert = pulumi.Output.from_input(tls_certificate)
            tls_key = pulumi.Output.from_input(tls_private_key)
            self.ca_cert = tls_cert.apply(issuer_chain)

        doveadm = self._password("doveadm-password")
        srs = self._password("srs-secret")
        des_key = self._password("roundcube-des-key", DES_KEY_LENGTH)
        sasl = {user: self._password(f"sasl-{user}") for user in service_users(stack)}
        generated = {
            m.name: self._password(f"mailbox-{m.name}", MAILBOX_PASSWORD_LENGTH)
            for m in stack.mailboxes
            if m.password_hash is None
        }
        configured = {m.name: m.password_hash for m in stack.mailboxes if m.password_hash is not None}
        # Each VM's SSH host key: cloud-init installs it, every push to the VM pins it.
        host_keys = {
            host.name: tls.PrivateKey(f"ssh-host-{host.name}", algorithm="ED25519", opts=self._child)
            for _, host in stack.vm_hosts
        }
        host_names = list(host_keys)
        dkim_pairs = list(dkim)
        sasl_users, mailbox_names = list(sasl), list(generated)

        def material(values: dict) -> KeyMaterial:
            hashes = dict(configured)
            hashes.update(zip(mailbox_names, map(dovecot_hash, values["mailbox_hashes"]), strict=True))
            hashes.update(zip(sasl_users, map(dovecot_hash, values["sasl_hashes"]), strict=True))
            return KeyMaterial(
                tls_cert=values["tls_cert"],
                tls_key=values["tls_key"],
                ca_cert=values["ca_cert"],
                dkim_keys=dict(zip(dkim_pairs, values["dkim"], strict=True)),
                doveadm_password=values["doveadm"],
                srs_secret=values["srs"],
                roundcube_des_key=values["des_key"],
                sasl_passwords=dict(zip(sasl_users, values["sasl"], strict=True)),
                password_hashes={name: hashes[name] for name in [*stack.mailbox_names, *sasl_users]},
                mailbox_passwords=dict(zip(mailbox_names, values["mailbox"], strict=True)),
                ssh_host_keys={
                    name: SshHostKey(private_openssh=private, public_openssh=" ".join(public.split()[:2]))
                    for name, private, public in zip(
                        host_names, values["host_private"], values["host_public"], strict=True
                    )
                },
            )

        # The mock engine (and a provider that forgets) leave private outputs unmarked: mark here.
        self.material = pulumi.Output.secret(
            pulumi.Output.all(
                tls_cert=tls_cert,
                tls_key=tls_key,
                ca_cert=self.ca_cert,
                dkim=pulumi.Output.all(*(dkim[pair].private_key_pem for pair in dkim_pairs)),
                doveadm=doveadm.result,
                srs=srs.result,
                des_key=des_key.result,
                sasl=pulumi.Output.all(*(sasl[u].result for u in sasl_users)),
                sasl_hashes=pulumi.Output.all(*(sasl[u].bcrypt_hash for u in sasl_users)),
                mailbox=pulumi.Output.all(*(generated[m].result for m in mailbox_names)),
                mailbox_hashes=pulumi.Output.all(*(generated[m].bcrypt_hash for m in mailbox_names)),
                host_private=pulumi.Output.all(*(host_keys[h].private_key_openssh for h in host_names)),
                host_public=pulumi.Output.all(*(host_keys[h].public_key_openssh for h in host_names)),
            ).apply(material)
        )
        self.register_outputs(
            {
                "ca_cert": self.ca_cert,
                "dkim_public": {dkim_resource_name(*pair): pem for pair, pem in self.dkim_public.items()},
            }
        )

    def _password(self, name: str, length: int = PASSWORD_LENGTH) -> random.RandomPassword:
        # Letters and digits only: these land in Dovecot, PHP and opensmtpd's `user:password` files
        # unquoted; 32 of them are ~190 bits.
        return random.RandomPassword(name, length=length, special=False, opts=self._child)

    def _internal_certificate(self, stack: Stack) -> tuple[pulumi.Output[str], pulumi.Output[str], pulumi.Output[str]]:
        """(full chain, key, CA certificate): the internal CA's certificate for every name in use."""
        names = certificate_names(stack)
        ca_key = tls.PrivateKey("ca", algorithm="ECDSA", ecdsa_curve="P256", opts=self._child)
        ca = tls.SelfSignedCert(
            "ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(common_name=f"{stack.infra_domain} mail CA"),
            validity_period_hours=CA_HOURS,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
            set_subject_key_id=True,
            opts=self._child,
        )
        key = tls.PrivateKey("service", algorithm="ECDSA", ecdsa_curve="P256", opts=self._child)
        request = tls.CertRequest(
            "service",
            private_key_pem=key.private_key_pem,
            subject=tls.CertRequestSubjectArgs(common_name=names[0]),
            dns_names=names,
            opts=self._child,
        )
        cert = tls.LocallySignedCert(
            "service",
            cert_request_pem=request.cert_request_pem,
            ca_private_key_pem=ca_key.private_key_pem,
            ca_cert_pem=ca.cert_pem,
            validity_period_hours=CERT_HOURS,
            early_renewal_hours=CERT_RENEWAL_HOURS,
            allowed_uses=["digital_signature", "key_encipherment", "server_auth", "client_auth"],
            set_subject_key_id=True,
            opts=self._child,
        )
        # The chain as daemons serve it: leaf, then the CA (as render.throwaway writes it).
        return pulumi.Output.concat(cert.cert_pem, ca.cert_pem), key.private_key_pem, ca.cert_pem
