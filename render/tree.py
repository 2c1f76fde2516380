"""What a host must have: its packages, its files, the checks they pass before install, the services
to reload, and the probes that show afterwards that it still does its job."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FileSpec:
    content: str
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    # Services reloaded when this file changes (names as in HostTree.services).
    reload: tuple[str, ...] = ()
    # A Postfix lookup table: `postmap` it after install (and before the check).
    postmap: bool = False


def _spec(spec: FileSpec) -> dict:
    # By hand rather than dataclasses.asdict (a deep copy): this runs for every file of every host.
    return {
        "content": spec.content,
        "mode": spec.mode,
        "owner": spec.owner,
        "group": spec.group,
        "reload": list(spec.reload),
        "postmap": spec.postmap,
    }


@dataclass(frozen=True)
class Check:
    """A daemon's own checker, run with the staged files in place of the live ones."""

    name: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Probe:
    """Run on the host after its reload by render/push_host.py (PROBES: banner, tcp, smtp, lmtp,
    http, dns, milter, argv), tried again until it passes or `within` seconds (default 30) have gone by.
    `args` are the kind's own fields (address, port, tls_name, rcpt, ...): plain data, never
    `name` or `kind`."""

    name: str
    kind: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if {"name", "kind"} & set(self.args):
            raise ValueError(f"probe {self.name!r}: `name` and `kind` are the probe's own, not args")

    def manifest(self) -> dict:
        return {"name": self.name, "kind": self.kind, **{k: _plain(v) for k, v in self.args.items()}}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class HostTree:
    host: str
    role: str
    files: Mapping[str, FileSpec]
    checks: tuple[Check, ...] = ()
    # service -> command that makes it re-read its files on a Debian host.
    services: Mapping[str, str] = field(default_factory=dict)
    # Run after the reloads, in this order; a failure rolls the host back (render/push_host.py).
    probes: tuple[Probe, ...] = ()
    # Debian packages the host must have (render.cloud_init.packages of its role): the push installs
    # those missing.
    packages: tuple[str, ...] = ()

    def manifest(self) -> dict:
        """The push payload: plain data, stable order (its hash is the push trigger)."""
        return {
            "host": self.host,
            "files": {p: _spec(self.files[p]) for p in sorted(self.files)},
            "checks": [{"name": c.name, "argv": list(c.argv)} for c in self.checks],
            "services": dict(sorted(self.services.items())),
            "probes": [p.manifest() for p in self.probes],
            "packages": list(self.packages),
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.manifest(), sort_keys=True).encode()).hexdigest()

    def merged(self, other: HostTree) -> HostTree:
        """Two roles' trees on one host (e.g. the webmail server block on a frontend)."""
        clash = set(self.files) & set(other.files)
        if clash:
            raise ValueError(f"{self.host}: {sorted(clash)} rendered twice")
        return HostTree(
            host=self.host,
            role=self.role,
            files={**self.files, **other.files},
            checks=self.checks + tuple(c for c in other.checks if c not in self.checks),
            services={**self.services, **other.services},
            probes=self.probes + tuple(p for p in other.probes if p not in self.probes),
            packages=tuple(dict.fromkeys(self.packages + other.packages)),
        )
