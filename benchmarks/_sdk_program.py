"""The Pulumi program behind `eval.py`'s sdk figures: a recorded evaluation's resources registered
through the provider SDKs' own classes, and nothing else (no model, no render, no Output wiring, no
stack outputs). What any program that makes these resources pays; prod minus this is the program.

`eval.py` runs this file as the prod figure runs __main__.py (a file the runner executes, as
`pulumi up`'s language host does), with RUN (tests.pulumi_program.Run: what the program registered,
in its order, with its inputs, parents, providers and dependencies) as a global. So the stack the SDK
captures for every resource starts as deep in both.

Components are registered as a program writes them: a class of its own that registers its outputs
(none here) when done. With BARE set they are ComponentResource itself, the baseline of the earlier
figures: for those the SDK records no stack at all (pulumi 3.272.0, runtime/resource.py
`_get_stack_trace`: it looks for the third `__init__` frame) and no outputs call reaches the
engine, which no real component does.
"""

from __future__ import annotations

import re

import pulumi
import pulumi_command.local as local
import pulumi_command.remote as remote
import pulumi_libvirt as libvirt
import pulumi_random as random
import pulumi_tls as tls

# Type token -> the provider SDK class the program makes it with.
CLASSES: dict[str, type[pulumi.CustomResource]] = {
    "pulumi:providers:libvirt": libvirt.Provider,
    "libvirt:index/volume:Volume": libvirt.Volume,
    "libvirt:index/cloudInitDisk:CloudInitDisk": libvirt.CloudInitDisk,
    "libvirt:index/domain:Domain": libvirt.Domain,
    "command:remote:Command": remote.Command,
    "command:local:Command": local.Command,
    "tls:index/privateKey:PrivateKey": tls.PrivateKey,
    "tls:index/selfSignedCert:SelfSignedCert": tls.SelfSignedCert,
    "tls:index/certRequest:CertRequest": tls.CertRequest,
    "tls:index/locallySignedCert:LocallySignedCert": tls.LocallySignedCert,
    "random:index/randomPassword:RandomPassword": random.RandomPassword,
}


class Component(pulumi.ComponentResource):
    def __init__(self, t: str, name: str, opts: pulumi.ResourceOptions):
        super().__init__(t, name, None, opts)
        self.register_outputs({})


def _snake(wire_name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", wire_name).lower()


def register(run, bare: bool) -> None:
    monitor = run.monitor
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
            made[monitor.urns[key]] = CLASSES[r.typ](r.name, opts=opts, **{_snake(k): v for k, v in r.inputs.items()})
        elif bare:
            made[monitor.urns[key]] = pulumi.ComponentResource(r.typ, r.name, None, opts)
        else:
            made[monitor.urns[key]] = Component(r.typ, r.name, opts)


register(RUN, BARE)  # noqa: F821 (handed in by eval.py)
