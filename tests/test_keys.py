"""components.keys.Keys under Pulumi's mocks: what it creates, and that its material is usable and secret."""

from __future__ import annotations

import bcrypt
import dkim
import pulumi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pulumi_mocks import (
    CERT_REQUEST,
    LOCALLY_SIGNED_CERT,
    PRIVATE_KEY,
    RANDOM_PASSWORD,
    SELF_SIGNED_CERT,
    MailMocks,
)

# The engine must be mocked before any component module is imported.
pulumi.runtime.set_mocks(MailMocks(), project="mail-cluster", stack="test", preview=False)

from test_dns_records import MESSAGE, Zones  # noqa: E402

from components.keys import Keys, dkim_resource_name, dovecot_hash, issuer_chain  # noqa: E402
from render.dns_records import zone_texts  # noqa: E402
from render.names import certificate_names, service_users  # noqa: E402
from render.throwaway import throwaway_keys  # noqa: E402

TLS_KEYS = ("mail-cluster:tls_certificate", "mail-cluster:tls_private_key")


@pytest.fixture
def mocks():
    """A fresh engine per test: its inventory holds this test's resources only."""
    mocks = MailMocks()
    pulumi.runtime.set_mocks(mocks, project="mail-cluster", stack="test", preview=False)
    pulumi.runtime.set_all_config({})
    yield mocks
    pulumi.runtime.set_all_config({})


def _is_secret(output: pulumi.Output) -> pulumi.Output[bool]:
    return pulumi.Output.from_input(output.is_secret())


def _pairs(stack) -> set[tuple[str, str]]:
    return {(d.name, k.selector) for d in stack.domains for k in d.dkim}


@pulumi.runtime.test
def test_one_dkim_key_per_domain_and_selector_not_per_host(stacks, stack_name, mocks):
    stack = stacks[stack_name]
    keys = Keys("keys", stack)

    def check(material):
        dkim_keys = [r for r in mocks.of_type(PRIVATE_KEY) if r.inputs["algorithm"] == "RSA"]
        assert sorted(r.name for r in dkim_keys) == sorted(dkim_resource_name(*pair) for pair in _pairs(stack))
        assert {r.inputs["rsaBits"] for r in dkim_keys} == {2048.0}
        assert set(material.dkim_keys) == set(keys.dkim_public) == _pairs(stack)

    return keys.material.apply(check)


@pulumi.runtime.test
def test_material_is_secret_and_public_keys_are_not(stacks, mocks):
    keys = Keys("keys", stacks["lab"])
    pair = next(iter(keys.dkim_public))

    def check(flags):
        assert flags == [True, False, False]

    return pulumi.Output.all(
        _is_secret(keys.material), _is_secret(keys.dkim_public[pair]), _is_secret(keys.ca_cert)
    ).apply(check)


@pulumi.runtime.test
def test_dkim_keys_sign_what_the_published_records_verify(stacks, mocks):
    stack = stacks["lab"]
    keys = Keys("keys", stack)
    pairs = list(keys.dkim_public)

    def check(values):
        material, public = values[0], dict(zip(pairs, values[1:], strict=True))
        view = Zones(zone_texts(stack, public))
        for (domain, selector), pem in material.dkim_keys.items():
            message = MESSAGE.replace(b"{domain}", domain.encode())
            signature = dkim.sign(message, selector.encode(), domain.encode(), pem.encode())
            assert dkim.verify(signature + message, dnsfunc=view.dkim_lookup), (domain, selector)

    return pulumi.Output.all(keys.material, *(keys.dkim_public[p] for p in pairs)).apply(check)


def _checkpw(plain: str, blf_crypt: str) -> bool:
    assert blf_crypt.startswith("{BLF-CRYPT}$2y$"), blf_crypt
    return bcrypt.checkpw(plain.encode(), blf_crypt.removeprefix("{BLF-CRYPT}").encode())


