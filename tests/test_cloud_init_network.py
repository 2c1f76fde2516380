"""The network-config the program gives each VM, rendered by Debian 12's own cloud-init under both
renderers a Debian 12 guest may pick: ENI (ifupdown) and netplan (systemd-networkd).

What must hold under either: static site-local addresses, IPv4 and IPv6 default routes to the site's
gateways without net-tools' `route` (absent from Debian 12 images: `post-up route add ... || true`
fails silently), the site's resolvers, no router advertisements (a SLAAC address would be refused by
the maildrops' exact-address rules), and public addresses that are never the source of site-local
traffic: they sit on the loopback, and Linux picks a source on the outgoing interface first
(RFC 6724 rule 5 for IPv6; for IPv4 the primary address on the route's device).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml

from model import Host, Site
from render import cloud_init
from tests import debian_cloud_init
from tests.debian_cloud_init import Rendered, eni_stanzas

ROLES = ("maildrop", "smtp_in")  # without and with public addresses


@pytest.fixture(scope="module", autouse=True)
def _debian_cloud_init():
    reason = debian_cloud_init.unavailable()
    if reason:
        pytest.skip(reason)


@dataclass(frozen=True)
class Case:
    site: Site
    host: Host
    out: Rendered


@pytest.fixture(scope="module", params=[(s, r) for s in ("prod", "lab") for r in ROLES], ids="-".join)
def rendered(request, stacks):
    stack_name, role = request.param
    stack = stacks[stack_name]
    host = getattr(stack.hosts, role)[0]
    site = stack.site_by_name[host.site]
    return Case(site, host, debian_cloud_init.render(cloud_init.network_config(stack, host)))


def _prefixed(host, site) -> tuple[str, str]:
    return f"{host.ipv4}/{site.site_local.ipv4.prefixlen}", f"{host.ipv6}/{site.site_local.ipv6.prefixlen}"


def test_renderers_are_debians_cloud_init_22_4(rendered):
    assert rendered.out.version.startswith("22.4.2")


def test_eni_sets_both_default_routes_without_net_tools(rendered):
    site, out = rendered.site, rendered.out
    gateway4, gateway6 = site.router_ipv4, site.router_ipv6
    stanzas = eni_stanzas(out.eni)
    assert f"gateway {gateway4}" in stanzas["site-local", "inet"], out.eni
    assert f"gateway {gateway6}" in stanzas["site-local", "inet6"], out.eni
    # ifupdown's own `gateway` runs `ip route add default via`; `route` is net-tools, not installed.
    assert not [line for line in out.eni.splitlines() if "route " in line], out.eni


def test_eni_has_static_addresses_resolvers_and_no_router_advertisements(rendered):
    site, host, out = rendered.site, rendered.host, rendered.out
    ipv4, ipv6 = _prefixed(host, site)
    stanzas = eni_stanzas(out.eni)
    assert f"address {ipv4}" in stanzas["site-local", "inet"]
    assert f"address {ipv6}" in stanzas["site-local", "inet6"]
    assert "accept_ra 0" in stanzas["site-local", "inet6"], out.eni
    resolvers = " ".join(str(r) for r in site.resolvers)
    assert resolvers and f"dns-nameservers {resolvers}" in [line for lines in stanzas.values() for line in lines]


def test_eni_puts_public_addresses_on_the_loopback_only(rendered):
    host, out = rendered.host, rendered.out
    stanzas = eni_stanzas(out.eni)
    site_local = stanzas["site-local", "inet"] + stanzas["site-local", "inet6"]
    loopback = stanzas.get(("lo", "inet"), []) + stanzas.get(("lo", "inet6"), [])
    for address in host.public_addresses:
        prefixed = f"{address}/{128 if ':' in address else 32}"
        assert f"address {prefixed}" in loopback, out.eni
        assert not [line for line in site_local if address in line], out.eni
    if not host.public_addresses:
        assert not [line for line in loopback if line.startswith("address")], out.eni


def test_netplan_sets_both_default_routes_resolvers_and_no_router_advertisements(rendered):
    site, host, out = rendered.site, rendered.host, rendered.out
    ethernets = yaml.safe_load(out.netplan)["network"]["ethernets"]
    nic = ethernets["site-local"]
    gateway4, gateway6 = site.router_ipv4, site.router_ipv6
    defaults = {r["to"]: r["via"] for r in nic.get("routes", []) if r["to"] in ("default", "0.0.0.0/0", "::/0")}
    assert nic.get("gateway4", defaults.get("0.0.0.0/0")) == str(gateway4), out.netplan
    assert nic.get("gateway6", defaults.get("::/0")) == str(gateway6), out.netplan
    assert set(_prefixed(host, site)) == set(nic["addresses"]), out.netplan
    assert nic["accept-ra"] is False, out.netplan
    assert nic["nameservers"]["addresses"] == [str(r) for r in site.resolvers], out.netplan
    assert nic["match"] == {"macaddress": cloud_init.mac_address(host)}


def test_netplan_puts_public_addresses_on_the_loopback_only(rendered):
    host, out = rendered.host, rendered.out
    ethernets = yaml.safe_load(out.netplan)["network"]["ethernets"]
    expected = [f"{a}/{128 if ':' in a else 32}" for a in host.public_addresses]
    assert ethernets.get("lo", {}).get("addresses", []) == expected, out.netplan
    assert set(ethernets) <= {"site-local", "lo"}, out.netplan
