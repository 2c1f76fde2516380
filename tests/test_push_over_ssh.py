"""The push over real SSH: exactly the command the program gives remote.Command, the manifest on
stdin, OpenSSH's client trusting only the pinned key, Debian's sshd on the other side.

pulumi-command 1.2.1 (provider/pkg/provider/remote/) dials with golang.org/x/crypto/ssh: with
`host_key` set, ssh.FixedHostKey accepts that key and no other (connection.go:88-94), so a host
presenting another key fails the handshake; only then does it open a session and hand it stdin
(commandOutputs.go:31-40, 73-75) and run the command text with session.Run (:95), which sshd
hands to the user's shell as `ssh host COMMAND` does. `proxy` dials the bastion with its own
pinned key, then the host through it (connection.go:204-242), as OpenSSH's ProxyJump does.
"""

from __future__ import annotations

import os

import pytest

from components.push import payload, push_command
from model.host_key import fingerprint
from tests import ssh_sites
from tests.ssh_sites import BASTION_ADDRESS, HOST_ADDRESS, HOST_BEHIND_BASTION, OpenSsh

# A frontend: its checker (nginx -t) is quick and it needs nothing else running.
HOST = "nginx0-chrma0"
# Another VM of the stack: its key is a real generated key, just not this host's.
OTHER = "smtp-in-chrma0"


@pytest.fixture(scope="module")
def sites(stacks, keys, trees, tmp_path_factory):
    """The host (serving HOST's generated key), the bastion and the client, torn down afterwards."""
    reason = ssh_sites.unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the SSH push tests: {reason}")
        pytest.skip(reason)
    material = keys["lab"]
    workdir = tmp_path_factory.mktemp("ssh")
    ssh_sites.destroy()
    ssh_sites.prepare_state()
    started = []
    try:
        ssh_sites.create_network()
        operator_key = ssh_sites.new_key(workdir / "operator", "operator")
        bastion_private = workdir / "bastion_host_key"
        bastion_public = ssh_sites.new_key(bastion_private, "bastion")
        host = ssh_sites.start_sshd(
            "host",
            ssh_sites.HOST,
            [HOST_ADDRESS, HOST_BEHIND_BASTION],
            material.ssh_host_keys[HOST].private_openssh,
            material.ssh_host_keys[HOST].public_openssh,
            operator_key,
        )
        started.append(host)
        bastion = ssh_sites.start_sshd(
            "bastion", ssh_sites.BASTION, [BASTION_ADDRESS], bastion_private.read_text(), bastion_public, operator_key
        )
        started.append(bastion)
        client = OpenSsh(workdir, workdir / "operator", ssh_sites.CLIENT)
        yield {
            "host": host,
            "bastion": bastion,
            "client": client,
            "tree": trees["lab"][HOST],
            "material": material,
        }
    finally:
        for sshd in started:
            ssh_sites.stop_sshd(sshd)
        ssh_sites.destroy()


def _pinned(name: str, client: OpenSsh, address: str, key: str) -> dict[str, str]:
    """ssh_config options that trust `key` for `address` and nothing else, and offer only its type,
    as pulumi-command's HostKeyAlgorithms = [publicKey.Type()] (connection.go:94)."""
    known = client.known_hosts(name, {address: key})
    return {"HostName": address, "UserKnownHostsFile": str(known), "HostKeyAlgorithms": key.split()[0]}


def _direct(client: OpenSsh, pinned: str):
    return client.config({"host": _pinned("direct", client, HOST_ADDRESS, pinned)})


def _via_bastion(client: OpenSsh, pinned_host: str, pinned_bastion: str):
    return client.config(
        {
            "bastion": _pinned("bastion", client, BASTION_ADDRESS, pinned_bastion),
            "host": {**_pinned("behind", client, HOST_BEHIND_BASTION, pinned_host), "ProxyJump": "bastion"},
        }
    )


def _assert_landed(sites, pushed) -> None:
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdin_read == pushed.stdin_size
    tree = sites["tree"]
    for path, spec in tree.files.items():
        landed = sites["host"].root.outside(path)
        assert landed.read_text() == spec.content, path
        assert landed.stat().st_mode & 0o7777 == spec.mode, path


def test_push_over_ssh_with_the_pinned_key_installs_the_tree(sites):
    client, tree = sites["client"], sites["tree"]
    stdin, _ = payload(tree)
    pushed = client.push(
        _direct(client, sites["material"].ssh_host_keys[HOST].public_openssh), "host", push_command(), stdin
    )
    _assert_landed(sites, pushed)


def test_push_to_a_host_presenting_another_key_sends_nothing(sites):
    client, host = sites["client"], sites["host"]
    stdin, _ = payload(sites["tree"])
    other = sites["material"].ssh_host_keys[OTHER].public_openssh
    logins = host.accepted()
    pushed = client.push(_direct(client, other), "host", push_command(), stdin)
    assert pushed.returncode == 255
    # Refused at the handshake: no login, no session, not one byte of the manifest read.
    assert pushed.stdin_read == 0
    assert host.accepted() == logins
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in pushed.stderr
    # ssh names the key the host presented; the stack output names the one expected.
    assert fingerprint(host.public_key) in pushed.stderr
    assert fingerprint(other) != fingerprint(host.public_key)


def test_push_through_the_bastion_installs_the_tree(sites):
    client, tree = sites["client"], sites["tree"]
    stdin, _ = payload(tree)
    bastion_logins = sites["bastion"].accepted()
    # The client has no route to this address of the host: only the bastion reaches it.
    direct = client.config({"host": {"HostName": HOST_BEHIND_BASTION, "UserKnownHostsFile": "/dev/null"}})
    unreachable = client.push(direct, "host", "true", "")
    assert unreachable.returncode == 255 and "unreachable" in unreachable.stderr.lower(), unreachable.stderr
    config = _via_bastion(client, sites["material"].ssh_host_keys[HOST].public_openssh, sites["bastion"].public_key)
    pushed = client.push(config, "host", push_command(), stdin)
    _assert_landed(sites, pushed)
    assert sites["bastion"].accepted() == bastion_logins + 1


def test_a_bastion_presenting_another_key_gets_nothing(sites):
    client, bastion, host = sites["client"], sites["bastion"], sites["host"]
    stdin, _ = payload(sites["tree"])
    logins = (bastion.accepted(), host.accepted())
    config = _via_bastion(
        client,
        sites["material"].ssh_host_keys[HOST].public_openssh,
        sites["material"].ssh_host_keys[OTHER].public_openssh,
    )
    pushed = client.push(config, "host", push_command(), stdin)
    assert pushed.returncode == 255
    assert pushed.stdin_read == 0
    assert (bastion.accepted(), host.accepted()) == logins
    assert fingerprint(bastion.public_key) in pushed.stderr
