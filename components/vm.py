"""The VMs: one libvirt provider and one Debian base image per site, one DebianVm per host.

The case study's VMs: Debian 12, 8 GB memory, 4 vCPUs, a 16 GB boot disk and one NIC on the site-local
network, on the hypervisor of the host's own site (so that one hypervisor failing takes one replica).

What a real engine does with these resources decides the layout (pulumi-libvirt 0.5.4 is
terraform-provider-libvirt v0.8.1 bridged by pulumi-terraform-bridge v3.99.0):
- every libvirt_volume and libvirt_cloudinit_disk field is ForceNew (resource_libvirt_volume.go:20-73,
  resource_libvirt_cloud_init.go), and so are the domain's name, vcpu, memory and disk
  (resource_libvirt_domain.go:46-71, :158-161);
- a resource whose autonamed `name` the program sets is replaced delete-first (bridge
  pkg/tfbridge/provider.go:1247-1248, schema.go:197-245; pulumi-libvirt provider/resources.go
  SetAutonaming). Every name here is set: a libvirt name is what an operator reads in `virsh`.
So a running VM must never see a ForceNew change it did not ask for: base images are per image
version (a new image is a new volume, the old one retained), existing disks ignore the base image,
the pool and their size (sizes grow in place, components/volume_size.py), and a host is rebuilt only
when its `vm_overrides.<host>.rebuild` counter changes (new root disk and seed resources).
The maildrops' mail lives on a volume of its own: protected, retained on delete, never replaced.
"""

from __future__ import annotations

import pulumi
import pulumi_command.local as local
import pulumi_libvirt as libvirt

from components.push import Pushes
from components.volume_size import VolumeSize
from model import Host, Site, Stack
from render import cloud_init, rollout
from render.keys import KeyMaterial

GIB = 1024**3
# Where Dovecot keeps every mailbox (render/maildrop.py USERS_HOME): the mail volume's mount point.
MAIL_DISK_TARGET = "vdb"

# Downloads the pinned image once and compares it with the stack's checksum, before any base image
# volume is made from it: the libvirt provider fetches `source` itself and checks nothing
# (terraform-provider-libvirt v0.8.1 libvirt/volume_image.go:102-181).
IMAGE_CHECK = r"""set -eu
case "$IMAGE_URL" in
  https://*) sum=$(curl -fsSL --retry 3 "$IMAGE_URL" | sha512sum | cut -d' ' -f1) ;;
  *) sum=$(sha512sum < "$IMAGE_URL" | cut -d' ' -f1) ;;
esac
if [ "$sum" != "$IMAGE_SHA512" ]; then
  echo "mail-cluster:debian_image.sha512: $IMAGE_URL has sha512 $sum, not the pinned $IMAGE_SHA512" >&2
  exit 1
fi
echo "$IMAGE_URL: sha512 matches"
"""


def image_check(stack: Stack) -> local.Command:
    image = stack.debian_image
    return local.Command(
        f"debian-image-{image.version}-check",
        create=IMAGE_CHECK,
        environment={"IMAGE_URL": image.url, "IMAGE_SHA512": image.sha512},
        triggers=[image.url, image.sha512],
    )


