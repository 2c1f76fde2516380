"""A receive-only domain (`dkim: []`): smtp-in accepts and forwards its mail, nothing signs for it.

Such a domain has no key, no DKIM record and no OpenDKIM entry; everything else a mail domain gets
(MX, SPF, DMARC, MTA-STS, virtual aliases) it keeps. A domain that must send cannot be one.
"""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest
from conftest import assert_checks_pass, role_trees

from model import StackConfigError, load_stack, stack_file_values
from render import render_stack
from render.smtp_out import KEY_TABLE, SIGNING_TABLE
from render.throwaway import throwaway_keys
from tests.pulumi_mocks import PRIVATE_KEY
from tests.pulumi_program import RecordingMocks, run_program

DOMAIN = "forward.test"


def with_receive_only_domain() -> dict:
    values = copy.deepcopy(stack_file_values("lab"))
    values["domains"].append(
        {"name": DOMAIN, "aliases": {"info": ["alice"], "sales": ["carol@remote.test"], "postmaster": ["alice"]}}
    )
    return values


@pytest.fixture(scope="module")
def trees():
    stack = load_stack(with_receive_only_domain())
    return render_stack(stack, throwaway_keys(stack))


def _tree(trees, role):
    return role_trees(trees, role)[0]


def _stage(tree, root: Path) -> Path:
    for path, spec in tree.files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(spec.content)
    return root


def test_a_receive_only_domain_has_no_key_and_no_dkim_record_but_the_rest_of_its_dns():
    run = run_program("lab", with_receive_only_domain())
    assert [k.name for k in run.mocks.of_type(PRIVATE_KEY) if DOMAIN in k.name] == []
    published = {(r["name"], r["type"]) for r in run.outputs["dns_records"] if r["zone"] == DOMAIN}
    assert not any("_domainkey" in name for name, _ in published)
    assert {("@", "MX"), ("@", "TXT"), ("_dmarc", "TXT"), ("_mta-sts", "TXT")} <= published
    assert run.outputs["endpoints"]["mx"][DOMAIN]


def test_smtp_out_with_a_receive_only_domain_passes_its_checkers_and_does_not_sign_for_it(trees, tmp_path):
    tree = _tree(trees, "smtp_out")
    assert_checks_pass(tree)
    root = _stage(tree, tmp_path)
    # OpenDKIM's test mode on the rendered tables (paths moved under the staged root).
    conf = (root / "etc/opendkim.conf").read_text().replace("/etc/opendkim", f"{root}/etc/opendkim")
    conf = re.sub(r"^(UserID|Syslog)\s.*$", "", conf, flags=re.M)
    for table in (KEY_TABLE, SIGNING_TABLE):
        staged = root / table.lstrip("/")
        staged.write_text(staged.read_text().replace("/etc/opendkim", f"{root}/etc/opendkim"))
    (root / "opendkim.conf").write_text(conf)

    def signed(sender: str) -> bool:
        message = root / "message"
        message.write_text(f"From: {sender}\r\nTo: someone@example.org\r\nSubject: t\r\n\r\nhello\r\n")
        result = subprocess.run(
            ["opendkim", "-x", root / "opendkim.conf", "-t", message, "-vvv"], capture_output=True, text=True
        )
        return "hname='DKIM-Signature'" in result.stdout + result.stderr

    assert signed("alice@example.com"), "the signing domain beside it must still sign"
    assert not signed(f"alice@{DOMAIN}")
    assert DOMAIN not in (root / KEY_TABLE.lstrip("/")).read_text()


def test_smtp_in_accepts_and_forwards_mail_for_a_receive_only_domain(trees, tmp_path):
    tree = _tree(trees, "smtp_in")
    assert_checks_pass(tree)
    root = _stage(tree, tmp_path)
    for table in ("virtual-domains", "virtual"):
        subprocess.run(["postmap", "-c", root / "etc/postfix", root / "etc/postfix" / table], check=True)

    def query(table: str, key: str) -> str:
        argv = ["postmap", "-c", root / "etc/postfix", "-q", key, f"hash:{root}/etc/postfix/{table}"]
        return subprocess.run(argv, capture_output=True, text=True).stdout.strip()

    assert query("virtual-domains", DOMAIN) == "OK"
    assert query("virtual", f"sales@{DOMAIN}") == "carol@remote.test"


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        pytest.param(lambda v: v["domains"][0].update(dkim=[]), "domains[0].dkim", id="first domain receive-only"),
        pytest.param(
            lambda v: v["relay_clients"][0].update(mail_from=f"cron@{DOMAIN}"),
            "relay_clients[0].mail_from",
            id="relay client sending from a receive-only domain",
        ),
    ],
)
def test_a_domain_that_sends_cannot_be_receive_only(mutate, key):
    values = with_receive_only_domain()
    mutate(values)
    mocks = RecordingMocks()
    with pytest.raises(StackConfigError) as err:
        run_program("lab", values, mocks=mocks)
    assert f"mail-cluster:{key}: " in str(err.value), str(err.value)
    assert mocks.resources == []
