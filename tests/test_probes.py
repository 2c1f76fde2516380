"""Each role's tree carries probes that exercise what the role is for (issue 15), as plain data in
the manifest, and the packages of its role (issue 13)."""

from __future__ import annotations

from conftest import role_trees

from render import cloud_init
from render.probes import served_address


def _probes(tree) -> dict[str, dict]:
    return {p["name"]: p for p in tree.manifest()["probes"]}


def test_smtp_in_probes_a_rcpt_for_a_served_address_on_its_public_address(stacks, trees, stack_name):
    stack = stacks[stack_name]
    for tree, host in zip(role_trees(trees[stack_name], "smtp_in"), stack.hosts.smtp_in, strict=True):
        smtp = next(p for p in _probes(tree).values() if p["kind"] == "smtp")
        assert smtp["rcpt"] == [served_address(stack)] and smtp["port"] == stack.ports.smtp
        # Not localhost: mynetworks would skip the restrictions a broken change may break.
        assert smtp["address"] == str(host.public_ipv4) and smtp["tls_name"] == stack.service_name("smtp-in")
        assert {"rspamd answers", "rspamd milter answers", "unbound answers", "postsrsd answers"} <= set(_probes(tree))


def test_smtp_out_probes_submission_with_starttls_and_its_milters(trees, stack_name):
    for tree in role_trees(trees[stack_name], "smtp_out"):
        submission = next(p for p in _probes(tree).values() if p["kind"] == "smtp")
        assert submission["tls_name"] and submission["auth"] is True
        assert {"opendkim answers", "rspamd answers", "rspamd milter answers", "unbound answers"} <= set(_probes(tree))
        assert _probes(tree)["opendkim answers"]["kind"] == "milter"


def test_maildrop_probes_lmtp_where_postfix_delivers_and_imaps(stacks, trees, stack_name):
    for tree in role_trees(trees[stack_name], "maildrop"):
        kinds = {p["kind"]: p for p in _probes(tree).values()}
        assert kinds["lmtp"]["postconf"] == "virtual_transport"
        assert "virtual_transport = lmtp:" in tree.files["/etc/postfix/main.cf"].content
        imaps = next(p for p in _probes(tree).values() if p.get("port") == stacks[stack_name].ports.imaps)
        assert imaps["expect"] == "* OK" and imaps["tls_name"]


def test_frontend_probes_each_stream_port_and_the_webmail_site(stacks, trees, stack_name):
    ports = stacks[stack_name].ports
    for tree in role_trees(trees[stack_name], "frontend"):
        probed = {p.get("port") for p in _probes(tree).values()}
        assert {ports.submission, ports.imaps, ports.managesieve, 443} <= probed


def test_every_vm_tree_carries_its_roles_packages(stacks, trees, stack_name):
    for role, host in stacks[stack_name].vm_hosts:
        assert trees[stack_name][host.name].manifest()["packages"] == cloud_init.packages(role)
