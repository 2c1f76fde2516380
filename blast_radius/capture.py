"""Run the program under mocks and keep what a real engine would compare between two runs.

For every resource: URN, type, name, inputs (wire names, secrets unwrapped), parent, provider,
dependencies, which input depends on which resources (the engine's property dependencies), and
the resource options that never reach the mocks but do reach the monitor: protect,
retain_on_delete, ignore_changes, delete_before_replace, replace_on_changes.

Runs that share a memo see the same keys and passwords for the same inputs, as from a stack's
state, so two runs differ only by what the edit causes.
"""

from __future__ import annotations

import copy
import hashlib
import runpy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import resource as runtime_resource
from pulumi.runtime import settings
from pulumi.runtime.mocks import MockMonitor

from model import NAMESPACE
from tests.pulumi_mocks import MailMocks
from tests.pulumi_program import config_map

PROGRAM = Path(__file__).resolve().parent.parent / "__main__.py"


@dataclass(frozen=True)
class Resource:
    urn: str
    type: str
    name: str
    custom: bool
    inputs: Mapping[str, Any]
    parent: str = ""
    # The provider resource's URN ("" for the default provider and for components).
    provider: str = ""
    dependencies: frozenset[str] = frozenset()
    # input name -> URNs of the resources its value came from.
    property_dependencies: Mapping[str, frozenset[str]] = field(default_factory=dict)
    protect: bool = False
    retain_on_delete: bool = False
    # None: the provider decides.
    delete_before_replace: bool | None = None
    ignore_changes: tuple[str, ...] = ()
    replace_on_changes: tuple[str, ...] = ()
    id: str = ""


class _Mocks(MailMocks):
    """MailMocks with ids that say which resource they are (type and name), the same in every run.
    A resource in `fresh` stands for its replacement: a new id and new outputs (a new key)."""

    def __init__(self, memo: dict | None, fresh: frozenset[tuple[str, str]]):
        super().__init__(memo=memo)
        self.fresh = fresh

    def new_resource(self, args):
        digest = hashlib.sha256(f"{args.typ}::{args.name}".encode()).hexdigest()[:12]
        if (args.typ, args.name) not in self.fresh:
            _, outputs = super().new_resource(args)
            return f"{args.name}-{digest}", outputs
        memo, self.memo = self.memo, None
        try:
            _, outputs = super().new_resource(args)
        finally:
            self.memo = memo
        return f"{args.name}-{digest}-new", outputs


class _Monitor(MockMonitor):
    def __init__(self, mocks: _Mocks):
        super().__init__(mocks)
        self.requests: list[tuple[str, Any, str]] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.requests.append((response.urn, request, response.id))
        return response


class ProgramError(RuntimeError):
    """The program refused the stack (e.g. a config error): no plan can be made."""


def run(
    stack_name: str,
    values: Mapping[str, Any],
    secrets: Mapping[str, str] | None = None,
    memo: dict | None = None,
    fresh: frozenset[tuple[str, str]] = frozenset(),
    program_path: Path = PROGRAM,
) -> dict[str, Resource]:
    """urn -> Resource for the program evaluated with `values` as stack `stack_name`'s config;
    `fresh`: (type, name) of resources to answer as replaced (new id, new outputs)."""
    mocks = _Mocks(memo, fresh)
    monitor = _Monitor(mocks)
    settings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project=NAMESPACE, stack=stack_name, preview=False, monitor=monitor)
    config = config_map(copy.deepcopy(dict(values)))
    config.update({f"{NAMESPACE}:{k}": v for k, v in (secrets or {}).items()})
    pulumi.runtime.set_all_config(config, secret_keys=[f"{NAMESPACE}:{k}" for k in secrets or {}])

    @pulumi.runtime.test
    def program():
        runpy.run_path(str(program_path), run_name="__pulumi_program__")

    # Each registration walks the Python stack for the engine's source positions (a fifth of a
    # run under mocks); nothing here reads them.
    stack_trace, runtime_resource._get_stack_trace = runtime_resource._get_stack_trace, _no_stack_trace
    try:
        program()
    except Exception as error:
        raise ProgramError(f"{type(error).__name__}: {error}") from error
    finally:
        runtime_resource._get_stack_trace = stack_trace
    inputs = {(r.typ, r.name): r.inputs for r in mocks.resources}
    return {urn: _resource(urn, request, id_, inputs) for urn, request, id_ in monitor.requests}


def _no_stack_trace():
    return runtime_resource.source_pb2.StackTrace()


def _resource(urn: str, request, id_: str, inputs: Mapping[tuple[str, str], Mapping[str, Any]]) -> Resource:
    return Resource(
        urn=urn,
        type=request.type,
        name=request.name,
        custom=bool(request.custom),
        inputs=inputs.get((request.type, request.name), {}),
        parent=request.parent,
        provider=request.provider.rsplit("::", 1)[0] if request.provider else "",
        dependencies=frozenset(request.dependencies),
        property_dependencies={k: frozenset(v.urns) for k, v in request.propertyDependencies.items()},
        protect=bool(request.protect),
        retain_on_delete=bool(request.retainOnDelete),
        delete_before_replace=request.deleteBeforeReplace if request.deleteBeforeReplaceDefined else None,
        ignore_changes=tuple(request.ignoreChanges),
        replace_on_changes=tuple(request.replaceOnChanges),
        id=id_,
    )
