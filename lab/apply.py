"""`python -m lab apply`: rehearse a change on the running lab the way `pulumi up` rolls it out.

The stack file (Pulumi.lab.yaml as edited, or a copy of it) is rendered again with the running
lab's key material; each host whose tree differs from what it last got is pushed with the
production push script (render/push_host.py): checks, install, real reloads of the lab's daemons
(lab.units), then the tree's probes, with the roll-back of a host whose probe fails. Within a role
the hosts go one at a time in render.rollout's order (backups first, the primary last), and a
failed host stops its role's rollout, as each push's depends_on stops the engine's; the other
roles go on. Unchanged hosts are not touched.

What it cannot rehearse: a change of the network (hosts, addresses: `lab down`, `lab up`), of the
DNS records (the lab DNS serves the zones of `up`), or one that needs new key material (a new
DKIM selector: throwaway keys are made at `up`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lab import cluster, network, state
from model import Stack, load_stack_file
from render import ROLES, render_stack, rollout
from render.tree import HostTree

Progress = Callable[[str], None]


class ApplyRefused(RuntimeError):
    """The change cannot be rehearsed on the running lab (nothing was pushed)."""


@dataclass
class Outcome:
    host: str
    role: str
    # unchanged: same tree as its last push; pushed: installed, reloaded, probes passed;
    # failed: refused, a reload failed, or a probe failed (rolled back); held: changed, but not
    # pushed because a host before it in its role failed.
    status: str
    result: dict = field(default_factory=dict)
    error: str = ""
    started: float = 0.0  # time.time() when its push began
    seconds: float = 0.0

    @property
    def ended(self) -> float:
        return self.started + self.seconds

    def line(self) -> str:
        if self.status in ("unchanged", "held"):
            why = "its tree is unchanged" if self.status == "unchanged" else "an earlier host of its role failed"
            return f"{self.host}: not pushed ({why})"
        r = self.result
        changed = ", ".join([*r.get("changed", []), *(f"-{p}" for p in r.get("removed", []))]) or "no files"
        reloaded = ", ".join(r.get("reload", [])) or "nothing"
        if self.status == "pushed" and not (r.get("changed") or r.get("removed") or r.get("reload")):
            return f"{self.host}: pushed, its files were already in place and nothing was owed ({self.seconds:.1f}s)"
        if self.status == "pushed":
            health = f"healthy ({len(r.get('probes', []))} probes pass)" if r.get("probes") else "no probes"
            return f"{self.host}: changed {changed}; reloaded {reloaded}; {health} ({self.seconds:.1f}s)"
        return f"{self.host}: FAILED ({self.seconds:.1f}s): {self.error}"


def stack_from_file(path: Path) -> Stack:
    """The stack of a Pulumi.<name>.yaml anywhere (an edited copy of the lab's)."""
    name = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
    return load_stack_file(name, path.resolve().parent)


def rollout_order(stack: Stack) -> list[tuple[str, list[str]]]:
    """(role, host names in rollout order) for every host the program pushes to."""
    batches = [(role, [h.name for h in rollout.order(stack, role)]) for role in ROLES]
    batches.append(("webmail", [stack.webmail.host]))
    batches.append(("relay_client", [c.name for c in stack.relay_clients]))
    return batches


def _same_network(stack: Stack, record: dict) -> None:
    nics = [nic for nic in network.plan(stack).nics if nic.host != "internet"]
    planned = {nic.host: [str(a.ip) for a in nic.addresses] for nic in nics}
    running = {h["name"]: h["addresses"] for h in record["hosts"] if h["role"] != "remote_mta"}
    if planned != running:
        moved = sorted(n for n in planned.keys() | running.keys() if planned.get(n) != running.get(n))
        raise ApplyRefused(f"the change moves hosts or addresses ({', '.join(moved)}): `lab down`, then `lab up`")


def _render(stack: Stack) -> dict[str, HostTree]:
    try:
        return render_stack(stack, state.load_keys())
    except KeyError as missing:
        raise ApplyRefused(
            f"the change needs key material the running lab does not have ({missing}): `lab down`, then `lab up`"
        ) from None


def _record_digest(host: str, digest: str) -> None:
    # Read again: a restart during the push (lab.units) wrote new pids.
    record = state.load()
    next(h for h in record["hosts"] if h["name"] == host)["digest"] = digest
    state.save(record)


def apply(
    stack_file: Path | None = None,
    *,
    progress: Progress = print,
    transform: Callable[[HostTree], HostTree] | None = None,
) -> list[Outcome]:
    """Push every host whose tree changed, role by role, one host at a time; returns each host's
    outcome in push order. `transform` (tests): a change to the rendered trees no stack edit makes."""
    record = state.load()
    if not record or record.get("phase") != "up":
        raise ApplyRefused("the lab is not up (.venv/bin/python -m lab up)")
    stack = stack_from_file(stack_file) if stack_file else load_stack_file(record["stack"])
    _same_network(stack, record)
    trees = _render(stack)
    if transform is not None:
        trees = {name: transform(tree) for name, tree in trees.items()}
    entries = {h["name"]: h for h in record["hosts"]}
    outcomes: list[Outcome] = []
    for role, names in rollout_order(stack):
        failed = False
        for name in names:
            tree, entry = trees[name], entries[name]
            if not entry.get("rendered", True):
                continue  # not run by an `up --only` lab
            if tree.digest() == entry.get("digest") or failed:
                outcomes.append(Outcome(name, role, "unchanged" if tree.digest() == entry.get("digest") else "held"))
                progress(outcomes[-1].line())
                continue
            outcome = Outcome(name, role, "pushed", started=time.time())
            clock = time.monotonic()
            try:
                outcome.result = cluster.push(cluster.LabHost(name, role, name, tree), tree, probes=True)
                _record_digest(name, tree.digest())
            except cluster.PushFailed as err:
                outcome.status, outcome.result, outcome.error = "failed", err.result, str(err)
                failed = True
            outcome.seconds = time.monotonic() - clock
            outcomes.append(outcome)
            progress(outcome.line())
    return outcomes
