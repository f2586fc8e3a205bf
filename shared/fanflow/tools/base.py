"""What a tool is: a name, a parameter schema and an async call that returns Dify's messages.

A `Tool` is called with its parameters (already rendered from the node's
`tool_parameters` and `tool_configurations`, defaulted and typed by its schema) and a
`ToolCall` (the node's label for messages, the provider's configuration, an HTTP helper).
It returns a `ToolResult`: the text, JSON and file messages Dify's tools yield, which the
tool node turns into its outputs `text`, `files` and `json` as Dify does.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fanflow.errors import NodeError

if TYPE_CHECKING:
    from fanflow.tools.config import ProviderConfig
    from fanflow.tools.http import ToolHttp

__all__ = [
    "PARAMETER_TYPES",
    "Tool",
    "ToolCall",
    "ToolError",
    "ToolParameter",
    "ToolResult",
    "coerce_parameters",
]

#: Dify's tool parameter types (`ToolParameter.ToolParameterType`) fanflow reads
PARAMETER_TYPES = frozenset(
    {"string", "number", "boolean", "select", "secret-input", "object", "array", "file", "files"}
)


class ToolError(NodeError):
    """A tool call that failed for a reason no retry fixes (bad parameter, refused input)."""

    def __init__(self, message: str, *, error_type: str = "ToolInvokeError") -> None:
        super().__init__(message, error_type=error_type)


@dataclass(frozen=True)
class ToolParameter:
    name: str
    type: str = "string"
    required: bool = False
    default: Any = None
    #: the values a `select` parameter takes
    options: tuple[str, ...] = ()
    description: str = ""

    def to_json_schema(self) -> dict[str, Any]:
        """The parameter as a JSON Schema property (for function calling and listings)."""
        kinds = {"number": "number", "boolean": "boolean", "object": "object", "array": "array"}
        schema: dict[str, Any] = {"type": kinds.get(self.type, "string")}
        if self.description:
            schema["description"] = self.description
        if self.options:
            schema["enum"] = list(self.options)
        return schema


def not_configured(call: ToolCall, missing: str) -> ToolError:
    """A provider setting the tools file lacks: `missing` says which and how to give it."""
    return ToolError(
        f"{call.label}: {missing} in the tools file (FANFLOW_TOOLS_FILE)",
        error_type="ToolProviderCredentialError",
    )


def param(
    name: str, kind: str = "string", *, required: bool = False, default: Any = None
) -> ToolParameter:
    """A parameter as the builtin tools declare theirs: a name, a type, and the rest by name."""
    return ToolParameter(name, kind, required=required, default=default)


@dataclass
class ToolResult:
    """The messages of one call, in the order the tool produced them."""

    text: str = ""
    json: list[Any] = field(default_factory=list)
    files: list[Any] = field(default_factory=list)
    #: variable messages: extra outputs named by the tool
    variables: dict[str, Any] = field(default_factory=dict)

    def add_text(self, text: str) -> ToolResult:
        self.text += text
        return self

    def add_json(self, value: Any) -> ToolResult:
        self.json.append(value)
        return self

    def outputs(self) -> dict[str, Any]:
        """The tool node's outputs as Dify shapes them: `json` is `[{"data": []}]` when the
        tool gave no JSON message."""
        return {
            "text": self.text,
            "files": list(self.files),
            "json": list(self.json) if self.json else [{"data": []}],
            **self.variables,
        }


@dataclass(frozen=True)
class ToolCall:
    """What one invocation is given besides its parameters."""

    #: how messages name the node (`id (title)`)
    label: str
    provider: str
    config: ProviderConfig
    http: ToolHttp


ToolFunction = Callable[[dict[str, Any], ToolCall], Awaitable[ToolResult]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: tuple[ToolParameter, ...]
    invoke: ToolFunction

    def parameter(self, name: str) -> ToolParameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def input_schema(self) -> dict[str, Any]:
        """The parameters as one JSON Schema object (function calling, MCP listings)."""
        return {
            "type": "object",
            "properties": {p.name: p.to_json_schema() for p in self.parameters},
            "required": [p.name for p in self.parameters if p.required],
        }


def coerce_parameters(tool: Tool, given: Mapping[str, Any], label: str) -> dict[str, Any]:
    """`given` typed by `tool`'s schema, defaults filled in; a required parameter that is
    missing or empty raises `ToolError` naming it. Names the schema lacks pass through."""
    values = dict(given)
    for parameter in tool.parameters:
        value = values.get(parameter.name)
        if value is None or value == "":
            if parameter.default is not None:
                value = parameter.default
            elif parameter.required:
                raise ToolError(
                    f"{label}: tool {tool.name!r} needs parameter {parameter.name!r}",
                    error_type="ToolParameterError",
                )
            else:
                values[parameter.name] = value
                continue
        values[parameter.name] = _coerce(parameter, value, tool.name, label)
    return values


def _coerce(parameter: ToolParameter, value: Any, tool: str, label: str) -> Any:
    where = f"{label}: tool {tool!r} parameter {parameter.name!r}"
    kind = parameter.type
    if kind == "number":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int | float):
            return value
        try:
            text = str(value).strip()
            return int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:
            raise ToolError(
                f"{where} must be a number, got {value!r}", error_type="ToolParameterError"
            ) from None
    if kind == "boolean":
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes", "y", "on")
        return bool(value)
    if kind in ("string", "secret-input", "select"):
        if isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False)
        text = str(value) if not isinstance(value, str) else value
        if kind == "select" and parameter.options and text not in parameter.options:
            allowed = ", ".join(parameter.options)
            raise ToolError(
                f"{where} must be one of {allowed}, got {text!r}", error_type="ToolParameterError"
            )
        return text
    if kind in ("object", "array") and isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ToolError(
                f"{where} must be JSON, got {value[:80]!r}", error_type="ToolParameterError"
            ) from None
    return value
