"""The engine's decisions for one edit: each resource created, updated, replaced (delete-first or
create-first), deleted, retained or refused, from two captured runs of the program.

What the Pulumi engine does, and this repeats:
- it diffs a resource's old inputs with its new ones, after copying the old value back into every
  path named by `ignore_changes`;
- the provider says which changed inputs force a replacement (providers.BEHAVIOURS), plus any
  named by `replace_on_changes`; the `delete_before_replace` option, when set, overrides the
  provider's order;
- a resource replaced delete-first takes with it every dependent whose replace-forcing input
  depends on it (the engine's dependent replacements: it diffs each dependent with those inputs
  unknown); a replaced provider replaces every resource it manages;
- a create-first replacement hands its dependents new outputs (a new id, a new key), which the
  caller feeds back by evaluating the program again (harness.plan_edit);
- `protect` refuses a replacement or a deletion (the whole `pulumi up` stops there);
  `retain_on_delete` deletes from the state only, leaving the volume on the hypervisor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from blast_radius.capture import Resource
from blast_radius.providers import behaviour

CREATE, UPDATE, REPLACE, DELETE = "create", "update", "replace", "delete"
RETAINED = "retained"  # deleted from the state, left on the hypervisor (retain_on_delete)
REFUSED = "refused (protected)"


@dataclass(frozen=True)
class Step:
    urn: str
    type: str
    name: str
    action: str
    # The inputs whose change caused it (for a replacement: the replace-forcing ones).
    keys: tuple[str, ...] = ()
    delete_first: bool = False
    # A replacement of a retain_on_delete resource leaves the old one on the hypervisor.
    old_retained: bool = False
    # What a refused step would have been (replace or delete).
    refused: str = ""


@dataclass
class Plan:
    steps: dict[str, Step] = field(default_factory=dict)

    def of(self, *actions: str) -> list[Step]:
        return [s for s in self.steps.values() if s.action in actions]

    def replaced(self) -> set[str]:
        return {s.urn for s in self.of(REPLACE)}


_PATH = re.compile(r"""([^.\[\]]+)|\[(\d+)\]|\["([^"]*)"\]""")


def _path(text: str) -> list[str | int]:
    """`disks[0].volumeId` -> ["disks", 0, "volumeId"]."""
    return [name if name else int(index) if index else key for name, index, key in _PATH.findall(text)]


def _copy_at(old: Any, new: Any, path: list[str | int]) -> Any:
    """`new` with the value at `path` taken from `old` (what ignore_changes does)."""
    if not path:
        return old
    head, rest = path[0], path[1:]
    if isinstance(new, dict) and isinstance(head, str):
        if isinstance(old, dict) and head in old:
            return {**new, head: _copy_at(old[head], new.get(head), rest)}
        return {k: v for k, v in new.items() if k != head}
    if isinstance(new, list) and isinstance(head, int) and isinstance(old, list) and head < min(len(old), len(new)):
        return [*new[:head], _copy_at(old[head], new[head], rest), *new[head + 1 :]]
    return new


def ignoring(old: Mapping[str, Any], new: Mapping[str, Any], ignore_changes: Iterable[str]) -> dict[str, Any]:
    """The new inputs as the engine diffs them: old values at every ignored path."""
    result: Any = dict(new)
    for text in ignore_changes:
        result = _copy_at(dict(old), result, _path(text))
    return result


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


def _ignored_key(key: str, ignore_changes: Iterable[str]) -> bool:
    """Whether `ignore_changes` names the whole input. A path inside it (`disks[0].volumeId`) does
    not hide an input that becomes unknown as a whole, so it counts as changed."""
    return any(_path(text)[:1] == [key] and len(_path(text)) == 1 for text in ignore_changes)


def _forcing(resource: Resource, keys: set[str]) -> set[str]:
    forcing = behaviour(resource.type).replace
    if "*" in resource.replace_on_changes:
        return set(keys)
    return {k for k in keys if k in forcing or k in resource.replace_on_changes}


def classify(before: Mapping[str, Resource], after: Mapping[str, Resource]) -> Plan:
    """The steps a `pulumi up` would take from the state `before` to the program `after`."""
    plan = Plan()
    old_custom = {u: r for u, r in before.items() if r.custom}
    new_custom = {u: r for u, r in after.items() if r.custom}

    # Inputs each kept resource sees changed, from the values alone.
    changes: dict[str, set[str]] = {}
    for urn in old_custom.keys() & new_custom.keys():
        old, new = old_custom[urn], new_custom[urn]
        keys = changed_keys(old.inputs, ignoring(old.inputs, new.inputs, new.ignore_changes))
        if keys:
            changes[urn] = keys

    # Replacements, and the dependents a delete-first replacement (or a replaced provider) drags
    # along, to a fixed point.
    replaced: dict[str, Step] = {}
    refused: dict[str, Step] = {}
    dragged: dict[str, set[str]] = {}
    while True:
        before_round = (dict(replaced), {k: set(v) for k, v in dragged.items()})
        for urn in sorted(old_custom.keys() & new_custom.keys()):
            old, new = old_custom[urn], new_custom[urn]
            for key, sources in new.property_dependencies.items():
                if any(s in replaced and replaced[s].delete_first for s in sources) and not _ignored_key(
                    key, new.ignore_changes
                ):
                    dragged.setdefault(urn, set()).add(key)
            keys = changes.get(urn, set()) | dragged.get(urn, set())
            forcing = _forcing(new, keys)
            if new.provider and new.provider in replaced:
                forcing.add("(provider)")
            if not forcing:
                continue
            if old.protect:
                refused[urn] = Step(urn, new.type, new.name, REFUSED, keys=tuple(sorted(forcing)), refused=REPLACE)
                continue
            delete_first = new.delete_before_replace
            if delete_first is None:
                delete_first = behaviour(new.type).delete_first(new.inputs)
            replaced[urn] = Step(
                urn,
                new.type,
                new.name,
                REPLACE,
                keys=tuple(sorted(forcing)),
                delete_first=delete_first,
                old_retained=old.retain_on_delete,
            )
        if (replaced, dragged) == before_round:
            break
    for urn, keys in dragged.items():
        changes[urn] = changes.get(urn, set()) | keys
    plan.steps.update(refused)

    for urn in sorted(new_custom.keys() - old_custom.keys()):
        new = new_custom[urn]
        behaviour(new.type)  # an unknown type is an error, even when only created
        plan.steps[urn] = Step(urn, new.type, new.name, CREATE)
    for urn in sorted(old_custom.keys() - new_custom.keys()):
        old = old_custom[urn]
        if old.protect:
            plan.steps[urn] = Step(urn, old.type, old.name, REFUSED, refused=DELETE)
        else:
            plan.steps[urn] = Step(urn, old.type, old.name, RETAINED if old.retain_on_delete else DELETE)
    for urn, step in replaced.items():
        plan.steps[urn] = step
    for urn, keys in changes.items():
        if urn not in plan.steps:
            new = new_custom[urn]
            plan.steps[urn] = Step(urn, new.type, new.name, UPDATE, keys=tuple(sorted(keys)))
    plan.steps = dict(sorted(plan.steps.items()))
    return plan
