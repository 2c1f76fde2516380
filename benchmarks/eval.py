"""How long the Pulumi program takes to evaluate, against what the SDK itself costs.

    python3 benchmarks/eval.py [--repeat N]

Prints, from one invocation:
- import: pulumi and the four providers, in a fresh interpreter;
- floor: the SDK registering as many bare resources (no inputs, no options) as the prod stack has,
  under the same mocks;
- sdk: the provider SDKs registering prod's very resources (same classes, inputs, parents,
  providers and dependencies) without the program: no model, no render, no Output wiring, no
  stack outputs. What any program that makes these resources pays; prod minus sdk is the program;
- prod: the whole program (__main__.py) for the prod stack, stack outputs serialized as at the end
  of a `pulumi up`;
- 10x: a generated stack with ten times prod's domains, mailboxes and aliases and the same
  resources: the added domains are receive-only (`dkim: []`, forward and deliver, no key), since
  mailboxes and aliases are file content and a signing domain is a key resource more;
- 10x signing: the same with every domain signing (one key more per added domain), for reference.
Every evaluation runs against a warm mock state (keys and passwords made once, as a stack's state
holds them), so the figures are the program's work, not the mocks' key generation. They are warm
figures: what a process does once (imports, compiling the Jinja templates) is outside them, and
shown apart: `import`, and `first prod`, prod's first evaluation in a fresh interpreter. The measures
run round-robin, REPEAT rounds; each figure is the best round (the machine is shared and noisy;
a burst of load from elsewhere only ever adds time), the median beside it. Each measure starts from a
collected heap (the collection untimed), so a full collection of a previous measure's garbage does not
land in the next one's figure. The evaluation is
CPU-bound (mocks in-process, no I/O): figures and ratios are the process's CPU time, which other
load on the machine disturbs far less than the wall clock; the best wall-clock time is beside it.
Targets (the issue's): prod/floor <= 1.3 and 10x/prod <= 1.2.
"""

from __future__ import annotations

import argparse
import copy
import gc
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pulumi  # noqa: E402
import pulumi_command.remote as remote  # noqa: E402
import pulumi_libvirt as libvirt  # noqa: E402
import pulumi_random as random  # noqa: E402
import pulumi_tls as tls  # noqa: E402
from pulumi.runtime import settings  # noqa: E402

from model import NAMESPACE, stack_file_values  # noqa: E402
from tests.pulumi_program import RecordingMocks, RecordingMonitor, Run, run_program  # noqa: E402

REPEAT = 20
PROVIDERS = "import pulumi, pulumi_libvirt, pulumi_command, pulumi_tls, pulumi_random"
TARGETS = {"prod/floor": 1.3, "10x/prod": 1.2}
# Type token -> the provider SDK class the program makes it with.
CLASSES: dict[str, type[pulumi.CustomResource]] = {
    "pulumi:providers:libvirt": libvirt.Provider,
    "libvirt:index/volume:Volume": libvirt.Volume,
    "libvirt:index/cloudInitDisk:CloudInitDisk": libvirt.CloudInitDisk,
    "libvirt:index/domain:Domain": libvirt.Domain,
    "command:remote:Command": remote.Command,
    "tls:index/privateKey:PrivateKey": tls.PrivateKey,
    "tls:index/selfSignedCert:SelfSignedCert": tls.SelfSignedCert,
    "tls:index/certRequest:CertRequest": tls.CertRequest,
    "tls:index/locallySignedCert:LocallySignedCert": tls.LocallySignedCert,
    "random:index/randomPassword:RandomPassword": random.RandomPassword,
}


def import_time(repeat: int) -> float:
    code = f"import time; t = time.perf_counter(); {PROVIDERS}; print(time.perf_counter() - t)"
    return min(float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(repeat))


