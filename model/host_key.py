"""SSH host keys as the pushes pin them: parsed once, written as `<type> <base64>`.

Every push connection carries its host's public key (pulumi-command's `host_key`); a host that
presents another key gets nothing. What the provider does with it (pulumi-command 1.2.1,
provider/pkg/provider/remote/connection.go):
- :88-94  the value is parsed with ssh.ParseAuthorizedKey (an authorized_keys / known_hosts
          style line: `<type> <base64> [comment]`), checked with ssh.FixedHostKey, and the client
          offers only that key's type (`HostKeyAlgorithms = [publicKey.Type()]`);
- :95-97  without it, ssh.InsecureIgnoreHostKey: any key is accepted;
- :150-187, 198-201  every dial error, a host key mismatch included, is retried (dial_error_limit
          times, 100 ms growing 1.5x up to 5 s between tries) before the push fails.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pydantic import AfterValidator


def parse_host_key(text: str) -> str:
    """`<type> <base64>` of an OpenSSH public key line (comment dropped); ValueError if it is none
    or one the provider cannot check against Debian's sshd."""
    words = text.split()
    try:
        key = serialization.load_ssh_public_key(" ".join(words[:2]).encode())
    except (ValueError, TypeError, binascii.Error, UnsupportedAlgorithm):
        raise ValueError("not an SSH public key (want a line like `ssh-ed25519 AAAA...`)") from None
    if isinstance(key, rsa.RSAPublicKey):
        # connection.go:94 offers the key's type as the only host key algorithm: for RSA that is
        # `ssh-rsa` (SHA-1 signatures), which OpenSSH 8.8 and later (Debian 12: 9.2) refuse. Seen with
        # Debian 12's sshd on an RSA host key and `ssh -o HostKeyAlgorithms=ssh-rsa`: "no matching
        # host key type found. Their offer: rsa-sha2-512,rsa-sha2-256".
        raise ValueError(
            "an RSA host key: pulumi-command would only accept its SHA-1 `ssh-rsa` signature, which "
            "Debian 12's sshd refuses; pin the host's ED25519 key (/etc/ssh/ssh_host_ed25519_key.pub)"
        )
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError(f"a {words[0]} key: pin the host's ED25519 key (/etc/ssh/ssh_host_ed25519_key.pub)")
    return " ".join(words[:2])


def fingerprint(public_openssh: str) -> str:
    """`SHA256:...` as `ssh-keygen -lf` and ssh's own messages print it."""
    blob = base64.b64decode(public_openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


HostKey = Annotated[str, AfterValidator(parse_host_key)]
