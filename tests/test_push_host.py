"""The push script as a host runs it: check the staged tree with the real checkers, then install
only what changed and reload only the services of changed files; a tree that fails is refused."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from conftest import run_push, with_content

from render import render_host
from render.tree import FileSpec, HostTree

pytestmark = pytest.mark.checkers


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def smtp_in(stacks, keys) -> HostTree:
    lab = stacks["lab"]
    return render_host(lab, "smtp_in", lab.hosts.smtp_in[0], keys["lab"])


def _push(tree: HostTree, root: Path) -> dict:
    result = run_push(tree, "--root", str(root), "--no-reload")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_first_push_installs_every_file_with_its_mode_and_reloads_every_service(smtp_in, tmp_path):
    result = _push(smtp_in, tmp_path)
    assert sorted(result["changed"]) == sorted(smtp_in.files)
    assert set(result["reload"]) == {s for spec in smtp_in.files.values() for s in spec.reload}
    for path, spec in smtp_in.files.items():
        installed = tmp_path / path.lstrip("/")
        assert installed.read_text() == spec.content
        assert installed.stat().st_mode & 0o7777 == spec.mode, path
    # Lookup tables are compiled where they land.
    assert (tmp_path / "etc/postfix/virtual.db").exists()


def test_unchanged_push_changes_nothing_and_reloads_nothing(smtp_in, tmp_path):
    _push(smtp_in, tmp_path)
    assert _push(smtp_in, tmp_path) == {"changed": [], "removed": [], "reload": [], "probes": []}


def test_push_reloads_exactly_the_services_of_the_changed_files(stacks, keys, smtp_in, tmp_path):
    _push(smtp_in, tmp_path)
    lab = stacks["lab"]
    domains = [
        d.model_copy(update={"aliases": {**d.aliases, "sales": ["bob"]}}) if i == 0 else d
        for i, d in enumerate(lab.domains)
    ]
    changed = render_host(lab.model_copy(update={"domains": domains}), "smtp_in", lab.hosts.smtp_in[0], keys["lab"])
    result = _push(changed, tmp_path)
    assert result["changed"] == ["/etc/postfix/virtual"]
    # Postfix re-reads a postmap'ed table by itself: a new alias needs no reload.
    assert result["reload"] == [s for s in smtp_in.files["/etc/postfix/virtual"].reload]
    assert "sales@example.com" in (tmp_path / "etc/postfix/virtual").read_text()

    main_cf = changed.files["/etc/postfix/main.cf"]
    assert "smtpd_client_connection_count_limit = 4\n" in main_cf.content
    content = main_cf.content.replace(
        "smtpd_client_connection_count_limit = 4\n", "smtpd_client_connection_count_limit = 5\n"
    )
    tuned = with_content(changed, "/etc/postfix/main.cf", content)
    result = _push(tuned, tmp_path)
    assert (result["changed"], result["reload"]) == (["/etc/postfix/main.cf"], list(main_cf.reload))


def test_tree_that_fails_its_check_is_refused_and_old_files_stay_byte_for_byte(smtp_in, tmp_path):
    _push(smtp_in, tmp_path)
    before = _snapshot(tmp_path)
    main_cf = smtp_in.files["/etc/postfix/main.cf"]
    broken = with_content(smtp_in, "/etc/postfix/main.cf", main_cf.content + "smtpd_tls_securty_level = encrypt\n")
    result = run_push(broken, "--root", str(tmp_path), "--no-reload")
    assert result.returncode == 1
    assert "refused, nothing installed" in result.stderr
    assert "smtpd_tls_securty_level" in result.stderr  # the checker's own words reach the operator
    assert _snapshot(tmp_path) == before


def test_broken_lookup_table_is_refused(smtp_in, tmp_path):
    _push(smtp_in, tmp_path)
    before = _snapshot(tmp_path)
    broken = dataclasses.replace(
        smtp_in, files={**smtp_in.files, "/etc/postfix/virtual": FileSpec("only-a-key-no-value\n", postmap=True)}
    )
    result = run_push(broken, "--root", str(tmp_path), "--no-reload")
    assert result.returncode == 1, result.stdout
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("drift", ["owner", "group"])
def test_push_restores_a_files_owner_or_group_changed_on_the_host(smtp_in, tmp_path, drift):
    """Same content and mode but another owner (or group): e.g. the TLS key chowned to a user who
    should not read it. The push must see the drift and put the file back as the tree says."""
    _push(smtp_in, tmp_path)
    path = next(p for p, spec in smtp_in.files.items() if spec.mode == 0o600)
    installed = tmp_path / path.lstrip("/")
    expected = (installed.stat().st_uid, installed.stat().st_gid)
    nobody = 65534
    os.chown(installed, nobody if drift == "owner" else -1, nobody if drift == "group" else -1)
    result = _push(smtp_in, tmp_path)
    assert path in result["changed"], result
    assert (installed.stat().st_uid, installed.stat().st_gid) == expected
