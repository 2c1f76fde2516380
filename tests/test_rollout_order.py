"""A change rolls through a role one host at a time (issue 15): the Pulumi program's pushes of a
role depend on each other in render.rollout's order (backups first, the primary last), so an
engine stops the role's rollout at its first failing host; every push keeps its own trigger, so a
preview still shows each host that changes."""

from __future__ import annotations

import pytest

from model import load_stack_file
from render import ROLES, rollout
from tests.pulumi_program import COMMAND, DOMAIN, run_program


@pytest.fixture(scope="module", params=["prod", "lab"])
def program(request):
    return load_stack_file(request.param), run_program(request.param)


def test_backups_go_first_and_the_primary_last():
    lab = load_stack_file("lab")
    assert [h.name for h in rollout.order(lab, "maildrop")] == ["maildrop1-ddln0", "maildrop0-chbtl0"]
    assert [h.name for h in rollout.order(lab, "smtp_out")] == ["smtp-out-frggh0", "smtp-out-nlams2", "smtp-out-chrma0"]
    assert [h.name for h in rollout.order(lab, "frontend")] == ["nginx0-frggh0", "nginx0-nlams2", "nginx0-chrma0"]
    # Three equal MXs: the stack's order.
    assert [h.name for h in rollout.order(lab, "smtp_in")] == [h.name for h in lab.hosts.smtp_in]


def test_each_push_of_a_role_depends_on_the_one_before_it_in_rollout_order(program):
    stack, run = program
    urn = {name: run.monitor.urns[(COMMAND, f"{name}-push")] for name in (h.name for _, h in stack.vm_hosts)}
    for role in ROLES:
        hosts = [h.name for h in rollout.order(stack, role)]
        for before, host in zip([None, *hosts], hosts, strict=False):
            depends = set(run.monitor.dependencies[(COMMAND, f"{host}-push")])
            pushes = {u for u in depends if u in urn.values()}
            assert pushes == ({urn[before]} if before else set()), (role, host)
            assert run.monitor.urns[(DOMAIN, f"{host}-domain")] in depends


def test_every_push_keeps_its_own_trigger(program):
    _, run = program
    triggers = [c.inputs["triggers"] for c in run.mocks.of_type(COMMAND)]
    assert len({t[0] for t in triggers}) == len(triggers)