@pulumi.runtime.test
def test_generated_passwords_come_with_dovecot_hashes(stacks, stack_name, mocks):
    stack = stacks[stack_name]
    keys = Keys("keys", stack)
    users = service_users(stack)
    generated = [m.name for m in stack.mailboxes if m.password_hash is None]

    def check(material):
        names = {r.name for r in mocks.of_type(RANDOM_PASSWORD)}
        expected = {"doveadm-password", "srs-secret", "roundcube-des-key"}
        assert names == expected | {f"sasl-{u}" for u in users} | {f"mailbox-{m}" for m in generated}
        assert set(material.sasl_passwords) == set(users)
        assert set(material.mailbox_passwords) == set(generated)
        for user, plain in [*material.sasl_passwords.items(), *material.mailbox_passwords.items()]:
            assert _checkpw(plain, material.password_hashes[user]), user
        for mailbox in stack.mailboxes:
            if mailbox.password_hash:
                assert material.password_hashes[mailbox.name] == mailbox.password_hash
        assert len(material.roundcube_des_key) == 24
        secrets = [material.doveadm_password, material.srs_secret, material.roundcube_des_key]
        assert all(s.isalnum() for s in secrets + list(material.sasl_passwords.values()))
        assert len(set(secrets)) == len(secrets)

    return keys.material.apply(check)


@pulumi.runtime.test
def test_internal_ca_issues_one_certificate_for_every_name(stacks, mocks):
    stack = stacks["lab"]
    keys = Keys("keys", stack)

    def check(material):
        (request,) = mocks.of_type(CERT_REQUEST)
        assert request.inputs["dnsNames"] == certificate_names(stack)
        (ca_args,) = mocks.of_type(SELF_SIGNED_CERT)
        assert ca_args.inputs["isCaCertificate"] is True
        leaf, ca_in_chain = x509.load_pem_x509_certificates(material.tls_cert.encode())
        ca = x509.load_pem_x509_certificate(material.ca_cert.encode())
        assert ca_in_chain == ca
        leaf.verify_directly_issued_by(ca)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == certificate_names(stack)
        key = serialization.load_pem_private_key(material.tls_key.encode(), None)
        assert key.public_key() == leaf.public_key()

    return keys.material.apply(check)


@pulumi.runtime.test
def test_operator_certificate_from_config_replaces_the_internal_one(stacks, keys, mocks):
    stack, supplied = stacks["lab"], keys["lab"]
    pulumi.runtime.set_all_config(
        {TLS_KEYS[0]: supplied.tls_cert, TLS_KEYS[1]: supplied.tls_key}, secret_keys=list(TLS_KEYS)
    )
    keys_ = Keys("keys", stack)

    def check(material):
        assert not mocks.of_type(CERT_REQUEST) and not mocks.of_type(LOCALLY_SIGNED_CERT)
        assert not mocks.of_type(SELF_SIGNED_CERT)
        assert material.tls_cert == supplied.tls_cert
        assert material.tls_key == supplied.tls_key
        assert material.ca_cert == supplied.ca_cert

    return keys_.material.apply(check)


def test_certificate_without_its_key_is_refused(stacks, mocks):
    with pytest.raises(ValueError, match="tls_private_key"):
        Keys("keys", stacks["lab"], tls_certificate=pulumi.Output.secret("cert"))


@pulumi.runtime.test
def test_every_key_is_a_child_of_the_component(stacks, mocks):
    keys = Keys("keys", stacks["lab"])

    def check(_):
        assert [r.name for r in mocks.resources if r.typ == "mail:keys:Keys"] == ["keys"]
        monitor = pulumi.runtime.settings.get_monitor()
        children = [urn for urn in monitor.resources if not urn.endswith("mail:keys:Keys::keys")]
        assert children and all("::mail:keys:Keys$" in urn for urn in children)

    return keys.material.apply(check)


def test_a_second_keys_component_is_refused(stacks, mocks):
    """One stack, one set of keys: the same child names twice are caught before an engine would."""

    @pulumi.runtime.test
    def build_twice():
        Keys("keys", stacks["lab"])
        return Keys("more-keys", stacks["lab"]).material

    with pytest.raises(ValueError, match="duplicate resource name"):
        build_twice()


def test_bcrypt_prefixes_become_dovecots_2y():
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    assert hashed.startswith("$2b$")
    converted = dovecot_hash(hashed)
    assert converted == "{BLF-CRYPT}$2y$" + hashed[4:]
    assert dovecot_hash("$2a$" + hashed[4:]) == converted
    with pytest.raises(ValueError):
        dovecot_hash("plaintext")


def test_issuer_chain_is_what_follows_the_leaf(stacks):
    material = throwaway_keys(stacks["lab"])
    assert issuer_chain(material.tls_cert) == material.ca_cert
    assert issuer_chain(material.ca_cert) == material.ca_cert
