"""The DNS the cluster needs, as stack outputs: structured records and BIND zone text.

Records come from render.dns_records (one place for every name); the only Pulumi part is waiting
for the DKIM public keys. Public keys only: nothing here is secret.
"""

from __future__ import annotations

import pulumi

from components.keys import Keys
from model import Stack
from render import dns_records


class DnsOutputs:
    def __init__(self, stack: Stack, keys: Keys):
        pairs = list(keys.dkim_public)
        # One apply: the records are worked out once and feed both outputs (and the MX list).
        published = pulumi.Output.all(*(keys.dkim_public[p] for p in pairs)).apply(
            lambda pems: _publish(stack, dict(zip(pairs, pems, strict=True)))
        )
        # A tuple, exported as a list: the SDK looks for unknowns in every Output's value by walking
        # its lists and dicts, once per Output that holds it. These records are plain known values
        # (hundreds of them for a large stack): the walks are left to the export itself.
        self.records: pulumi.Output[tuple[dict, ...]] = published[0]
        self.zones: pulumi.Output[dict[str, str]] = published[1]
        # Each mail domain's MX targets, in preference order, as the records publish them.
        self.mx: pulumi.Output[dict[str, list[str]]] = published[2]


def _publish(stack: Stack, dkim_public: dns_records.DkimPublic) -> tuple[tuple[dict, ...], dict[str, str], dict]:
    records = dns_records.records(stack, dkim_public)
    as_dicts = tuple(_record(r) for r in records)
    return as_dicts, dns_records.zone_texts(stack, dkim_public, records), _mx(as_dicts)


def _record(r: dns_records.Record) -> dict:
    # Field by field: dataclasses.asdict deep-copies, which a large stack pays for per record.
    return {"zone": r.zone, "name": r.name, "type": r.type, "ttl": r.ttl, "value": r.value}


def _mx(records: tuple[dict, ...]) -> dict[str, list[str]]:
    mx: dict[str, list[str]] = {}
    for r in records:
        if r["type"] == "MX" and r["name"] == "@":
            mx.setdefault(r["zone"], []).append(r["value"])
    return {zone: sorted(values, key=lambda v: int(v.split()[0])) for zone, values in mx.items()}


def endpoints(stack: Stack, dns: DnsOutputs) -> dict:
    """Where clients connect: every one of these names resolves to the frontends (smtp-in for MX)."""
    ports = stack.ports
    return {
        "submission": f"{stack.service_name('smtp-out')}:{ports.submission}",
        "imaps": f"{stack.service_name('imap')}:{ports.imaps}",
        "managesieve": f"{stack.service_name('imap')}:{ports.managesieve}",
        "webmail": f"https://{stack.service_name('webmail')}/",
        "mx": dns.mx,
    }
