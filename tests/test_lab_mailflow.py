"""Mail through the running lab, end to end, as clients and servers outside the cluster see it:
submission through a frontend to the internet (DKIM and SPF as the remote MTA would check them),
what smtp-in and smtp-out refuse, inbound mail on every smtp-in (aliases, discards, SRS forwards,
the primary maildrop and its replica), and a relay client's cron mail.

Every test mails from its own sender address: rspamd greylists (sender, recipient, network)
triples it has seen, and earlier runs on the same lab must not change what a test sees.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lab_mailflow_helpers import (
    doveadm_message,
    mx_session,
    postfix_log,
    rcpt_answer,
    relay_client_sendmail,
    remote_sender,
    spf_result,
    unique_address,
    wait_for_log,
)

from lab import clients, cluster, internet
from lab.netns import in_netns
from model import load_stack_file

STACK = load_stack_file("lab")
MAIL_DOMAIN = STACK.domains[0].name
PRIMARY, PEER = STACK.maildrop_primary, STACK.peer(STACK.maildrop_primary)
SMTP_IN = {h.name: h for h in STACK.hosts.smtp_in}
SMTP_OUT = {h.name: h for h in STACK.hosts.smtp_out}
RELAY_CLIENT = STACK.relay_clients[0]
# Every smtp-in, on 25 (STARTTLS) and 465 (TLS from the first byte), at its public address.
MX = [(name, port) for name in SMTP_IN for port in (STACK.ports.smtp, STACK.ports.smtps)]


def mx_endpoint(host: str, port: int) -> dict:
    return {"host": str(SMTP_IN[host].public_ipv4), "port": port, "name": STACK.service_name("smtp-in")}


def account(lab: dict, user: str) -> dict:
    return next(a for a in lab["accounts"] if a["user"] == user)


def send_inbound(lab: dict, host: str, port: int, recipient: str, subject: str) -> tuple[str, str]:
    """Mail from the internet to `recipient` through one smtp-in; (sender, Message-ID)."""
    sender = unique_address("dave")
    message_id, text = clients.message(sender, recipient, subject)
    with mx_session(lab, mx_endpoint(host, port)) as client:
        assert client.sendmail(sender, [recipient], text) == {}  # every recipient accepted
    return sender, message_id


def remote_envelope_sender(found) -> str:
    return found["Return-Path"].strip().strip("<>")


# ---- submission: a user's mail to the internet -----------------------------------------------------


@pytest.mark.lab
def test_submission_reaches_the_remote_mta_dkim_signed_and_passing_spf(lab):
    alice = account(lab, "alice")
    recipient = unique_address("eve")
    message_id, text = clients.message(alice["address"], recipient, "submitted")
    with clients.submission(lab, alice) as client:  # the frontend's 587, STARTTLS, AUTH as alice
        client.sendmail(alice["address"], [recipient], text)
    found = clients.remote_message(lab, recipient, message_id)
    assert found is not None, "not at the remote MTA within 30 s"
    assert "(Authenticated sender: alice)" in " ".join(found.get_all("Received", []))
    assert clients.dkim_verify(lab, found.as_bytes()), found["DKIM-Signature"]
    sender = remote_envelope_sender(found)
    assert sender == alice["address"]
    helo, address = remote_sender(found)
    assert address in {a for h in SMTP_OUT.values() for a in h.site_local_addresses}, address
    assert spf_result(lab, address, sender, helo) == "pass"


@pytest.mark.lab
def test_submission_offers_auth_only_after_starttls(lab):
    client = clients.smtp(lab, lab["endpoints"]["submission"], starttls=False)
    try:
        client.ehlo()
        before = set(client.esmtp_features)
        client.starttls(context=clients.tls_context(lab))
        client.ehlo()
        after = set(client.esmtp_features)
    finally:
        client.quit()
    assert "starttls" in before and "auth" not in before
    assert "auth" in after


@pytest.mark.lab
def test_smtp_out_refuses_to_relay_without_auth(lab):
    client = clients.smtp(lab, lab["endpoints"]["submission"])  # STARTTLS, but no AUTH
    try:
        code, answer = rcpt_answer(client, account(lab, "alice")["address"], unique_address("eve"))
    finally:
        client.quit()
    assert code == 554 and "Access denied" in answer, (code, answer)


# ---- what smtp-in refuses ------------------------------------------------------------------------


@pytest.mark.lab
def test_smtp_in_refuses_to_relay_for_a_domain_it_does_not_serve(lab):
    with mx_session(lab, mx_endpoint("smtp-in-chrma0", STACK.ports.smtp)) as client:
        code, answer = rcpt_answer(client, unique_address("dave"), unique_address("someone"))
    # The case study's smtpd_relay_restrictions end in defer_unauth_destination: a 4xx, so a
    # misrouted sender retries instead of bouncing at once.
    assert code == 454 and "Relay access denied" in answer, (code, answer)


@pytest.mark.lab
def test_smtp_in_rejects_a_client_listed_in_the_dnsbl_naming_it(lab):
    endpoint = mx_endpoint("smtp-in-chrma0", STACK.ports.smtp)
    with mx_session(lab, endpoint, source=internet.LISTED_CLIENT) as client:
        code, answer = rcpt_answer(client, unique_address("spammer"), account(lab, "alice")["address"])
    assert code == 554 and f"[{internet.LISTED_CLIENT}] blocked using dnsbl.test;" in answer, (code, answer)


@pytest.mark.lab
def test_smtp_in_accepts_mail_although_a_dnsbl_refuses_every_query(lab):
    """refusing-dnsbl.test answers 127.255.255.254 ("query refused") for every name; that answer is
    no listing, so mail from the allowed client still goes in."""
    host = "smtp-in-chrma0"
    client_ip = internet.ALLOWED_CLIENT[0]
    query = ".".join(reversed(client_ip.split("."))) + ".refusing-dnsbl.test"
    resolv_conf = cluster.host_roots()[host].run(["cat", "/etc/resolv.conf"]).stdout
    nameservers = [line.split()[1] for line in resolv_conf.splitlines() if line.startswith("nameserver")]
    assert nameservers and all(ns in ("127.0.0.1", "::1") for ns in nameservers)  # the local unbound
    with in_netns(cluster.host_roots()[host].netns):
        resolver = clients.resolver(lab)
        resolver.nameservers = nameservers
        answers = {r.to_text() for r in resolver.resolve(query, "A")}
    assert answers == {"127.255.255.254"}
    alice = account(lab, "alice")
    sender = unique_address("dave")
    message_id, text = clients.message(sender, alice["address"], "refusing dnsbl")
    with mx_session(lab, mx_endpoint(host, STACK.ports.smtp)) as client:
        assert client.sendmail(sender, [alice["address"]], text) == {}
    assert clients.imap_message(lab, alice, message_id) is not None, "not in alice's INBOX within 30 s"


# ---- inbound: every smtp-in, on 25 and 465 ---------------------------------------------------------


@pytest.mark.lab
@pytest.mark.parametrize(("host", "port"), MX, ids=[f"{h}:{p}" for h, p in MX])
def test_inbound_team_alias_reaches_alice_and_bob(lab, host, port):
    _, message_id = send_inbound(lab, host, port, f"team@{MAIL_DOMAIN}", f"team via {host} {port}")
    for user in ("alice", "bob"):
        assert clients.imap_message(lab, account(lab, user), message_id) is not None, f"not in {user}'s INBOX"


@pytest.mark.lab
@pytest.mark.parametrize(("host", "port"), MX, ids=[f"{h}:{p}" for h, p in MX])
def test_inbound_noreply_is_accepted_and_dropped_without_a_bounce(lab, host, port):
    sender, message_id = send_inbound(lab, host, port, f"noreply@{MAIL_DOMAIN}", f"noreply via {host} {port}")
    lines = wait_for_log(host, message_id, "status=sent")
    deliveries = [line for line in lines if " to=<" in line]
    assert deliveries and all("postfix/discard" in line and "status=sent" in line for line in deliveries), lines
    for maildrop in (PRIMARY.name, PEER.name):
        assert postfix_log(maildrop, message_id) == [], f"{maildrop} saw it"
    maildir = Path(lab["remote_maildir"])
    assert not [m for m in internet.read_maildir(maildir) if m["Message-ID"] == message_id]
    # No bounce for the sender either (a bounce would leave at once: give it a few seconds).
    bounce = clients.wait_for(lambda: internet.read_maildir(maildir, sender), timeout=5)
    assert not bounce, bounce[0].as_string()[:500]


@pytest.mark.lab
@pytest.mark.parametrize(("host", "port"), MX, ids=[f"{h}:{p}" for h, p in MX])
def test_inbound_forward_to_carol_leaves_srs_rewritten_and_passes_spf(lab, host, port):
    sender, message_id = send_inbound(lab, host, port, f"carol@{MAIL_DOMAIN}", f"forward via {host} {port}")
    found = clients.remote_message(lab, f"carol@{internet.REMOTE_DOMAIN}", message_id)
    assert found is not None, "not at the remote MTA within 30 s"
    srs_sender = remote_envelope_sender(found)
    local, _, domain = sender.partition("@")
    assert srs_sender.startswith("SRS0=") and srs_sender.endswith(f"={domain}={local}@{MAIL_DOMAIN}"), srs_sender
    helo, address = remote_sender(found)
    smtp_in = SMTP_IN[host]
    assert address in smtp_in.site_local_addresses + smtp_in.public_addresses, address
    assert spf_result(lab, address, srs_sender, helo) == "pass"


@pytest.mark.lab
@pytest.mark.parametrize(("host", "port"), MX, ids=[f"{h}:{p}" for h, p in MX])
def test_inbound_mail_for_alice_lands_on_the_primary_maildrop_and_replicates_to_the_peer(lab, host, port):
    alice = account(lab, "alice")
    _, message_id = send_inbound(lab, host, port, alice["address"], f"alice via {host} {port}")
    raw = clients.imap_message(lab, alice, message_id)  # IMAPS through the primary frontend
    assert raw is not None, "not in alice's INBOX within 30 s"
    assert f"by {STACK.fqdn(PRIMARY)} (Postfix)".encode() in raw
    assert f"by {STACK.fqdn(PEER)}".encode() not in raw
    replica = doveadm_message(PEER.name, alice["user"], message_id)
    assert replica is not None, f"not on {PEER.name} within 30 s"


# ---- a relay client's own mail (case study: "Bonus: opensmtpd on clients") --------------------------


@pytest.mark.lab
def test_relay_client_mail_leaves_through_smtp_out_as_its_group_dkim_signed(lab):
    recipient = unique_address("ops")
    message_id = f"<cron-{recipient.split('@')[0]}@{RELAY_CLIENT.name}>"
    # What cron hands to sendmail: no From, no envelope sender of a mail domain.
    relay_client_sendmail(
        RELAY_CLIENT.name,
        f"To: {recipient}\nSubject: Cron <root@{RELAY_CLIENT.name}> backup\nMessage-ID: {message_id}\n\nbackup done\n",
    )
    found = clients.remote_message(lab, recipient, message_id, timeout=60)
    assert found is not None, "not at the remote MTA within 60 s"
    assert remote_envelope_sender(found) == RELAY_CLIENT.mail_from
    assert f"d={MAIL_DOMAIN};" in found["DKIM-Signature"] and clients.dkim_verify(lab, found.as_bytes())
    accepted = [line for name in SMTP_OUT for line in postfix_log(name, message_id) if "sasl_username=" in line]
    assert accepted and all(f"sasl_username={RELAY_CLIENT.group}" in line for line in accepted), accepted
