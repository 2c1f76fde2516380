"""The lab's network: one namespace per host, joined through a routed fabric namespace.

    mlab-fabric        the "IPng Site Local" backbone plus the border: one bridge per site, with
                       the site router's addresses on it, and one bridge for the internet; it
                       forwards between all of them (one routed fabric, no NAT, no filter)
    mlab-<host>        one per VM, the webmail Docker host and each relay client: `eth0` on its
                       site's bridge with the host's site-local addresses; smtp-in and frontends
                       also carry their public addresses as /32 and /128, which the fabric routes
                       to the host's site-local address (as cloud-init's network-config and the
                       site routers do in production)
    mlab-internet      clients, the remote MTA and the lab DNS server (lab.internet)

Egress from site-local hosts leaves from their site-local addresses (the default routes pin the
source): production NATs them behind egress prefixes, the lab stack's SPF lists the site-local
prefixes instead. The internet reaches public addresses through the fabric; it could reach
site-local ones too, since the lab has no border filter (and no netfilter tools to build one).

Nothing leaves the machine: no veth reaches the root namespace, no namespace has a route to
anything but documentation prefixes, and `plan` refuses a stack with any other address.
IPv6 addresses are added with `nodad`, so they are usable at once.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface, ip_address, ip_interface, ip_network
from pathlib import Path

from lab import NETNS_PREFIX, internet
from lab.netns import NETNS_DIR, in_netns
from model import Stack

FABRIC = f"{NETNS_PREFIX}fabric"
DOCUMENTATION = tuple(ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))

Interface = IPv4Interface | IPv6Interface


@dataclass(frozen=True)
class Nic:
    """A host's one NIC (`eth0` in its namespace) and the veth end in the fabric (`port`)."""

    host: str
    netns: str
    bridge: str
    port: str
    addresses: tuple[Interface, ...]
    # (gateway, source): one default route per address family.
    default_routes: tuple[tuple[str, str], ...]
    # IPv6 addresses that must never be picked as a source address.
    deprecated: tuple[str, ...] = ()


@dataclass(frozen=True)
class Segment:
    """A bridge in the fabric: a site's network, or the internet."""

    bridge: str
    router: tuple[Interface, ...]
    # public address -> the site-local address it is routed to.
    host_routes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Topology:
    segments: tuple[Segment, ...]
    nics: tuple[Nic, ...]
    fabric: str = FABRIC
    namespaces: tuple[str, ...] = field(default=())

    def nic(self, host: str) -> Nic:
        return next(n for n in self.nics if n.host == host)


def netns_name(host: str) -> str:
    return f"{NETNS_PREFIX}{host}"


def _check_documentation(what: str, address: str) -> None:
    if not any(ip_address(address) in net for net in DOCUMENTATION):
        raise ValueError(f"{what}: {address} is not a documentation address; the lab only runs stacks on those")


def _site_of(stack: Stack, address) -> str:
    """The site whose site-local prefix holds `address` (webmail and relay clients name no site)."""
    for site in stack.sites:
        if address in site.site_local.ipv4 or address in site.site_local.ipv6:
            return site.name
    raise ValueError(f"{address} is in no site's site-local prefix")


def _router(stack: Stack, site_name: str) -> tuple[IPv4Interface, IPv6Interface]:
    """The site router's addresses. IPv4: the model's router_ipv4 (cloud-init's gateway). IPv6:
    production learns it from router advertisements; the lab uses the prefix's first address."""
    net = stack.site_by_name[site_name].site_local
    v4 = ip_interface(f"{stack.site_by_name[site_name].router_ipv4}/{net.ipv4.prefixlen}")
    v6 = ip_interface(f"{next(net.ipv6.hosts())}/{net.ipv6.prefixlen}")
    return v4, v6