def first_evaluation(memo: dict, repeat: int) -> float:
    """CPU time of prod's first evaluation in a fresh interpreter (imports done, keys in the mock
    state): what a `pulumi up` pays once per process on top of the warm figure (templates compiled,
    render modules loaded)."""
    with tempfile.NamedTemporaryFile(suffix=".pickle") as state:
        pickle.dump(memo, state)
        state.flush()
        argv = [sys.executable, __file__, "--first-evaluation", state.name]
        return min(float(subprocess.check_output(argv, text=True)) for _ in range(max(1, repeat // 4)))


def _first_evaluation(state: str) -> None:
    with open(state, "rb") as f:
        memo = pickle.load(f)
    values = stack_file_values("prod")
    start = time.process_time()
    run_program("prod", values, memo=memo)
    print(time.process_time() - start)


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


def _snake(wire_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", wire_name).lower()


def sdk(run: Run, memo: dict) -> None:
    """The provider SDKs registering `run`'s resources as plain values, in the order the program
    registered them: same classes, inputs, parents, providers and dependencies, nothing else."""
    monitor = run.monitor

    def register():
        made: dict[str, pulumi.Resource] = {}
        for r in run.mocks.resources:
            key = (r.typ, r.name)
            opts = pulumi.ResourceOptions(
                parent=made.get(monitor.parents[key]),
                depends_on=[made[u] for u in monitor.dependencies[key] if u in made],
            )
            if r.custom:
                if r.typ not in CLASSES:
                    raise KeyError(f"{r.typ}: add the provider SDK class the program makes it with to CLASSES")
                if r.provider:
                    opts.provider = made[r.provider.rsplit("::", 1)[0]]
                made[monitor.urns[key]] = CLASSES[r.typ](
                    r.name, opts=opts, **{_snake(k): v for k, v in r.inputs.items()}
                )
            else:
                made[monitor.urns[key]] = pulumi.ComponentResource(r.typ, r.name, None, opts)

    _under_mocks(register, memo)


def tenfold(values: dict, signing: bool = False) -> dict:
    """Ten times the domains, mailboxes and aliases of `values` (mailboxes with hashes, like prod's).
    The added domains are receive-only unless `signing`: then each has its own key, as its original."""
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
            dkim = domain["dkim"] if signing else []
            copies.append({**domain, "name": f"d{n}-{domain['name']}", "dkim": dkim, "aliases": aliases})
    values["domains"] += copies
    return values


def _shape(values: dict) -> str:
    aliases = sum(len(d.get("aliases", {})) for d in values["domains"])
    signing = sum(bool(d.get("dkim")) for d in values["domains"])
    return (
        f"{len(values['domains'])} domains ({signing} signing), {len(values['mailboxes'])} mailboxes, {aliases} aliases"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=REPEAT, help=f"rounds (default {REPEAT})")
    parser.add_argument("--first-evaluation", metavar="STATE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_evaluation:
        _first_evaluation(args.first_evaluation)
        return 0
    repeat = args.repeat

    prod = stack_file_values("prod")
    stacks = {"prod": prod, "10x": tenfold(prod), "10x signing": tenfold(prod, signing=True)}
    memo: dict = {}
    # Warm-up: imports, templates, and the mocks' keys (as a stack's state would hold them).
    runs = {name: run_program("prod", values, memo=memo) for name, values in stacks.items()}
    count = {name: len(run.mocks.resources) for name, run in runs.items()}
    custom = sum(r.custom for r in runs["prod"].mocks.resources)

    t_import = import_time(repeat)
    t_first = first_evaluation(memo, repeat)
    measures: dict[str, Callable[[], object]] = {
        "floor": lambda: floor(custom, count["prod"] - custom),
        "sdk": lambda: sdk(runs["prod"], memo),
        **{name: (lambda v=values: run_program("prod", v, memo=memo)) for name, values in stacks.items()},
    }
    # Round-robin: a load burst from elsewhere hits every figure alike.
    samples: dict[str, list[float]] = {name: [] for name in measures}
    wall: dict[str, float] = {}
    for _ in range(repeat):
        for name, measure in measures.items():
            # Each measure starts from a collected heap: it pays for the collections its own
            # allocations trigger, not for a full collection of what the previous one left behind.
            gc.collect()
            start, cpu = time.perf_counter(), time.process_time()
            measure()
            samples[name].append(time.process_time() - cpu)
            wall[name] = min(wall.get(name, float("inf")), time.perf_counter() - start)
    best = {name: min(s) for name, s in samples.items()}

    def line(name: str, what: str) -> str:
        median = statistics.median(samples[name])
        return f"{name:12s} {best[name] * 1000:6.1f} ms ({median * 1000:6.1f}, {wall[name] * 1000:6.1f})  {what}"

    print(f"CPU time, best of {repeat} round-robin rounds (median, best wall-clock time)")
    print(f"{'import':12s} {t_import * 1000:6.1f} ms (wall clock)  pulumi + 4 providers, fresh interpreter")
    first = "prod's first evaluation in a fresh interpreter (once per process)"
    print(f"{'first prod':12s} {t_first * 1000:6.1f} ms  {first}")
    print(line("floor", f"{count['prod']} bare resources ({custom} custom, {count['prod'] - custom} components)"))
    print(line("sdk", f"prod's {count['prod']} resources through the provider SDKs, without the program"))
    for name, values in stacks.items():
        print(line(name, f"{count[name]} resources; {_shape(values)}"))
    ratios = {"prod/floor": best["prod"] / best["floor"], "10x/prod": best["10x"] / best["prod"]}
    for name, value in ratios.items():
        verdict = "PASS" if value <= TARGETS[name] else "MISS"
        print(f"{name:12s} {value:5.2f}  target <= {TARGETS[name]}  {verdict}")
    print(
        f"{'sdk/floor':12s} {best['sdk'] / best['floor']:5.2f}  the SDK's own cost of prod's resources over bare ones"
    )
    print(f"{'prod/sdk':12s} {best['prod'] / best['sdk']:5.2f}  the program's share on top of its resources")
    signing = best["10x signing"] / best["prod"]
    print(f"{'10x-sgn/prod':12s} {signing:5.2f}  not the target: {count['10x signing']} resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
