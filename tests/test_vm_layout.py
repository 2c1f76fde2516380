"""The VM layout against the providers' real behaviour (what the mocks accept without a word).

Provider facts relied on (pulumi-libvirt 0.5.4 = terraform-provider-libvirt v0.8.1 through
pulumi-terraform-bridge v3.99.0):
- every libvirt_volume field is ForceNew: libvirt/resource_libvirt_volume.go:20-73 (size :36-40,
  base_volume_id :48-51, pool :25-29);
- the domain's vcpu, memory and disk are ForceNew: libvirt/resource_libvirt_domain.go:61-71, :158-161;
  `cloudinit` is not (Update swaps the device, :688-710), nor `network_interface` (Update only
  handles hostname, addresses and mac, :728);
- a resource whose autonamed `name` the program sets is replaced delete-first: bridge
  pkg/tfbridge/provider.go:1247-1248 and schema.go:197-245.
The engine's resource options arrive in the monitor's RegisterResource request (tests/pulumi_program.py).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from components.vm import IMAGE_CHECK
from components.volume_size import RESIZE, resize_environment
from model import StackConfigError, load_stack, stack_file_values
from tests.pulumi_program import CLOUD_INIT, COMMAND, DOMAIN, VOLUME, RecordingMocks, run_program

LOCAL_COMMAND = "command:local:Command"
GIB = 1024**3


@pytest.fixture(scope="module")
def prod():
    return run_program("prod")


def options(run, typ, name):
    return run.monitor.options[(typ, name)]


def test_each_maildrop_keeps_its_mail_on_a_protected_volume_that_no_edit_replaces(prod):
    for name in ("maildrop0-chbtl0", "maildrop1-ddln0"):
        mail = options(prod, VOLUME, f"{name}-mail")
        assert mail["protect"] and mail["retain_on_delete"]
        # Every one of these is ForceNew: ignored after creation, so no edit replaces the volume.
        assert {"name", "pool", "size", "format"} <= set(mail["ignore_changes"])
        disks = prod.mocks.named(DOMAIN, f"{name}-domain").inputs["disks"]
        assert [d["volumeId"] for d in disks] == [f"{name}-root-id", f"{name}-mail-id"]
    others = [r.name for r in prod.mocks.of_type(VOLUME) if r.name.endswith("-mail")]
    assert sorted(others) == ["maildrop0-chbtl0-mail", "maildrop1-ddln0-mail"]


def test_a_new_image_adds_base_volumes_and_replaces_no_running_disk(prod):
    values = stack_file_values("prod")
    newer = values["debian_image"] | {
        "url": values["debian_image"]["url"].replace("20261110-2350", "20261201-0007"),
        "sha512": "ab" * 64,
    }
    after = run_program("prod", values | {"debian_image": newer})
    before_bases = {r.name for r in prod.mocks.of_type(VOLUME) if r.name.startswith("debian-12-")}
    after_bases = {r.name for r in after.mocks.of_type(VOLUME) if r.name.startswith("debian-12-")}
    # New volumes under new names: the old ones are dropped from the program but kept on the
    # hypervisors (retain_on_delete), where the running VMs' disks are clones of them.
    assert before_bases.isdisjoint(after_bases)
    assert all(options(prod, VOLUME, n)["retain_on_delete"] for n in before_bases)
    for root in (r for r in after.mocks.of_type(VOLUME) if r.name.endswith("-root")):
        assert "baseVolumeId" in options(after, VOLUME, root.name)["ignore_changes"]
    # The download is checked against the pinned checksum before a base volume is made from it.
    [check] = after.mocks.of_type(LOCAL_COMMAND)[:1]
    assert check.name == "debian-image-20261201-0007-check"
    for base in after_bases:
        assert after.monitor.urns[(LOCAL_COMMAND, check.name)] in after.monitor.dependencies[(VOLUME, base)]


def test_a_stack_wide_shape_edit_reaches_no_running_vm_and_an_override_reaches_its_host_only(prod):
    values = stack_file_values("prod") | {"vm_memory_mib": 16384, "vm_vcpus": 8}
    values["vm_overrides"] = {"smtp-in-chrma0": {"memory_mib": 12288, "vcpus": 6}}
    run = run_program("prod", values)
    for domain in run.mocks.of_type(DOMAIN):
        ignored = set(options(run, DOMAIN, domain.name)["ignore_changes"])
        if domain.name == "smtp-in-chrma0-domain":
            assert (domain.inputs["memory"], domain.inputs["vcpu"]) == (12288, 6)
            assert not {"memory", "vcpu"} & ignored
        else:
            # A new VM is made with the new defaults; a running one keeps its own (ForceNew fields).
            assert (domain.inputs["memory"], domain.inputs["vcpu"]) == (16384, 8)
            assert {"memory", "vcpu"} <= ignored
        # A bridge edit would be an Update the provider does not carry out: it waits for a rebuild.
        assert "networkInterfaces" in ignored


def test_a_rebuild_makes_new_disk_and_seed_resources_for_that_host_only(prod):
    values = stack_file_values("prod") | {"vm_overrides": {"smtp-out-frggh0": {"rebuild": 1}}}
    run = run_program("prod", values)
    names = {r.name for r in run.mocks.of_type(VOLUME)} | {r.name for r in run.mocks.of_type(CLOUD_INIT)}
    before = {r.name for r in prod.mocks.of_type(VOLUME)} | {r.name for r in prod.mocks.of_type(CLOUD_INIT)}
    assert names - before == {"smtp-out-frggh0-root-r1", "smtp-out-frggh0-cloudinit-r1"}
    assert before - names == {"smtp-out-frggh0-root", "smtp-out-frggh0-cloudinit"}
    assert run.mocks.named(VOLUME, "smtp-out-frggh0-root-r1").inputs["name"] == "smtp-out-frggh0-root-r1.qcow2"


def test_a_rebuilt_vm_is_pushed_again(prod):
    for _, host in load_stack(stack_file_values("prod")).vm_hosts:
        push = prod.mocks.named(COMMAND, f"{host.name}-push")
        # The domain id changes when the VM is rebuilt: the push runs even if the files did not.
        assert push.inputs["triggers"][1:] == [f"{host.name}-domain-id"]


def test_nothing_waits_for_the_guest_agent_at_create(prod):
    assert not any(d.inputs["qemuAgent"] for d in prod.mocks.of_type(DOMAIN))


def test_an_existing_vm_ignores_later_seed_edits(prod):
    # cloud-init reads the seed once per instance: a changed seed of a running VM would be a
    # delete-first replacement (every field ForceNew) for nothing.
    for seed in prod.mocks.of_type(CLOUD_INIT):
        assert {"userData", "networkConfig", "metaData"} <= set(options(prod, CLOUD_INIT, seed.name)["ignore_changes"])
        assert "userData" in prod.mocks.secret_inputs[(CLOUD_INIT, seed.name)]


# ---- growing disks in place ------------------------------------------------------------------


def fake_virsh(tmp_path: Path, capacity: int, state: str = "running") -> Path:
    """A `virsh` that answers vol-info/domstate/vol-path like libvirt's and logs the other calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "virsh"
    script.write_text(
        f"""#!/bin/sh
echo "$*" >> {tmp_path}/calls
case "$*" in
  *vol-info*) printf 'Name:           v\\nType:           file\\nCapacity:       {capacity} bytes\\n' ;;
  *domstate*) echo {state} ;;
  *vol-path*) echo /var/lib/libvirt/images/v.qcow2 ;;
esac
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def resize(tmp_path: Path, gib: int, capacity_gib: int, state: str = "running") -> subprocess.CompletedProcess:
    bin_dir = fake_virsh(tmp_path, capacity_gib * GIB, state)
    stack = load_stack(stack_file_values("prod"))
    site = stack.site_by_name["chbtl0"]
    env = resize_environment(
        site, site.pool, "maildrop0-chbtl0-mail.qcow2", "maildrop0-chbtl0", gib, "vm_overrides.x.mail_gib"
    )
    env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    return subprocess.run(["/bin/sh", "-c", RESIZE], env=env, capture_output=True, text=True)


def calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls").read_text().splitlines()


def test_a_smaller_volume_is_refused_naming_the_key(tmp_path):
    result = resize(tmp_path, 16, 32)
    assert result.returncode == 1
    assert "mail-cluster:vm_overrides.x.mail_gib: 16 GiB is smaller than volume" in result.stderr
    assert not any("resize" in c for c in calls(tmp_path))


def test_a_larger_volume_grows_online_on_a_running_domain(tmp_path):
    result = resize(tmp_path, 48, 32)
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path)[-1].endswith(f"blockresize maildrop0-chbtl0 /var/lib/libvirt/images/v.qcow2 {48 * GIB}B")
    assert all("qemu+ssh://root@hvn0.chbtl0.ipng.ch/system" in c for c in calls(tmp_path))


def test_a_larger_volume_of_a_stopped_domain_is_resized_in_its_pool(tmp_path):
    result = resize(tmp_path, 48, 32, state="shut off")
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path)[-1].endswith(f"vol-resize --pool default maildrop0-chbtl0-mail.qcow2 {48 * GIB}B")


def test_an_unchanged_size_touches_nothing(tmp_path):
    result = resize(tmp_path, 32, 32)
    assert result.returncode == 0 and "unchanged" in result.stdout
    assert len(calls(tmp_path)) == 1


def test_every_disk_has_its_resize_after_its_domain_and_before_its_push(prod):
    for resize_command in prod.mocks.of_type(LOCAL_COMMAND)[1:]:
        host = resize_command.name.rsplit("-", 2)[0]
        deps = prod.monitor.dependencies[(LOCAL_COMMAND, resize_command.name)]
        assert prod.monitor.urns[(DOMAIN, f"{host}-domain")] in deps
        push_deps = prod.monitor.dependencies[(COMMAND, f"{host}-push")]
        assert prod.monitor.urns[(LOCAL_COMMAND, resize_command.name)] in push_deps
    sizes = sorted(c.name for c in prod.mocks.of_type(LOCAL_COMMAND) if c.name.endswith("-mail-size"))
    assert sizes == ["maildrop0-chbtl0-mail-size", "maildrop1-ddln0-mail-size"]


# ---- the image check ---------------------------------------------------------------------------


def image_check(path: Path, sha512: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "IMAGE_URL": str(path), "IMAGE_SHA512": sha512}
    return subprocess.run(["/bin/sh", "-c", IMAGE_CHECK], env=env, capture_output=True, text=True)


def test_an_image_that_does_not_match_its_checksum_is_refused(tmp_path):
    import hashlib

    image = tmp_path / "debian-12-genericcloud-amd64-20261110-2350.qcow2"
    image.write_bytes(b"qcow2 stand-in")
    assert image_check(image, hashlib.sha512(b"qcow2 stand-in").hexdigest()).returncode == 0
    refused = image_check(image, "0" * 128)
    assert refused.returncode == 1
    assert "mail-cluster:debian_image.sha512:" in refused.stderr


# ---- bad input ---------------------------------------------------------------------------------


def problems(**changes) -> str:
    with pytest.raises(StackConfigError) as err:
        load_stack(stack_file_values("prod") | changes)
    return str(err.value)


def test_an_image_without_a_checksum_or_pinned_version_is_refused():
    url = stack_file_values("prod")["debian_image"]["url"]
    assert "mail-cluster:debian_image.sha512: Field required" in problems(debian_image={"url": url})
    latest = "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
    message = problems(debian_image={"url": latest, "sha512": "ab" * 64})
    assert "mail-cluster:debian_image.url:" in message and "not a dated image" in message


def test_a_per_host_override_for_an_unknown_host_is_refused():
    assert "mail-cluster:vm_overrides.smtp-in-zz: no VM host is named 'smtp-in-zz'" in problems(
        vm_overrides={"smtp-in-zz": {"memory_mib": 4096}}
    )


def test_a_mail_volume_on_a_host_without_one_is_refused():
    assert "mail-cluster:vm_overrides.smtp-in-chrma0.mail_gib: smtp-in-chrma0 is a smtp_in host" in problems(
        vm_overrides={"smtp-in-chrma0": {"mail_gib": 64}}
    )


def test_a_site_without_resolvers_is_refused():
    sites = stack_file_values("prod")["sites"]
    sites = [{k: v for k, v in s.items() if k != "resolvers"} if n == 0 else s for n, s in enumerate(sites)]
    assert "mail-cluster:sites[0].resolvers: Field required" in problems(sites=sites)


def test_a_grown_mail_volume_makes_the_maildrop_push_grow_its_filesystem(tmp_path):
    from render import render_host
    from render.maildrop import MAIL_VOLUME
    from render.throwaway import throwaway_keys

    values = stack_file_values("prod")
    stack = load_stack(values)
    keys = throwaway_keys(stack, rsa_bits=1024)
    host = stack.hosts.maildrop[0]
    before = render_host(stack, "maildrop", host, keys)
    grown = load_stack(values | {"vm_overrides": {host.name: {"mail_gib": 64}}})
    after = render_host(grown, "maildrop", host, keys)
    changed = [p for p in after.files if after.files[p] != before.files.get(p)]
    assert changed == [MAIL_VOLUME]
    [service] = after.files[MAIL_VOLUME].reload
    assert "resize2fs" in after.services[service]
    # The other maildrop's tree is untouched: one host at a time.
    peer = stack.hosts.maildrop[1]
    assert render_host(grown, "maildrop", peer, keys).digest() == render_host(stack, "maildrop", peer, keys).digest()


class StatePoolMocks(RecordingMocks):
    """Volumes answer with the pool they were built in, as the engine does under ignore_changes."""

    def new_resource(self, args):
        id_, outputs = super().new_resource(args)
        return id_, outputs | ({"pool": "default"} if args.typ == VOLUME else {})


def test_a_disk_left_in_its_old_pool_is_resized_there():
    # A site's pool edit reaches new disks only (components/vm.py ignores `pool` on built disks):
    # the resize must look for the volume where it is, as the volume's state says.
    values = stack_file_values("prod")
    sites = [s | {"pool": "fast"} if s["name"] == "chbtl0" else s for s in values["sites"]]
    run = run_program("prod", values | {"sites": sites}, mocks=StatePoolMocks())
    env = run.mocks.named(LOCAL_COMMAND, "maildrop0-chbtl0-mail-size").inputs["environment"]
    assert env["POOL"] == "default"
