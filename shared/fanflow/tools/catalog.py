"""The tool providers a process knows: Dify's built-ins fanflow implements, and the custom
OpenAPI providers of the tools file.

A tool node names its tool by `provider_type`, `provider_id` (Dify 1.x plugin ids such as
`langgenius/time/time` name the provider last), `provider_name` and `tool_name`.
`ToolCatalog.find` answers with the tool, or raises `ToolNotFound` whose text names the
provider and the tool; `fanflow validate` reports that text, so a workflow that needs a
provider fanflow lacks is refused before it runs.

The process's catalog is built from its settings once (`catalog_from_settings`) and made the
one validation reads with `activate`; without that, from the environment on first use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fanflow.errors import FanflowError
from fanflow.tools.base import Tool
from fanflow.tools.builtin_json import JSON_TOOLS
from fanflow.tools.builtin_text import REGEX_TOOLS
from fanflow.tools.builtin_time import TIME_TOOLS
from fanflow.tools.config import DatasetConfig, ProviderConfig, ToolsConfig, load_tools_file
from fanflow.tools.openapi import openapi_tools, server_url
from fanflow.tools.search import SEARXNG_TOOLS, TAVILY_TOOLS, WIKIPEDIA_TOOLS
from fanflow.tools.web import FIRECRAWL_TOOLS, JINA_TOOLS, WEBSCRAPER_TOOLS

if TYPE_CHECKING:
    from fanflow.settings import Settings

__all__ = [
    "BUILTIN_PROVIDERS",
    "Provider",
    "ToolCatalog",
    "ToolNotFound",
    "activate",
    "active_catalog",
    "catalog_from_settings",
    "provider_key",
]

#: provider types whose tools come from the catalog; the others are refused by name
BUILTIN_TYPES = frozenset({"builtin", "plugin"})
CUSTOM_TYPES = frozenset({"api"})


class ToolNotFound(FanflowError):
    """The node names a provider or tool this process cannot run; the text says which."""


@dataclass(frozen=True)
class Provider:
    name: str
    tools: Mapping[str, Tool]
    #: reached over the network (its calls count against `tool:<name>`)
    network: bool = False
    config: ProviderConfig = field(default_factory=ProviderConfig)


def _provider(name: str, tools: tuple[Tool, ...], *, network: bool = False) -> Provider:
    return Provider(name, {tool.name: tool for tool in tools}, network=network)


BUILTIN_PROVIDERS: Mapping[str, Provider] = {
    p.name: p
    for p in (
        _provider("time", TIME_TOOLS),
        _provider("json_process", JSON_TOOLS),
        _provider("regex", REGEX_TOOLS),
        _provider("jina", JINA_TOOLS, network=True),
        _provider("firecrawl", FIRECRAWL_TOOLS, network=True),
        _provider("webscraper", WEBSCRAPER_TOOLS, network=True),
        _provider("tavily", TAVILY_TOOLS, network=True),
        _provider("searxng", SEARXNG_TOOLS, network=True),
        _provider("wikipedia", WIKIPEDIA_TOOLS, network=True),
    )
}


def provider_key(provider_id: str) -> str:
    """`langgenius/time/time` → `time`; a plain id stays as it is."""
    parts = [part for part in str(provider_id or "").split("/") if part]
    return parts[-1] if parts else ""


@dataclass(frozen=True)
class ToolCatalog:
    builtin: Mapping[str, Provider] = field(default_factory=lambda: dict(BUILTIN_PROVIDERS))
    custom: Mapping[str, Provider] = field(default_factory=dict)
    source: str | None = None
    #: knowledge-retrieval's datasets (External Knowledge API), by Dify's dataset id
    datasets: Mapping[str, DatasetConfig] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: ToolsConfig) -> ToolCatalog:
        builtin = {
            name: Provider(p.name, p.tools, p.network, config.provider(name))
            for name, p in BUILTIN_PROVIDERS.items()
        }
        custom: dict[str, Provider] = {}
        for name, spec in config.openapi.items():
            provider = Provider(
                name,
                {t.name: t for t in openapi_tools(spec)},
                network=True,
                config=ProviderConfig(base_url=spec.base_url or server_url(spec.document)),
            )
            custom[name] = provider
            if spec.provider_id:
                custom[spec.provider_id] = provider
        return cls(builtin=builtin, custom=custom, source=config.source, datasets=config.datasets)

    def find(
        self, provider_type: str, provider_id: str, provider_name: str, tool_name: str
    ) -> tuple[Provider, Tool]:
        kind = provider_type or "builtin"
        if kind in BUILTIN_TYPES:
            provider = self.builtin.get(provider_key(provider_id)) or self.builtin.get(
                provider_key(provider_name)
            )
            where = "built-in tool provider"
        elif kind in CUSTOM_TYPES:
            provider = self.custom.get(provider_name) or self.custom.get(provider_id)
            where = "custom (OpenAPI) tool provider"
        else:
            raise ToolNotFound(
                f"tool provider {provider_name or provider_id!r} (provider_type {kind!r}, tool "
                f"{tool_name!r}) is not supported: fanflow runs builtin and api (OpenAPI) tools"
            )
        shown = provider_id or provider_name
        if provider is None:
            hint = (
                f"; add it under openapi: in the tools file ({self.source})"
                if kind in CUSTOM_TYPES and self.source
                else "; add it under openapi: in the tools file (FANFLOW_TOOLS_FILE)"
                if kind in CUSTOM_TYPES
                else f"; fanflow has {', '.join(sorted(self.builtin))}"
            )
            raise ToolNotFound(f"{where} {shown!r} (tool {tool_name!r}) is not available{hint}")
        tool = provider.tools.get(tool_name)
        if tool is None:
            raise ToolNotFound(
                f"{where} {shown!r} has no tool {tool_name!r} "
                f"(it has {', '.join(sorted(provider.tools)) or 'none'})"
            )
        return provider, tool


def catalog_from_settings(settings: Settings) -> ToolCatalog:
    """Built-ins plus `FANFLOW_TOOLS_FILE` (credentials and OpenAPI providers)."""
    path = settings.tools_file
    return ToolCatalog.from_config(load_tools_file(path)) if path else ToolCatalog()


_active: ToolCatalog | None = None


def activate(catalog: ToolCatalog) -> None:
    """Make `catalog` the one this process validates tool nodes against."""
    global _active
    _active = catalog


def active_catalog() -> ToolCatalog:
    """The activated catalog; else, as `providers_from_environment` does for the LLM
    providers, the one `FANFLOW_TOOLS_FILE` gives (every process validates the same way:
    the CLI, the trigger's import, the aggregator's loads, the workers)."""
    global _active
    if _active is None:
        from fanflow.settings import Settings

        _active = catalog_from_settings(Settings())
    return _active
