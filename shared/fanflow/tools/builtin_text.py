"""Dify's built-in `regex` provider: `regex_extract` answers with the list of matches."""

from __future__ import annotations

import re
from typing import Any

from fanflow.tools.base import Tool, ToolCall, ToolParameter, ToolResult

__all__ = ["REGEX_TOOLS"]


async def _regex_extract(params: dict[str, Any], call: ToolCall) -> ToolResult:
    content, expression = params.get("content") or "", params.get("expression") or ""
    if not content:
        return ToolResult().add_text("Invalid content")
    if not expression:
        return ToolResult().add_text("Invalid expression")
    try:
        return ToolResult().add_text(str(re.findall(expression, content)))
    except re.error as exc:
        return ToolResult().add_text(f"Failed to extract result, error: {exc}")


REGEX_TOOLS = (
    Tool(
        "regex_extract",
        "Extract every match of a regular expression.",
        (ToolParameter("content", required=True), ToolParameter("expression", required=True)),
        _regex_extract,
    ),
)