def plan(stack: Stack) -> Topology:
    bridges = {site.name: f"site{i}" for i, site in enumerate(stack.sites)}
    nics: list[Nic] = []
    host_routes: dict[str, list[tuple[str, str]]] = {s.name: [] for s in stack.sites}

    def port() -> str:
        return f"p{len(nics)}"

    for _role, host in stack.vm_hosts:
        site = stack.site_by_name[host.site].site_local
        v4, v6 = _router(stack, host.site)
        addresses = [
            ip_interface(f"{host.ipv6}/{site.ipv6.prefixlen}"),
            ip_interface(f"{host.ipv4}/{site.ipv4.prefixlen}"),
        ]
        for public in host.public_addresses:
            addresses.append(ip_interface(f"{public}/{128 if ':' in public else 32}"))
            via = str(host.ipv6 if ":" in public else host.ipv4)
            host_routes[host.site].append((public, via))
        routes = ((str(v6.ip), str(host.ipv6)), (str(v4.ip), str(host.ipv4)))
        nics.append(Nic(host.name, netns_name(host.name), bridges[host.site], port(), tuple(addresses), routes))

    # Hosts of the stack that are not VMs of ours: the webmail Docker host, the relay clients.
    others = [(stack.webmail.host, stack.webmail.address)] + [(c.name, c.address) for c in stack.relay_clients]
    for name, address in others:
        site_name = _site_of(stack, address)
        net = stack.site_by_name[site_name].site_local
        prefixlen = net.ipv6.prefixlen if address.version == 6 else net.ipv4.prefixlen
        gateway = _router(stack, site_name)[0 if address.version == 4 else 1]
        nics.append(
            Nic(
                name,
                netns_name(name),
                bridges[site_name],
                port(),
                (ip_interface(f"{address}/{prefixlen}"),),
                ((str(gateway.ip), str(address)),),
            )
        )

    inet = internet.addresses()
    nics.append(
        Nic(
            "internet",
            internet.NETNS,
            "internet",
            port(),
            tuple(inet),
            ((internet.ROUTER[1], internet.ALLOWED_CLIENT[1]), (internet.ROUTER[0], internet.ALLOWED_CLIENT[0])),
            deprecated=tuple(str(a.ip) for a in inet if a.version == 6 and str(a.ip) != internet.ALLOWED_CLIENT[1]),
        )
    )

    segments = [
        Segment(bridges[s.name], tuple(reversed(_router(stack, s.name))), tuple(host_routes[s.name]))
        for s in stack.sites
    ]
    segments.append(
        Segment(
            "internet",
            (
                ip_interface(f"{internet.ROUTER[1]}/{internet.IPV6.prefixlen}"),
                ip_interface(f"{internet.ROUTER[0]}/{internet.IPV4.prefixlen}"),
            ),
        )
    )
    for nic in nics:
        for a in nic.addresses:
            _check_documentation(nic.host, str(a.ip))
    for seg in segments:
        for a in seg.router:
            _check_documentation(f"router of {seg.bridge}", str(a.ip))
    used = [str(a.ip) for n in nics for a in n.addresses] + [str(a.ip) for s in segments for a in s.router]
    clash = sorted({a for a in used if used.count(a) > 1})
    if clash:
        raise ValueError(f"addresses used twice in the lab network: {clash}")
    return Topology(tuple(segments), tuple(nics), namespaces=(FABRIC, *dict.fromkeys(n.netns for n in nics)))


# ---- building and removing it ---------------------------------------------------------------


def _ip_batch(netns: str, lines: list[str]) -> None:
    result = subprocess.run(
        ["ip", "-n", netns, "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"ip -n {netns}: {result.stderr.strip()}")


def _addr(a: Interface, dev: str, deprecated: bool = False) -> str:
    if a.version == 4:
        return f"address add {a} dev {dev}"
    return f"address add {a} dev {dev} nodad" + (" preferred_lft 0" if deprecated else "")


def _sysctl(netns: str, values: dict[str, str]) -> None:
    # /proc/sys/net shows the namespace of the thread that opens it.
    with in_netns(netns):
        for key, value in values.items():
            Path("/proc/sys", key.replace(".", "/")).write_text(value)


def create(topology: Topology) -> None:
    for name in topology.namespaces:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    fabric = ["link set lo up"]
    for seg in topology.segments:
        fabric += [f"link add {seg.bridge} type bridge forward_delay 0", f"link set {seg.bridge} up"]
        fabric += [_addr(a, seg.bridge) for a in seg.router]
    for nic in topology.nics:
        fabric += [
            f"link add {nic.port} type veth peer name eth0 netns {nic.netns}",
            f"link set {nic.port} master {nic.bridge} up",
        ]
    for seg in topology.segments:
        fabric += [f"route add {public} via {via}" for public, via in seg.host_routes]
    _ip_batch(topology.fabric, fabric)
    _sysctl(topology.fabric, {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
    for nic in topology.nics:
        lines = ["link set lo up"]
        lines += [_addr(a, "eth0", str(a.ip) in nic.deprecated) for a in nic.addresses]
        lines.append("link set eth0 up")
        for gateway, source in nic.default_routes:
            default = "::/0" if ":" in gateway else "0.0.0.0/0"
            lines.append(f"route add {default} via {gateway} src {source}")
        _ip_batch(nic.netns, lines)


def existing() -> list[str]:
    """The lab's network namespaces on this machine, whoever's state file lists them."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(NETNS_PREFIX))


def destroy(names: list[str] | None = None) -> None:
    """Remove the namespaces (their veths and bridges go with them)."""
    for name in dict.fromkeys([*(names or []), *existing()]):
        if (NETNS_DIR / name).exists():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
