"""Traffic through the running lab as the internet makes it, and what the maildrops hold: the
remote MTA's sendmail, many internet MTAs on extra client addresses (MX lookup, fallback, retry),
IMAP straight to one maildrop, logins through the frontend. The failover tests and the lab
benchmarks use it (messages: lab.clients.message)."""

from __future__ import annotations

import contextlib
import imaplib
import random
import re
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from lab import clients, cluster, internet
from lab.host_root import DAEMON_ENV
from lab.netns import in_netns
from model import load_stack_file

# ---- mail ---------------------------------------------------------------------------------------


def remote_send(sender: str, recipient: str, text: str) -> None:
    """Hand a message to the internet's remote MTA with its own sendmail(1): it looks up the
    recipient domain's MX records in the lab DNS and delivers as any MTA would (falling back to
    the next MX, retrying later what was deferred)."""
    root = cluster.host_roots()[internet.REMOTE_MTA_HOST]
    result = root.run(["sendmail", "-i", "-f", sender, recipient], input=text, env=DAEMON_ENV, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"remote MTA sendmail: {result.stderr.strip()}")


@contextlib.contextmanager
def extra_clients(status: dict, count: int, first: int = 100) -> Iterator[list[str]]:
    """`count` more client addresses in the internet namespace (203.0.113.<first>...), for the block.
    The case study's smtp-in takes at most 60 messages and 10 connections a minute from one client
    address (smtpd_client_message_rate_limit, smtpd_client_connection_rate_limit), so a burst that
    must arrive within minutes comes from many internet MTAs, as it would in production."""
    addresses = [str(internet.IPV4[first + n]) for n in range(count)]
    netns = status["client_netns"]
    for address in addresses:
        subprocess.run(
            ["ip", "-n", netns, "addr", "add", f"{address}/{internet.IPV4.prefixlen}", "dev", "eth0"], check=True
        )
    try:
        yield addresses
    finally:
        for address in addresses:
            subprocess.run(["ip", "-n", netns, "addr", "del", f"{address}/{internet.IPV4.prefixlen}", "dev", "eth0"])


def mx_hosts(status: dict, domain: str) -> list[tuple[int, str, list[str]]]:
    """The domain's MX records from the lab DNS, as an MTA reads them: (preference, name, addresses)."""
    hosts = []
    for record in clients.lookup(status, domain, "MX"):
        preference, name = record.split()
        addresses = [a for rdtype in ("AAAA", "A") for a in clients.lookup(status, name.rstrip("."), rdtype)]
        hosts.append((int(preference), name.rstrip("."), addresses))
    return sorted(hosts)


# Messages per SMTP session before a Sender picks an MX again (Postfix reuses a cached session
# for a while, then chooses anew; smtp_connection_reuse_time_limit).
REUSE_LIMIT = 10


