"""Failover in the running lab: mail and IMAP keep working while a maildrop or an smtp-in is down,
and nothing is lost or delivered twice (case study: "If ever it were to go down, they will
automatically fail over and use ddln0, which will replicate back any changes while chbtl0 is down";
smtp-in: "if one of them is down for a while, remote mail servers will automatically and gracefully
use another replica").

Each test stops whole hosts (every daemon, as a VM going down would) and starts them again in a
`finally`, so the lab is whole after it even when it fails.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from lab_mailflow_helpers import mx_session

from lab import clients, cluster, internet, traffic
from lab import hosts as lab_hosts

pytestmark = pytest.mark.lab

PRIMARY, BACKUP = "maildrop0-chbtl0", "maildrop1-ddln0"
STOPPED_MX = "smtp-in-chrma0"
BURST = 500
OUTAGE = 15  # seconds


@pytest.fixture
def whole(lab):
    """The lab with every daemon running, before and after the test."""
    lab_hosts.restore_whole()
    yield lab
    lab_hosts.restore_whole()


def _run_tag(name: str) -> str:
    return f"{name}{time.time_ns() % 10**10}"


def _wait_ids(lab: dict, host: str, account: dict, pattern: str, want: set[str], timeout: float) -> list[str]:
    """Message-IDs matching `pattern` on one maildrop, polled until `want` are all there."""
    drop = traffic.maildrops(lab)[host]
    deadline = time.monotonic() + timeout
    while True:
        ids = traffic.ids_on(lab, drop, account, pattern)
        if want <= set(ids) or time.monotonic() > deadline:
            return ids
        time.sleep(0.5)


def _remote_mta_log() -> Path:
    return cluster.host_roots()[internet.REMOTE_MTA_HOST].logs / "syslog"


def test_lab_primary_maildrop_down_imap_and_inbound_mail_fail_over_to_the_backup_then_replicate_back(whole):
    lab = whole
    alice = lab["accounts"][0]
    tag = _run_tag("maildrop-down")
    sender = f"{tag}@{internet.REMOTE_DOMAIN}"
    # Steady state first: the primary has just replicated a message of its own (a fresh replicator,
    # which never synced, would sync everything on start anyway and prove nothing here).
    before, text = clients.message(sender, alice["address"], "before the primary goes down", tag)
    traffic.remote_send(sender, alice["address"], text)
    for host in (PRIMARY, BACKUP):
        assert _wait_ids(lab, host, alice, tag, {before}, timeout=60) == [before], host
    with lab_hosts.stopped(PRIMARY) as restart:
        assert traffic.frontend_login(lab, alice), "no IMAPS login through the frontend with the primary down"
        # Through the real MX path: smtp-in resolves maildrop.example.com MX 10 (down), then MX 20.
        first, text = clients.message(sender, alice["address"], "while the primary is down", tag)
        with mx_session(lab, lab["endpoints"]["mx"][1]) as client:
            client.sendmail(sender, [alice["address"]], text)
        assert first in _wait_ids(lab, BACKUP, alice, tag, {before, first}, timeout=60), "not on the backup"
        # Long enough for the backup's replicator to have given up on the primary: it tries again
        # only after 5 minutes (REPLICATOR_FAILURE_RESYNC_INTERVAL_SECS, not a setting).
        time.sleep(OUTAGE)
        restart()
    # The primary's Dovecot unit syncs every user with the peer when it starts (the maildrop's
    # dovecot.service drop-in, ExecStartPost): the backup's mail comes back with no other change.
    on_primary = _wait_ids(lab, PRIMARY, alice, tag, {before, first}, timeout=30)
    assert first in on_primary, "the primary did not get the backup's mail back on its own start"
    raw = clients.imap_message(lab, alice, first, timeout=60)
    assert raw is not None, "not readable through the frontend"
    assert b"by maildrop1.ddln0.example.com with LMTP" in raw  # the backup delivered it
    # Mail goes on arriving, and both maildrops end up with all of it. (Either may take it for a
    # while: smtp-in reuses its cached connection to the backup, up to
    # smtp_connection_reuse_time_limit, as Postfix does for any destination with several MXes.)
    second, text = clients.message(sender, alice["address"], "after the primary is back", tag)
    with mx_session(lab, lab["endpoints"]["mx"][1]) as client:
        client.sendmail(sender, [alice["address"]], text)
    for host in (PRIMARY, BACKUP):
        ids = _wait_ids(lab, host, alice, tag, {before, first, second}, timeout=30)
        assert sorted(ids) == sorted({before, first, second}), host


def test_lab_remote_mta_falls_back_to_another_mx_while_an_smtp_in_is_down(whole):
    lab = whole
    alice = lab["accounts"][0]
    down_addresses = set(next(h for h in lab["hosts"] if h["name"] == STOPPED_MX)["addresses"])
    log = _remote_mta_log()
    tag = _run_tag("mx-down")
    refused = f"connect to smtp-in.{STOPPED_MX.split('-')[-1]}.example.com["
    with lab_hosts.stopped(STOPPED_MX):
        # Equal MX preferences: the remote MTA picks among them at random, so mail goes out until
        # one message met the stopped MX first (at most 15; each misses it with p = 2/3).
        sent = []
        for n in range(15):
            offset = log.stat().st_size
            sender = f"{tag}-{n}@{internet.REMOTE_DOMAIN}"
            message_id, text = clients.message(sender, alice["address"], "while an smtp-in is down", tag)
            traffic.remote_send(sender, alice["address"], text)
            raw = clients.imap_message(lab, alice, message_id, timeout=60)
            assert raw is not None, f"message {n} did not arrive within 60 s"
            sent.append(message_id)
            entries = log.read_text(errors="replace")[offset:]
            relays = [line for line in entries.splitlines() if "to=<alice@example.com>" in line and "status=" in line]
            assert relays and "status=sent" in relays[-1], relays
            assert not any(f"[{a}]" in relays[-1] for a in down_addresses), relays[-1]
            if refused in entries:
                break
        else:
            pytest.fail("the remote MTA never tried the stopped MX in 15 messages")
    assert refused in entries and "Connection refused" in entries


def test_lab_burst_during_maildrop_and_mx_failures_loses_and_duplicates_nothing(whole):
    """500 messages from 20 internet MTAs while the primary maildrop and one smtp-in are down; both
    come back midway. Every message ends up exactly once in alice's INBOX on both maildrops."""
    lab = whole
    alice = lab["accounts"][0]
    tag = _run_tag("burst")
    batch = []
    for n in range(BURST):
        # A sender per message: no (sender, recipient, network) triple repeats for rspamd's greylist.
        sender = f"{tag}-{n}@{internet.REMOTE_DOMAIN}"
        message_id, text = clients.message(sender, alice["address"], f"burst {n}", tag)
        batch.append((message_id, sender, alice["address"], text))
    want = {m for m, *_ in batch}
    backup = traffic.maildrops(lab)[BACKUP]
    with traffic.extra_clients(lab, 20) as sources, lab_hosts.stopped(PRIMARY, STOPPED_MX) as restart:
        mtas = traffic.senders(lab, sources, "example.com")
        with ThreadPoolExecutor(max_workers=1) as pool:
            sending = pool.submit(traffic.send_from_many, mtas, batch, 150)
            # Midway: half the burst taken by the two remaining MXs, some of it on the backup.
            deadline = time.monotonic() + 90
            while sum(len(m.accepted) for m in mtas) < BURST // 2 or not traffic.ids_on(lab, backup, alice, tag):
                assert not sending.done(), sending.exception()
                assert time.monotonic() < deadline, "half the burst not taken within 90 s"
                time.sleep(0.2)
            restart()
            sending.result()
    results = {host: _wait_ids(lab, host, alice, tag, want, timeout=60) for host in (PRIMARY, BACKUP)}
    for host, ids in results.items():
        missing, duplicates = want - set(ids), len(ids) - len(set(ids))
        assert not missing and not duplicates, f"{host}: {len(missing)} missing, {duplicates} duplicated"
