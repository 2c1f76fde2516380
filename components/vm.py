"""The VMs: one libvirt provider and one Debian base image per site, one DebianVm per host.

The case study's VMs: Debian 12, 8 GB memory, 4 vCPUs, a 16 GB boot disk and one NIC on the site-local
network, on the hypervisor of the host's own site (so that one hypervisor failing takes one replica).
"""

from __future__ import annotations

import pulumi
import pulumi_libvirt as libvirt

from components.push import Pushes
from model import Host, Site, Stack
from render import cloud_init, rollout

GIB = 1024**3


class Hypervisor(pulumi.ComponentResource):
    """A site's libvirt host: its provider and the Debian image every VM on it clones."""

    def __init__(self, stack: Stack, site: Site, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mail:vm:Hypervisor", site.name, None, opts)
        self.site = site
        self.provider = libvirt.Provider(
            f"libvirt-{site.name}", uri=site.hypervisor, opts=pulumi.ResourceOptions(parent=self)
        )
        # One base image per pool: the VMs' root disks are copy-on-write clones of it.
        self.base_image = libvirt.Volume(
            f"debian-12-{site.name}",
            name=image_name(stack.debian_image),
            pool=site.pool,
            format="qcow2",
            source=stack.debian_image,
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider),
        )
        self.register_outputs({"uri": site.hypervisor})


def image_name(source: str) -> str:
    """The volume name of the base image: the file name of its URL or path."""
    return source.rstrip("/").rsplit("/", 1)[-1]


def hypervisors(stack: Stack) -> dict[str, Hypervisor]:
    """site name -> Hypervisor, for the sites that host a VM."""
    used = {h.site for _, h in stack.vm_hosts}
    return {s.name: Hypervisor(stack, s) for s in stack.sites if s.name in used}


class DebianVm(pulumi.ComponentResource):
    """One host's VM: a root disk cloned from its site's image, a cloud-init seed, the libvirt domain."""

    def __init__(
        self,
        stack: Stack,
        role: str,
        host: Host,
        hypervisor: Hypervisor,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mail:vm:DebianVm", host.name, None, opts)
        site = hypervisor.site
        child = pulumi.ResourceOptions(parent=self, provider=hypervisor.provider)
        self.root = libvirt.Volume(
            f"{host.name}-root",
            name=f"{host.name}-root.qcow2",
            pool=site.pool,
            format="qcow2",
            size=stack.vm_disk_gib * GIB,
            base_volume_id=hypervisor.base_image.id,
            opts=child,
        )
        self.seed = libvirt.CloudInitDisk(
            f"{host.name}-cloudinit",
            name=f"{host.name}-cloudinit.iso",
            pool=site.pool,
            user_data=cloud_init.user_data(stack, role, host),
            network_config=cloud_init.network_config(stack, host),
            meta_data=cloud_init.meta_data(stack, host),
            opts=child,
        )
        self.domain = libvirt.Domain(
            f"{host.name}-domain",
            name=host.name,
            memory=stack.vm_memory_mib,
            vcpu=stack.vm_vcpus,
            autostart=True,
            qemu_agent=True,
            cloudinit=self.seed.id,
            disks=[libvirt.DomainDiskArgs(volume_id=self.root.id)],
            network_interfaces=[
                libvirt.DomainNetworkInterfaceArgs(
                    bridge=site.bridge, mac=cloud_init.mac_address(host), hostname=host.name
                )
            ],
            opts=child,
        )
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
            vm = DebianVm(stack, self.ROLE, host, hypervisors[host.site], pulumi.ResourceOptions(parent=self))
            self.vms[host.name] = vm
        # One host at a time, in render.rollout's order: each push waits for the one before it, so
        # an engine stops the role's rollout at its first failing host (the rest keep the old config).
        previous: list[pulumi.Resource] = []
        for host in rollout.order(stack, self.ROLE):
            vm = self.vms[host.name]
            push = pushes.push(host.name, self.ROLE, host, vm.address, parent=self, depends_on=[vm.domain, *previous])
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
