"""The push over real SSH to a VM booted from the program's own seed (the `vm_guest` fixture, a
maildrop): the VM presents the host key the program generated and cloud-init installed, and the
push pins it, as pulumi-command does with `host_key` (provider/pkg/provider/remote/connection.go:88-94
at v1.2.1): OpenSSH trusting only that key and offering only its type, exactly
components.push.push_command() as the command, the packed manifest on stdin.

The guest has no Debian mirror (qemu's restricted user network): cloud-init's package steps fail
there, so the push script, which waits for cloud-init and refuses a VM whose cloud-init failed, is
first seen doing just that; then, with a stand-in `cloud-init` that reports done (removed again
afterwards), a small tree lands and its check runs. The role's own tree needs the role's packages
and daemons, which this guest cannot install: the lab-style host in test_push_over_ssh.py runs the
real checkers instead.
"""

from __future__ import annotations

import pytest

from components.push import payload, push_command
from model.host_key import fingerprint
from render.tree import Check, FileSpec, HostTree
from tests.ssh_sites import OpenSsh

pytestmark = pytest.mark.vm

PROBE = "/etc/mail-cluster-push-test/probe.sh"
STAND_IN = "/usr/local/sbin/cloud-init"
# Another VM of the stack: a real generated key, just not this VM's.
OTHER = "smtp-in-chrma0"


def _tree(host: str) -> HostTree:
    return HostTree(
        host=host,
        role="maildrop",
        files={PROBE: FileSpec("#!/bin/sh\necho pushed over ssh\n", mode=0o750, reload=("probe",))},
        checks=(Check("sh", ("sh", "-n", PROBE)),),
        services={"probe": PROBE},
    )


def _client(guest, tmp_path, pinned: str):
    client = OpenSsh(tmp_path, guest.operator_key)
    known = client.known_hosts("vm", {f"[127.0.0.1]:{guest.port}": pinned})
    options = {"HostName": "127.0.0.1", "Port": str(guest.port), "UserKnownHostsFile": str(known)}
    return client, client.config({"vm": {**options, "HostKeyAlgorithms": pinned.split()[0]}})


def test_push_to_the_booted_vm_with_its_pinned_key(vm_guest, tmp_path):
    host = vm_guest.host.name
    stdin, _ = payload(_tree(host))
    client, config = _client(vm_guest, tmp_path, vm_guest.host_key.public_openssh)
    # What the guest's cloud-init says decides what the push must do: its first boot failed the
    # package steps (no mirror), a later boot of the same instance (test_vm_boot boots it again)
    # runs none of them and reports done.
    failed = "error" in vm_guest.ssh("cloud-init status || true").stdout
    pushed = client.push(config, "vm", push_command(), stdin)
    assert pushed.stdin_read == pushed.stdin_size
    if failed:
        # The manifest arrives, and the push refuses a VM whose cloud-init failed.
        assert pushed.returncode == 1 and f"{host}: cloud-init failed" in pushed.stderr, pushed.stderr
        vm_guest.ssh(f"printf '#!/bin/sh\\nexit 0\\n' > {STAND_IN} && chmod 0755 {STAND_IN}")
        try:
            pushed = client.push(config, "vm", push_command(), stdin)
        finally:
            vm_guest.ssh(f"rm -f {STAND_IN}")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdin_read == pushed.stdin_size
    assert PROBE in pushed.stdout and '"probe"' in pushed.stdout
    assert vm_guest.ssh(f"stat -c %a {PROBE} && {PROBE}").stdout.split() == ["750", "pushed", "over", "ssh"]


def test_push_to_the_booted_vm_pinned_to_another_key_sends_nothing(vm_guest, keys, tmp_path):
    stdin, _ = payload(_tree(vm_guest.host.name))
    other = keys["lab"].ssh_host_keys[OTHER].public_openssh
    client, config = _client(vm_guest, tmp_path, other)
    pushed = client.push(config, "vm", push_command(), stdin)
    assert pushed.returncode == 255
    assert pushed.stdin_read == 0
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in pushed.stderr
    assert fingerprint(vm_guest.host_key.public_openssh) in pushed.stderr
