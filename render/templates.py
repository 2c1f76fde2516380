"""The Jinja2 environment: templates/<role>/<path on the host>.j2, shared pieces in templates/shared."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,  # a missing value is a render error, not an empty setting
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        auto_reload=False,  # templates do not change while a program runs: no stat per lookup
    )


def render(role: str, path: str, **values: Any) -> str:
    """Render templates/<role><path>.j2 (path is where the file lands on the host)."""
    return environment().get_template(f"{role}{path}.j2").render(**values)
