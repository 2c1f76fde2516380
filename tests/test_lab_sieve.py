"""Sieve in the running lab: a user's filter uploaded over ManageSieve through a frontend files new
mail, and moving mail into or out of Junk over IMAPS teaches every smtp-in's rspamd (IMAPSieve).

Each test makes its own messages (distinct senders, subjects and words), so the greylist, rspamd's
"already learned" check and earlier runs on the same lab do not change what it sees.
"""

from __future__ import annotations

import contextlib
import imaplib
import secrets
import time
from collections.abc import Iterator

import pytest
from lab_sieve_helpers import (
    HAM,
    SPAM,
    bayes_learns,
    connect_managesieve,
    learnt_messages,
    managesieve,
    remove_script,
    wait_for_learns,
)

from lab import clients, internet

FILTER_TAG = "[sieve-test]"
FILTER_FOLDER = "Filed"
# `:create` (RFC 5490, the "mailbox" extension) makes Dovecot create the folder on first delivery.
FILTER_SCRIPT = f"""require ["fileinto", "mailbox"];
if header :contains "subject" "{FILTER_TAG}" {{
  fileinto :create "{FILTER_FOLDER}";
}}
"""


# ---- messages and mailboxes ---------------------------------------------------------------------


def _words(count: int = 60) -> str:
    """Words no earlier message had: rspamd learns a message only once and needs enough tokens."""
    letters = "bdfgklmnprstvz"
    vowels = "aeiou"
    words = []
    for _ in range(count):
        length = 3 + secrets.randbelow(3)
        words.append("".join(secrets.choice(letters) + secrets.choice(vowels) for _ in range(length)))
    return " ".join(words)


def _message(sender: str, recipient: str, subject: str) -> tuple[str, str]:
    token = secrets.token_hex(6)
    message_id = f"<sieve-{token}@{sender.split('@')[1]}>"
    body = "\r\n".join(_words(12) for _ in range(5))
    text = (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: {subject} {token}\r\nMessage-ID: {message_id}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n{body}\r\n"
    )
    return message_id, text


def _sender() -> str:
    """A sender not seen before: a new (sender, recipient, network) triple is not greylisted."""
    return f"sieve-{secrets.token_hex(4)}@{internet.REMOTE_DOMAIN}"


def _send_inbound(lab: dict, sender: str, recipient: str, text: str) -> None:
    """From the internet's allowed client to an smtp-in, as a remote MTA delivers."""
    client = clients.smtp(lab, lab["endpoints"]["mx"][1])
    try:
        client.sendmail(sender, [recipient], text)
    finally:
        client.quit()


@contextlib.contextmanager
def _imaps(lab: dict, account: dict) -> Iterator[imaplib.IMAP4]:
    client = clients.imaps(lab, account)
    try:
        yield client
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()


def _uid(client: imaplib.IMAP4, mailbox: str, message_id: str) -> bytes | None:
    """The UID of the message with this Message-ID in `mailbox` (selected), or None."""
    typ, _ = client.select(f'"{mailbox}"')
    if typ != "OK":
        return None
    _, found = client.uid("SEARCH", "HEADER", "Message-ID", message_id)
    return found[0].split()[-1] if found and found[0] else None


def _wait_in(lab: dict, account: dict, mailbox: str, message_id: str, timeout: float = 30) -> bool:
    def probe() -> bool:
        with _imaps(lab, account) as client:
            return _uid(client, mailbox, message_id) is not None

    return bool(clients.wait_for(probe, timeout, interval=0.3))


def _move(client: imaplib.IMAP4, message_id: str, source: str, target: str) -> None:
    """UID MOVE, as a mail client files a message (Dovecot's IMAPSieve sees it as a COPY)."""
    uid = _uid(client, source, message_id)
    assert uid is not None, f"{message_id} not in {source}"
    typ, data = client.uid("MOVE", uid, f'"{target}"')
    assert typ == "OK", data


def _append(client: imaplib.IMAP4, mailbox: str, text: str) -> None:
    """A message put straight into a folder (APPEND is no COPY: no IMAPSieve rule runs)."""
    typ, data = client.append(f'"{mailbox}"', None, imaplib.Time2Internaldate(time.time()), text.encode())
    assert typ == "OK", data


def _smtp_in_hosts(lab: dict) -> list[str]:
    return [h["name"] for h in lab["hosts"] if h["role"] == "smtp_in"]


def _plus(counts: dict[str, dict[str, int]], spam: int, ham: int) -> dict[str, dict[str, int]]:
    return {host: {SPAM: c[SPAM] + spam, HAM: c[HAM] + ham} for host, c in counts.items()}


# ---- ManageSieve --------------------------------------------------------------------------------


