"""Run the Pulumi program (__main__.py) under MailMocks, as `pulumi up` would, and collect what it made.

    run = run_program("lab")                       # Pulumi.lab.yaml's values
    run = run_program("lab", values, memo=memo)    # changed values; same memo: same keys as before
    run.mocks.of_type(DOMAIN), run.outputs["hosts"], run.secret_texts

Config is handed over as the CLI does: plain strings as they are, everything else as JSON.
"""

from __future__ import annotations

import json
import runpy
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pulumi
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import rpc, settings
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import massage

from model import NAMESPACE, stack_file_values
from tests.pulumi_mocks import SECRET_SIG, MailMocks, unsecret

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "__main__.py"

PROVIDER = "pulumi:providers:libvirt"
DOMAIN = "libvirt:index/domain:Domain"
VOLUME = "libvirt:index/volume:Volume"
CLOUD_INIT = "libvirt:index/cloudInitDisk:CloudInitDisk"
COMMAND = "command:remote:Command"
# Outputs of the mocked providers that are secrets: none may show in a plain stack output.
SECRET_OUTPUTS = ("privateKeyPem", "privateKeyPemPkcs8", "privateKeyOpenssh", "result", "bcryptHash")


class RecordingMocks(MailMocks):
    """MailMocks that also keep every secret value their providers handed out, and which inputs
    arrived marked secret."""

    def __init__(self, memo: dict | None = None):
        super().__init__(memo=memo)
        self.secret_texts: list[str] = []
        self.secret_inputs: dict[tuple[str, str], set[str]] = {}

    def new_resource(self, args):
        secret = {k for k, v in args.inputs.items() if isinstance(v, dict) and SECRET_SIG in v}
        self.secret_inputs[(args.typ, args.name)] = secret
        id_, outputs = super().new_resource(args)
        self.secret_texts += [outputs[k] for k in SECRET_OUTPUTS if isinstance(outputs.get(k), str)]
        return id_, outputs


class RecordingMonitor(MockMonitor):
    """The mock engine, keeping what MockResourceArgs leaves out: each resource's URN, parent and dependencies."""

    def __init__(self, mocks: RecordingMocks):
        super().__init__(mocks)
        self.urns: dict[tuple[str, str], str] = {}
        self.parents: dict[tuple[str, str], str] = {}
        self.dependencies: dict[tuple[str, str], list[str]] = {}
        # The resource options the engine acts on (the mocks' MockResourceArgs leave them out).
        self.options: dict[tuple[str, str], dict[str, Any]] = {}

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        key = (request.type, request.name)
        self.urns[key] = response.urn
        self.parents[key] = request.parent
        self.dependencies[key] = list(request.dependencies)
        self.options[key] = {
            "protect": bool(request.protect),
            "retain_on_delete": bool(request.retainOnDelete),
            "delete_before_replace": bool(request.deleteBeforeReplace),
            "ignore_changes": sorted(request.ignoreChanges),
            "replace_on_changes": sorted(request.replaceOnChanges),
        }
        return response


@dataclass
class Run:
    mocks: RecordingMocks
    monitor: RecordingMonitor
    # The stack outputs as the engine receives them (massaged, serialized with secrets marked);
    # read as plain values through `outputs` and `secret_outputs`, worked out on first use.
    serialized: struct_pb2.Struct | None = None

    @property
    def secret_texts(self) -> list[str]:
        return self.mocks.secret_texts

    @cached_property
    def _plain(self) -> tuple[dict[str, Any], set[str]]:
        outputs, secret = {}, set()
        for name, value in json_format.MessageToDict(self.serialized or struct_pb2.Struct()).items():
            outputs[name] = unsecret(value)
            if SECRET_SIG in json.dumps(value):
                secret.add(name)
        return outputs, secret

    @property
    def outputs(self) -> dict[str, Any]:
        return self._plain[0]

    @property
    def secret_outputs(self) -> set[str]:
        """Names of the stack outputs that hold a secret anywhere in their value."""
        return self._plain[1]

    def inputs(self) -> dict[tuple[str, str], dict]:
        """(type, name) -> inputs of every resource, components included."""
        return {(r.typ, r.name): r.inputs for r in self.mocks.resources}


def config_map(values: dict[str, Any]) -> dict[str, str]:
    return {f"{NAMESPACE}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def run_program(
    stack_name: str,
    values: dict[str, Any] | None = None,
    memo: dict | None = None,
    secrets: dict[str, str] | None = None,
    mocks: RecordingMocks | None = None,
) -> Run:
    """Evaluate the program for `stack_name` (with `values` instead of its file's, if given).
    Pass `mocks` to inspect what was registered when the program raises."""
    mocks = mocks or RecordingMocks(memo)
    run = Run(mocks, RecordingMonitor(mocks))
    settings.set_root_resource(None)  # a fresh stack resource, and so fresh stack outputs
    pulumi.runtime.set_mocks(run.mocks, project=NAMESPACE, stack=stack_name, preview=False, monitor=run.monitor)
    config = config_map(stack_file_values(stack_name) if values is None else values)
    config.update({f"{NAMESPACE}:{k}": v for k, v in (secrets or {}).items()})
    pulumi.runtime.set_all_config(config, secret_keys=[f"{NAMESPACE}:{k}" for k in secrets or {}])

    async def collect(exported: dict) -> None:
        # What the SDK does with the stack outputs at the end of a `pulumi up` (the mock engine
        # skips it): massage them, then serialize them for the engine.
        run.serialized = await rpc.serialize_properties(massage(exported, []), {})

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(PROGRAM), run_name="__pulumi_program__")
        return collect(settings.get_root_resource().outputs)

    program()
    return run
