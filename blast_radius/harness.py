"""An edit's blast radius: the program evaluated before and after the edit, the engine's steps
(plan.classify), followed through new outputs until nothing more changes, and what they mean for
the cluster: the hosts each role loses during the run and the fate of the maildrops' mail.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blast_radius import capture
from blast_radius.catalogue import CATALOGUE, Edit
from blast_radius.plan import DELETE, REFUSED, REPLACE, RETAINED, Plan, Step, classify
from model import stack_file_values

STACK = "prod"
DOMAIN = "libvirt:index/domain:Domain"
VOLUME = "libvirt:index/volume:Volume"
ROLE_TYPES = {
    "mail:role:SmtpOut": "smtp_out",
    "mail:role:SmtpIn": "smtp_in",
    "mail:role:Maildrop": "maildrop",
    "mail:role:Frontend": "frontend",
}
KEPT = "kept"
DELETED = "DELETED"
PROTECTED = "refused: protected"
DETACHED = "detached (retained on the hypervisor)"
# Bounds the program evaluations per edit: each round hands replaced resources' new outputs to
# their dependents; a chain longer than this is a bug in the harness.
MAX_ROUNDS = 8


@dataclass
class Outcome:
    edit: str
    plan: Plan
    # role -> hosts whose Domain is replaced or deleted: down during the run.
    down: dict[str, list[str]] = field(default_factory=dict)
    # maildrop host -> KEPT, DELETED, PROTECTED or DETACHED.
    mail: dict[str, str] = field(default_factory=dict)
    rounds: int = 1


def role_of(urn: str, resources: Mapping[str, capture.Resource]) -> str | None:
    """The role whose component owns the resource (through its parents)."""
    while urn in resources:
        resource = resources[urn]
        if resource.type in ROLE_TYPES:
            return ROLE_TYPES[resource.type]
        urn = resource.parent
    return None


def mail_volumes(resources: Mapping[str, capture.Resource]) -> dict[str, str]:
    """maildrop host -> URN of the volume its mail lives on: `<host>-mail` where the layout has
    one, else its root disk."""
    volumes = {r.name: urn for urn, r in resources.items() if r.type == VOLUME}
    found = {}
    for urn, r in resources.items():
        if r.type == DOMAIN and role_of(urn, resources) == "maildrop":
            host = r.inputs.get("name", r.name.removesuffix("-domain"))
            found[host] = volumes.get(f"{host}-mail") or volumes[f"{host}-root"]
    return found


def _fate(step: Step | None) -> str:
    if step is None or step.action not in (REPLACE, DELETE, RETAINED, REFUSED):
        return KEPT
    if step.action == REFUSED:
        return PROTECTED
    if step.action == RETAINED or (step.action == REPLACE and step.old_retained):
        return DETACHED
    return DELETED


def outcome(edit: str, before: Mapping[str, capture.Resource], plan: Plan, rounds: int = 1) -> Outcome:
    down: dict[str, list[str]] = {}
    for step in plan.of(REPLACE, DELETE, RETAINED):
        if step.type == DOMAIN and (role := role_of(step.urn, before)):
            down.setdefault(role, []).append(step.name.removesuffix("-domain"))
    mail = {host: _fate(plan.steps.get(urn)) for host, urn in mail_volumes(before).items()}
    return Outcome(edit, plan, {r: sorted(h) for r, h in sorted(down.items())}, mail, rounds)


class Baseline:
    """The prod stack as deployed: one evaluation shared by every edit, and the memo that keeps
    keys and passwords as the state would."""

    def __init__(
        self,
        values: Mapping[str, Any] | None = None,
        secrets: Mapping[str, str] | None = None,
        program: Path = capture.PROGRAM,
    ):
        self.values = dict(stack_file_values(STACK) if values is None else values)
        self.secrets = dict(secrets or {})
        self.program = program
        self.memo: dict = {}
        self.resources = self._run(self.values, self.secrets)

    def _run(self, values: Mapping[str, Any], secrets: Mapping[str, str], fresh=frozenset()):
        return capture.run(STACK, values, secrets, memo=self.memo, fresh=fresh, program_path=self.program)

    def plan(self, values: Mapping[str, Any], secrets: Mapping[str, str], name: str = "") -> Outcome:
        """The steps from the baseline to the program with `values`, following every
        replacement's new outputs into its dependents (one more evaluation per round)."""
        fresh: frozenset[tuple[str, str]] = frozenset()
        for rounds in range(1, MAX_ROUNDS + 1):
            after = self._run(values, secrets, fresh)
            plan = classify(self.resources, after)
            new = {s.urn: (s.type, s.name) for s in plan.of(REPLACE) if (s.type, s.name) not in fresh}
            if not any(_may_change(r, plan, set(new)) for r in after.values()):
                return outcome(name, self.resources, plan, rounds)
            fresh |= set(new.values())
        raise RuntimeError(f"{name}: replacements still spreading after {MAX_ROUNDS} evaluations")

    def edit(self, edit: Edit) -> Outcome:
        values, secrets = edit.apply(self.values, self.secrets)
        return self.plan(values, secrets, edit.name)


def _may_change(resource: capture.Resource, plan: Plan, replaced: set[str]) -> bool:
    """Whether a replacement's new outputs could change what `plan` says of `resource`: it is not
    replaced already, and one of its inputs (or its provider) comes from a replaced resource."""
    step = plan.steps.get(resource.urn)
    if step is not None and step.action == REPLACE:
        return False
    if resource.provider in replaced:
        return True
    return any(sources & replaced for sources in resource.property_dependencies.values())


def catalogue(baseline: Baseline | None = None) -> list[Outcome]:
    baseline = baseline or Baseline()
    return [baseline.edit(edit) for edit in CATALOGUE]


def role_sizes(resources: Mapping[str, capture.Resource]) -> dict[str, int]:
    """role -> number of VMs (Domains) it has."""
    sizes: dict[str, int] = {}
    for urn, r in resources.items():
        if r.type == DOMAIN and (role := role_of(urn, resources)):
            sizes[role] = sizes.get(role, 0) + 1
    return sizes
