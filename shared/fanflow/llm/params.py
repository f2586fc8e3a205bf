"""A node's `model.completion_params` → the fields of an OpenAI chat completion request.

Only the parameters the chat completions API knows are forwarded; Dify-only knobs (a
provider plugin's extras such as `top_k`) are dropped rather than sent to an endpoint that
would refuse the request for them. Text values may hold `{{#node.var#}}`: they are rendered
and, as Dify does, read back as a number or boolean when they look like one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fanflow.variables import Lookup, render

#: forwarded as they are
FORWARDED_PARAMS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "stop",
    "reasoning_effort",
)
#: Dify caps a rendered parameter value at this many characters
_MAX_RENDERED_LENGTH = 1024


def completion_params(params: Any, lookup: Lookup) -> dict[str, Any]:
    """The request fields for `params` (Dify's `completion_params`); unknown keys dropped."""
    if not isinstance(params, Mapping):
        return {}
    resolved = {str(key): _resolve(value, lookup) for key, value in params.items()}
    body = {key: resolved[key] for key in FORWARDED_PARAMS if resolved.get(key) is not None}
    stop = body.get("stop")
    if isinstance(stop, str):
        body["stop"] = [stop]
    elif isinstance(stop, list) and not stop:
        del body["stop"]
    response_format = _response_format(resolved)
    if response_format is not None:
        body["response_format"] = response_format
    return body


def json_schema_format(
    schema: Mapping[str, Any], *, name: str = "structured_output"
) -> dict[str, Any]:
    """`response_format` asking for a JSON object that follows `schema`."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": dict(schema)}}


def _response_format(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """Dify's OpenAI plugin takes `response_format` as a word (`text`, `json_object`,
    `json_schema` + a `json_schema` text); an OpenAI-shaped mapping passes as it is."""
    value = params.get("response_format")
    if isinstance(value, Mapping):
        return dict(value)
    if value in ("text", "json_object"):
        return {"type": value}
    if value == "json_schema":
        raw = params.get("json_schema")
        try:
            schema = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            return None
        if isinstance(schema, Mapping):
            # the plugin's text is either the whole `json_schema` object or the bare schema
            if "schema" in schema:
                return {
                    "type": "json_schema",
                    "json_schema": {"name": "structured_output", **schema},
                }
            return json_schema_format(schema)
    return None


def _resolve(value: Any, lookup: Lookup) -> Any:
    if not isinstance(value, str) or "{{#" not in value:
        return value
    text = render(value, lookup)[:_MAX_RENDERED_LENGTH]
    stripped = text.strip()
    if not stripped:
        return text
    try:
        parsed = json.loads(stripped)
    except ValueError:
        return text
    return parsed if isinstance(parsed, int | float | bool) else text
