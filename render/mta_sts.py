"""The MTA-STS policy (RFC 8461) the frontends serve at https://mta-sts.<domain>/.well-known/mta-sts.txt.

One policy for every mail domain: they share the smtp-in hosts as MX. The `_mta-sts` TXT record
carries an id derived from this text, so senders refetch the policy exactly when it changes.
"""

from __future__ import annotations

import hashlib

from model import Stack


def policy(stack: Stack) -> str:
    """STSv1 policy text: mode and max_age from stack.dns, one `mx:` line per smtp-in host FQDN."""
    lines = [
        "version: STSv1",
        f"mode: {stack.dns.mta_sts_mode}",
        *(f"mx: {stack.fqdn(host)}" for host in stack.hosts.smtp_in),
        f"max_age: {stack.dns.mta_sts_max_age}",
    ]
    return "\n".join(lines) + "\n"


def policy_id(stack: Stack) -> str:
    """The `id=` of the `_mta-sts` TXT record: 1-32 alphanumerics, changes with the policy text."""
    return hashlib.sha256(policy(stack).encode()).hexdigest()[:20]
