"""The blast radius of every edit in the catalogue, and the engine model it rests on.

The catalogue runs the program under mocks once per edit (plus the shared baseline) and is
evaluated once for the module. Provider facts are cited from the sources at the pinned versions
(see blast_radius/providers.py for each entry's lines).
"""

from __future__ import annotations

import pytest

from blast_radius.capture import Resource
from blast_radius.catalogue import CATALOGUE
from blast_radius.harness import KEPT, Baseline, catalogue, role_sizes
from blast_radius.plan import CREATE, DELETE, REFUSED, REPLACE, RETAINED, UPDATE, classify
from blast_radius.providers import UnknownResourceType
from blast_radius.report import README, readme_table, table

VOLUME = "libvirt:index/volume:Volume"
DOMAIN = "libvirt:index/domain:Domain"
SEED = "libvirt:index/cloudInitDisk:CloudInitDisk"
COMMAND = "command:remote:Command"
PRIVATE_KEY = "tls:index/privateKey:PrivateKey"


@pytest.fixture(scope="module")
def outcomes():
    baseline = Baseline()
    return baseline, {o.edit: o for o in catalogue(baseline)}


EDITS = [e.name for e in CATALOGUE]


def test_readme_shows_the_generated_table(outcomes):
    baseline, by_edit = outcomes
    generated = table(list(by_edit.values()), role_sizes(baseline.resources))
    assert readme_table(README.read_text()) == generated, "run: python -m blast_radius --write-readme"


@pytest.mark.parametrize("edit", EDITS)
def test_no_edit_touches_the_mail_volumes(outcomes, edit):
    _, by_edit = outcomes
    assert by_edit[edit].mail and set(by_edit[edit].mail.values()) == {KEPT}, by_edit[edit].mail


@pytest.mark.parametrize("edit", EDITS)
def test_no_edit_takes_more_than_one_host_of_a_role_down(outcomes, edit):
    _, by_edit = outcomes
    assert {role: hosts for role, hosts in by_edit[edit].down.items() if len(hosts) > 1} == {}


@pytest.mark.parametrize("edit", EDITS)
def test_a_vm_an_edit_replaces_is_pushed_again(outcomes, edit):
    # The push's triggers carry its VM's domain id: a new VM (a new id) runs its push again,
    # pulumi-command v1.2.1 replacing a Command whose triggers change (common/inputs.go:10).
    _, by_edit = outcomes
    plan = by_edit[edit].plan
    rebuilt = {s.name.removesuffix("-domain") for s in plan.of(REPLACE) if s.type == DOMAIN}
    pushed = {s.name.removesuffix("-push") for s in plan.of(REPLACE, CREATE) if s.type == COMMAND}
    assert rebuilt <= pushed


def test_rebuilding_a_maildrop_keeps_its_mail_and_pushes_it_again(outcomes):
    baseline, _ = outcomes
    values = dict(baseline.values, vm_overrides={"maildrop0-chbtl0": {"rebuild": 1}})
    rebuilt = baseline.plan(values, baseline.secrets, "rebuild maildrop0-chbtl0")
    assert rebuilt.down == {"maildrop": ["maildrop0-chbtl0"]}
    assert rebuilt.mail == {"maildrop0-chbtl0": KEPT, "maildrop1-ddln0": KEPT}
    steps = {(s.name, s.action) for s in rebuilt.plan.steps.values()}
    assert {
        ("maildrop0-chbtl0-root-r1", CREATE),
        ("maildrop0-chbtl0-cloudinit-r1", CREATE),
        ("maildrop0-chbtl0-root", DELETE),
        ("maildrop0-chbtl0-domain", REPLACE),
        ("maildrop0-chbtl0-push", REPLACE),
    } <= steps


# ---- the engine model on small cases ---------------------------------------------------------
def _resource(typ: str, name: str, **fields) -> Resource:
    fields.setdefault("inputs", {})
    return Resource(urn=f"urn:{typ}::{name}", type=typ, name=name, custom=True, **fields)


def _state(*resources: Resource) -> dict[str, Resource]:
    return {r.urn: r for r in resources}


def _actions(before, after) -> dict[str, tuple[str, bool]]:
    return {s.name: (s.action, s.delete_first) for s in classify(_state(*before), _state(*after)).steps.values()}


def test_a_force_new_input_replaces_and_another_updates():
    # Domain: memory is ForceNew (resource_libvirt_domain.go:67-72), network_interface is not
    # (194-250), and Update only rewrites a libvirt network's DHCP host entry (725-760).
    old = _resource(DOMAIN, "vm", inputs={"name": "vm", "memory": 8192, "networkInterfaces": [{"bridge": "br0"}]})
    bigger = _resource(DOMAIN, "vm", inputs={**old.inputs, "memory": 16384})
    moved = _resource(DOMAIN, "vm", inputs={**old.inputs, "networkInterfaces": [{"bridge": "br1"}]})
    assert _actions([old], [bigger]) == {"vm": (REPLACE, True)}
    assert _actions([old], [moved]) == {"vm": (UPDATE, False)}


