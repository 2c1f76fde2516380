"""The lab's DNS: nsd (Debian's), authoritative for everything the lab resolves.

It serves, from the internet namespace at lab.internet.DNS_SERVER:
- the zones the stack publishes, exactly as render.dns_records.zone_texts writes them (MX, SPF,
  DKIM with the lab's throwaway keys, DMARC, MTA-STS, SRV, host and service names);
- `remote.test`: the remote MTA's MX and addresses, names for the internet's clients;
- the test DNSBLs: `dnsbl.test` lists LISTED_CLIENT (and RFC 5782's 127.0.0.2 test entry),
  `refusing-dnsbl.test` answers 127.255.255.254 ("query refused") for every name;
- reverse zones for the internet's addresses, so clients and the remote MTA have PTRs.

Hosts with their own unbound forward every query here (lab.daemons adds that forward, since
the lab has no root servers); every other host has it as nameserver in /etc/resolv.conf.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.reversename

from lab import internet
from lab.netns import in_netns
from model import Stack
from render.dns_records import dkim_public_keys, zone_texts
from render.keys import KeyMaterial

LISTING_DNSBL = "dnsbl.test"
REFUSING_DNSBL = "refusing-dnsbl.test"
# Names in remote.test for the internet's addresses (forward and reverse).
INTERNET_NAMES = {
    "client": (internet.ALLOWED_CLIENT[0], internet.ALLOWED_CLIENT[1]),
    "other": (internet.OTHER_CLIENT[0], internet.OTHER_CLIENT[1]),
    "listed": (internet.LISTED_CLIENT,),
    "mx": internet.REMOTE_MTA,
    "ns": internet.DNS_SERVER,
}


def _soa(zone: str) -> str:
    return (
        f"$ORIGIN {zone}.\n$TTL 300\n"
        f"@ IN SOA ns.{internet.REMOTE_DOMAIN}. hostmaster.{internet.REMOTE_DOMAIN}. 1 3600 600 1209600 300\n"
        f"@ IN NS ns.{internet.REMOTE_DOMAIN}.\n"
    )


def _address_records(name: str, addresses: tuple[str, ...]) -> str:
    return "".join(f"{name} IN {'AAAA' if ':' in a else 'A'} {a}\n" for a in addresses)


def lab_zones() -> dict[str, str]:
    remote = _soa(internet.REMOTE_DOMAIN) + (
        f"@ IN MX 10 {internet.REMOTE_MX}.\n"
        # The internet's clients send as remote.test.
        f'@ IN TXT "v=spf1 ip4:{internet.IPV4} ip6:{internet.IPV6} ~all"\n'
    )
    remote += "".join(_address_records(name, addrs) for name, addrs in INTERNET_NAMES.items())
    listed = ".".join(reversed(internet.LISTED_CLIENT.split(".")))
    zones = {
        internet.REMOTE_DOMAIN: remote,
        LISTING_DNSBL: _soa(LISTING_DNSBL)
        + f'{listed} IN A 127.0.0.2\n{listed} IN TXT "listed by the lab"\n'
        + '2.0.0.127 IN A 127.0.0.2\n2.0.0.127 IN TXT "RFC 5782 test entry"\n',
        REFUSING_DNSBL: _soa(REFUSING_DNSBL) + "* IN A 127.255.255.254\n",
    }
    reverse_v4 = ".".join(reversed(str(internet.IPV4.network_address).split(".")[:3])) + ".in-addr.arpa"
    reverse_v6 = dns.reversename.from_address(str(internet.IPV6.network_address)).to_text(omit_final_dot=True)
    reverse_v6 = reverse_v6.split(".", 16)[-1]  # the /64: drop the 16 interface-id nibbles
    ptr = {reverse_v4: "", reverse_v6: ""}
    for name, addrs in INTERNET_NAMES.items():
        for a in addrs:
            owner = dns.reversename.from_address(a).to_text()
            zone = reverse_v6 if ":" in a else reverse_v4
            ptr[zone] += f"{owner} IN PTR {name}.{internet.REMOTE_DOMAIN}.\n"
    zones.update({z: _soa(z) + records for z, records in ptr.items()})
    return zones


def zones(stack: Stack, keys: KeyMaterial) -> dict[str, str]:
    """zone name -> zone text: the stack's published zones, then the lab's own."""
    published = zone_texts(stack, dkim_public_keys(keys))
    own = lab_zones()
    clash = set(published) & set(own)
    if clash:
        raise ValueError(f"the stack publishes zones the lab serves itself: {sorted(clash)}")
    return {**published, **own}


def write_config(directory: Path, zone_texts_: Mapping[str, str]) -> Path:
    """nsd.conf and the zone files; every zone passes nsd-checkzone first."""
    zones_dir = directory / "zones"
    zones_dir.mkdir(parents=True, exist_ok=True)
    conf = [
        "server:",
        *(f"  ip-address: {a}" for a in internet.DNS_SERVER),
        "  port: 53",
        '  username: ""',
        '  chroot: ""',
        '  database: ""',
        '  pidfile: ""',
        f'  zonesdir: "{zones_dir}"',
        f'  zonelistfile: "{directory}/zone.list"',
        f'  xfrdfile: "{directory}/xfrd.state"',
        "  server-count: 1",
        "  verbosity: 1",
        # Response rate limiting guards the internet against reflection; here every lab host
        # sits in one /24 and one /64 of its site, so under load NSD would drop their answers
        # (a stub resolver then waits 5 s to retry: a 5 s stall per SMTP session).
        "  rrl-ratelimit: 0",
        "  rrl-whitelist-ratelimit: 0",
        "remote-control:",
        "  control-enable: no",
    ]
    for zone, text in zone_texts_.items():
        path = zones_dir / f"{zone}.zone"
        path.write_text(text)
        result = subprocess.run(["nsd-checkzone", zone, str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"zone {zone} refused by nsd-checkzone: {(result.stdout + result.stderr).strip()}")
        conf += ["zone:", f"  name: {zone}", f'  zonefile: "{path.name}"']
    path = directory / "nsd.conf"
    path.write_text("\n".join(conf) + "\n")
    return path


def command(conf: Path) -> list[str]:
    """nsd in the foreground, as Debian's unit runs it (`nsd -d -P ""`)."""
    return ["nsd", "-d", "-P", "", "-c", str(conf)]


def answers(zone: str, timeout: float = 0.5) -> bool:
    """Whether the server answers authoritatively for `zone`, asked from the internet namespace."""
    query = dns.message.make_query(zone, "SOA")
    try:
        with in_netns(internet.NETNS):
            response = dns.query.udp(query, internet.DNS_SERVER[0], timeout=timeout)
    except (OSError, dns.exception.DNSException):
        return False
    return bool(response.answer) and bool(response.flags & dns.flags.AA)
