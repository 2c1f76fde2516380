"""How long the Pulumi program takes to evaluate, against what the SDK itself costs.

    python3 benchmarks/eval.py

Prints, from one invocation:
- import: pulumi and the four providers, in a fresh interpreter;
- floor: the SDK registering as many bare resources (no inputs) as the prod stack has, under the same mocks;
- replay: the SDK registering prod's very resources with their inputs, without the program (no
  model, no render, no Output wiring): what any program making these resources pays;
- prod: the whole program for the prod stack;
- 10x: a generated stack with ten times prod's domains, mailboxes and aliases.
Every evaluation runs against a warm mock state (keys and passwords made once, as a stack's state
holds them), so the figures are the program's work, not the mocks' key generation. Each figure is
the best of REPEAT runs: the machine is shared and noisy.
Targets: prod/floor <= 1.3 and 10x/prod <= 1.2.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pulumi  # noqa: E402
from pulumi.runtime import settings  # noqa: E402

from model import NAMESPACE, stack_file_values  # noqa: E402
from tests.pulumi_program import RecordingMocks, RecordingMonitor, run_program  # noqa: E402

REPEAT = 12
PROVIDERS = "import pulumi, pulumi_libvirt, pulumi_command, pulumi_tls, pulumi_random"


def import_time() -> float:
    code = f"import time; t = time.perf_counter(); {PROVIDERS}; print(time.perf_counter() - t)"
    return min(float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(REPEAT))


def _under_mocks(register: Callable[[], None], memo: dict | None = None) -> None:
    mocks = RecordingMocks(memo)
    settings.set_root_resource(None)
    pulumi.runtime.set_mocks(mocks, project=NAMESPACE, stack="bench", preview=False, monitor=RecordingMonitor(mocks))
    pulumi.runtime.test(register)()


def floor(custom: int, components: int) -> None:
    """The SDK alone: as many resources, with no inputs, no program, no render."""

    def register():
        parent = None
        for n in range(components):
            parent = pulumi.ComponentResource("bench:index:Component", f"component-{n}")
        for n in range(custom):
            pulumi.CustomResource("bench:index:Bare", f"bare-{n}", {}, pulumi.ResourceOptions(parent=parent))

    _under_mocks(register)


def replay(resources, memo: dict) -> None:
    """The SDK with the program's own resources and inputs, registered as plain values."""

    def register():
        for r in resources:
            if r.custom:
                pulumi.CustomResource(r.typ, r.name, dict(r.inputs))
            else:
                pulumi.ComponentResource(r.typ, r.name)

    _under_mocks(register, memo)


def tenfold(values: dict) -> dict:
    """Ten times the domains, mailboxes and aliases of `values` (mailboxes with hashes, like prod's)."""
    values = copy.deepcopy(values)
    hashed = next(m["password_hash"] for m in values["mailboxes"] if m.get("password_hash"))
    extra = [f"user{n}" for n in range(9 * len(values["mailboxes"]))]
    values["mailboxes"] += [{"name": name, "password_hash": hashed} for name in extra]
    copies = []
    for n in range(1, 10):
        for domain in values["domains"]:
            # The same shape under another name, each alias pointing at another mailbox.
            aliases = {
                local: [extra[(n + k) % len(extra)] if "@" not in t and t != "/dev/null" else t for t in targets]
                for k, (local, targets) in enumerate(domain.get("aliases", {}).items())
            }
            copies.append({**domain, "name": f"d{n}-{domain['name']}", "aliases": aliases})
    values["domains"] += copies
    return values


def _shape(values: dict) -> str:
    aliases = sum(len(d.get("aliases", {})) for d in values["domains"])
    return f"{len(values['domains'])} domains, {len(values['mailboxes'])} mailboxes, {aliases} aliases"


def main() -> int:
    prod = stack_file_values("prod")
    big = tenfold(prod)
    memo: dict = {}
    # Warm-up: imports, templates, and the mocks' keys (as a stack's state would hold them).
    prod_run = run_program("prod", prod, memo=memo)
    big_run = run_program("prod", big, memo=memo)
    n_prod, n_big = len(prod_run.mocks.resources), len(big_run.mocks.resources)
    custom = sum(r.custom for r in prod_run.mocks.resources)

    t_import = import_time()
    # Round-robin, best of REPEAT: a load burst from elsewhere hits every figure alike.
    measures = {
        "floor": lambda: floor(custom, n_prod - custom),
        "replay": lambda: replay(prod_run.mocks.resources, memo),
        "prod": lambda: run_program("prod", prod, memo=memo),
        "big_replay": lambda: replay(big_run.mocks.resources, memo),
        "big": lambda: run_program("prod", big, memo=memo),
    }
    times: dict[str, float] = {}
    for _ in range(REPEAT):
        for name, measure in measures.items():
            start = time.perf_counter()
            measure()
            times[name] = min(times.get(name, float("inf")), time.perf_counter() - start)
    t_floor, t_replay, t_prod, t_big_replay, t_big = (times[n] for n in measures)

    print(f"import pulumi + 4 providers:          {t_import:.3f} s")
    print(f"floor  ({n_prod} bare resources):          {t_floor:.3f} s")
    print(f"replay (prod's {n_prod} resources + inputs): {t_replay:.3f} s")
    print(f"prod   ({n_prod} resources; {_shape(prod)}): {t_prod:.3f} s")
    print(f"10x    ({n_big} resources; {_shape(big)}): {t_big:.3f} s")
    print(f"replay (10x's {n_big} resources + inputs): {t_big_replay:.3f} s")
    print(f"prod/floor  = {t_prod / t_floor:.2f}  (target <= 1.3)")
    print(f"prod/replay = {t_prod / t_replay:.2f}  (the program's own share over the SDK's cost for its resources)")
    print(f"10x/prod    = {t_big / t_prod:.2f}  (target <= 1.2)")
    print(f"10x/replay  = {t_big / t_big_replay:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
