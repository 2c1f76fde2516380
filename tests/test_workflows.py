"""The GitHub workflows: valid for GitHub, and they do what the README promises.

Pull requests get a `pulumi preview` comment; main gets `pulumi up` of prod after the tests, never
two at once, behind the `production` environment; secrets come only from `secrets.*`. Pulumi runs
where the sites are reachable (a self-hosted runner), with genisoimage for the cloud-init ISOs,
and no job holds a production secret without an environment a maintainer approves.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from model import stack_file_values

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))
PULUMI_ACTION = "pulumi/actions@v6"
# Names of the secrets the workflows use; the README lists the same names.
SECRETS = {"PULUMI_ACCESS_TOKEN", "MAIL_CLUSTER_SSH_KEY", "MAIL_CLUSTER_SSH_KNOWN_HOSTS", "GITHUB_TOKEN"}
# Secrets that reach production (the hypervisors, the hosts, the stack's state and secrets).
PRODUCTION_SECRETS = {"PULUMI_ACCESS_TOKEN", "MAIL_CLUSTER_SSH_KEY", "MAIL_CLUSTER_SSH_KNOWN_HOSTS"}
# Environments whose protection rules (README) require a maintainer's approval.
GATED_ENVIRONMENTS = {"preview", "production"}
SITES_RUNNER = ["self-hosted", "mail-cluster-sites"]
SECRET_LOOKING = re.compile(r"(TOKEN|KEY|PASSWORD|PASSPHRASE|SECRET)", re.IGNORECASE)


def load(name: str) -> dict[str, Any]:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job.get("steps", [])


def pulumi_steps(job: dict[str, Any], command: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if s.get("uses") == PULUMI_ACTION and s.get("with", {}).get("command") == command]


def jobs_running(workflow: dict[str, Any], command: str) -> dict[str, dict[str, Any]]:
    return {name: job for name, job in workflow["jobs"].items() if pulumi_steps(job, command)}


def test_workflows_exist():
    assert {p.name for p in WORKFLOW_FILES} >= {"preview.yml", "deploy.yml", "tests.yml"}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_workflow_is_valid_for_github(path: Path):
    """check-jsonschema ships the GitHub workflow schema: no network needed."""
    result = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path: Path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  up:\n    runs-on: ubuntu-latest\n    stepz: []\n")
    result = subprocess.run(
        ["check-jsonschema", "--builtin-schema", "vendor.github-workflows", str(broken)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "stepz" in result.stdout


def test_tests_workflow_runs_what_ci_runs():
    workflow = load("tests.yml")
    assert "workflow_call" in workflow["on"]
    runs = [s.get("run", "") for job in workflow["jobs"].values() for s in steps(job)]
    assert any(r.strip() == "bash .ci/run" for r in runs)
    assert any("pip install -r requirements.txt" in r for r in runs)
    # .ci/run installs Debian 12 packages and creates network namespaces.
    (job,) = workflow["jobs"].values()
    assert "bookworm" in job["container"]["image"]
    assert "--privileged" in job["container"]["options"]


def test_pull_request_previews_each_stack_and_comments():
    workflow = load("preview.yml")
    assert "pull_request" in workflow["on"]
    previews = jobs_running(workflow, "preview")
    assert previews, "a job runs pulumi preview"
    for name, job in previews.items():
        assert job["needs"] == "tests" or "tests" in job["needs"]
        assert workflow["jobs"]["tests"]["uses"] == "./.github/workflows/tests.yml"
        assert job["permissions"]["pull-requests"] == "write"
        assert job["strategy"]["matrix"]["stack"] == ["prod"]
        (step,) = pulumi_steps(job, "preview")
        assert step["with"]["comment-on-pr"] is True
        assert step["with"]["github-token"] == "${{ secrets.GITHUB_TOKEN }}"
        assert step["with"]["stack-name"] == "${{ matrix.stack }}"
        assert step["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}", name
    assert not jobs_running(workflow, "up"), "a pull request never deploys"


def test_main_runs_up_only_on_main_after_the_tests():
    workflow = load("deploy.yml")
    assert set(workflow["on"]) == {"push"}
    assert workflow["on"]["push"]["branches"] == ["main"]
    ups = jobs_running(workflow, "up")
    assert ups, "a job runs pulumi up"
    for job in ups.values():
        assert job["needs"] == "tests" or "tests" in job["needs"]
        assert workflow["jobs"]["tests"]["uses"] == "./.github/workflows/tests.yml"
        assert job["if"] == "github.ref == 'refs/heads/main'"
        assert job["environment"] == "production"
        assert job["strategy"]["matrix"]["stack"] == ["prod"]
        (step,) = pulumi_steps(job, "up")
        assert step["with"]["stack-name"] == "${{ matrix.stack }}"
        assert step["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"


def test_two_ups_never_overlap():
    workflow = load("deploy.yml")
    assert workflow["concurrency"]["cancel-in-progress"] is False
    for job in jobs_running(workflow, "up").values():
        assert job["concurrency"]["cancel-in-progress"] is False
        assert job["strategy"]["max-parallel"] == 1


def test_the_ssh_key_reaches_the_program_from_a_secret():
    for name in ("preview.yml", "deploy.yml"):
        workflow = load(name)
        for job in [*jobs_running(workflow, "preview").values(), *jobs_running(workflow, "up").values()]:
            setup = [s for s in steps(job) if "ssh-key-setup.sh" in s.get("run", "")]
            assert setup, f"{name}: loads the SSH key before Pulumi runs"
            assert setup[0]["env"]["MAIL_CLUSTER_SSH_KEY"] == "${{ secrets.MAIL_CLUSTER_SSH_KEY }}"
            assert steps(job).index(setup[0]) < steps(job).index(
                pulumi_steps(job, "preview" if "preview" in name else "up")[0]
            )
    script = (WORKFLOWS / "ssh-key-setup.sh").read_text()
    assert "pulumi config set --secret" in script
    result = subprocess.run(["bash", "-n", str(WORKFLOWS / "ssh-key-setup.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _values(node: Any, path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _values(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _values(value, f"{path}[{i}]")
    else:
        yield path, node


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_secrets_come_only_from_the_secrets_context(path: Path):
    workflow = load(path.name)
    for where, value in _values(workflow):
        key = where.rsplit(".", 1)[-1]
        if SECRET_LOOKING.search(key):
            assert isinstance(value, str) and re.fullmatch(r"\$\{\{ secrets\.[A-Z_]+ \}\}", value), (
                f"{path.name}{where}: a secret must be `${{{{ secrets.NAME }}}}`, not {value!r}"
            )
        assert "-----BEGIN" not in str(value) and not str(value).startswith("pul-"), f"{path.name}{where}"
    used = set(re.findall(r"secrets\.([A-Za-z_]+)", path.read_text()))
    assert used <= SECRETS, f"{path.name}: undocumented secrets {used - SECRETS}"
    header = path.read_text().split("\nname:", 1)[0]
    for name in used:
        assert name in header, f"{path.name}: secret {name} is not listed in the comment at the top"
    assert "PULUMI_CONFIG_PASSPHRASE" not in path.read_text().split("\nname:", 1)[1]


def _pulumi_jobs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{name}", job)
        for path in WORKFLOW_FILES
        for command in ("preview", "up")
        for name, job in jobs_running(load(path.name), command).items()
    ]


def test_pulumi_runs_where_the_sites_are_reachable():
    """Preview and up dial the hypervisors and the VMs' site-local addresses: a GitHub-hosted
    runner has no route there (and no IPv6)."""
    jobs = _pulumi_jobs()
    assert len(jobs) >= 2
    for name, job in jobs:
        assert job["runs-on"] == SITES_RUNNER, name


def test_pulumi_jobs_install_genisoimage_first():
    """The libvirt provider builds each cloud-init ISO locally with mkisofs."""
    for name, job in _pulumi_jobs():
        runs = [s.get("run", "") for s in steps(job)]
        install = next((i for i, r in enumerate(runs) if "genisoimage" in r and "apt-get install" in r), None)
        assert install is not None, f"{name}: installs no genisoimage"
        first_pulumi = min(steps(job).index(s) for c in ("preview", "up") for s in pulumi_steps(job, c))
        assert install < first_pulumi, name
        assert "mkisofs" in runs[install], name


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_every_job_holding_a_production_secret_waits_for_an_approved_environment(path: Path):
    workflow = load(path.name)
    for name, job in workflow["jobs"].items():
        held = set(re.findall(r"secrets\.([A-Za-z_]+)", yaml.safe_dump(job))) & PRODUCTION_SECRETS
        if held:
            environment = job.get("environment")
            environment = environment.get("name") if isinstance(environment, dict) else environment
            assert environment in GATED_ENVIRONMENTS, f"{path.name}:{name} holds {sorted(held)} without a gate"
        # A reusable workflow called with `secrets: inherit` would hand them all over.
        assert job.get("secrets") != "inherit", f"{path.name}:{name}"


def test_the_preview_never_runs_a_forks_code_with_secrets():
    for name, job in jobs_running(load("preview.yml"), "preview").items():
        assert job["if"] == "github.event.pull_request.head.repo.full_name == github.repository", name
        assert job["environment"] == "preview", name


def test_the_ssh_agent_is_stopped_on_the_long_lived_runner():
    for name, job in _pulumi_jobs():
        last = steps(job)[-1]
        assert last.get("if") == "always()" and "ssh-agent -k" in last["run"], name


def test_readme_sets_up_the_gates_the_workflows_rely_on():
    readme = (ROOT / "README.md").read_text()
    for environment in GATED_ENVIRONMENTS:
        assert f"`{environment}`" in readme
    assert "required reviewers" in readme and "mail-cluster-sites" in readme and "environment secrets" in readme


def test_known_hosts_check_names_every_unpinned_hypervisor(tmp_path: Path):
    """ssh-key-setup.sh refuses a known_hosts that misses a hypervisor, naming it, before Pulumi runs."""
    check = [sys.executable, str(WORKFLOWS / "check_known_hosts.py"), "prod"]
    hypervisors = [urlsplit(s["hypervisor"]).hostname for s in stack_file_values("prod")["sites"]]
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIF+FbJYXjXCo1PHtnFVl+shS2+KGY30MiJBkevza4hb8"
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"{h} {key}\n" for h in hypervisors[1:]))
    result = subprocess.run([*check, str(known)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"known_hosts has no key for {hypervisors[0]} (stack prod)"
    known.write_text("".join(f"{h} {key}\n" for h in hypervisors))
    assert subprocess.run([*check, str(known)], capture_output=True, text=True).returncode == 0
    assert "check_known_hosts.py" in (WORKFLOWS / "ssh-key-setup.sh").read_text()
