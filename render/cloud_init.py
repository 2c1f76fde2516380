"""What a new VM gets from cloud-init: hostname, the operator's SSH key, its role's Debian packages,
and its one NIC's static addresses. Pure: model in, user-data and network-config text out.

The files a role needs come later, from the push (render.<role> + render/push_host.py); cloud-init
only makes the VM reachable and installs the daemons the push will configure.
"""

from __future__ import annotations

import hashlib

from model import Host, Stack
from render.keys import SshHostKey
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


def mac_address(host: Host) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix): network-config matches the NIC by it."""
    digest = hashlib.sha256(host.name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def packages(role: str) -> list[str]:
    return list(dict.fromkeys(COMMON_PACKAGES + PACKAGES[role]))


def user_data(stack: Stack, role: str, host: Host, host_key: SshHostKey | None = None) -> str:
    return render(
        "vm",
        "/user-data",
        hostname=host.name,
        fqdn=stack.fqdn(host),
        ssh_public_key=stack.ssh_public_key,
        packages=packages(role),
        disabled_services=CLIENT_ONLY.get(role, ()),
        ssh_host_key=host_key,
    )


def network_config(stack: Stack, host: Host) -> str:
    site = stack.site_by_name[host.site]
    addresses = [
        f"{host.ipv6}/{site.site_local.ipv6.prefixlen}",
        f"{host.ipv4}/{site.site_local.ipv4.prefixlen}",
        # The site's router routes the public addresses to the VM's site-local address: host routes.
        *(f"{a}/{128 if ':' in a else 32}" for a in host.public_addresses),
    ]
    return render(
        "vm",
        "/network-config",
        mac=mac_address(host),
        addresses=addresses,
        router_ipv4=str(site.router_ipv4),
        resolvers=[str(r) for r in site.resolvers],
    )


def meta_data(stack: Stack, host: Host) -> str:
    return render("vm", "/meta-data", instance_id=host.name, hostname=host.name)
