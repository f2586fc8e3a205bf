"""Template-transform: Jinja2 rendering as Dify's sandbox does it, but sandboxed in-process.

Dify renders with a plain `jinja2.Template` inside its code sandbox: an undefined name
renders empty, no autoescape, a final newline dropped. fanflow uses Jinja2's
`SandboxedEnvironment` with the same settings, so unsafe attribute access fails the node
instead of reaching Python internals, and bounds every render in time, value sizes,
total allocation and output (`fanflow.templating.environment`): templates render inline in the
scheduler's hosts, so a hostile one fails its node in well under a second instead of
stalling the event loop or growing the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2

from fanflow.errors import NodeError
from fanflow.templating.environment import (
    BoundedEnvironment,
    TemplateBoundExceeded,
    TemplateLimits,
    render_bounded,
)
from fanflow.variables import Lookup, resolve_or_none

#: Dify's TEMPLATE_TRANSFORM_MAX_LENGTH.
MAX_OUTPUT_LENGTH = 400_000

_ENVIRONMENT = BoundedEnvironment(undefined=jinja2.Undefined, autoescape=False)
_limits = TemplateLimits(max_size=MAX_OUTPUT_LENGTH)


def configure_limits(limits: TemplateLimits) -> None:
    """Set the bounds of every later render (the entry point calls this from settings)."""
    global _limits
    _limits = limits


def current_limits() -> TemplateLimits:
    return _limits


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
        output = render_bounded(compiled, {str(k): v for k, v in variables.items()}, _limits)
    except TemplateBoundExceeded as exc:
        raise NodeError(str(exc), error_type="TemplateRenderError") from exc
    except RecursionError as exc:
        raise NodeError(
            "template failed: recursion too deep", error_type="TemplateRenderError"
        ) from exc
    except jinja2.TemplateError as exc:
        raise NodeError(f"template error: {exc}", error_type=type(exc).__name__) from exc
    except Exception as exc:  # an error raised by the template's own expressions
        raise NodeError(
            f"template failed: {type(exc).__name__}: {exc}", error_type="TemplateRenderError"
        ) from exc
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
