"""The Pulumi program under mocks: what `pulumi up` would create for the prod and lab stacks."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from components.push import unpack
from model import load_stack_file
from render.push_host import __file__ as PUSH_HOST_PATH
from render.tree import Check, FileSpec, HostTree, Probe
from tests.pulumi_program import CLOUD_INIT, COMMAND, DOMAIN, PROVIDER, VOLUME, run_program

GIB = 1024**3
ROLE_TYPES = {
    "smtp_out": "mail:role:SmtpOut",
    "smtp_in": "mail:role:SmtpIn",
    "maildrop": "mail:role:Maildrop",
    "frontend": "mail:role:Frontend",
}
# What an operator would put in `pulumi config set --secret mail-cluster:ssh_private_key`.
OPERATOR_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlcmF0b3Itb25seS10ZXN0LWtleQ==\n-----END OPENSSH PRIVATE KEY-----\n"
)


@pytest.fixture(scope="module", params=["prod", "lab"])
def program(request):
    return request.param, load_stack_file(request.param), run_program(request.param)


@pytest.fixture(scope="module")
def with_operator_key():
    return run_program("lab", secrets={"ssh_private_key": OPERATOR_KEY})


def _by_name(run, typ):
    return {r.name: r for r in run.mocks.of_type(typ)}


def test_every_vm_host_is_one_libvirt_domain(program):
    _, stack, run = program
    domains = _by_name(run, DOMAIN)
    assert sorted(d.inputs["name"] for d in domains.values()) == sorted(h.name for _, h in stack.vm_hosts)
    assert len(domains) == 11


def test_vms_have_the_case_study_size(program):
    _, stack, run = program
    volumes, seeds = _by_name(run, VOLUME), _by_name(run, CLOUD_INIT)
    for role, host in stack.vm_hosts:
        domain = run.mocks.named(DOMAIN, f"{host.name}-domain").inputs
        assert (domain["memory"], domain["vcpu"]) == (8192, 4)
        # Nothing at create time waits for the guest agent (not installed before cloud-init ran).
        assert domain["autostart"] and not domain["qemuAgent"]
        root_disk, *mail_disk = domain["disks"]
        root = volumes[f"{host.name}-root"].inputs
        assert root_disk["volumeId"] == f"{host.name}-root-id"
        assert root["size"] == 16 * GIB
        assert [d["volumeId"] for d in mail_disk] == ([f"{host.name}-mail-id"] if role == "maildrop" else [])
        # A copy-on-write clone of its site's Debian image, of the pinned version.
        version = stack.debian_image.version
        base = volumes[f"debian-12-{host.site}-{version}"].inputs
        assert root["baseVolumeId"] == f"debian-12-{host.site}-{version}-id"
        assert base["source"] == stack.debian_image.url
        assert domain["cloudinit"] == f"{host.name}-cloudinit-id"
        assert f"{host.name}-cloudinit" in seeds


def test_each_vm_has_one_nic_on_its_sites_local_network(program):
    _, stack, run = program
    for _, host in stack.vm_hosts:
        site = stack.site_by_name[host.site]
        [nic] = run.mocks.named(DOMAIN, f"{host.name}-domain").inputs["networkInterfaces"]
        assert nic["bridge"] == site.bridge
        network = yaml.safe_load(run.mocks.named(CLOUD_INIT, f"{host.name}-cloudinit").inputs["networkConfig"])
        # The one NIC; the loopback only carries public addresses (render/cloud_init.py).
        assert set(network["ethernets"]) <= {"site-local", "lo"}
        ethernet = network["ethernets"]["site-local"]
        assert ethernet["match"]["macaddress"] == nic["mac"]
        assert f"{host.ipv6}/{site.site_local.ipv6.prefixlen}" in ethernet["addresses"]
        assert f"{host.ipv4}/{site.site_local.ipv4.prefixlen}" in ethernet["addresses"]


def test_cloud_init_names_the_vm_and_lets_the_operator_in(program):
    _, stack, run = program
    for role, host in stack.vm_hosts:
        user_data = run.mocks.named(CLOUD_INIT, f"{host.name}-cloudinit").inputs["userData"]
        assert user_data.startswith("#cloud-config\n")
        config = yaml.safe_load(user_data)
        assert (config["hostname"], config["fqdn"]) == (host.name, stack.fqdn(host))
        assert config["ssh_authorized_keys"] == [stack.ssh_public_key]
        assert config["disable_root"] is False and config["ssh_pwauth"] is False
        daemon = {"smtp_out": "opendkim", "smtp_in": "postsrsd", "maildrop": "dovecot-imapd", "frontend": "nginx-light"}
        assert daemon[role] in config["packages"]


def test_each_vm_runs_on_its_own_sites_hypervisor(program):
    _, stack, run = program
    providers = {run.monitor.urns[(PROVIDER, p.name)]: p.inputs["uri"] for p in run.mocks.of_type(PROVIDER)}
    assert sorted(providers.values()) == sorted({stack.site_by_name[h.site].hypervisor for _, h in stack.vm_hosts})
    hypervisor_of = {}
    for _, host in stack.vm_hosts:
        for name in (f"{host.name}-domain",):
            provider_urn = run.mocks.named(DOMAIN, name).provider.rsplit("::", 1)[0]
            hypervisor_of[host.name] = providers[provider_urn]
        for typ, name in ((VOLUME, f"{host.name}-root"), (CLOUD_INIT, f"{host.name}-cloudinit")):
            assert providers[run.mocks.named(typ, name).provider.rsplit("::", 1)[0]] == hypervisor_of[host.name]
        assert hypervisor_of[host.name] == stack.site_by_name[host.site].hypervisor
    # One hypervisor failing takes at most one replica of a role.
    for role, hosts in stack.hosts.by_role().items():
        used = Counter(hypervisor_of[h.name] for h in hosts)
        assert max(used.values()) == 1, f"{role}: {used}"


def test_components_own_their_resources(program):
    _, stack, run = program
    urns, parents = run.monitor.urns, run.monitor.parents
    for role, host in stack.vm_hosts:
        vm = urns[("mail:vm:DebianVm", host.name)]
        assert parents[("mail:vm:DebianVm", host.name)] == urns[(ROLE_TYPES[role], role.replace("_", "-"))]
        for typ, name in ((DOMAIN, "domain"), (VOLUME, "root"), (CLOUD_INIT, "cloudinit")):
            assert parents[(typ, f"{host.name}-{name}")] == vm
        assert parents[(COMMAND, f"{host.name}-push")] == urns[(ROLE_TYPES[role], role.replace("_", "-"))]
    assert parents[(COMMAND, f"{stack.webmail.host}-push")] == urns[("mail:role:Webmail", "webmail")]
    for client in stack.relay_clients:
        assert parents[(COMMAND, f"{client.name}-push")] == urns[("mail:role:RelayClients", "relay-clients")]
    keys = urns[("mail:keys:Keys", "keys")]
    assert all(parents[(r.typ, r.name)] == keys for r in run.mocks.resources if r.typ.startswith(("tls:", "random:")))


def test_components_carry_their_type_tokens(program):
    _, stack, run = program
    components = Counter(r.typ for r in run.mocks.resources if not r.custom)
    assert components == {
        "mail:vm:DebianVm": 11,
        "mail:vm:Hypervisor": len({h.site for _, h in stack.vm_hosts}),
        "mail:keys:Keys": 1,
        **{t: 1 for t in ROLE_TYPES.values()},
        "mail:role:Webmail": 1,
        "mail:role:RelayClients": 1,
    }


def test_resource_names_are_unique(program):
    _, _, run = program
    names = Counter((r.typ, r.name) for r in run.mocks.resources)
    assert [n for n, c in names.items() if c > 1] == []


def test_every_host_gets_one_push(program):
    _, stack, run = program
    hosts = [h.name for _, h in stack.vm_hosts] + [stack.webmail.host] + [c.name for c in stack.relay_clients]
    assert sorted(c.name for c in run.mocks.of_type(COMMAND)) == sorted(f"{h}-push" for h in hosts)


def _tree(manifest: dict) -> HostTree:
    return HostTree(
        host=manifest["host"],
        role="",
        files={p: FileSpec(**spec) for p, spec in manifest["files"].items()},
        checks=tuple(Check(**c) for c in manifest["checks"]),
        services=manifest["services"],
        probes=tuple(
            Probe(p["name"], p["kind"], {k: v for k, v in p.items() if k not in ("name", "kind")})
            for p in manifest["probes"]
        ),
        packages=tuple(manifest["packages"]),
    )


def test_push_is_triggered_by_the_tree_digest_and_carries_it_as_secret_stdin(program):
    _, stack, run = program
    addresses = {h.name: str(h.ipv6) for _, h in stack.vm_hosts}
    addresses[stack.webmail.host] = str(stack.webmail.address)
    addresses.update({c.name: str(c.address) for c in stack.relay_clients})
    for command in run.mocks.of_type(COMMAND):
        host = command.name.removesuffix("-push")
        manifest = unpack(command.inputs["stdin"])
        assert manifest["host"] == host and manifest["files"]
        # A VM's push also runs again when its VM is rebuilt (a new domain id).
        rebuilt = [f"{host}-domain-id"] if host in addresses and (DOMAIN, f"{host}-domain") in run.monitor.urns else []
        assert command.inputs["triggers"] == [_tree(manifest).digest(), *rebuilt]
        assert "stdin" in run.mocks.secret_inputs[(COMMAND, command.name)]
        assert command.inputs["connection"]["host"] == addresses[host]
        assert command.inputs["connection"]["user"] == "root"
        # The script's output lists paths; the checkers' messages (which may quote a file) stay out.
        assert command.inputs["logging"] == "stdout"
        # No update command: a changed script or trigger runs create again.
        assert "update" not in command.inputs


def test_push_of_a_vm_waits_for_the_vm(program):
    _, stack, run = program
    for _, host in stack.vm_hosts:
        domain = run.monitor.urns[(DOMAIN, f"{host.name}-domain")]
        assert domain in run.monitor.dependencies[(COMMAND, f"{host.name}-push")]


def test_push_command_runs_push_host_on_the_manifest(program, tmp_path):
    """The create command, run by a shell with a stand-in python3: it gets push_host.py and the manifest."""
    _, _, run = program
    command = run.mocks.of_type(COMMAND)[0]
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/script\ncat > {tmp_path}/stdin\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    subprocess.run(
        ["sh", "-c", command.inputs["create"]], input=command.inputs["stdin"], text=True, env=env, check=True
    )
    assert (tmp_path / "script").read_text() == Path(PUSH_HOST_PATH).read_text()
    assert json.loads((tmp_path / "stdin").read_text()) == unpack(command.inputs["stdin"])


def test_push_script_parses(program):
    _, _, run = program
    create = run.mocks.of_type(COMMAND)[0].inputs["create"]
    script = create.split("<<'PUSH_HOST_PY'\n", 1)[1].rsplit("\nPUSH_HOST_PY\n", 1)[0]
    compile(script, "push_host.py", "exec")


def test_stack_outputs_describe_hosts_endpoints_and_dns(program):
    _, stack, run = program
    outputs = run.outputs
    assert {h["name"]: (h["role"], h["site"], h["fqdn"]) for h in outputs["hosts"]} == {
        h.name: (role, h.site, stack.fqdn(h)) for role, h in stack.vm_hosts
    }
    smtp_in = outputs["hosts"][[h["name"] for h in outputs["hosts"]].index(stack.hosts.smtp_in[0].name)]
    assert str(stack.hosts.smtp_in[0].public_ipv6) in smtp_in["addresses"]
    endpoints = outputs["endpoints"]
    assert endpoints["submission"] == f"smtp-out.{stack.infra_domain}:587"
    assert endpoints["imaps"] == f"imap.{stack.infra_domain}:993"
    assert endpoints["managesieve"] == f"imap.{stack.infra_domain}:4190"
    assert endpoints["webmail"] == f"https://webmail.{stack.infra_domain}/"
    for domain in stack.domain_names:
        assert endpoints["mx"][domain] == [f"10 {stack.fqdn(h)}." for h in stack.hosts.smtp_in]
    records = outputs["dns_records"]
    assert records and all(set(r) == {"zone", "name", "type", "ttl", "value"} for r in records)
    dkim = {(r["zone"], r["name"]) for r in records if "._domainkey" in r["name"]}
    assert dkim == {(d.name, f"{k.selector}._domainkey") for d in stack.domains for k in d.dkim}
    assert set(outputs["dns_zones"]) == {stack.infra_domain, *stack.domain_names}
    assert all("SOA" in text for text in outputs["dns_zones"].values())


def test_no_secret_in_plain_stack_outputs(program):
    _, _, run = program
    # The generated mailbox passwords are the one output that is a secret, and is marked so.
    assert run.secret_outputs == {"mailbox_passwords"}
    plain = json.dumps({k: v for k, v in run.outputs.items() if k not in run.secret_outputs})
    assert "PRIVATE KEY" not in plain
    assert run.secret_texts, "the mocks handed out no secrets: nothing was checked"
    leaked = [s for s in run.secret_texts if s in plain]
    assert leaked == []


def test_operator_ssh_key_reaches_the_pushes_as_a_secret(with_operator_key):
    run = with_operator_key
    for command in run.mocks.of_type(COMMAND):
        assert command.inputs["connection"]["privateKey"] == OPERATOR_KEY
        assert "connection" in run.mocks.secret_inputs[(COMMAND, command.name)]
    assert OPERATOR_KEY.splitlines()[1] not in json.dumps(run.outputs)
