"""A change rehearsed on the running lab with `python -m lab apply` (issue 15): it rolls through a
role one host at a time with real reloads, proves each host with its probes, undoes itself on the
host where a probe fails, and keeps the push's promises (files dropped, reloads owed).

Every test leaves the lab as it found it: it applies the lab's own stack file again at the end,
and the daemons it stops are started again.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import pytest
import yaml
from lab_mailflow_helpers import mx_session

from lab import apply, clients, cluster, internet, traffic
from lab import hosts as lab_hosts
from lab.__main__ import main as lab_main
from model import load_stack_file
from render import rollout
from render.probes import served_address

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parent.parent
STACK = load_stack_file("lab")
SMTP_IN = [h.name for h in rollout.order(STACK, "smtp_in")]
SMTP_OUT = [h.name for h in rollout.order(STACK, "smtp_out")]
PRIMARY = STACK.maildrop_primary.name
RETIRED_KEY = "/etc/opendkim/keys/example.com/lab2027.private"
QUIET = lambda _: None  # noqa: E731
# Enough for the whole apply and a few hundred messages (smtp-in takes 60 a minute per client).
SENDERS = 16
STEADY_MESSAGES = 200


@pytest.fixture
def whole(lab):
    """The lab with every daemon running and every host on the lab stack's own trees, before and
    after the test."""
    lab_hosts.restore_whole()
    assert _pushed(apply.apply(progress=QUIET)) == [], "the lab was not on its own stack's trees"
    yield lab
    lab_hosts.restore_whole()
    apply.apply(progress=QUIET)


def _pushed(outcomes: list[apply.Outcome]) -> list[str]:
    return [o.host for o in outcomes if o.status != "unchanged"]


def _edited_stack(tmp_path: Path, edit) -> Path:
    """A copy of Pulumi.lab.yaml with `edit(config)` applied to its `mail-cluster:` values."""
    document = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())
    edit(document["config"])
    path = tmp_path / "Pulumi.lab.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _tag(name: str) -> str:
    return f"{name}{time.time_ns() % 10**10}"


def _assert_each_message_once(lab: dict, sent: list[traffic.Sent], tag: str) -> None:
    want = {s.message_id for s in sent}
    assert len(want) == len(sent) >= STEADY_MESSAGES
    drop = traffic.maildrops(lab)[PRIMARY]
    alice = lab["accounts"][0]
    deadline = time.monotonic() + 120
    while True:
        ids = traffic.ids_on(lab, drop, alice, tag)
        if want <= set(ids) or time.monotonic() > deadline:
            break
        time.sleep(1)
    missing, duplicates = want - set(ids), len(ids) - len(set(ids))
    assert not missing and not duplicates, f"{len(missing)} of {len(want)} missing, {duplicates} duplicated"


def _file(host: str, path: str) -> Path:
    return cluster.host_roots()[host].outside(path)


def test_an_alias_applied_changes_only_smtp_in_one_host_at_a_time_and_loses_no_mail(whole, tmp_path):
    """A new alias forwarding elsewhere (one to a mailbox changes smtp-out's sender-logins too)."""
    lab = whole
    alias = f"rollout{time.time_ns() % 10**8}"
    target = f"{alias}-fwd@{internet.REMOTE_DOMAIN}"
    edited = _edited_stack(tmp_path, lambda c: c["mail-cluster:domains"][0]["aliases"].update({alias: [target]}))
    tag = _tag("alias-apply")
    with traffic.extra_clients(lab, SENDERS) as sources:
        sender = traffic.SteadySender(lab, sources, lab["accounts"][0]["address"], tag)
        try:
            outcomes = apply.apply(edited, progress=QUIET)
        finally:
            sent = sender.stop(at_least=STEADY_MESSAGES)
    pushed = [o for o in outcomes if o.status != "unchanged"]
    assert [o.host for o in pushed] == SMTP_IN, [o.line() for o in pushed]
    assert all(o.status == "pushed" for o in pushed), [o.line() for o in pushed]
    for o in pushed:
        assert o.result["changed"] == ["/etc/postfix/virtual"] and o.result["removed"] == []
        assert o.result["probes"], o.line()
    # One at a time: each host rebuilt its alias table (postmap) only after the host before it had
    # passed its probes.
    table = {o.host: _file(o.host, "/etc/postfix/virtual.db").stat().st_mtime for o in pushed}
    for before, after in itertools.pairwise(pushed):
        assert before.started <= table[before.host] <= before.ended <= table[after.host], (before.host, after.host)
    sender_address = f"{tag}-alias@{internet.REMOTE_DOMAIN}"
    message_id, text = clients.message(sender_address, f"{alias}@{STACK.domains[0].name}", "to the new alias")
    with mx_session(lab, lab["endpoints"]["mx"][1]) as client:
        assert client.sendmail(sender_address, [f"{alias}@{STACK.domains[0].name}"], text) == {}
    assert clients.remote_message(lab, target, message_id, timeout=60) is not None, "the new alias did not forward"
    _assert_each_message_once(lab, sent, tag)


def _policy_service_on_a_closed_port(tree):
    """smtp-in's main.cf asking a policy service nobody runs: every checker passes it, and every
    RCPT from the internet gets `451 4.3.5 Server configuration problem`."""
    if tree.role != "smtp_in":
        return tree
    path = "/etc/postfix/main.cf"
    spec = tree.files[path]
    restriction = "        reject_unauth_destination\n"
    assert restriction in spec.content
    broken = spec.content.replace(restriction, "        check_policy_service inet:127.0.0.1:9,\n" + restriction, 1)
    return dataclasses.replace(tree, files={**tree.files, path: dataclasses.replace(spec, content=broken)})


def test_a_change_that_breaks_delivery_is_rolled_back_on_the_first_host_and_stops_there(whole, monkeypatch, capsys):
    lab = whole
    main_cf = {h: _file(h, "/etc/postfix/main.cf") for h in SMTP_IN}
    before = {h: (p.read_text(), p.stat().st_mtime_ns) for h, p in main_cf.items()}
    render = apply._render

    def broken(stack):
        return {name: _policy_service_on_a_closed_port(tree) for name, tree in render(stack).items()}

    monkeypatch.setattr(apply, "_render", broken)
    tag = _tag("broken-apply")
    with traffic.extra_clients(lab, SENDERS) as sources:
        sender = traffic.SteadySender(lab, sources, lab["accounts"][0]["address"], tag)
        try:
            exit_status = lab_main(["apply"])
        finally:
            sent = sender.stop(at_least=STEADY_MESSAGES)
    out, err = capsys.readouterr()
    first, *others = SMTP_IN
    assert exit_status == 1
    assert f"lab apply failed on {first}" in err
    assert f"probe 'smtp 25 RCPT TO {served_address(STACK)}' failed" in err and "451" in err, err
    assert "rolled back to the previous files, reloaded: probes pass again" in err, err
    for host in others:
        assert f"{host}: not pushed (an earlier host of its role failed)" in out
        assert (main_cf[host].read_text(), main_cf[host].stat().st_mtime_ns) == before[host], f"{host} touched"
    assert main_cf[first].read_text() == before[first][0]  # the previous file, back
    _assert_each_message_once(lab, sent, tag)
    # The lab is as it was: its own stack's trees, nothing to push.
    monkeypatch.setattr(apply, "_render", render)
    assert _pushed(apply.apply(progress=QUIET)) == []


def _lmtp_target_that_does_not_answer(tree):
    if tree.role != "maildrop":
        return tree
    path = "/etc/postfix/main.cf"
    spec = tree.files[path]
    broken = spec.content.replace("lmtp:unix:private/dovecot-lmtp", "lmtp:unix:private/nobody-listens", 1)
    assert broken != spec.content
    return dataclasses.replace(tree, files={**tree.files, path: dataclasses.replace(spec, content=broken)})


def test_a_maildrop_whose_lmtp_target_does_not_answer_is_rolled_back_and_the_primary_is_untouched(whole):
    """The backup maildrop goes first: the broken transport is found there, by the LHLO probe, and
    the primary, which takes the mail, never gets it."""
    backup, primary = (h.name for h in rollout.order(STACK, "maildrop"))
    main_cf = {h: _file(h, "/etc/postfix/main.cf") for h in (backup, primary)}
    before = {h: (p.read_text(), p.stat().st_mtime_ns) for h, p in main_cf.items()}
    outcomes = {o.host: o for o in apply.apply(progress=QUIET, transform=_lmtp_target_that_does_not_answer)}
    assert outcomes[backup].status == "failed"
    assert f"{backup}: probe 'lmtp LHLO (virtual_transport)' failed" in outcomes[backup].error
    assert "private/nobody-listens" in outcomes[backup].error
    assert outcomes[primary].status == "held"
    assert main_cf[backup].read_text() == before[backup][0]
    assert (main_cf[primary].read_text(), main_cf[primary].stat().st_mtime_ns) == before[primary]
    assert _pushed(apply.apply(progress=QUIET)) == []


def test_a_dropped_file_leaves_the_hosts_and_a_failed_reload_is_carried_out_by_the_next_apply(whole, tmp_path):
    """Retiring the lab2027 DKIM key drops its file from every smtp-out tree. With OpenDKIM down on
    the first smtp-out of the rollout, its reload fails there and the rollout stops; once it runs
    again, the next apply carries out the owed reload on that host and goes on."""

    def retire(config: dict) -> None:
        domain = config["mail-cluster:domains"][0]
        domain["dkim"] = [k for k in domain["dkim"] if k["selector"] != "lab2027"]

    edited = _edited_stack(tmp_path, retire)
    first, *others = SMTP_OUT
    assert all(_file(h, RETIRED_KEY).exists() for h in SMTP_OUT)
    lab_hosts.stop(first, ["opendkim"])
    try:
        outcomes = {o.host: o for o in apply.apply(edited, progress=QUIET)}
        assert outcomes[first].status == "failed"
        assert f"{first}: reload 'opendkim' failed" in outcomes[first].error
        assert "opendkim.service is not active" in outcomes[first].error
        assert [outcomes[h].status for h in others] == ["held", "held"]
        assert not _file(first, RETIRED_KEY).exists()  # installed; its reload owed
        assert all(_file(h, RETIRED_KEY).exists() for h in others)
    finally:
        lab_hosts.start(first, ["opendkim"])
    outcomes = {o.host: o for o in apply.apply(edited, progress=QUIET)}
    assert outcomes[first].status == "pushed", outcomes[first].line()
    assert outcomes[first].result["changed"] == [] and outcomes[first].result["reload"] == ["opendkim"]
    for host in others:
        assert outcomes[host].status == "pushed", outcomes[host].line()
        assert RETIRED_KEY in outcomes[host].result["removed"]
        assert outcomes[host].result["reload"] == ["opendkim"]
    assert not any(_file(h, RETIRED_KEY).exists() for h in SMTP_OUT)
    assert cluster.status()["up"]
