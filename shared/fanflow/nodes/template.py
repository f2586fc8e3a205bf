"""Template-transform: Jinja2 rendering as Dify's sandbox does it, but sandboxed in-process.

Dify renders with a plain `jinja2.Template` inside its code sandbox: an undefined name
renders empty, no autoescape, a final newline dropped. fanflow uses Jinja2's
`SandboxedEnvironment` with the same settings, so unsafe attribute access fails the node
instead of reaching Python internals.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from fanflow.errors import NodeError
from fanflow.variables import Lookup, resolve_or_none

#: Dify's TEMPLATE_TRANSFORM_MAX_LENGTH.
MAX_OUTPUT_LENGTH = 400_000

_ENVIRONMENT = SandboxedEnvironment(undefined=jinja2.Undefined, autoescape=False)


@lru_cache(maxsize=512)
def _compile(source: str) -> jinja2.Template:
    return _ENVIRONMENT.from_string(source)


def render_template(template: str, variables: Mapping[str, Any]) -> str:
    """Render `template` with `variables`; any template failure raises NodeError."""
    try:
        compiled = _compile(template)
    except jinja2.TemplateSyntaxError as exc:
        raise NodeError(
            f"template syntax error at line {exc.lineno}: {exc.message}",
            error_type="TemplateSyntaxError",
        ) from exc
    try:
        output = compiled.render(**{str(k): v for k, v in variables.items()})
    except jinja2.TemplateError as exc:
        raise NodeError(f"template error: {exc}", error_type=type(exc).__name__) from exc
    except Exception as exc:  # an error raised by the template's own expressions
        raise NodeError(
            f"template failed: {type(exc).__name__}: {exc}", error_type="TemplateRenderError"
        ) from exc
    if len(output) > MAX_OUTPUT_LENGTH:
        raise NodeError(
            f"Output length exceeds {MAX_OUTPUT_LENGTH} characters (got {len(output)})",
            error_type="TemplateRenderError",
        )
    return output


def template_variables(data: Mapping[str, Any], lookup: Lookup) -> dict[str, Any]:
    """`{variable: value}` for the node's `variables`; a missing selector gives None."""
    result: dict[str, Any] = {}
    for item in data.get("variables") or []:
        selector = list(item.get("value_selector") or [])
        result[str(item.get("variable"))] = (
            resolve_or_none(lookup, selector) if len(selector) >= 2 else None
        )
    return result
