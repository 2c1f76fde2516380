"""The edits an operator makes to the prod stack, each as a change of its config values.

Shape edits (disk, memory, vCPUs) are made to one host, as the README's procedure says they must
be: the per-host fields move one VM at a time, so no edit takes a role down.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Values = dict[str, Any]
Secrets = dict[str, str]


@dataclass(frozen=True)
class Edit:
    name: str
    change: Callable[[Values, Secrets], None]

    def apply(self, values: Values, secrets: Secrets) -> tuple[Values, Secrets]:
        values, secrets = copy.deepcopy(values), dict(secrets)
        self.change(values, secrets)
        return values, secrets


def _host(values: Values, name: str) -> dict:
    return next(h for hosts in values["hosts"].values() for h in hosts if h["name"] == name)


def _site(values: Values, name: str) -> dict:
    return next(s for s in values["sites"] if s["name"] == name)


def _domain(values: Values, name: str) -> dict:
    return next(d for d in values["domains"] if d["name"] == name)


def _override(values: Values, host: str) -> dict:
    return values.setdefault("vm_overrides", {}).setdefault(host, {})


def disk_size(values: Values, _: Secrets) -> None:
    # The maildrop's two disks at once: its root disk and the mail volume.
    shape = _override(values, "maildrop0-chbtl0")
    shape["disk_gib"] = values.get("vm_disk_gib", 16) + 4
    shape["mail_gib"] = values.get("vm_mail_gib", 32) * 2


def memory(values: Values, _: Secrets) -> None:
    _override(values, "smtp-in-nlams2")["memory_mib"] = values.get("vm_memory_mib", 8192) + 4096


def vcpus(values: Values, _: Secrets) -> None:
    _override(values, "smtp-in-nlams2")["vcpus"] = values.get("vm_vcpus", 4) + 2


def image(values: Values, _: Secrets) -> None:
    values["debian_image"] = {
        "url": "https://cloud.debian.org/images/cloud/bookworm/20261201-2380/debian-12-genericcloud-amd64-20261201-2380.qcow2",
        "sha512": "1" * 128,
    }


def site_pool(values: Values, _: Secrets) -> None:
    _site(values, "chbtl0")["pool"] = "nvme"


def site_bridge(values: Values, _: Secrets) -> None:
    _site(values, "chrma0")["bridge"] = "br1"


def host_rename(values: Values, _: Secrets) -> None:
    _host(values, "smtp-in-nlams2")["name"] = "smtp-in1-nlams2"


def host_added(values: Values, _: Secrets) -> None:
    values["hosts"]["smtp_out"].append(
        {"name": "smtp-out-chbtl0", "site": "chbtl0", "ipv6": "2001:678:d78:503::7", "ipv4": "192.0.2.103"}
    )


def host_removed(values: Values, _: Secrets) -> None:
    values["hosts"]["smtp_in"] = [h for h in values["hosts"]["smtp_in"] if h["name"] != "smtp-in-nlams2"]


def domain_added(values: Values, _: Secrets) -> None:
    aliases = {"pim": ["pim"], "postmaster": ["pim"]}
    values["domains"].append({"name": "ipng.li", "dkim": [{"selector": "ipng-li"}], "aliases": aliases})


def alias_added(values: Values, _: Secrets) -> None:
    _domain(values, "ipng.ch")["aliases"]["abuse"] = ["pim"]


def mailbox_added(values: Values, _: Secrets) -> None:
    values["mailboxes"].append({"name": "arend"})


def dkim_rotation(values: Values, _: Secrets) -> None:
    # Step one of a rotation: publish the next key beside the active one.
    _domain(values, "ipng.ch")["dkim"].append({"selector": "ipng-ch-2027", "active": False})


def tls_certificate(_: Values, secrets: Secrets) -> None:
    secrets.update(operator_certificate())


def ssh_key(values: Values, _: Secrets) -> None:
    values["ssh_public_key"] = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINextOperatorKeyOfTheCatalogue operator@ipng.ch"


def relay_client_removed(values: Values, _: Secrets) -> None:
    values["relay_clients"] = [c for c in values["relay_clients"] if c["name"] != "squanchy"]


CATALOGUE: tuple[Edit, ...] = (
    Edit("disk size (maildrop0-chbtl0: root +4 GiB, mail x2)", disk_size),
    Edit("memory (smtp-in-nlams2 +4 GiB)", memory),
    Edit("vCPUs (smtp-in-nlams2 +2)", vcpus),
    Edit("Debian image (next dated build)", image),
    Edit("pool of site chbtl0", site_pool),
    Edit("bridge of site chrma0", site_bridge),
    Edit("host renamed (smtp-in-nlams2)", host_rename),
    Edit("host added (smtp-out-chbtl0)", host_added),
    Edit("host removed (smtp-in-nlams2)", host_removed),
    Edit("domain added (ipng.li)", domain_added),
    Edit("alias added (abuse@ipng.ch)", alias_added),
    Edit("mailbox added (arend)", mailbox_added),
    Edit("DKIM selector rotation (ipng.ch, next key published)", dkim_rotation),
    Edit("TLS certificate (the operator's)", tls_certificate),
    Edit("operator's SSH key", ssh_key),
    Edit("relay client removed (squanchy)", relay_client_removed),
)


@cache
def operator_certificate() -> Secrets:
    """A certificate and key as an operator would set them (`pulumi config set --secret`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp-out.ipng.ch")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return {
        "tls_certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
        "tls_private_key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    }