class Sender:
    """A small internet MTA on one client address: tries the MX hosts in preference order (equal
    preferences at random), each host's addresses in turn, keeps a session for the next message,
    and retries what no MX took (refused, 4xx, dropped session) after `retry` seconds, as any MTA
    retries deferred mail. Postfix's own retry would wait minutes (minimal_backoff_time 300s)."""

    def __init__(
        self,
        status: dict,
        source: str,
        mx: list[tuple[int, str, list[str]]],
        retry: float = 2.0,
        netns: str | None = None,
        starttls: bool = True,
    ):
        self.status, self.source, self.mx, self.retry = status, source, mx, retry
        self.netns, self.starttls = netns, starttls
        self.session: smtplib.SMTP | None = None
        self.session_host = ""
        self.session_messages = 0
        self.deferrals = 0
        self.accepted: list[tuple[str, str]] = []  # (message id, MX host that took it)

    def _order(self) -> list[tuple[str, list[str]]]:
        by_preference: dict[int, list[tuple[str, list[str]]]] = {}
        for preference, name, addresses in self.mx:
            by_preference.setdefault(preference, []).append((name, addresses))
        ordered = []
        for preference in sorted(by_preference):
            group = by_preference[preference]
            random.shuffle(group)
            ordered += group
        return ordered

    def close(self) -> None:
        if self.session is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self.session.quit()
        self.session, self.session_messages = None, 0

    def _try(self, name: str, addresses: list[str], sender: str, recipient: str, text: str) -> bool:
        if self.session is not None and self.session_host != name:
            self.close()
        usable = [a for a in addresses if (":" in a) == (":" in self.source)]  # the source's family
        for address in [None] if self.session is not None else usable:
            try:
                if self.session is None:
                    endpoint = {"host": address, "port": 25, "name": name}
                    self.session = clients.smtp(
                        self.status,
                        endpoint,
                        netns=self.netns,
                        source=self.source,
                        starttls=self.starttls,
                        patient=False,
                    )
                    self.session_host = name
                self.session.sendmail(sender, [recipient], text)
                self.session_messages += 1
                if self.session_messages >= REUSE_LIMIT:
                    self.close()
                return True
            except (smtplib.SMTPException, OSError):
                self.close()
        return False

    def send(self, sender: str, recipient: str, text: str, message_id: str, deadline: float) -> None:
        while True:
            if self.session is not None and self._try(self.session_host, [], sender, recipient, text):
                self.accepted.append((message_id, self.session_host))
                return
            for name, addresses in self._order():
                if self._try(name, addresses, sender, recipient, text):
                    self.accepted.append((message_id, name))
                    return
            self.deferrals += 1
            if time.monotonic() + self.retry > deadline:
                raise TimeoutError(f"{self.source}: no MX took {message_id}")
            time.sleep(self.retry)


def senders(status: dict, sources: list[str], domain: str, starttls: bool = True) -> list[Sender]:
    mx = mx_hosts(status, domain)
    return [Sender(status, source, mx, starttls=starttls) for source in sources]


def send_from_many(senders: list[Sender], messages: list[tuple[str, str, str, str]], timeout: float = 300) -> None:
    """(message id, sender, recipient, text) spread over the senders, which send in parallel."""
    deadline = time.monotonic() + timeout

    def work(index: int) -> None:
        sender = senders[index]
        try:
            for message_id, frm, rcpt, text in messages[index :: len(senders)]:
                sender.send(frm, rcpt, text, message_id, deadline)
        finally:
            sender.close()

    with ThreadPoolExecutor(max_workers=len(senders)) as pool:
        list(pool.map(work, range(len(senders))))


# ---- IMAP straight to a maildrop (bypassing the frontends) --------------------------------------


@dataclass(frozen=True)
class Maildrop:
    host: str
    address: str  # its site-local IPv6 address
    netns: str  # a frontend's namespace: where NGINX connects to the maildrops from


def maildrops(status: dict) -> dict[str, Maildrop]:
    """host name -> how to reach its IMAPS directly, for the two maildrops of the lab stack."""
    stack = load_stack_file(status["stack"])
    frontend = next(h for h in status["hosts"] if h["role"] == "frontend")
    return {h.name: Maildrop(h.name, str(h.ipv6), frontend["netns"]) for h in stack.hosts.maildrop}


class _IMAPS(imaplib.IMAP4_SSL):
    def __init__(self, address: str, name: str, port: int, status: dict, timeout: float, proxy: bool = False):
        self._address = address
        self._proxy = proxy
        super().__init__(name, port, ssl_context=clients.tls_context(status), timeout=timeout)

    def _create_socket(self, timeout):
        sock = socket.create_connection((self._address, self.port), timeout)
        if self._proxy:
            sock.sendall(proxy_header(sock))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def proxy_header(sock: socket.socket) -> bytes:
    """The PROXY protocol (v1) line NGINX opens a backend connection with, naming this socket's own
    address as the client: the maildrops' IMAPS and ManageSieve take nothing else from a frontend."""
    family = "TCP6" if sock.family == socket.AF_INET6 else "TCP4"
    source, destination = sock.getsockname(), sock.getpeername()
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def maildrop_imap(status: dict, drop: Maildrop, account: dict, timeout: float = 15) -> imaplib.IMAP4:
    """Logged in on one maildrop's IMAPS (as NGINX reaches it: from a frontend, with a PROXY
    header), INBOX selected read-only."""
    endpoint = status["endpoints"]["imaps"]
    with in_netns(drop.netns):
        client = _IMAPS(drop.address, endpoint["name"], endpoint["port"], status, timeout, proxy=True)
    client.login(account["user"], account["password"])
    client.select("INBOX", readonly=True)
    return client


MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>]*>)", re.IGNORECASE | re.MULTILINE)


def message_ids(client: imaplib.IMAP4, pattern: str) -> list[str]:
    """Message-IDs (one per message, duplicates kept) of INBOX messages whose Message-ID contains
    `pattern`: SEARCH HEADER, then FETCH of that header only."""
    _, found = client.search(None, "HEADER", "Message-ID", pattern)
    numbers = found[0].split()
    ids: list[str] = []
    for start in range(0, len(numbers), 500):
        chunk = b",".join(numbers[start : start + 500]).decode()
        _, data = client.fetch(chunk, "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        for item in data:
            if isinstance(item, tuple) and (m := MESSAGE_ID.search(item[1])):
                ids.append(m.group(1).decode())
    return ids


def ids_on(status: dict, drop: Maildrop, account: dict, pattern: str) -> list[str]:
    client = maildrop_imap(status, drop, account)
    try:
        return message_ids(client, pattern)
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()


def frontend_login(status: dict, account: dict, timeout: float = 5) -> bool:
    """One IMAPS login through the frontend endpoint; True when it succeeds."""
    endpoint = status["endpoints"]["imaps"]
    try:
        with in_netns(status["client_netns"]):
            client = _IMAPS(endpoint["host"], endpoint["name"], endpoint["port"], status, timeout)
        try:
            client.login(account["user"], account["password"])
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                client.logout()
    except (imaplib.IMAP4.error, OSError):
        return False
    return True


# ---- a steady stream of inbound mail ----------------------------------------------------------


@dataclass
class Sent:
    message_id: str
    first_try: float  # time.monotonic() when the MTA first tried to hand it over
    accepted: float  # ... and when an MX took it


class SteadySender:
    """Internet MTAs (one per source address) that keep mailing `recipient`, each message from
    its own sender address (no greylisting triple repeats), until stopped: what a change rolling
    through smtp-in must not disturb. Each MTA falls back to another MX and retries as Sender does;
    `sent` records when each message was first tried and when an MX took it."""

    def __init__(self, status: dict, sources: list[str], recipient: str, tag: str, pause: float = 0.2):
        self.status, self.recipient, self.tag, self.pause = status, recipient, tag, pause
        self.mtas = senders(status, sources, recipient.split("@")[1])
        self.sent: list[Sent] = []
        self._stop = False
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=len(self.mtas))
        self._work = [self._pool.submit(self._run, mta, n) for n, mta in enumerate(self.mtas)]

    def _run(self, mta: Sender, index: int) -> None:
        count = 0
        try:
            while not self._stop:
                sender = f"{self.tag}-{index}-{count}@{internet.REMOTE_DOMAIN}"
                message_id, text = clients.message(sender, self.recipient, f"steady {index} {count}", self.tag)
                first = time.monotonic()
                mta.send(sender, self.recipient, text, message_id, first + 300)
                with self._lock:
                    self.sent.append(Sent(message_id, first, time.monotonic()))
                count += 1
                time.sleep(self.pause)
        finally:
            mta.close()

    def count(self) -> int:
        with self._lock:
            return len(self.sent)

    def stop(self, at_least: int = 0, timeout: float = 300) -> list[Sent]:
        """Stop once `at_least` messages were taken; raises what an MTA raised (e.g. no MX took a
        message within 300 s). Returns every message taken."""
        deadline = time.monotonic() + timeout
        while self.count() < at_least and time.monotonic() < deadline and not any(w.done() for w in self._work):
            time.sleep(0.2)
        self._stop = True
        for work in self._work:
            work.result()
        self._pool.shutdown()
        return list(self.sent)
