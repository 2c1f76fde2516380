"""Clients the way a test or an operator uses the running lab: from a namespace (the internet's by
default), with TLS verified against the lab CA and the service's name (the certificate names
services and hosts, not addresses), answers read from the lab DNS.

    status = lab.cluster.status()
    with submission(status, account) as smtp: smtp.sendmail(...)
    message = imap_message(status, account, message_id)
"""

from __future__ import annotations

import contextlib
import email.utils
import imaplib
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

import dkim
import dns.resolver

from lab import internet
from lab.netns import in_netns

T = TypeVar("T")
S = TypeVar("S", bound=smtplib.SMTP)

# Postfix's anvil counts connections per client in windows of anvil_rate_time_unit (60 s).
RATE_LIMIT_WAIT = 75


def message(sender: str, recipient: str, subject: str, tag: str | None = None) -> tuple[str, str]:
    """(Message-ID, text) of a plain, well-formed message (rspamd scores it far below greylisting);
    the Message-ID, `<tag-nanoseconds@sender's domain>`, is new each call (tag: the subject's words)."""
    message_id = f"<{tag or subject.replace(' ', '-')}-{time.time_ns()}@{sender.split('@')[1]}>"
    text = (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject}\r\nMessage-ID: {message_id}\r\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{subject}.\r\nSent by a lab client.\r\n"
    )
    return message_id, text


def tls_context(status: dict) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=status["ca_file"])


def connect_patiently(netns: str, connect: Callable[[], S], wait: float = 0) -> S:
    """connect() in `netns`, again for up to `wait` seconds while smtp-in answers `421 too many
    connections`.

    smtp-in lets one client address open 10 connections a minute (the case study's
    smtpd_client_connection_rate_limit): like an MTA, wait for that minute to pass, so that
    many tests may share one client address."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with in_netns(netns):
                return connect()
        except smtplib.SMTPConnectError as e:
            if e.smtp_code != 421 or b"too many connections" not in e.smtp_error or time.monotonic() > deadline:
                raise
            time.sleep(2)


def smtp(
    status: dict,
    endpoint: dict,
    *,
    netns: str | None = None,
    source: str | None = None,
    starttls: bool = True,
    patient: bool = True,
) -> smtplib.SMTP:
    """An SMTP session to endpoint {"host", "port", "name"}, after STARTTLS unless told otherwise;
    `source` picks the client address (lab.internet: allowed, other or DNSBL-listed client).
    `patient`: wait out smtp-in's connection rate limit (connect_patiently); otherwise its 421 is
    the caller's, e.g. an MTA that tries the next MX."""
    client = connect_patiently(
        netns or status["client_netns"],
        lambda: smtplib.SMTP(
            endpoint["host"],
            endpoint["port"],
            local_hostname=f"client.{internet.REMOTE_DOMAIN}",
            source_address=(source, 0) if source else None,
            timeout=30,
        ),
        RATE_LIMIT_WAIT if patient else 0,
    )
    client._host = endpoint["name"]  # the name STARTTLS checks the certificate against
    if starttls:
        client.ehlo()
        client.starttls(context=tls_context(status))
        client.ehlo()
    return client


@contextlib.contextmanager
def submission(status: dict, account: dict, netns: str | None = None) -> Iterator[smtplib.SMTP]:
    """Logged in on the submission endpoint (587, STARTTLS) as a mailbox or service account."""
    client = smtp(status, status["endpoints"]["submission"], netns=netns)
    try:
        client.login(account["user"], account["password"])
        yield client
    finally:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()


class _IMAP4TLS(imaplib.IMAP4_SSL):
    """IMAPS to an address, checking the certificate against a name."""

    def __init__(self, address: str, name: str, port: int, ssl_context: ssl.SSLContext, timeout: float):
        self._address = address
        super().__init__(name, port, ssl_context=ssl_context, timeout=timeout)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self._address, self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def imaps(status: dict, account: dict, netns: str | None = None) -> imaplib.IMAP4:
    """Logged in on the IMAPS endpoint (993) with INBOX selected."""
    endpoint = status["endpoints"]["imaps"]
    with in_netns(netns or status["client_netns"]):
        client = _IMAP4TLS(endpoint["host"], endpoint["name"], endpoint["port"], tls_context(status), timeout=15)
    client.login(account["user"], account["password"])
    client.select("INBOX")
    return client


def wait_for(probe: Callable[[], T | None], timeout: float = 30, interval: float = 0.2) -> T | None:
    """probe() until it returns something, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(interval)


def imap_message(status: dict, account: dict, message_id: str, timeout: float = 30) -> bytes | None:
    """The raw message with this Message-ID in the account's INBOX, waiting for it to arrive."""

    def probe() -> bytes | None:
        client = imaps(status, account)
        try:
            _, found = client.search(None, "HEADER", "Message-ID", message_id)
            if not found[0]:
                return None
            _, data = client.fetch(found[0].split()[-1], "(BODY.PEEK[])")
            return data[0][1]
        finally:
            client.logout()

    return wait_for(probe, timeout, interval=0.3)


def remote_message(status: dict, recipient: str, message_id: str, timeout: float = 30) -> Message | None:
    """The message with this Message-ID the remote MTA delivered to `recipient`."""

    def probe() -> Message | None:
        found = internet.read_maildir(Path(status["remote_maildir"]), recipient)
        return next((m for m in found if m["Message-ID"] == message_id), None)

    return wait_for(probe, timeout)


def resolver(status: dict) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [status["endpoints"]["dns"]["host"]]
    r.lifetime = 5
    return r


def lookup(status: dict, name: str, rdtype: str) -> list[str]:
    """Answers of the lab DNS, asked from the client namespace ([] for NXDOMAIN / no answer)."""
    with in_netns(status["client_netns"]):
        try:
            return [r.to_text() for r in resolver(status).resolve(name, rdtype)]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []


def dkim_verify(status: dict, raw: bytes) -> bool:
    """dkimpy's verdict on the first DKIM-Signature, with the key read from the lab DNS."""

    def dnsfunc(name: bytes, timeout: Any = 5) -> bytes:
        return "".join(lookup(status, name.decode().rstrip("."), "TXT")).replace('" "', "").strip('"').encode()

    return bool(dkim.verify(raw, dnsfunc=dnsfunc))
