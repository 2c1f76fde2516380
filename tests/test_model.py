"""The stack model: what the stack files say, parsed once, with errors that name the key."""

from __future__ import annotations

import copy

import pytest

from model import StackConfigError, load_stack, stack_file_values


def test_prod_stack_has_the_case_study_topology(stacks):
    prod = stacks["prod"]
    assert [h.name for h in prod.hosts.smtp_out] == ["smtp-out-chrma0", "smtp-out-frggh0", "smtp-out-nlams2"]
    assert [h.name for h in prod.hosts.smtp_in] == ["smtp-in-chrma0", "smtp-in-frggh0", "smtp-in-nlams2"]
    assert prod.maildrop_primary.name == "maildrop0-chbtl0"
    assert prod.maildrop_backup.name == "maildrop1-ddln0"
    assert prod.smtp_out_primary.name == "smtp-out-chrma0"
    assert str(prod.hosts.smtp_out[0].ipv6) == "2001:678:d78:510::7"
    assert {str(h.public_ipv6) for h in prod.hosts.smtp_in} == {
        "2a02:2528:ff00::125",
        "2a02:898:146:1::5",
        "2001:678:d78:6::141",
    }


def test_hosts_are_named_like_the_case_study(stacks):
    prod = stacks["prod"]
    assert prod.fqdn(prod.hosts.smtp_out[0]) == "smtp-out.chrma0.ipng.ch"
    assert prod.fqdn(prod.maildrop_primary) == "maildrop0.chbtl0.ipng.ch"
    assert prod.service_name("smtp-out") == "smtp-out.ipng.ch"
    assert prod.peer(prod.maildrop_primary) == prod.maildrop_backup


def test_lab_stack_uses_documentation_addresses_only(stacks):
    from ipaddress import ip_address, ip_network

    doc = [ip_network(p) for p in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
    lab = stacks["lab"]
    addresses = [ip_address(a) for _, h in lab.vm_hosts for a in h.site_local_addresses + h.public_addresses]
    addresses += [lab.webmail.address] + [c.address for c in lab.relay_clients]
    assert addresses and all(any(a in p for p in doc) for a in addresses)


def _lab_values():
    return copy.deepcopy(stack_file_values("lab"))


def test_error_names_every_bad_key_at_once():
    values = _lab_values()
    values["hosts"]["maildrop"][1]["primary"] = True
    values["domains"][0]["aliases"]["team"] = ["nobody-here"]
    with pytest.raises(StackConfigError) as err:
        load_stack(values)
    text = str(err.value)
    assert "mail-cluster:hosts.maildrop: needs exactly one primary" in text
    assert "mail-cluster:domains[0].aliases.team: 'nobody-here' is neither a mailbox" in text


def test_shape_errors_name_the_nested_key():
    values = _lab_values()
    values["hosts"]["smtp_in"][2]["ipv6"] = "not-an-address"
    values["ports"] = {"imaps": 70000}
    with pytest.raises(StackConfigError) as err:
        load_stack(values)
    keys = [k for k, _ in err.value.problems]
    assert "hosts.smtp_in[2].ipv6" in keys
    assert "ports.imaps" in keys


def test_unknown_key_is_refused_not_ignored():
    values = _lab_values()
    values["domains"][1]["dkim_selectors"] = ["x"]
    with pytest.raises(StackConfigError, match=r"domains\[1\]\.dkim_selectors: Extra inputs are not permitted"):
        load_stack(values)
