"""The tools file (`FANFLOW_TOOLS_FILE`, YAML or JSON): credentials and endpoints of tool
providers, and custom OpenAPI providers. Keys come from here, never from the DSL::

    providers:
      jina: {api_key_env: JINA_API_KEY}                 # optional for jina
      firecrawl: {base_url: https://api.firecrawl.dev, api_key_env: FIRECRAWL_API_KEY}
      tavily: {api_key_env: TAVILY_API_KEY}
      searxng: {base_url: http://searxng.internal:8080}
    openapi:
      weather:                                          # provider_name in the DSL
        document: weather-openapi.yaml                  # relative to this file, or inline `schema`
        base_url: https://api.weather.example           # else the document's first server
        auth: {type: bearer, api_key_env: WEATHER_KEY}  # bearer | basic | header | query (+ name)
    mcp:                                                # provider_type: mcp
      docs: {url: https://mcp.example/mcp, api_key_env: DOCS_MCP_KEY}
    datasets:                                           # knowledge-retrieval's dataset_ids
      6f1c...-uuid:                                     # Dify's External Knowledge API
        {endpoint: https://kb.example/api, knowledge_id: handbook, api_key_env: KB_KEY, name: Handbook}

A provider's `base_url` is trusted as the operator chose it: the SSRF guard lets calls to
its host through (a self-hosted SearXNG on a private network works); a URL that comes from
the workflow (the web scraper's) gets no such pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from fanflow.errors import FanflowError
from fanflow.tools.mcp import McpServerConfig

__all__ = [
    "DatasetConfig",
    "OpenApiConfig",
    "ProviderConfig",
    "ToolsConfig",
    "ToolsConfigInvalid",
    "load_tools_file",
]

_PROVIDER_KEYS = frozenset({"base_url", "api_key", "api_key_env", "options"})
_OPENAPI_KEYS = frozenset({"document", "schema", "base_url", "auth", "id"})
_DATASET_KEYS = frozenset({"endpoint", "knowledge_id", "api_key", "api_key_env", "name"})
_AUTH_TYPES = frozenset({"none", "bearer", "basic", "header", "query"})


class ToolsConfigInvalid(FanflowError):
    """The tools file cannot be read or has the wrong shape; the text says where."""


@dataclass(frozen=True)
class ProviderConfig:
    base_url: str | None = None
    api_key: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def trusted_hosts(self) -> tuple[str, ...]:
        if not self.base_url:
            return ()
        host = httpx.URL(self.base_url).host
        return (host,) if host else ()


@dataclass(frozen=True)
class OpenApiConfig:
    name: str
    document: Mapping[str, Any]
    base_url: str | None = None
    auth_type: str = "none"
    #: the header (header auth) or query parameter (query auth) carrying the key
    auth_name: str | None = None
    api_key: str | None = None
    #: Dify's provider id (a UUID) when the operator wants it matched too
    provider_id: str | None = None


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset behind Dify's External Knowledge API (`POST {endpoint}/retrieval`)."""

    dataset_id: str
    endpoint: str
    knowledge_id: str
    api_key: str | None = None
    name: str = ""


@dataclass(frozen=True)
class ToolsConfig:
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    openapi: Mapping[str, OpenApiConfig] = field(default_factory=dict)
    datasets: Mapping[str, DatasetConfig] = field(default_factory=dict)
    mcp: Mapping[str, McpServerConfig] = field(default_factory=dict)
    source: str | None = None

    def provider(self, name: str) -> ProviderConfig:
        return self.providers.get(name) or ProviderConfig()


def load_tools_file(path: Path, *, environ: Mapping[str, str] | None = None) -> ToolsConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ToolsConfigInvalid(f"cannot read the tools file {path}: {exc}") from exc
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ToolsConfigInvalid(f"the tools file {path} is not valid: {exc}") from exc
    return parse_tools_config(raw or {}, where=str(path), base_dir=path.parent, environ=environ)


