"""The VM boot test: a Debian 12 guest booted under qemu from exactly the seed the program gives
libvirt's CloudInitDisk (tests/vm_guest.py), once per shape of seed: a maildrop (mail volume, no
public address), an smtp-in (public addresses on the loopback) and an smtp-out (neither; the
frontends' seed has the smtp-in's shape).

Inside the guest, over SSH as root with the stack's key and only the host key the program pinned:
hostname, addresses (and no SLAAC one, though qemu's network advertises the prefix), IPv4 and IPv6
default routes, resolvers, the source address for site-local and outside destinations, root's
authorized key, the one host key, the mail volume mounted where Dovecot looks. Then the guest is
powered off and booted again with the same seed: nothing changes, and a file written to the mail
volume before is still there (not reformatted).

Not covered: the guest has no network beyond this machine (qemu's user network, `restrict=on`), so
no package is installed: the role's daemons, qemu-guest-agent and the runcmd that enables it fail
as they would without a mirror, and those are the only cloud-init errors this test accepts. Nor are
the libvirt domain XML, the bridge, the hypervisor's storage or the ENI renderer booted (ENI is
checked with Debian's cloud-init code in test_cloud_init_network.py).
"""

from __future__ import annotations

import time

import pytest

from render import cloud_init
from tests.vm_fixtures import keep_logs
from tests.vm_guest import Guest, debian_mirror

pytestmark = pytest.mark.vm

BOOT_ROLES = ("maildrop", "smtp_in", "smtp_out")
# Modules that need a Debian mirror: their failure is the one this test expects.
NEEDS_A_MIRROR = ("package_update_upgrade_install", "package-update-upgrade-install", "scripts_user", "scripts-user")
CLOUD_INIT_TIMEOUT = 900


def seed_shape(stack, role, host) -> tuple[bool, bool]:
    """What makes one seed differ from another in shape: a mail volume, public addresses."""
    return role == "maildrop", bool(host.public_addresses)


def _wait_for_cloud_init(guest: Guest) -> str:
    result = guest.ssh("cloud-init status --wait --long", timeout=CLOUD_INIT_TIMEOUT, check=False)
    # 0: done, 1: done with errors (which the test then reads); anything else: it did not finish.
    assert result.returncode in (0, 1), f"{guest.host.name}: cloud-init status: {result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def _destinations(stack, host) -> list[str]:
    """Site-local addresses at other sites, and an outside address per family."""
    others = [h for _, h in stack.vm_hosts if h.site != host.site]
    return [str(others[0].ipv4), str(others[0].ipv6), "203.0.113.10", "2001:db8:200::10"]


def _assert_as_the_program_says(guest: Guest, facts: dict) -> None:
    stack, host, site = guest.stack, guest.host, guest.site
    gateway4, gateway6 = site.router_ipv4, site.router_ipv6
    prefixes = site.site_local
    site_local = sorted([f"{host.ipv4}/{prefixes.ipv4.prefixlen}", f"{host.ipv6}/{prefixes.ipv6.prefixlen}"])
    assert (facts["hostname"], facts["fqdn"]) == (host.name, stack.fqdn(host))
    # Exactly the static addresses: qemu's network advertises the prefix, and no SLAAC address appears.
    assert facts["addresses"].get("site-local") == site_local, facts["addresses"]
    public = sorted(f"{a}/{128 if ':' in a else 32}" for a in host.public_addresses)
    assert facts["addresses"].get("lo", []) == public, facts["addresses"]
    assert facts["defaults"] == {"4": [[str(gateway4), "site-local"]], "6": [[str(gateway6), "site-local"]]}
    assert facts["resolvers"] == [str(r) for r in site.resolvers]
    assert facts["sources"] == {d: str(host.ipv6 if ":" in d else host.ipv4) for d in _destinations(stack, host)}
    assert facts["authorized_keys"] == [stack.ssh_public_key]
    assert facts["host_keys"] == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    assert facts["host_key"] == guest.host_key.public_openssh.split()[:2]
    assert facts["instance_id"] == cloud_init.instance_id(stack, host)
    if guest.role == "maildrop":
        mail = facts["mail"]
        assert mail and (mail["source"], mail["fstype"], mail["label"]) == (cloud_init.MAIL_DEVICE, "ext4", "mail")
        assert len(facts["fstab_mail"]) == 1, facts["fstab_mail"]
    else:
        assert facts["mail"] is None


def test_each_seed_shape_is_booted(stacks):
    stack = stacks["lab"]
    booted = {seed_shape(stack, r, getattr(stack.hosts, r)[0]) for r in BOOT_ROLES}
    assert {seed_shape(stack, r, h) for r, h in stack.vm_hosts} == booted


@pytest.mark.parametrize("role", BOOT_ROLES)
def test_vm_comes_up_as_the_program_says_and_a_second_boot_changes_nothing(role, vm_guests):
    started = time.monotonic()
    guest = vm_guests(role)
    status = _wait_for_cloud_init(guest)
    first = guest.facts(_destinations(guest.stack, guest.host))
    errors = first["cloud_init_errors"] or []
    assert all(any(m in e for m in NEEDS_A_MIRROR) for e in errors), f"{errors}\n{status}"
    _assert_as_the_program_says(guest, first)
    if role == "maildrop":
        guest.ssh(f"echo {first['boot_id']} > {cloud_init.MAIL_MOUNT}/boot-test && sync")

    guest.shutdown()
    guest.boot()
    keep_logs(guest)
    _wait_for_cloud_init(guest)
    second = guest.facts(_destinations(guest.stack, guest.host))
    assert second["boot_id"] != first["boot_id"]
    _assert_as_the_program_says(guest, second)
    ignore = {"boot_id", "cloud_init_errors"}
    assert {k: v for k, v in second.items() if k not in ignore} == {k: v for k, v in first.items() if k not in ignore}
    if role == "maildrop":
        assert guest.ssh(f"cat {cloud_init.MAIL_MOUNT}/boot-test").stdout.strip() == first["boot_id"]
    print(f"{guest.host.name}: boots {[round(b) for b in guest.boots]} s, test {time.monotonic() - started:.0f} s")
    if role != "maildrop":  # the maildrop stays up for vm_guest's users
        guest.shutdown()


def test_image_comes_from_the_mirror_apt_uses(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "other.sources").write_text(
        "Types: deb\nURIs: http://elsewhere.example/x\nSuites: nodistro\nComponents: main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://old.example/debian"
