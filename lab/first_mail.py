"""`lab send`, `lab read` and `lab client`: a newcomer's first mail through the running lab.

    .venv/bin/python -m lab send alice bob@example.com    # alice submits through a frontend (587)
    .venv/bin/python -m lab read bob                      # bob's INBOX through a frontend (993)
    .venv/bin/python -m lab client swaks ...              # any command in the internet namespace

Both go the way a mail client does: from the internet namespace to the primary frontend's public
address, TLS checked against the lab CA and the service's name, logged in with the account's
generated password (lab.clients, as the tests do).
"""

from __future__ import annotations

import email
import email.policy
import os

from lab import clients

DEFAULT_SUBJECT = "Hello from the lab"


class NoSuchAccount(LookupError):
    pass


def account(status: dict, who: str) -> dict:
    """A mailbox account of the running lab by user name (`alice`) or address (`alice@example.com`)."""
    for a in status["accounts"]:
        if who in (a["user"], a["address"]):
            return a
    known = ", ".join(a["user"] for a in status["accounts"])
    raise NoSuchAccount(f"no account {who!r} in the running lab (accounts: {known})")


def send(status: dict, sender: str, recipient: str, subject: str = DEFAULT_SUBJECT) -> str:
    """Submit a message as `sender` (an account) to `recipient` (any address); returns what was done."""
    me = account(status, sender)
    message_id, text = clients.message(me["address"], recipient, subject)
    with clients.submission(status, me) as smtp:
        smtp.sendmail(me["address"], [recipient], text)
    e = status["endpoints"]["submission"]
    return f"sent {message_id} from {me['address']} to {recipient} through {e['name']} ({e['host']}:{e['port']})"


def _inbox(status: dict, me: dict, last: int) -> list[email.message.Message]:
    client = clients.imaps(status, me)
    try:
        _, found = client.search(None, "ALL")
        numbers = found[0].split()[-last:]
        messages = []
        for number in numbers:
            _, data = client.fetch(number, "(BODY.PEEK[HEADER])")
            messages.append(email.message_from_bytes(data[0][1], policy=email.policy.default))
        return messages
    finally:
        client.logout()


def read(status: dict, who: str, subject: str | None = None, last: int = 5, timeout: float = 30) -> list[str]:
    """The newest `last` messages of an account's INBOX, one line each; with `subject`, first waits
    (up to `timeout` seconds) for a message whose subject contains it."""
    me = account(status, who)

    def probe() -> list[email.message.Message] | None:
        messages = _inbox(status, me, last if subject is None else 1000)
        if subject is not None and not any(subject in str(m["Subject"]) for m in messages):
            return None
        return messages[-last:]

    messages = clients.wait_for(probe, timeout, interval=0.5)
    if messages is None:
        raise TimeoutError(f"no message with {subject!r} in the subject in {me['address']}'s INBOX after {timeout}s")
    e = status["endpoints"]["imaps"]
    lines = [f"{me['address']}'s INBOX through {e['name']} ({e['host']}:{e['port']}), newest last:"]
    lines += [f"  {m['Date']}  from {m['From']}  {m['Subject']}" for m in messages]
    return lines


def client(status: dict, argv: list[str]) -> None:
    """Replace this process with `argv` run in the lab's internet namespace (the test clients')."""
    command = ["ip", "netns", "exec", status["client_netns"], *argv]
    os.execvp(command[0], command)