def parse_tools_config(
    raw: Any,
    *,
    where: str = "tools config",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> ToolsConfig:
    env = os.environ if environ is None else environ
    if not isinstance(raw, Mapping):
        raise ToolsConfigInvalid(f"{where}: expected a mapping with `providers` and/or `openapi`")
    unknown = set(raw) - {"providers", "openapi", "datasets", "mcp"}
    if unknown:
        raise ToolsConfigInvalid(f"{where}: unknown top-level key(s) {sorted(unknown)}")
    providers = {
        str(name): _provider(value, f"{where}: providers.{name}", env)
        for name, value in _section(raw, "providers", where).items()
    }
    openapi = {
        str(name): _openapi(str(name), value, f"{where}: openapi.{name}", base_dir, env)
        for name, value in _section(raw, "openapi", where).items()
    }
    datasets = {
        str(name): _dataset(str(name), value, f"{where}: datasets.{name}", env)
        for name, value in _section(raw, "datasets", where).items()
    }
    mcp = {
        str(name): _mcp(str(name), value, f"{where}: mcp.{name}", env)
        for name, value in _section(raw, "mcp", where).items()
    }
    return ToolsConfig(
        providers=providers, openapi=openapi, datasets=datasets, mcp=mcp, source=where
    )


def _mcp(name: str, value: Any, where: str, env: Mapping[str, str]) -> McpServerConfig:
    value = _mapping_of(
        value,
        where,
        {"url", "api_key", "api_key_env", "headers", "id"},
        "{url, api_key_env, headers}",
    )
    url = str(value.get("url") or "")
    if not url.startswith(("http://", "https://")):
        raise ToolsConfigInvalid(f"{where}.url: the server's streamable HTTP URL, got {url!r}")
    headers = value.get("headers") or {}
    if not isinstance(headers, Mapping):
        raise ToolsConfigInvalid(f"{where}.headers: expected a mapping")
    headers = {str(k): str(v) for k, v in headers.items()}
    key = _key(value, where, env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return McpServerConfig(
        name=name,
        url=url,
        headers=headers,
        provider_id=str(value["id"]) if value.get("id") else None,
    )


def _dataset(name: str, value: Any, where: str, env: Mapping[str, str]) -> DatasetConfig:
    value = _mapping_of(value, where, _DATASET_KEYS, "{endpoint, knowledge_id, ...}")
    endpoint = str(value.get("endpoint") or "")
    if not endpoint.startswith(("http://", "https://")):
        raise ToolsConfigInvalid(f"{where}.endpoint: expected an http(s) URL, got {endpoint!r}")
    if not value.get("knowledge_id"):
        raise ToolsConfigInvalid(f"{where}.knowledge_id: the external knowledge base's id")
    return DatasetConfig(
        dataset_id=name,
        endpoint=endpoint.rstrip("/"),
        knowledge_id=str(value["knowledge_id"]),
        api_key=_key(value, where, env),
        name=str(value.get("name") or name),
    )


def _section(raw: Mapping[str, Any], name: str, where: str) -> Mapping[str, Any]:
    entries = raw.get(name) or {}
    if not isinstance(entries, Mapping):
        raise ToolsConfigInvalid(f"{where}: `{name}` must be a mapping of name → settings")
    return entries


def _key(value: Mapping[str, Any], where: str, env: Mapping[str, str]) -> str | None:
    key = value.get("api_key")
    name = value.get("api_key_env")
    if not key and name:
        key = env.get(str(name))
        if not key:
            raise ToolsConfigInvalid(f"{where}.api_key_env: environment variable {name} is not set")
    if key is not None and not isinstance(key, str):
        raise ToolsConfigInvalid(f"{where}.api_key: expected text")
    return key or None


def _mapping_of(value: Any, where: str, keys: Set[str], shape: str) -> Mapping[str, Any]:
    """`value` as a mapping of only `keys`; `shape` names them in the error."""
    if not isinstance(value, Mapping):
        raise ToolsConfigInvalid(f"{where}: expected a mapping {shape}")
    unknown = set(value) - keys
    if unknown:
        raise ToolsConfigInvalid(f"{where}: unknown key(s) {sorted(unknown)}")
    return value


def _provider(value: Any, where: str, env: Mapping[str, str]) -> ProviderConfig:
    value = _mapping_of(value, where, _PROVIDER_KEYS, "{base_url, api_key, ...}")
    base_url = value.get("base_url")
    if base_url is not None and not str(base_url).startswith(("http://", "https://")):
        raise ToolsConfigInvalid(f"{where}.base_url: expected an http(s) URL, got {base_url!r}")
    options = value.get("options") or {}
    if not isinstance(options, Mapping):
        raise ToolsConfigInvalid(f"{where}.options: expected a mapping")
    return ProviderConfig(
        base_url=str(base_url).rstrip("/") if base_url else None,
        api_key=_key(value, where, env),
        options=dict(options),
    )


def _openapi(
    name: str, value: Any, where: str, base_dir: Path | None, env: Mapping[str, str]
) -> OpenApiConfig:
    value = _mapping_of(value, where, _OPENAPI_KEYS, "{document or schema, auth}")
    document = value.get("schema")
    if document is None and value.get("document"):
        path = Path(str(value["document"]))
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            text = path.read_text(encoding="utf-8")
            document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ToolsConfigInvalid(f"{where}.document: cannot read {path}: {exc}") from exc
    if not isinstance(document, Mapping) or not isinstance(document.get("paths"), Mapping):
        raise ToolsConfigInvalid(f"{where}: the OpenAPI document must be a mapping with `paths`")
    auth = value.get("auth") or {}
    if not isinstance(auth, Mapping) or (auth.get("type") or "none") not in _AUTH_TYPES:
        raise ToolsConfigInvalid(f"{where}.auth.type must be one of {sorted(_AUTH_TYPES)}")
    auth_type = str(auth.get("type") or "none")
    if auth_type in ("header", "query") and not auth.get("name"):
        raise ToolsConfigInvalid(f"{where}.auth.name: the {auth_type} that carries the key")
    api_key = _key(auth, f"{where}.auth", env)
    if auth_type != "none" and not api_key:
        raise ToolsConfigInvalid(f"{where}.auth: {auth_type} auth needs api_key or api_key_env")
    return OpenApiConfig(
        name=name,
        document=document,
        base_url=str(value["base_url"]).rstrip("/") if value.get("base_url") else None,
        auth_type=auth_type,
        auth_name=str(auth["name"]) if auth.get("name") else None,
        api_key=api_key,
        provider_id=str(value["id"]) if value.get("id") else None,
    )
