"""What a running lab remembers between commands: the state file and the key material.

STATE_DIR/state.json   hosts, namespaces, pids of every daemon, endpoints, accounts (for `status`
                       and `down`); written before anything is created, so a failed `up` is
                       still removed by `down`
STATE_DIR/keys.json    the throwaway KeyMaterial of this `up` (0600): mailbox passwords, CA, DKIM
STATE_DIR/ca.pem       the CA that signed every lab certificate, for clients that verify TLS
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lab import STATE_DIR
from render.keys import KeyMaterial

STATE_FILE = STATE_DIR / "state.json"
KEYS_FILE = STATE_DIR / "keys.json"
CA_FILE = STATE_DIR / "ca.pem"


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save(state: dict[str, Any]) -> None:
    _write(STATE_FILE, json.dumps(state, indent=2) + "\n", 0o600)


def load() -> dict[str, Any] | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def save_keys(keys: KeyMaterial) -> None:
    data = asdict(keys)
    data["dkim_keys"] = [[domain, selector, pem] for (domain, selector), pem in keys.dkim_keys.items()]
    _write(KEYS_FILE, json.dumps(data), 0o600)
    _write(CA_FILE, keys.ca_cert, 0o644)


def load_keys() -> KeyMaterial:
    data = json.loads(KEYS_FILE.read_text())
    data["dkim_keys"] = {(domain, selector): pem for domain, selector, pem in data["dkim_keys"]}
    return KeyMaterial(**data)
