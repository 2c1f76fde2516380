"""Roundcube on the Docker host: the compose file as the compose-spec schema reads it, and the
config override as PHP itself evaluates it."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import assert_checks_pass, check_with_content

from render import render_host
from render.tree import HostTree
from render.webmail import COMPOSE_FILE, CUSTOM_CONFIG

# The plugins the image's entrypoint enables before it includes custom.inc.php.
IMAGE_PLUGINS = ["archive", "zipdownload"]


@pytest.fixture(scope="module")
def webmail_trees(stacks, keys) -> dict[str, HostTree]:
    return {name: render_host(stack, "webmail", stack.webmail, keys[name]) for name, stack in stacks.items()}


def compose(tree: HostTree) -> dict:
    return yaml.safe_load(tree.files[COMPOSE_FILE].content)


def php_config(content: str, tmp_path: Path) -> dict:
    """$config after PHP includes the file the way the image does: after its own plugin list."""
    path = tmp_path / "custom.inc.php"
    path.write_text(content)
    code = f"$config = ['plugins' => {json.dumps(IMAGE_PLUGINS)}]; include '{path}'; echo json_encode($config);"
    result = subprocess.run(["php", "-r", code], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr, result.stdout + result.stderr
    # Nothing may be printed before `<?php`: Roundcube would send it ahead of its HTTP headers.
    assert result.stdout.startswith("{"), result.stdout
    return json.loads(result.stdout)


@pytest.mark.checkers
def test_webmail_tree_passes_compose_and_php_checks(webmail_trees):
    for tree in webmail_trees.values():
        assert_checks_pass(tree)


def test_compose_runs_the_case_study_roundcube(stacks, webmail_trees, stack_name):
    stack = stacks[stack_name]
    services = compose(webmail_trees[stack_name])["services"]
    assert list(services) == ["roundcubemail"]
    service = services["roundcubemail"]
    assert service["image"] == stack.webmail.image
    assert service["container_name"] == "roundcubemail"
    assert service["ports"] == [f"{stack.webmail.port}:80"]
    assert "./www:/var/www/html" in service["volumes"]
    assert "./db/sqlite:/var/roundcube/db" in service["volumes"]
    # The image includes every *.php of /var/roundcube/config after its own settings.
    assert "./config:/var/roundcube/config:ro" in service["volumes"]


def test_roundcube_reaches_imap_and_submission_through_the_frontends(stacks, webmail_trees, stack_name):
    stack = stacks[stack_name]
    env = dict(e.split("=", 1) for e in compose(webmail_trees[stack_name])["services"]["roundcubemail"]["environment"])
    assert env["ROUNDCUBEMAIL_DEFAULT_HOST"] == f"ssl://imap.{stack.infra_domain}"
    assert env["ROUNDCUBEMAIL_DEFAULT_PORT"] == "993"
    assert env["ROUNDCUBEMAIL_SMTP_SERVER"] == f"tls://smtp-out.{stack.infra_domain}"
    assert env["ROUNDCUBEMAIL_SMTP_PORT"] == "587"
    assert env["ROUNDCUBEMAIL_SKIN"] == "elastic"
    assert env["ROUNDCUBEMAIL_DB_TYPE"] == "sqlite"


@pytest.mark.checkers
def test_php_reads_the_case_study_settings(stacks, keys, webmail_trees, stack_name, tmp_path):
    stack, key = stacks[stack_name], keys[stack_name]
    config = php_config(webmail_trees[stack_name].files[CUSTOM_CONFIG].content, tmp_path)
    assert config["log_driver"] == "stdout"
    assert config["zipdownload_selection"] is True
    assert config["des_key"] == key.roundcube_des_key
    assert config["enable_spellcheck"] is True
    assert config["spellcheck_engine"] == "pspell"
    # Roundcube submits as the user who is logged in, never with a shared login that could send as anyone.
    assert (config["smtp_user"], config["smtp_pass"]) == ("%u", "%p")
    assert key.sasl_passwords["roundcube"] not in webmail_trees[stack_name].files[CUSTOM_CONFIG].content
    assert config["managesieve_host"] == f"tls://imap.{stack.infra_domain}"
    assert config["managesieve_port"] == stack.ports.managesieve
    assert config["default_list_mode"] == "threads"
    # managesieve joins the image's plugins: zipdownload_selection needs zipdownload.
    assert config["plugins"] == [*IMAGE_PLUGINS, "managesieve"]
    assert config["imap_conn_options"]["ssl"]["cafile"] == "/var/roundcube/config/ca.pem"


@pytest.mark.checkers
def test_secrets_with_quotes_and_backslashes_reach_php_intact(stacks, keys, tmp_path):
    awkward = "it's a \\ key\\'"
    material = replace(keys["lab"], roundcube_des_key=awkward)
    tree = render_host(stacks["lab"], "webmail", stacks["lab"].webmail, material)
    config = php_config(tree.files[CUSTOM_CONFIG].content, tmp_path)
    assert config["des_key"] == awkward


def test_config_with_secrets_is_readable_by_the_web_server_only(webmail_trees):
    for tree in webmail_trees.values():
        spec = tree.files[CUSTOM_CONFIG]
        assert (spec.mode, spec.owner, spec.group) == (0o640, "root", "www-data")


def test_changes_bring_the_compose_project_up(webmail_trees):
    tree = webmail_trees["prod"]
    assert tree.services == {"roundcube": f"docker compose -f {COMPOSE_FILE} up -d"}
    assert all(spec.reload == ("roundcube",) for spec in tree.files.values())


@pytest.mark.checkers
def test_a_broken_compose_file_fails_with_the_schema_message(webmail_trees):
    tree = webmail_trees["lab"]
    content = tree.files[COMPOSE_FILE].content.replace("    ports:", "    portz:")
    result = check_with_content(tree, COMPOSE_FILE, content)
    assert result.returncode == 1
    assert "'portz' was unexpected" in result.stderr


@pytest.mark.checkers
def test_a_broken_php_config_fails_with_the_php_message(webmail_trees):
    tree = webmail_trees["lab"]
    content = tree.files[CUSTOM_CONFIG].content.replace("= 'stdout';", "= 'stdout'")
    result = check_with_content(tree, CUSTOM_CONFIG, content)
    assert result.returncode == 1
    assert "PHP Parse error" in result.stderr and CUSTOM_CONFIG in result.stderr
