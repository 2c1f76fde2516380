"""Clients for the Sieve tests of the lab: a minimal ManageSieve client (RFC 5804) and rspamd's
Bayes counters as each smtp-in's controller reports them.

    with managesieve(lab, account) as sieve:
        sieve.putscript("filters", script)
        sieve.setactive("filters")
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
import time
from collections.abc import Iterator

from lab import clients, cluster
from lab.netns import in_netns

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class ManageSieveError(Exception):
    """The server answered NO or BYE (its text is the message)."""


class ManageSieve:
    """One ManageSieve session over a connected socket: greeting, STARTTLS, AUTHENTICATE PLAIN,
    then the script commands. Every command returns the server's capability or response lines."""

    def __init__(self, sock: socket.socket, tls_name: str, tls: ssl.SSLContext):
        self._sock = sock
        self._file = sock.makefile("rb")
        self._tls_name = tls_name
        self._tls = tls
        self.capabilities = self._capabilities(self._response())

    # ---- protocol -------------------------------------------------------------------------------

    def _line(self) -> bytes:
        line = self._file.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        return line

    def _response(self) -> list[bytes]:
        """Lines up to the OK/NO/BYE that ends a response; literals ({n}) read whole."""
        lines = []
        while True:
            line = self._line()
            literal = _LITERAL.search(line)
            if literal:
                line += self._file.read(int(literal.group(1))) + self._line()
            lines.append(line.rstrip(b"\r\n"))
            status = line.split(b" ", 1)[0].rstrip(b"\r\n").upper()
            if status == b"OK":
                return lines
            if status in (b"NO", b"BYE"):
                raise ManageSieveError(b"\n".join(lines).decode(errors="replace"))

    def _command(self, command: bytes) -> list[bytes]:
        self._sock.sendall(command + b"\r\n")
        return self._response()

    @staticmethod
    def _capabilities(lines: list[bytes]) -> dict[str, str]:
        found = {}
        for line in lines[:-1]:
            parts = re.findall(rb'"((?:[^"\\]|\\.)*)"', line)
            if parts:
                found[parts[0].decode().upper()] = parts[1].decode() if len(parts) > 1 else ""
        return found

    @staticmethod
    def _quoted(value: str) -> bytes:
        return b'"' + value.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'

    # ---- commands -------------------------------------------------------------------------------

    def starttls(self) -> None:
        self._command(b"STARTTLS")
        self._sock = self._tls.wrap_socket(self._sock, server_hostname=self._tls_name)
        self._file = self._sock.makefile("rb")
        # RFC 5804 2.2: the server sends its capabilities again after the handshake.
        self.capabilities = self._capabilities(self._response())

    def authenticate_plain(self, user: str, password: str) -> None:
        token = base64.b64encode(f"\0{user}\0{password}".encode())
        self._command(b'AUTHENTICATE "PLAIN" "' + token + b'"')

    def putscript(self, name: str, script: str) -> None:
        body = script.encode()
        self._command(b"PUTSCRIPT " + self._quoted(name) + b" {%d+}\r\n" % len(body) + body)

    def setactive(self, name: str) -> None:
        self._command(b"SETACTIVE " + self._quoted(name))

    def listscripts(self) -> list[bytes]:
        return self._command(b"LISTSCRIPTS")[:-1]

    def deletescript(self, name: str) -> None:
        self._command(b"DELETESCRIPT " + self._quoted(name))

    def logout(self) -> None:
        with contextlib.suppress(ManageSieveError, ConnectionError, OSError):
            self._command(b"LOGOUT")
        self._sock.close()


def connect_managesieve(status: dict, source: str | None = None, timeout: float = 10) -> ManageSieve:
    """A ManageSieve session to the lab's endpoint from the internet (greeting read, no TLS yet)."""
    endpoint = status["endpoints"]["managesieve"]
    with in_netns(status["client_netns"]):
        sock = socket.create_connection(
            (endpoint["host"], endpoint["port"]), timeout=timeout, source_address=(source, 0) if source else None
        )
    try:
        return ManageSieve(sock, endpoint["name"], clients.tls_context(status))
    except BaseException:
        sock.close()
        raise


@contextlib.contextmanager
def managesieve(status: dict, account: dict) -> Iterator[ManageSieve]:
    """Logged in over STARTTLS as a mailbox, as a Sieve editor (Thunderbird, Roundcube) does."""
    session = connect_managesieve(status)
    try:
        assert "STARTTLS" in session.capabilities, session.capabilities
        session.starttls()
        session.authenticate_plain(account["user"], account["password"])
        yield session
    finally:
        session.logout()


def remove_script(status: dict, account: dict, name: str, timeout: float = 15) -> None:
    """Deactivate and delete the account's script `name`, waiting out replication.

    The maildrops sync Sieve scripts and which one is active with dsync: a sync that started while
    the script was still active on the peer can make it active again a few milliseconds after
    SETACTIVE "" (seen once: DELETESCRIPT, sent right after in the same session, was refused
    with `NO (ACTIVE)`). So deactivate again and retry until the delete is taken."""
    deadline = time.monotonic() + timeout
    while True:
        with managesieve(status, account) as sieve:
            sieve.setactive("")
            try:
                sieve.deletescript(name)
                return
            except ManageSieveError as refused:
                if "ACTIVE" not in str(refused) or time.monotonic() > deadline:
                    raise
        time.sleep(0.5)


# ---- rspamd's Bayes counters --------------------------------------------------------------------

# Where rspamd's Redis statistics backend counts the messages learnt per class (its default
# statfile prefix "RS", one store per smtp-in). `rspamc stat` shows the same numbers as the
# statfiles' "revision", but its controller refreshes them from Redis only every 30-60 s.
BAYES_STORE = "RS"
SPAM, HAM = "learns_spam", "learns_ham"
RSPAMD_LOG = "/var/log/rspamd/rspamd.log"
_LEARNT = re.compile(r"learned message as (spam|ham): (\S+)")


def bayes_learns(host: str) -> dict[str, int]:
    """{"learns_spam": n, "learns_ham": n}: how many messages the host's rspamd has learnt."""
    result = cluster.host_roots()[host].run(["redis-cli", "--no-raw", "HMGET", BAYES_STORE, SPAM, HAM])
    assert result.returncode == 0, f"{host}: redis-cli: {result.stderr}"
    values = re.findall(r'^\d+\) (?:"(\d+)"|\(nil\))$', result.stdout, re.MULTILINE)
    assert len(values) == 2, f"{host}: redis-cli: {result.stdout!r}"
    return {SPAM: int(values[0] or 0), HAM: int(values[1] or 0)}


def learnt_messages(host: str) -> set[tuple[str, str]]:
    """(class, Message-ID without <>) of every message the host's rspamd controller has learnt,
    from rspamd's own log ("learned message as spam: <id>")."""
    log = cluster.host_roots()[host].outside(RSPAMD_LOG)
    text = log.read_text(errors="replace") if log.exists() else ""
    return {(m.group(1), m.group(2)) for m in _LEARNT.finditer(text)}


def wait_for_learns(
    hosts: list[str], expected: dict[str, dict[str, int]], timeout: float = 30
) -> dict[str, dict[str, int]]:
    """Each host's counters, polled until they equal `expected` or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        now = {host: bayes_learns(host) for host in hosts}
        if now == expected or time.monotonic() > deadline:
            return now
        time.sleep(0.3)
