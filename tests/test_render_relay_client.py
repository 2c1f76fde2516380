"""The relay clients' opensmtpd configuration, checked by `smtpd -n` with the rendered files in
place of /etc/mail (the push script's overlay)."""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from urllib.parse import urlsplit

import pytest
from conftest import assert_checks_pass, check_with_content

from render import render_host
from render.relay_client import SECRETS, SMTPD_CONF, UNIT_DROP_IN
from render.tree import HostTree


@pytest.fixture(scope="module")
def relay_trees(stacks, keys) -> dict[str, dict[str, HostTree]]:
    """stack name -> relay client name -> its tree."""
    return {
        name: {c.name: render_host(stack, "relay_client", c, keys[name]) for c in stack.relay_clients}
        for name, stack in stacks.items()
    }


def directives(content: str) -> list[list[str]]:
    """smtpd.conf as words per line (quotes removed), comments and blank lines left out."""
    return [shlex.split(line) for line in content.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.checkers
def test_every_relay_client_passes_smtpd_n(relay_trees):
    trees = [t for clients in relay_trees.values() for t in clients.values()]
    assert trees, "the stacks list no relay client"
    for tree in trees:
        assert_checks_pass(tree)


def test_outbound_mail_goes_to_smtp_out_submission_as_the_group(stacks, keys, relay_trees, stack_name):
    stack = stacks[stack_name]
    for client in stack.relay_clients:
        tree = relay_trees[stack_name][client.name]
        lines = directives(tree.files[SMTPD_CONF].content)
        action = next(line for line in lines if line[:3] == ["action", "outbound", "relay"])
        assert action[3] == "host"
        url = urlsplit(action[4])
        assert (url.scheme, url.username) == ("smtp+tls", client.group)
        assert (url.hostname, url.port) == (f"smtp-out.{stack.infra_domain}", 587)
        assert action[5:] == ["auth", "<secrets>", "mail-from", client.mail_from]
        # The URL's user part is the label of the credentials line: `<label> <user>:<password>`.
        secrets = directives(tree.files[SECRETS].content)
        assert secrets == [[client.group, f"{client.group}:{keys[stack_name].sasl_passwords[client.group]}"]]


def test_only_local_senders_are_served(relay_trees, stack_name):
    for tree in relay_trees[stack_name].values():
        lines = directives(tree.files[SMTPD_CONF].content)
        assert ["listen", "on", "localhost"] in lines
        matches = [line for line in lines if line[0] == "match"]
        assert matches == [
            ["match", "from", "local", "for", "local", "action", "local_mail"],
            ["match", "from", "local", "for", "any", "action", "outbound"],
        ]


def test_secrets_are_not_world_readable(relay_trees):
    for clients in relay_trees.values():
        for tree in clients.values():
            spec = tree.files[SECRETS]
            assert (spec.mode, spec.owner, spec.group) == (0o640, "root", "opensmtpd")


def test_the_service_runs_the_config_in_etc_mail_and_restarts_on_change(relay_trees):
    tree = next(iter(relay_trees["prod"].values()))
    unit = tree.files[UNIT_DROP_IN].content
    assert re.findall(r"^ExecStart=(.*)$", unit, re.M) == ["", f"/usr/sbin/smtpd -f {SMTPD_CONF}"]
    assert tree.services == {"opensmtpd": "systemctl daemon-reload && systemctl restart opensmtpd"}
    assert all(spec.reload == ("opensmtpd",) for spec in tree.files.values())


def test_a_password_with_whitespace_is_refused(stacks, keys):
    stack = stacks["lab"]
    client = stack.relay_clients[0]
    material = replace(keys["lab"], sasl_passwords={**keys["lab"].sasl_passwords, client.group: "two words"})
    with pytest.raises(ValueError, match=client.name):
        render_host(stack, "relay_client", client, material)


@pytest.mark.checkers
def test_a_broken_config_fails_with_the_smtpd_message(relay_trees):
    tree = next(iter(relay_trees["lab"].values()))
    content = tree.files[SMTPD_CONF].content.replace("auth <secrets>", "auth <secret>")
    result = check_with_content(tree, SMTPD_CONF, content)
    assert result.returncode == 1
    assert "no such table: secret" in result.stderr


@pytest.mark.checkers
def test_a_secrets_file_without_credentials_fails_the_check(relay_trees):
    tree = next(iter(relay_trees["lab"].values()))
    # One word per line makes a list table, which smtpd refuses for `auth`.
    result = check_with_content(tree, SECRETS, "cron\n")
    assert result.returncode == 1
    assert 'table "secrets" may not be used for auth lookups' in result.stderr