class Hypervisor(pulumi.ComponentResource):
    """A site's libvirt host: its provider and the Debian image new VMs on it clone."""

    def __init__(self, stack: Stack, site: Site, checked: pulumi.Resource, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mail:vm:Hypervisor", site.name, None, opts)
        self.site = site
        self.provider = libvirt.Provider(
            f"libvirt-{site.name}", uri=site.hypervisor, opts=pulumi.ResourceOptions(parent=self)
        )
        image = stack.debian_image
        # One base volume per image version: pinning a new image adds a volume and replaces
        # nothing. The old one is retained when the program drops it: the root disks of running
        # VMs are copy-on-write clones backed by it.
        self.base_image = libvirt.Volume(
            f"debian-12-{site.name}-{image.version}",
            name=image.file_name,
            pool=site.pool,
            format="qcow2",
            source=image.url,
            opts=pulumi.ResourceOptions(
                parent=self, provider=self.provider, depends_on=[checked], retain_on_delete=True
            ),
        )
        self.register_outputs({"uri": site.hypervisor, "image": image.url})


def hypervisors(stack: Stack) -> dict[str, Hypervisor]:
    """site name -> Hypervisor, for the sites that host a VM."""
    used = {h.site for _, h in stack.vm_hosts}
    checked = image_check(stack)
    return {s.name: Hypervisor(stack, s, checked) for s in stack.sites if s.name in used}


def generation(name: str, rebuild: int) -> str:
    """`maildrop0-chbtl0-root`, then `...-root-r1` after a rebuild: a new resource, not a replacement."""
    return name if rebuild == 0 else f"{name}-r{rebuild}"


class DebianVm(pulumi.ComponentResource):
    """One host's VM: a root disk cloned from its site's image, a cloud-init seed, the libvirt domain,
    and for a maildrop its mail volume."""

    def __init__(
        self,
        stack: Stack,
        role: str,
        host: Host,
        hypervisor: Hypervisor,
        material: pulumi.Output[KeyMaterial],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mail:vm:DebianVm", host.name, None, opts)
        site = hypervisor.site
        shape = stack.shape(host)
        own = stack.vm_overrides.get(host.name)
        child = pulumi.ResourceOptions(parent=self, provider=hypervisor.provider)
        # Set when the VM is first built (or rebuilt); later edits of the image, pool or size do not
        # replace it: sizes grow in place below, the rest waits for a rebuild of this host.
        built = pulumi.ResourceOptions(ignore_changes=["base_volume_id", "pool", "size"])
        self.root = libvirt.Volume(
            generation(f"{host.name}-root", shape.rebuild),
            name=f"{generation(f'{host.name}-root', shape.rebuild)}.qcow2",
            pool=site.pool,
            format="qcow2",
            size=shape.disk_gib * GIB,
            base_volume_id=hypervisor.base_image.id,
            opts=pulumi.ResourceOptions.merge(child, built),
        )
        disks = [libvirt.DomainDiskArgs(volume_id=self.root.id)]
        self.mail: libvirt.Volume | None = None
        if role == "maildrop":
            # The mail store (mdbox, Sieve scripts, indexes): no edit replaces or deletes it. A
            # removed or renamed maildrop leaves it on the hypervisor (retain_on_delete) and the
            # engine refuses to delete it at all while `protect` is set.
            self.mail = libvirt.Volume(
                f"{host.name}-mail",
                name=f"{host.name}-mail.qcow2",
                pool=site.pool,
                format="qcow2",
                size=shape.mail_gib * GIB,
                opts=pulumi.ResourceOptions.merge(
                    child,
                    pulumi.ResourceOptions(
                        protect=True,
                        retain_on_delete=True,
                        ignore_changes=["name", "pool", "size", "format"],
                    ),
                ),
            )
            disks.append(libvirt.DomainDiskArgs(volume_id=self.mail.id))
        # The seed only matters at an instance's first boot (cloud-init runs once per
        # instance-id): a running VM ignores later edits of it; the push carries what changes.
        self.seed = libvirt.CloudInitDisk(
            generation(f"{host.name}-cloudinit", shape.rebuild),
            name=f"{generation(f'{host.name}-cloudinit', shape.rebuild)}.iso",
            pool=site.pool,
            user_data=pulumi.Output.secret(
                material.apply(lambda keys: cloud_init.user_data(stack, role, host, keys.ssh_host_keys[host.name]))
            ),
            network_config=cloud_init.network_config(stack, host),
            meta_data=cloud_init.meta_data(stack, host),
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(ignore_changes=["user_data", "network_config", "meta_data", "pool"])
            ),
        )
        # memory and vcpu are ForceNew (a delete-first replacement: the VM is down until it boots
        # again): the stack-wide defaults size new VMs only, a host's own override resizes it.
        # A bridge change is an Update the provider does not carry out (resource_libvirt_domain.go
        # Update only touches hostname, addresses and mac, :728): it waits for a rebuild too.
        # qemu_agent stays off: with it, Create waits for the guest agent to report addresses,
        # which cloud-init has not installed yet on a first boot (upstream issue #1050).
        domain_ignores = ["network_interfaces"]
        if own is None or own.memory_mib is None:
            domain_ignores.append("memory")
        if own is None or own.vcpus is None:
            domain_ignores.append("vcpu")
        self.domain = libvirt.Domain(
            f"{host.name}-domain",
            name=host.name,
            memory=shape.memory_mib,
            vcpu=shape.vcpus,
            autostart=True,
            qemu_agent=False,
            cloudinit=self.seed.id,
            disks=disks,
            network_interfaces=[
                libvirt.DomainNetworkInterfaceArgs(
                    bridge=site.bridge, mac=cloud_init.mac_address(host), hostname=host.name
                )
            ],
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(ignore_changes=domain_ignores)),
        )
        # Sizes grow in place, online (virsh blockresize); a smaller size is refused by name.
        disk_sizes = [("root", self.root, shape.disk_gib, "disk_gib")]
        if self.mail is not None:
            disk_sizes.append(("mail", self.mail, shape.mail_gib, "mail_gib"))
        self.resizes = [
            VolumeSize(
                f"{host.name}-{disk}-size",
                site=site,
                volume=volume,
                domain=host.name,
                gib=gib,
                key=f"vm_overrides.{host.name}.{key}",
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.domain]),
            )
            for disk, volume, gib, key in disk_sizes
        ]
        # The push reaches the VM on its site-local IPv6, as the case study's hosts are managed.
        self.address = str(host.ipv6)
        self.register_outputs({"domain": self.domain.id, "address": self.address})


