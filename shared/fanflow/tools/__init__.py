"""Tool nodes' providers: Dify's built-in tools fanflow implements, network tools behind the
SSRF guard, and custom OpenAPI providers from the tools file (`fanflow.tools.catalog`)."""

from fanflow.tools.base import Tool, ToolCall, ToolError, ToolParameter, ToolResult
from fanflow.tools.catalog import ToolCatalog, ToolNotFound, activate, active_catalog

__all__ = [
    "Tool",
    "ToolCall",
    "ToolCatalog",
    "ToolError",
    "ToolNotFound",
    "ToolParameter",
    "ToolResult",
    "activate",
    "active_catalog",
]
