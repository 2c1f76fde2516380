"""What the mail-flow tests observe in the running lab: SMTP sessions as the internet opens them
(STARTTLS on 25/587, TLS from the first byte on 465), the remote MTA's view of a sender (the
address in its Received header, SPF evaluated against the lab DNS), Postfix's own log lines on a
host, and a mailbox read on a maildrop with its own doveadm.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import ssl
import time
from collections.abc import Iterator
from email.message import Message
from unittest import mock

import dns.resolver
import spf

from lab import clients, cluster, internet
from lab.netns import in_netns

SMTPS_PORT = 465
# What the remote MTA (Postfix) writes in the topmost Received header: `from helo (name [address])`.
RECEIVED_FROM = re.compile(r"^from (?P<helo>\S+) \(\S+ \[(?:IPv6:)?(?P<address>[0-9A-Fa-f:.]+)\]\)")


def unique_address(local: str, domain: str = internet.REMOTE_DOMAIN) -> str:
    """A sender or recipient no earlier run used: rspamd greylists (sender, recipient, network)
    triples it has seen, so every test mails from its own address."""
    return f"{local}-{time.time_ns()}@{domain}"


class _SMTPS(smtplib.SMTP_SSL):
    """SMTP over TLS from the first byte to an address, with the certificate checked against a name."""

    def __init__(self, address: str, name: str, port: int, context: ssl.SSLContext):
        self._name = name
        super().__init__(address, port, local_hostname=f"client.{internet.REMOTE_DOMAIN}", context=context, timeout=30)

    def _get_socket(self, host, port, timeout):
        self._host = self._name  # what SMTP_SSL hands to wrap_socket as server_hostname
        return super()._get_socket(host, port, timeout)


@contextlib.contextmanager
def mx_session(status: dict, endpoint: dict, source: str | None = None) -> Iterator[smtplib.SMTP]:
    """An SMTP session from the internet to an smtp-in: STARTTLS on 25, implicit TLS on 465."""
    if endpoint["port"] == SMTPS_PORT:
        context = clients.tls_context(status)
        client: smtplib.SMTP = clients.connect_patiently(
            status["client_netns"],
            lambda: _SMTPS(endpoint["host"], endpoint["name"], endpoint["port"], context),
            clients.RATE_LIMIT_WAIT,
        )
        client.ehlo()
    else:
        client = clients.smtp(status, endpoint, source=source)
    try:
        yield client
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()


def rcpt_answer(client: smtplib.SMTP, sender: str, recipient: str) -> tuple[int, str]:
    """The server's answer to RCPT TO (after a MAIL FROM it must accept)."""
    code, text = client.mail(sender)
    assert code == 250, (code, text)
    code, answer = client.rcpt(recipient)
    return code, answer.decode()


def remote_sender(message: Message) -> tuple[str, str]:
    """(HELO name, address) of the client that handed this message to the remote MTA, as the
    remote MTA recorded it (its own Received header is the topmost)."""
    received = " ".join(message.get_all("Received", [])[0].split())
    found = RECEIVED_FROM.match(received)
    assert found, received
    return found["helo"], found["address"]


def spf_result(status: dict, address: str, sender: str, helo: str) -> str:
    """pyspf's verdict for `address` sending as `sender`, every DNS answer from the lab DNS."""
    resolver = clients.resolver(status)

    def lookup(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> list:
        # pyspf's dnspython lookup (spf.DNSLookup_dnspython), asking the lab DNS.
        try:
            answers = resolver.resolve(name, qtype, lifetime=timeout)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return []
        values = {
            "A": lambda r: r.address,
            "AAAA": lambda r: r.address,
            "MX": lambda r: (r.preference, r.exchange),
            "PTR": lambda r: r.target.to_text(True),
            "TXT": lambda r: r.strings,
            "SPF": lambda r: r.strings,
        }
        return [((name, qtype), values[qtype](r)) for r in answers]

    with mock.patch.object(spf, "DNSLookup", lookup), in_netns(status["client_netns"]):
        result, _explanation = spf.check2(i=address, s=sender, h=helo)
    return result


def postfix_log(host: str, message_id: str) -> list[str]:
    """The host's Postfix log lines about every queue file that held this message."""
    lines = (cluster.host_roots()[host].logs / "syslog").read_text(errors="replace").splitlines()
    queue_ids = {
        found[1]
        for line in lines
        if f"message-id={message_id}" in line and (found := re.search(r"\]: ([0-9A-F]+): message-id=", line))
    }
    return [line for line in lines if any(f": {q}: " in line for q in queue_ids)]


def wait_for_log(host: str, message_id: str, needle: str, timeout: float = 30) -> list[str]:
    """The host's log lines about this message once one of them contains `needle`."""

    def probe() -> list[str] | None:
        lines = postfix_log(host, message_id)
        return lines if any(needle in line for line in lines) else None

    found = clients.wait_for(probe, timeout, interval=0.3)
    return found or postfix_log(host, message_id)


def doveadm_message(host: str, user: str, message_id: str, timeout: float = 30) -> str | None:
    """The headers of the message with this Message-ID in the user's INBOX on a maildrop, as that
    maildrop's own doveadm reads them."""

    def probe() -> str | None:
        argv = ["doveadm", "fetch", "-u", user, "hdr", "mailbox", "INBOX", "header", "Message-ID", message_id]
        result = cluster.host_roots()[host].run(argv, timeout=30)
        return result.stdout if result.returncode == 0 and message_id in result.stdout else None

    return clients.wait_for(probe, timeout, interval=0.5)


def relay_client_sendmail(host: str, text: str) -> None:
    """`sendmail -t` on a relay client, as cron runs it: OpenSMTPD's sendmail (smtpctl) queues the
    message with the running smtpd. The Debian package installs smtpctl setgid opensmtpq; the lab's
    unpacked copy has no setgid bit, so the command runs with that group, as the bit would give it."""
    argv = ["setpriv", "--regid=opensmtpq", "--keep-groups", "/opt/opensmtpd/usr/sbin/sendmail", "-t"]
    result = cluster.host_roots()[host].run(argv, input=text, timeout=30)
    assert result.returncode == 0, result.stderr
