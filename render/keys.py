"""Key material and generated secrets the render needs, as plain strings.

In Pulumi these come from pulumi-tls / pulumi-random outputs (components/keys.py); offline
(`python -m render`, the lab, tests) from render.throwaway. The render never generates anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SshHostKey:
    """A VM's SSH host key (ED25519), made by the program: cloud-init installs it, the push pins it."""

    private_openssh: str
    # `ssh-ed25519 AAAA...` (no comment): what the push connection's `host_key` pins.
    public_openssh: str


@dataclass(frozen=True)
class KeyMaterial:
    # One certificate for every public name and host FQDN (the case study's wildcard).
    tls_cert: str
    tls_key: str
    # The CA that issued tls_cert: site-local services verify each other with it.
    ca_cert: str
    # (domain, selector) -> RSA private key PEM, for OpenDKIM.
    dkim_keys: Mapping[tuple[str, str], str]
    doveadm_password: str
    srs_secret: str
    roundcube_des_key: str
    # smtp-out service users (roundcube, relay groups) -> plaintext, for the clients' configs.
    sasl_passwords: Mapping[str, str]
    # user -> `{BLF-CRYPT}` hash: smtp-out sasl-users (mailboxes + service users), maildrop-users.
    password_hashes: Mapping[str, str]
    # Mailboxes without a hash in the stack: their generated plaintext (the lab's test accounts).
    mailbox_passwords: Mapping[str, str]
    # VM host name -> its SSH host key.
    ssh_host_keys: Mapping[str, SshHostKey] = field(default_factory=dict)
