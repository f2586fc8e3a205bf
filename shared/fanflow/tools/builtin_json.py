"""Dify's built-in `json_process` provider: parse (select), insert, replace and delete with
JSONPath (jsonpath-ng, the library Dify's tools use).

As in Dify, a failure (content that is not JSON, a bad path) is the tool's text answer, not a
node failure; `ensure_ascii` defaults to true.
"""

from __future__ import annotations

import json
from typing import Any

from jsonpath_ng.exceptions import JsonPathParserError
from jsonpath_ng.ext.parser import parse as parse_path

from fanflow.tools.base import Tool, ToolCall, ToolParameter, ToolResult, param

__all__ = ["JSON_TOOLS"]


def _dump(value: Any, ensure_ascii: bool) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii)


def _load(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    return json.loads(value) if isinstance(value, str) else value


def _new_value(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if params.get("value_decode") and isinstance(value, str):
        return json.loads(value)
    return value


async def _parse(params: dict[str, Any], call: ToolCall) -> ToolResult:
    if not params.get("content"):
        return ToolResult().add_text("Invalid parameter content")
    if not params.get("json_filter"):
        return ToolResult().add_text("Invalid parameter json_filter")
    try:
        data = _load(params, "content")
        found = [m.value for m in parse_path(params["json_filter"]).find(data)]
    except (ValueError, JsonPathParserError, Exception) as exc:
        return ToolResult().add_text(f"Failed to extract JSON content: {exc}")
    result: Any = found[0] if len(found) == 1 else found
    if isinstance(result, dict | list):
        return ToolResult().add_text(_dump(result, params["ensure_ascii"]))
    return ToolResult().add_text(str(result))


async def _insert(params: dict[str, Any], call: ToolCall) -> ToolResult:
    try:
        data = _load(params, "content")
        query = str(params["query"])
        value = _new_value(params, "new_value")
        matches = parse_path(query).find(data)
        if not matches and params.get("create_path"):
            data = parse_path(query).update_or_create(data, value)
        for match in matches:
            target = match.value
            if isinstance(target, dict):
                if not isinstance(value, dict):
                    raise ValueError("cannot insert a value that is not an object into an object")
                target.update(value)
            elif isinstance(target, list):
                index = params.get("index")
                if index in (None, ""):
                    target.append(value)
                else:
                    target.insert(int(str(index)), value)
            else:
                data = match.full_path.update(data, [target, value])
    except Exception as exc:  # the tool's answer, as in Dify
        return ToolResult().add_text(f"Failed to insert JSON content: {exc}")
    return ToolResult().add_text(_dump(data, params["ensure_ascii"]))


async def _replace(params: dict[str, Any], call: ToolCall) -> ToolResult:
    try:
        data = _load(params, "content")
        expression = parse_path(str(params["query"]))
        model = params.get("replace_model") or "pattern"
        replacement = _new_value(params, "replace_value")
        if model == "pattern":
            pattern = str(params.get("replace_pattern") or "")
            for match in expression.find(data):
                if isinstance(match.value, str):
                    data = match.full_path.update(
                        data, match.value.replace(pattern, str(replacement))
                    )
        elif model == "key":
            for match in expression.find(data):
                parent = match.context.value if match.context is not None else None
                key = str(match.path.fields[0]) if hasattr(match.path, "fields") else None
                if isinstance(parent, dict) and key in parent:
                    parent[str(replacement)] = parent.pop(key)
        elif model == "value":
            data = expression.update(data, replacement)
        else:
            return ToolResult().add_text(f"Invalid replace_model: {model}")
    except Exception as exc:
        return ToolResult().add_text(f"Failed to replace JSON content: {exc}")
    return ToolResult().add_text(_dump(data, params["ensure_ascii"]))


async def _delete(params: dict[str, Any], call: ToolCall) -> ToolResult:
    try:
        data = _load(params, "content")
        data = parse_path(str(params["query"])).filter(lambda _: True, data)
    except Exception as exc:
        return ToolResult().add_text(f"Failed to delete JSON content: {exc}")
    return ToolResult().add_text(_dump(data, params["ensure_ascii"]))


_ASCII = param("ensure_ascii", "boolean", default=True)

JSON_TOOLS = (
    Tool(
        "parse",
        "Select from a JSON document with a JSONPath expression.",
        (param("content", required=True), param("json_filter", required=True), _ASCII),
        _parse,
    ),
    Tool(
        "insert",
        "Insert a value at a JSONPath.",
        (
            param("content", required=True),
            param("query", required=True),
            param("new_value", required=True),
            param("index", "number"),
            param("create_path", "boolean", default=False),
            param("value_decode", "boolean", default=False),
            _ASCII,
        ),
        _insert,
    ),
    Tool(
        "replace",
        "Replace a pattern, a key or a value at a JSONPath.",
        (
            param("content", required=True),
            param("query", required=True),
            param("replace_pattern"),
            param("replace_value", required=True),
            ToolParameter(
                "replace_model", "select", default="pattern", options=("pattern", "key", "value")
            ),
            param("value_decode", "boolean", default=False),
            _ASCII,
        ),
        _replace,
    ),
    Tool(
        "delete",
        "Delete what a JSONPath selects.",
        (param("content", required=True), param("query", required=True), _ASCII),
        _delete,
    ),
)
