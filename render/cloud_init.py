"""What a new VM gets from cloud-init: hostname, the operator's SSH key, the SSH host key the program
made for it, its role's Debian packages, its one NIC's static addresses and, on a maildrop, its mail
volume. Pure: model in, user-data, meta-data and network-config text out.

The files a role needs come later, from the push (render.<role> + render/push_host.py); cloud-init
only makes the VM reachable and installs the daemons the push will configure.
"""

from __future__ import annotations

import hashlib

from model import Host, Stack
from render.keys import SshHostKey
from render.maildrop import USERS_HOME
from render.templates import render

# Debian packages per role: the daemons the case study runs there (DESIGN.md, "What runs where").
# qemu-guest-agent on all: the libvirt domain talks to it (shutdown, addresses).
COMMON_PACKAGES = ("qemu-guest-agent", "python3", "util-linux", "ca-certificates")
PACKAGES: dict[str, tuple[str, ...]] = {
    "smtp_out": (
        "postfix",
        "dovecot-core",
        "opendkim",
        "opendkim-tools",
        "rspamd",
        "redis-server",
        "unbound",
        "dns-root-data",
    ),
    "smtp_in": ("postfix", "rspamd", "redis-server", "postsrsd", "unbound", "dns-root-data"),
    # rspamd for rspamc only: report-spam / report-ham teach smtp-in's rspamd over the network.
    "maildrop": (
        "postfix",
        "dovecot-core",
        "dovecot-imapd",
        "dovecot-lmtpd",
        "dovecot-sieve",
        "dovecot-managesieved",
        "rspamd",
    ),
    "frontend": ("nginx-light", "libnginx-mod-stream"),
}


# Packages a role installs for their clients only; their daemons stay off.
CLIENT_ONLY: dict[str, tuple[str, ...]] = {"maildrop": ("rspamd",)}

# A maildrop's mail volume: the domain's second virtio disk, mounted where Dovecot keeps every
# user's home (mdbox, Sieve scripts, indexes).
MAIL_DEVICE = "/dev/vdb"
MAIL_LABEL = "mail"
MAIL_MOUNT = USERS_HOME


def mac_address(host: Host) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix): network-config matches the NIC by it."""
    digest = hashlib.sha256(host.name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def packages(role: str) -> list[str]:
    return list(dict.fromkeys(COMMON_PACKAGES + PACKAGES[role]))


def user_data(stack: Stack, role: str, host: Host, host_key: SshHostKey) -> str:
    return render(
        "vm",
        "/user-data",
        hostname=host.name,
        fqdn=stack.fqdn(host),
        ssh_public_key=stack.ssh_public_key,
        host_key=host_key,
        mail_volume=mail_volume_script() if role == "maildrop" else None,
        packages=packages(role),
        disabled_services=CLIENT_ONLY.get(role, ()),
    )


def mail_volume_script() -> str:
    """Run at every boot (bootcmd): format the mail volume only if it carries no signature at all, then
    make sure it is in fstab (by label, nofail: the VM still boots without it) and mounted.

    Not cloud-init's own modules (22.4.2): fs_setup on a whole disk skips its existing-filesystem check
    and forces mkfs (cc_disk_setup.py, mkfs(): "Using the raw device", then the force flag for a
    "disk"), which would erase the mail whenever a new instance-id runs it; `mounts` drops a
    `LABEL=` device as a "nonexistent named mount" (cc_mounts.py, sanitize_devname()).
    """
    fstab = f"LABEL={MAIL_LABEL} {MAIL_MOUNT} ext4 defaults,nofail 0 2"
    return "\n".join(
        [
            f'[ -b {MAIL_DEVICE} ] || {{ echo "no mail volume at {MAIL_DEVICE}" >&2; exit 1; }}',
            # blkid -p exits 2 only when it finds nothing: a filesystem, a partition table or an
            # ambivalent result (8) all leave the disk alone.
            f"blkid -p {MAIL_DEVICE} >/dev/null; found=$?",
            f'if [ "$found" -eq 2 ]; then mkfs.ext4 -q -L {MAIL_LABEL} {MAIL_DEVICE} && udevadm settle || exit 1; fi',
            f"grep -q '^LABEL={MAIL_LABEL} ' /etc/fstab || echo '{fstab}' >> /etc/fstab",
            f"mkdir -p {MAIL_MOUNT}",
            f"mountpoint -q {MAIL_MOUNT} || mount {MAIL_MOUNT}",
        ]
    )


def network_config(stack: Stack, host: Host) -> str:
    site = stack.site_by_name[host.site]
    return render(
        "vm",
        "/network-config",
        mac=mac_address(host),
        addresses=[f"{host.ipv6}/{site.site_local.ipv6.prefixlen}", f"{host.ipv4}/{site.site_local.ipv4.prefixlen}"],
        public_addresses=[f"{a}/{128 if ':' in a else 32}" for a in host.public_addresses],
        gateway_ipv4=str(site.router_ipv4),
        gateway_ipv6=str(site.router_ipv6),
        resolvers=[str(r) for r in site.resolvers],
    )


def meta_data(stack: Stack, host: Host) -> str:
    return render("vm", "/meta-data", instance_id=instance_id(stack, host), hostname=host.name)


def instance_id(stack: Stack, host: Host) -> str:
    """cloud-init runs its once-per-instance modules when this changes: with the host's rebuild
    counter, a rebuilt VM is set up anew (host key, root's key, packages) and an unchanged one is not."""
    return f"{host.name}-{stack.shape(host).rebuild}"