def test_a_resource_named_by_the_program_is_replaced_delete_first():
    # The bridge replaces delete-first when an autonamed `name` was set by the program
    # (pulumi-terraform-bridge v3.99.0 pkg/tfbridge/provider.go:1247-1248, schema.go:197-247;
    # pulumi-libvirt v0.5.4 provider/resources.go:170 autonames `name`). Without a name, and for
    # types without one (pulumi-tls), create-first; the resource option overrides the provider.
    named = _resource(VOLUME, "disk", inputs={"name": "disk.qcow2", "size": 1})
    unnamed = _resource(VOLUME, "disk", inputs={"size": 1})
    assert _actions([named], [_resource(VOLUME, "disk", inputs={"name": "disk.qcow2", "size": 2})]) == {
        "disk": (REPLACE, True)
    }
    assert _actions([unnamed], [_resource(VOLUME, "disk", inputs={"size": 2})]) == {"disk": (REPLACE, False)}
    key = _resource(PRIVATE_KEY, "k", inputs={"algorithm": "RSA"})
    assert _actions([key], [_resource(PRIVATE_KEY, "k", inputs={"algorithm": "ED25519"})]) == {"k": (REPLACE, False)}
    forced = _resource(VOLUME, "disk", inputs={"name": "disk.qcow2", "size": 2}, delete_before_replace=False)
    assert _actions([named], [forced]) == {"disk": (REPLACE, False)}


def test_ignore_changes_keeps_the_old_value():
    # Every Volume input is ForceNew (resource_libvirt_volume.go:14-77); ignore_changes hides it.
    old = _resource(VOLUME, "root", inputs={"name": "root", "baseVolumeId": "image-1"})
    new = _resource(
        VOLUME, "root", inputs={"name": "root", "baseVolumeId": "image-2"}, ignore_changes=("baseVolumeId",)
    )
    assert _actions([old], [new]) == {}
    nested = _resource(
        DOMAIN,
        "vm",
        inputs={"name": "vm", "disks": [{"volumeId": "b"}]},
        ignore_changes=("disks[0].volumeId",),
    )
    assert _actions([_resource(DOMAIN, "vm", inputs={"name": "vm", "disks": [{"volumeId": "a"}]})], [nested]) == {}


def test_protect_refuses_and_retain_on_delete_keeps_the_volume():
    mail = _resource(VOLUME, "mail", inputs={"name": "mail", "size": 1}, protect=True, retain_on_delete=True)
    grown = _resource(VOLUME, "mail", inputs={"name": "mail", "size": 2}, protect=True, retain_on_delete=True)
    assert _actions([mail], [grown]) == {"mail": (REFUSED, False)}
    assert _actions([mail], []) == {"mail": (REFUSED, False)}
    retained = _resource(VOLUME, "image", inputs={"name": "image"}, retain_on_delete=True)
    assert _actions([retained], []) == {"image": (RETAINED, False)}
    assert _actions([_resource(VOLUME, "image", inputs={"name": "image"})], []) == {"image": (DELETE, False)}
    assert _actions([], [retained]) == {"image": (CREATE, False)}


def test_a_delete_first_replacement_takes_its_dependents_along():
    # A root disk replaced delete-first: the Domain's `disks` (ForceNew, resource_libvirt_domain.go:158-193)
    # depends on it, so the engine replaces the Domain too; `cloudinit` is not ForceNew (114-118): update.
    root = _resource(VOLUME, "root", inputs={"name": "root", "size": 1})
    seed = _resource(SEED, "seed", inputs={"name": "seed", "userData": "a"})
    domain = _resource(
        DOMAIN,
        "vm",
        inputs={"name": "vm", "disks": [{"volumeId": "root-id"}], "cloudinit": "seed-id"},
        property_dependencies={"disks": frozenset({root.urn}), "cloudinit": frozenset({seed.urn})},
    )
    grown = _resource(VOLUME, "root", inputs={"name": "root", "size": 2})
    assert _actions([root, seed, domain], [grown, seed, domain]) == {"root": (REPLACE, True), "vm": (REPLACE, True)}
    reseeded = _resource(SEED, "seed", inputs={"name": "seed", "userData": "b"})
    assert _actions([root, seed, domain], [root, reseeded, domain]) == {
        "seed": (REPLACE, True),
        "vm": (UPDATE, False),
    }


def test_a_replacement_reaches_a_push_through_its_triggers():
    # remote.Command: `triggers` is replaceOnChanges (pulumi-command v1.2.1
    # provider/pkg/provider/common/inputs.go:10), `connection` updates (remote/command.go:46).
    push = _resource(COMMAND, "push", inputs={"triggers": ["vm-id"], "connection": {"host": "a"}})
    assert _actions(
        [push], [_resource(COMMAND, "push", inputs={"triggers": ["vm-id-new"], "connection": {"host": "a"}})]
    ) == {"push": (REPLACE, False)}
    assert _actions(
        [push], [_resource(COMMAND, "push", inputs={"triggers": ["vm-id"], "connection": {"host": "b"}})]
    ) == {"push": (UPDATE, False)}


SMALL_PROGRAM = """
import pulumi
import pulumi_command.remote as remote
import pulumi_tls as tls

key = tls.PrivateKey("key", algorithm=pulumi.Config("mail-cluster").require("algorithm"))
remote.Command("push", connection=remote.ConnectionArgs(host="h"), create="true", triggers=[key.id])
"""


def test_a_create_first_replacement_hands_its_new_id_to_its_dependents(tmp_path):
    # A PrivateKey is replaced create-first when its algorithm changes (terraform-provider-tls
    # v4.2.1 internal/provider/resource_private_key.go:57-62); the push whose triggers hold its id
    # sees the new id only once the key exists: a second evaluation with the key's new outputs.
    program = tmp_path / "__main__.py"
    program.write_text(SMALL_PROGRAM)
    baseline = Baseline({"algorithm": "RSA"}, program=program)
    outcome = baseline.plan({"algorithm": "ED25519"}, {}, "new key")
    assert {s.name: (s.action, s.delete_first) for s in outcome.plan.steps.values()} == {
        "key": (REPLACE, False),
        "push": (REPLACE, False),
    }
    assert outcome.rounds == 2


def test_a_type_without_recorded_behaviour_is_an_error():
    with pytest.raises(UnknownResourceType):
        classify({}, _state(_resource("aws:s3/bucket:Bucket", "b")))
