"""The TLS policy of every service clients reach, in one place, spelt for each daemon.

Where clients send passwords or read mail (465, 587, 993, 4190, 443): TLS 1.2 and newer, and for
TLS 1.2 only Mozilla's "intermediate" suites (ECDHE/DHE with AES-GCM or ChaCha20: no anonymous,
NULL, export, RC4 or CBC suites); TLS 1.3 suites are OpenSSL's (all AEAD).

Port 25 (MX, and smtp-in -> maildrop) is different: TLS there is opportunistic, as RFC 3207 and
every MTA expect. A sending MTA that fails a handshake retries in clear text, so refusing its TLS
1.0 would only make its mail travel unencrypted: port 25 keeps Postfix's opportunistic defaults
(TLS 1.0 and newer, "medium" suites) but never offers an anonymous or NULL suite.
"""

from __future__ import annotations

# NGINX's ssl_protocols; Postfix and Dovecot name the floor instead (below).
PROTOCOLS = ("TLSv1.2", "TLSv1.3")
MIN_PROTOCOL = PROTOCOLS[0]
# Mozilla's "intermediate" TLS 1.2 suites (OpenSSL names), the order they list them in.
CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
# Never offered anywhere, port 25 included (OpenSSL cipher-string names Postfix's *_exclude_ciphers take).
EXCLUDED = ("aNULL", "eNULL", "EXPORT", "RC4", "DES", "3DES", "MD5")


def postfix_values() -> dict[str, str]:
    """Variables of templates/shared/postfix/main.cf.smtpd.j2's TLS policy."""
    return {
        "tls_mandatory_protocols": f">={MIN_PROTOCOL}",
        "tls_high_cipherlist": CIPHERS,
        "tls_excluded_ciphers": ", ".join(EXCLUDED),
    }
