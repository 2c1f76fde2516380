"""Pulumi components: the VMs, the keys, one component per role, the push of rendered trees.

Components only wire resources; what a host's files say comes from render/ (pure), and the stack
they describe from model/ (parsed once, by read_stack, before any resource exists).
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from components.dns import DnsOutputs, endpoints
from components.frontend import Frontend
from components.keys import TLS_CONFIG_KEYS, Keys
from components.maildrop import Maildrop
from components.push import Pushes
from components.relay_clients import RelayClients
from components.smtp_in import SmtpIn
from components.smtp_out import SmtpOut
from components.vm import Hypervisor, hypervisors
from components.webmail import Webmail
from model import NAMESPACE, Stack, load_stack

# Config keys the program reads itself: secrets, not part of the stack model.
PROGRAM_KEYS = ("ssh_private_key", *TLS_CONFIG_KEYS)


def config_keys() -> list[str]:
    """Every `mail-cluster:` key set for this stack, so that a misspelt one is refused, not ignored.
    The SDK only reads keys one by one; its config map is the one place that lists them."""
    present = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    prefix = f"{NAMESPACE}:"
    return sorted(k.removeprefix(prefix) for k in present if k.startswith(prefix))


def _value(config: pulumi.Config, key: str) -> Any:
    """Pulumi hands structured values over as JSON text and plain strings as they are."""
    text = config.get(key)
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def read_stack(config: pulumi.Config) -> Stack:
    """The stack model from the config; raises StackConfigError (naming `mail-cluster:<key>`)."""
    return load_stack({key: _value(config, key) for key in config_keys() if key not in PROGRAM_KEYS})


__all__ = [
    "PROGRAM_KEYS",
    "DnsOutputs",
    "Frontend",
    "Hypervisor",
    "Keys",
    "Maildrop",
    "Pushes",
    "RelayClients",
    "SmtpIn",
    "SmtpOut",
    "Webmail",
    "endpoints",
    "hypervisors",
    "read_stack",
]