class VmRole(pulumi.ComponentResource):
    """A role's VMs and the push of each one's rendered tree. Subclasses name the role and its type token."""

    ROLE: str
    TYPE: str

    def __init__(
        self,
        pushes: Pushes,
        hypervisors: dict[str, Hypervisor],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__(self.TYPE, self.ROLE.replace("_", "-"), None, opts)
        stack = pushes.stack
        self.vms: dict[str, DebianVm] = {}
        self.pushes: dict[str, pulumi.Resource] = {}
        for host in getattr(stack.hosts, self.ROLE):
            vm = DebianVm(
                stack, self.ROLE, host, hypervisors[host.site], pushes.material, pulumi.ResourceOptions(parent=self)
            )
            self.vms[host.name] = vm
        # One host at a time, in render.rollout's order: each push waits for the one before it, so
        # an engine stops the role's rollout at its first failing host (the rest keep the old config).
        previous: list[pulumi.Resource] = []
        for host in rollout.order(stack, self.ROLE):
            vm = self.vms[host.name]
            push = pushes.push(
                host.name,
                self.ROLE,
                host,
                vm.address,
                parent=self,
                depends_on=[vm.domain, *vm.resizes, *previous],
                # A rebuilt VM (a new domain id) is pushed again even if its files did not change.
                rebuilt=vm.domain.id,
            )
            self.pushes[host.name] = push
            previous = [push]
        self.hosts = [host_summary(stack, self.ROLE, h) for h in getattr(stack.hosts, self.ROLE)]
        self.register_outputs({"hosts": self.hosts})


def host_summary(stack: Stack, role: str, host: Host) -> dict:
    """A host as the `hosts` stack output lists it."""
    return {
        "name": host.name,
        "role": role,
        "site": host.site,
        "fqdn": stack.fqdn(host),
        "addresses": host.site_local_addresses + host.public_addresses,
    }
