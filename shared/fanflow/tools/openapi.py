"""Custom tools from an OpenAPI 3 document (Dify's `provider_type: api`).

Each operation is a tool named by its `operationId` (else `<method>_<path>` with the path's
non-word characters as `_`). Its parameters are the operation's path, query, header and
cookie parameters plus the top-level properties of an `application/json` request body; the
node's `tool_parameters` fill them in. The answer is the tool's text, and also a JSON message
when it is JSON. Credentials come from the tools file (`auth`), never from the DSL.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from fanflow.tools.base import Tool, ToolCall, ToolError, ToolParameter, ToolResult
from fanflow.tools.config import OpenApiConfig, ToolsConfigInvalid

__all__ = ["openapi_tools", "server_url"]

_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
_TYPES = {
    "integer": "number",
    "number": "number",
    "boolean": "boolean",
    "object": "object",
    "array": "array",
}


def openapi_tools(config: OpenApiConfig) -> tuple[Tool, ...]:
    """The tools of `config`'s document; raises `ToolsConfigInvalid` for a document without
    a server when the config gives no base_url."""
    document = config.document
    base_url = config.base_url or server_url(document)
    if not base_url:
        raise ToolsConfigInvalid(
            f"openapi.{config.name}: the document has no `servers`; give base_url"
        )
    tools = []
    for path, item in (document.get("paths") or {}).items():
        if not isinstance(item, Mapping):
            continue
        shared = [p for p in item.get("parameters") or [] if isinstance(p, Mapping)]
        for method in _METHODS:
            operation = item.get(method)
            if isinstance(operation, Mapping):
                tools.append(
                    _tool(config, base_url, str(path), method, operation, shared, document)
                )
    return tuple(tools)


def server_url(document: Mapping[str, Any]) -> str | None:
    servers = document.get("servers")
    if isinstance(servers, list) and servers and isinstance(servers[0], Mapping):
        url = servers[0].get("url")
        return str(url).rstrip("/") if url else None
    return None


def _resolve(schema: Any, document: Mapping[str, Any]) -> Any:
    """A local `$ref` (`#/components/...`) followed, once per level."""
    seen = 0
    while isinstance(schema, Mapping) and "$ref" in schema and seen < 10:
        target: Any = document
        for part in str(schema["$ref"]).removeprefix("#/").split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        schema = target
        seen += 1
    return schema


def _tool(
    config: OpenApiConfig,
    base_url: str,
    path: str,
    method: str,
    operation: Mapping[str, Any],
    shared: list[Mapping[str, Any]],
    document: Mapping[str, Any],
) -> Tool:
    slug = re.sub(r"\W+", "_", path).strip("_")
    name = str(operation.get("operationId") or f"{method}_{slug}")
    locations: dict[str, str] = {}
    parameters: list[ToolParameter] = []
    raw_parameters = [
        _resolve(p, document) for p in [*shared, *(operation.get("parameters") or [])]
    ]
    for raw in raw_parameters:
        if not isinstance(raw, Mapping) or not raw.get("name"):
            continue
        schema = _resolve(raw.get("schema") or {}, document) or {}
        locations[str(raw["name"])] = str(raw.get("in") or "query")
        parameters.append(_parameter(str(raw["name"]), schema, raw))
    body = _resolve(operation.get("requestBody") or {}, document) or {}
    content = body.get("content") if isinstance(body, Mapping) else None
    json_schema = _resolve((content or {}).get("application/json", {}).get("schema"), document)
    if isinstance(json_schema, Mapping):
        required = set(json_schema.get("required") or [])
        for prop, schema in (json_schema.get("properties") or {}).items():
            locations[str(prop)] = "body"
            schema = _resolve(schema, document) or {}
            parameters.append(_parameter(str(prop), schema, {"required": prop in required}))

    async def invoke(params: dict[str, Any], call: ToolCall) -> ToolResult:
        return await _call(config, base_url, path, method, locations, params, call)

    description = str(operation.get("summary") or operation.get("description") or name)
    return Tool(name, description, tuple(parameters), invoke)


def _parameter(name: str, schema: Mapping[str, Any], raw: Mapping[str, Any]) -> ToolParameter:
    options = tuple(str(v) for v in schema.get("enum") or ())
    kind = "select" if options else _TYPES.get(str(schema.get("type")), "string")
    return ToolParameter(
        name,
        kind,
        required=bool(raw.get("required")),
        default=schema.get("default"),
        options=options,
        description=str(raw.get("description") or schema.get("description") or ""),
    )


async def _call(
    config: OpenApiConfig,
    base_url: str,
    path: str,
    method: str,
    locations: Mapping[str, str],
    params: Mapping[str, Any],
    call: ToolCall,
) -> ToolResult:
    query: dict[str, Any] = {}
    headers: dict[str, str] = {}
    cookies: list[str] = []
    body: dict[str, Any] = {}
    url_path = path
    for name, value in params.items():
        where = locations.get(name)
        if value is None or value == "" or where is None:
            continue
        if where == "path":
            url_path = url_path.replace("{" + name + "}", quote(_text(value), safe=""))
        elif where == "query":
            query[name] = _text(value)
        elif where == "header":
            headers[name] = _text(value)
        elif where == "cookie":
            cookies.append(f"{name}={_text(value)}")
        else:
            body[name] = value
    missing = re.findall(r"\{(\w+)\}", url_path)
    if missing:
        raise ToolError(
            f"{call.label}: tool needs path parameter(s) {', '.join(missing)}",
            error_type="ToolParameterError",
        )
    if cookies:
        headers["Cookie"] = "; ".join(cookies)
    _authorize(config, headers, query)
    reply = await call.http.request(
        method.upper(),
        base_url + url_path,
        headers=headers,
        params=query,
        json_body=body if body or method in ("post", "put", "patch") else None,
        idempotent=method in ("get", "head", "options", "put", "delete"),
    )
    result = ToolResult().add_text(reply.text)
    if "json" in reply.headers.get("content-type", ""):
        with contextlib.suppress(ValueError):
            result.add_json(json.loads(reply.content))
    return result


def _authorize(config: OpenApiConfig, headers: dict[str, str], query: dict[str, Any]) -> None:
    key = config.api_key or ""
    if config.auth_type == "bearer":
        headers["Authorization"] = f"Bearer {key}"
    elif config.auth_type == "basic":
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(key.encode()).decode()
    elif config.auth_type == "header" and config.auth_name:
        headers[config.auth_name] = key
    elif config.auth_type == "query" and config.auth_name:
        query[config.auth_name] = key


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
