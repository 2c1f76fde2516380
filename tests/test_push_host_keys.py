"""Every push pins its host's SSH key, and goes through the bastion when the stack names one.

pulumi-command checks a connection's `host_key` with ssh.FixedHostKey and, without one, accepts
any key (ssh.InsecureIgnoreHostKey: provider/pkg/provider/remote/connection.go:88-97 at v1.2.1).
A push carries the host's whole manifest (TLS key, DKIM keys, doveadm, SRS and SASL secrets), so a
push without a pinned key would hand them to whoever answers on the address.
"""

from __future__ import annotations

import copy
import subprocess

import pytest
import yaml

from model import load_stack_file, stack_file_values
from model.host_key import fingerprint, parse_host_key
from tests.pulumi_mocks import PRIVATE_KEY
from tests.pulumi_program import CLOUD_INIT, COMMAND, run_program

BASTION = {
    "host": "bastion.example.com",
    "user": "pulumi",
    "port": 2222,
    "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF+FbJYXjXCo1PHtnFVl+shS2+KGY30MiJBkevza4hb8 bastion",
}


@pytest.fixture(scope="module", params=["prod", "lab"])
def program(request):
    memo: dict = {}
    return load_stack_file(request.param), run_program(request.param, memo=memo), memo


@pytest.fixture(scope="module")
def with_bastion():
    values = copy.deepcopy(stack_file_values("lab"))
    values["bastion"] = BASTION
    return load_stack_file("lab"), run_program("lab", values)


def _connections(run) -> dict[str, dict]:
    return {c.name.removesuffix("-push"): c.inputs["connection"] for c in run.mocks.of_type(COMMAND)}


def _generated_public_key(memo: dict, host: str) -> str:
    """The public half of the ED25519 key pulumi-tls made for `host` (components/keys.py)."""
    [outputs] = [out for (typ, name, _), out in memo.items() if typ == PRIVATE_KEY and name == f"ssh-host-{host}"]
    return " ".join(outputs["publicKeyOpenssh"].split()[:2])


def test_every_push_connection_pins_a_host_key(program):
    stack, run, _ = program
    connections = _connections(run)
    assert len(connections) == len(stack.vm_hosts) + 1 + len(stack.relay_clients)
    for host, connection in connections.items():
        assert connection.get("hostKey"), f"{host}: its push would accept any host key"
        # The provider parses it as an authorized_keys line (ssh.ParseAuthorizedKey, connection.go:89).
        assert parse_host_key(connection["hostKey"]) == connection["hostKey"], host


def test_a_vm_push_pins_the_key_generated_for_that_vm(program):
    stack, run, memo = program
    connections = _connections(run)
    pinned = {host.name: connections[host.name]["hostKey"] for _, host in stack.vm_hosts}
    generated = {host: _generated_public_key(memo, host) for host in pinned}
    assert pinned == generated
    # One key per VM: no two VMs would accept each other's identity.
    assert len(set(pinned.values())) == len(pinned)
    # The stack output the operator reads the expected keys from is the same key material.
    assert {h: v["public_key"] for h, v in run.outputs["ssh_host_keys"].items() if h in pinned} == pinned


def test_the_vm_gets_the_key_its_push_pins(program):
    """The seed's user-data carries the VM's host key (cloud-init's `ssh_keys`); its public half
    is the one the push pins."""
    stack, run, _ = program
    connections = _connections(run)
    for _, host in stack.vm_hosts:
        user_data = yaml.safe_load(run.mocks.named(CLOUD_INIT, f"{host.name}-cloudinit").inputs["userData"])
        if "ssh_keys" not in user_data:
            pytest.skip("the VM's user-data does not carry its SSH host key yet")
        public = " ".join(user_data["ssh_keys"]["ed25519_public"].split()[:2])
        assert public == connections[host.name]["hostKey"], host.name
        assert user_data["ssh_deletekeys"] is True, "the image's own keys must go, or sshd may offer one of them"


def test_hosts_the_program_does_not_create_are_pinned_to_the_stacks_keys(program):
    stack, run, _ = program
    connections = _connections(run)
    assert connections[stack.webmail.host]["hostKey"] == stack.webmail.host_key
    for client in stack.relay_clients:
        assert connections[client.name]["hostKey"] == client.host_key


def test_host_key_fingerprints_are_a_plain_stack_output(program, tmp_path):
    _, run, _ = program
    assert "ssh_host_keys" not in run.secret_outputs, "public keys: the operator compares them with ssh's messages"
    keys = run.outputs["ssh_host_keys"]
    assert set(keys) == set(_connections(run))
    for host, entry in keys.items():
        (tmp_path / "key.pub").write_text(entry["public_key"] + "\n")
        listed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "key.pub")], capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.split()[1] == entry["fingerprint"] == fingerprint(entry["public_key"]), host


def test_without_a_bastion_every_push_dials_its_host(program):
    _, run, _ = program
    assert all("proxy" not in c for c in _connections(run).values())


def test_the_bastion_is_every_pushs_proxy_with_its_own_pinned_key(with_bastion):
    stack, run = with_bastion
    connections = _connections(run)
    assert len(connections) == len(stack.vm_hosts) + 1 + len(stack.relay_clients)
    for host, connection in connections.items():
        proxy = connection.get("proxy")
        assert proxy, f"{host}: dials directly despite the bastion"
        assert (proxy["host"], proxy["user"], proxy["port"]) == ("bastion.example.com", "pulumi", 2222)
        assert proxy["hostKey"] == " ".join(BASTION["host_key"].split()[:2])
        # The host's own key is still pinned: the bastion only forwards the TCP connection.
        assert connection["hostKey"] != proxy["hostKey"]


def test_a_host_key_line_is_pinned_without_its_comment(tmp_path):
    for kind in ("ed25519", "ecdsa"):
        path = tmp_path / kind
        subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "root@somewhere", "-f", str(path)], check=True)
        line = (tmp_path / f"{kind}.pub").read_text()
        assert parse_host_key(line) == " ".join(line.split()[:2])
    with pytest.raises(ValueError, match="not an SSH public key"):
        parse_host_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIbroken")


def test_the_bastion_login_uses_the_operator_key_as_a_secret():
    values = copy.deepcopy(stack_file_values("lab"))
    values["bastion"] = BASTION
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlcmF0b3I=\n-----END OPENSSH PRIVATE KEY-----\n"
    run = run_program("lab", values, secrets={"ssh_private_key": key})
    for command in run.mocks.of_type(COMMAND):
        connection = command.inputs["connection"]
        assert connection["privateKey"] == connection["proxy"]["privateKey"] == key, command.name
        assert "connection" in run.mocks.secret_inputs[(COMMAND, command.name)], command.name
