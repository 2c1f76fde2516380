"""Stack config -> Stack, with errors that name the config key."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from model.rules import problems
from model.stack import Stack

NAMESPACE = "mail-cluster"
PROJECT_DIR = Path(__file__).resolve().parent.parent
KEYS = tuple(Stack.model_fields)
# What to say for a required key that is missing, where "Field required" would not tell how to fill it.
MISSING = {
    "host_key": "required: the host's SSH public host key (`ssh-ed25519 AAAA...`, from "
    "/etc/ssh/ssh_host_ed25519_key.pub on it); its push refuses any other key",
}


class StackConfigError(ValueError):
    """Every problem of a stack config, each as `mail-cluster:<key>: <problem>`."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("invalid stack config:\n" + "\n".join(f"  {NAMESPACE}:{k}: {p}" for k, p in problems))


def _key(loc: tuple[Any, ...]) -> str:
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        elif "[" in str(part) or "function-after" in str(part):
            continue  # pydantic's union-member and validator labels are not config keys
        else:
            key += f".{part}" if key else str(part)
    return key


def load_stack(values: Mapping[str, Any]) -> Stack:
    try:
        stack = Stack.model_validate(dict(values))
    except ValidationError as err:
        seen: dict[str, str] = {}
        for e in err.errors():
            key = _key(e["loc"])
            message = e["msg"].removeprefix("Value error, ")
            if e["type"] == "missing":
                message = MISSING.get(key.rpartition(".")[2], message)
            # A union field reports once per member; the first message is enough.
            seen.setdefault(key, message)
        raise StackConfigError(list(seen.items())) from None
    found = problems(stack)
    if found:
        raise StackConfigError(found)
    return stack


def stack_file_values(stack_name: str, project_dir: Path = PROJECT_DIR) -> dict[str, Any]:
    """The `mail-cluster:` values of Pulumi.<stack>.yaml, without the namespace.

    Secure values (`{secure: ...}`) are left out: only Pulumi can decrypt them, and the offline
    render uses throwaway secrets instead.
    """
    path = project_dir / f"Pulumi.{stack_name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"no stack file {path.name} (stacks: {', '.join(stack_names(project_dir))})")
    # libyaml's loader where PyYAML has it: the pure-Python one took 12 s for a stack of 300 domains.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    config = (yaml.load(path.read_text(), Loader=loader) or {}).get("config", {})
    prefix = f"{NAMESPACE}:"
    return {
        k.removeprefix(prefix): v
        for k, v in config.items()
        if k.startswith(prefix) and not (isinstance(v, dict) and "secure" in v)
    }


def stack_names(project_dir: Path = PROJECT_DIR) -> list[str]:
    return sorted(p.name.split(".")[1] for p in project_dir.glob("Pulumi.*.yaml"))


def load_stack_file(stack_name: str, project_dir: Path = PROJECT_DIR) -> Stack:
    """`stack_name`: a stack (Pulumi.<stack>.yaml in project_dir), or the path of a stack file
    anywhere (`.../Pulumi.<stack>.yaml`), e.g. one a benchmark or a test generated."""
    path = Path(stack_name)
    if path.name.startswith("Pulumi.") and path.name.endswith(".yaml") and path.name.count(".") >= 2:
        return load_stack(stack_file_values(path.name[len("Pulumi.") : -len(".yaml")], path.parent))
    return load_stack(stack_file_values(stack_name, project_dir))