@pytest.mark.lab
def test_managesieve_script_uploaded_through_the_frontend_files_new_inbound_mail(lab):
    bob = lab["accounts"][1]
    name = f"lab-filter-{secrets.token_hex(3)}"
    with managesieve(lab, bob) as sieve:
        sieve.putscript(name, FILTER_SCRIPT)
        sieve.setactive(name)
    try:
        sender = _sender()
        filed_id, filed = _message(sender, bob["address"], f"{FILTER_TAG} report")
        kept_id, kept = _message(sender, bob["address"], "no tag")
        _send_inbound(lab, sender, bob["address"], filed)
        _send_inbound(lab, sender, bob["address"], kept)

        assert _wait_in(lab, bob, FILTER_FOLDER, filed_id), f"not filed into {FILTER_FOLDER} within 30 s"
        assert _wait_in(lab, bob, "INBOX", kept_id), "the untagged message is not in INBOX within 30 s"
        with _imaps(lab, bob) as client:
            assert _uid(client, "INBOX", filed_id) is None, "the tagged message is in INBOX too"
            assert _uid(client, FILTER_FOLDER, kept_id) is None, "the untagged message was filed"
    finally:
        # Leave bob as the other tests expect him: no script of his own (default.sieve: keep), no folder.
        remove_script(lab, bob, name)
        with _imaps(lab, bob) as client:
            client.delete(f'"{FILTER_FOLDER}"')


@pytest.mark.lab
def test_managesieve_offers_authentication_only_after_starttls(lab):
    session = connect_managesieve(lab)
    try:
        assert "STARTTLS" in session.capabilities
        assert session.capabilities.get("SASL") == "", session.capabilities  # no mechanism in clear text
        session.starttls()
        assert "PLAIN" in session.capabilities["SASL"].split()
    finally:
        session.logout()


@pytest.mark.lab
def test_managesieve_at_the_frontend_refuses_a_client_outside_the_allowed_networks(lab):
    allowed = connect_managesieve(lab, source=internet.ALLOWED_CLIENT[0])
    assert "Pigeonhole" in allowed.capabilities.get("IMPLEMENTATION", "")
    allowed.logout()
    # nginx's `deny` closes the stream before the backend says anything: no greeting.
    with pytest.raises(ConnectionError):
        connect_managesieve(lab, source=internet.OTHER_CLIENT[0]).logout()


# ---- IMAPSieve: Junk teaches rspamd -------------------------------------------------------------


def _learns(lab: dict) -> dict[str, dict[str, int]]:
    return {host: bayes_learns(host) for host in _smtp_in_hosts(lab)}


def _assert_learns(lab: dict, before: dict[str, dict[str, int]], spam: int, ham: int, what: str) -> None:
    """Every smtp-in's counters end `spam` and `ham` above `before` (the learn scripts ask each
    controller: each keeps its own Bayes store), and stay there a moment longer."""
    expected = _plus(before, spam=spam, ham=ham)
    after = wait_for_learns(_smtp_in_hosts(lab), expected)
    assert after == expected, f"{what}: {before} -> {after}"
    time.sleep(1)
    assert _learns(lab) == expected, f"{what}: more learnt later"


def _not_learnt_by(lab: dict, klass: str, message_id: str, timeout: float = 10) -> list[str]:
    """The smtp-in hosts whose rspamd log does not (within `timeout`) say it learnt this message."""
    entry = (klass, message_id.strip("<>"))

    def missing() -> list[str]:
        return [host for host in _smtp_in_hosts(lab) if entry not in learnt_messages(host)]

    clients.wait_for(lambda: not missing(), timeout)
    return missing()


@pytest.mark.lab
def test_moving_inbound_mail_into_junk_teaches_every_smtp_in_rspamd_spam(lab):
    alice = lab["accounts"][0]
    sender = _sender()
    message_id, text = _message(sender, alice["address"], "cheap watches")
    _send_inbound(lab, sender, alice["address"], text)
    assert _wait_in(lab, alice, "INBOX", message_id), "not in alice's INBOX within 30 s"
    before = _learns(lab)
    with _imaps(lab, alice) as client:
        _move(client, message_id, "INBOX", "Junk")
    _assert_learns(lab, before, spam=1, ham=0, what="INBOX -> Junk")
    assert _not_learnt_by(lab, "spam", message_id) == []


@pytest.mark.lab
def test_moving_mail_out_of_junk_into_inbox_teaches_every_smtp_in_rspamd_ham(lab):
    alice = lab["accounts"][0]
    message_id, text = _message(_sender(), alice["address"], "minutes of the meeting")
    with _imaps(lab, alice) as client:
        _append(client, "Junk", text)
        before = _learns(lab)
        _move(client, message_id, "Junk", "INBOX")
    _assert_learns(lab, before, spam=0, ham=1, what="Junk -> INBOX")
    assert _not_learnt_by(lab, "ham", message_id) == []


@pytest.mark.lab
def test_moving_mail_from_junk_to_trash_teaches_nothing(lab):
    alice = lab["accounts"][0]
    sender = _sender()
    trash_id, trash = _message(sender, alice["address"], "discarded offer")
    marker_id, marker = _message(sender, alice["address"], "kept after all")
    with _imaps(lab, alice) as client:
        _append(client, "Junk", trash)
        _append(client, "Junk", marker)
        before = _learns(lab)
        _move(client, trash_id, "Junk", "Trash")
        # A ham move after it: once it is counted, a learnt Trash move would have counted too.
        _move(client, marker_id, "Junk", "INBOX")
        assert _uid(client, "Trash", trash_id) is not None
    _assert_learns(lab, before, spam=0, ham=1, what="Junk -> Trash, then Junk -> INBOX")
    assert _not_learnt_by(lab, "ham", marker_id) == []
    trash_entries = {(klass, trash_id.strip("<>")) for klass in ("spam", "ham")}
    assert not any(trash_entries & learnt_messages(host) for host in _smtp_in_hosts(lab))
