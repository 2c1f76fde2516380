"""The user-data and meta-data a VM's seed carries: its one SSH host key, root's key, the mail volume
on a maildrop, and an instance-id that changes only when the host is rebuilt. Checked against
Debian 12's own cloud-init schema where it is unpacked (.ci/install-vm)."""

from __future__ import annotations

import pytest
import yaml

from model import VmShape
from render import cloud_init
from tests import debian_cloud_init


def _user_data(stack, keys, role, host) -> dict:
    text = cloud_init.user_data(stack, role, host, keys.ssh_host_keys[host.name])
    assert text.startswith("#cloud-config\n")
    return yaml.safe_load(text)


def test_each_vm_gets_its_own_host_key_and_no_other(stacks, keys, stack_name):
    stack = stacks[stack_name]
    for role, host in stack.vm_hosts:
        config = _user_data(stack, keys[stack_name], role, host)
        key = keys[stack_name].ssh_host_keys[host.name]
        assert config["ssh_keys"] == {"ed25519_private": key.private_openssh, "ed25519_public": key.public_openssh}
        assert config["ssh_deletekeys"] is True
        assert config["ssh_authorized_keys"] == [stack.ssh_public_key]
        assert config["disable_root"] is False and config["ssh_pwauth"] is False


def test_only_maildrops_format_and_mount_the_mail_volume(stacks, keys, stack_name):
    stack = stacks[stack_name]
    for role, host in stack.vm_hosts:
        config = _user_data(stack, keys[stack_name], role, host)
        if role != "maildrop":
            assert "bootcmd" not in config
            continue
        [command] = config["bootcmd"]
        assert command == ["sh", "-c", cloud_init.mail_volume_script()]
        # Neither fs_setup (forces mkfs on a whole disk) nor mounts (drops LABEL= devices).
        assert "fs_setup" not in config and "mounts" not in config


def test_mail_volume_is_formatted_only_when_blank_and_mounted_by_label():
    script = cloud_init.mail_volume_script()
    assert cloud_init.MAIL_MOUNT == "/var/dovecot/users"
    assert 'if [ "$found" -eq 2 ]; then mkfs.ext4 -q -L mail /dev/vdb' in script
    assert "LABEL=mail /var/dovecot/users ext4 defaults,nofail 0 2" in script
    assert script.count("mkfs") == 1


def test_instance_id_changes_with_the_rebuild_counter_only(stacks):
    stack = stacks["lab"]
    host = stack.hosts.maildrop[0]
    rebuilt = stack.model_copy(update={"vm_overrides": {host.name: VmShape(rebuild=stack.shape(host).rebuild + 1)}})
    assert cloud_init.instance_id(stack, host) == f"{host.name}-{stack.shape(host).rebuild}"
    assert cloud_init.instance_id(rebuilt, host) != cloud_init.instance_id(stack, host)
    # Its peer is not rebuilt: same instance-id, cloud-init does not run again there.
    peer = stack.peer(host)
    assert cloud_init.instance_id(rebuilt, peer) == cloud_init.instance_id(stack, peer)
    meta = yaml.safe_load(cloud_init.meta_data(stack, host))
    assert meta == {"instance-id": cloud_init.instance_id(stack, host), "local-hostname": host.name}


def test_user_data_passes_debians_cloud_init_schema(stacks, keys, stack_name):
    reason = debian_cloud_init.unavailable()
    if reason:
        pytest.skip(reason)
    stack = stacks[stack_name]
    for role in ("maildrop", "smtp_in"):
        host = getattr(stack.hosts, role)[0]
        text = cloud_init.user_data(stack, role, host, keys[stack_name].ssh_host_keys[host.name])
        assert debian_cloud_init.schema_errors(text) == "", f"{host.name}"
