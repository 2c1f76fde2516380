"""A change previews as exactly the resources it must touch (issue 5).

Each run evaluates the program under mocks; runs share the mocks' memo, so keys and secrets stay
what the stack's state would keep, and two runs differ only by what the config change causes.
"""

from __future__ import annotations

import copy

import pytest

from model import stack_file_values
from tests.pulumi_program import COMMAND, run_program

PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
LAB = stack_file_values("lab")


@pytest.fixture(scope="module")
def memo() -> dict:
    return {}


@pytest.fixture(scope="module")
def baseline(memo):
    return run_program("lab", copy.deepcopy(LAB), memo=memo)


def _changed(before, after) -> dict[str, set]:
    """Resources whose inputs differ, resources added or removed, stack outputs that differ."""
    old, new = before.inputs(), after.inputs()
    return {
        "changed": {k for k in old.keys() & new.keys() if old[k] != new[k]},
        "added": set(new) - set(old),
        "removed": set(old) - set(new),
        "outputs": {
            k for k in before.outputs.keys() | after.outputs.keys() if before.outputs.get(k) != after.outputs.get(k)
        },
    }


def _pushes(role_hosts) -> set[tuple[str, str]]:
    return {(COMMAND, f"{h}-push") for h in role_hosts}


SMTP_IN = [h["name"] for h in LAB["hosts"]["smtp_in"]]
SMTP_OUT = [h["name"] for h in LAB["hosts"]["smtp_out"]]


def test_changing_nothing_changes_nothing(baseline, memo):
    again = run_program("lab", copy.deepcopy(LAB), memo=memo)
    assert _changed(baseline, again) == {"changed": set(), "added": set(), "removed": set(), "outputs": set()}


@pytest.mark.parametrize(
    ("alias", "roles"),
    [
        # Who an alias delivers to is also who may send as it (smtp-out's sender-logins).
        pytest.param(("example.com", "team", ["alice"]), (SMTP_IN, SMTP_OUT), id="change an alias"),
        pytest.param(("example.org", "sales", ["bob", "carol@remote.test"]), (SMTP_IN, SMTP_OUT), id="add an alias"),
        pytest.param(("example.org", "press", ["carol@remote.test"]), (SMTP_IN,), id="add a forward elsewhere"),
    ],
)
def test_an_alias_change_touches_only_the_smtp_in_and_sender_map_pushes(baseline, memo, alias, roles):
    domain, local_part, targets = alias
    values = copy.deepcopy(LAB)
    next(d for d in values["domains"] if d["name"] == domain)["aliases"][local_part] = targets
    after = run_program("lab", values, memo=memo)
    changes = _changed(baseline, after)
    pushes = set().union(*(_pushes(hosts) for hosts in roles))
    assert changes == {"changed": pushes, "added": set(), "removed": set(), "outputs": set()}
    old, new = baseline.inputs(), after.inputs()
    for push in pushes:
        assert old[push]["triggers"] != new[push]["triggers"]


def test_a_new_dkim_selector_touches_smtp_out_dns_and_one_key(baseline, memo):
    values = copy.deepcopy(LAB)
    # Rotation, step one: publish the next key beside the active one.
    next(d for d in values["domains"] if d["name"] == "example.net")["dkim"].append(
        {"selector": "lab2", "active": False}
    )
    after = run_program("lab", values, memo=memo)
    changes = _changed(baseline, after)
    assert changes["changed"] == _pushes(SMTP_OUT)
    assert changes["added"] == {(PRIVATE_KEY, "dkim-lab2._domainkey.example.net")}
    assert changes["removed"] == set()
    assert changes["outputs"] == {"dns_records", "dns_zones"}
    new_records = [r for r in after.outputs["dns_records"] if r not in baseline.outputs["dns_records"]]
    assert [(r["zone"], r["name"], r["type"]) for r in new_records] == [("example.net", "lab2._domainkey", "TXT")]
