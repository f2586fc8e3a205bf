"""Where each LLM node's calls go: provider name → base URL, API key and model name.

`FANFLOW_LLM_BASE_URL` / `FANFLOW_LLM_API_KEY` are the defaults for every provider; a
providers file (`FANFLOW_LLM_PROVIDERS_FILE`, YAML or JSON) overrides them per provider and
per model::

    providers:
      openai: {base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
      ollama: {base_url: http://127.0.0.1:11434/v1}
    models:
      "openai:gpt-4o": {model: gpt-4o-2024-08-06}
      "ollama:llama3.1:latest": {base_url: http://gpu-box:11434/v1}
      "openai:gpt-4o": {fallback_models: ["azure:gpt-4o", "openai:gpt-4o-mini"]}

A model's `fallback_models` (`provider:model`, or `{provider, name}`) are where its calls
move when it fails (`fanflow.llm.failover`), after the node's own `fanflow.fallback_models`.

An API key is only ever sent to the base URL it was configured with: a model entry's key
wins, then its provider's, and the default key applies only when the base URL is the default
one too. So a provider that overrides the base URL without a key gets no key, never the
default one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from fanflow.errors import FanflowError, Problem
from fanflow.registry import LLM_NODE_TYPES

#: node types that call an LLM
DEFAULT_TIMEOUT_S = 60.0


class ProvidersInvalid(FanflowError):
    """The providers file cannot be read or has the wrong shape; the text says where."""


class ProviderNotConfigured(FanflowError):
    """No base URL for a provider/model; the text says which setting to add."""


@dataclass(frozen=True)
class Endpoint:
    """One resolved target: POST `{base_url}/chat/completions` for `model`."""

    provider: str
    model: str
    base_url: str
    api_key: str | None = None

    @property
    def upstream(self) -> str:
        """The name breakers and metrics know this target by."""
        return f"{self.provider}:{self.model}"


@dataclass(frozen=True)
class _Entry:
    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    #: (provider, model) to fail over to, in order
    fallbacks: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Providers:
    """The LLM targets of one process; `resolve()` per node call."""

    default_base_url: str | None = None
    default_api_key: str | None = None
    providers: Mapping[str, _Entry] = field(default_factory=dict)
    models: Mapping[str, _Entry] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S
    source: str | None = None  # the providers file, for messages

    @classmethod
    def from_settings(cls, settings: Any) -> Providers:
        """Build from `fanflow.settings.Settings` (the `llm_*` fields)."""
        path = settings.llm_providers_file
        providers, models = _load_file(Path(path)) if path else ({}, {})
        return cls(
            default_base_url=settings.llm_base_url or None,
            default_api_key=settings.llm_api_key or None,
            providers=providers,
            models=models,
            timeout_s=settings.llm_timeout_s,
            source=str(path) if path else None,
        )

    @classmethod
    def from_mapping(
        cls,
        config: Mapping[str, Any],
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        environ: Mapping[str, str] | None = None,
    ) -> Providers:
        """Build from the providers file's content (already parsed) and the defaults."""
        providers, models = _parse(config, where="providers config", environ=environ)
        return cls(base_url, api_key, providers, models, timeout_s)

    def resolve(self, provider: str, model: str) -> Endpoint:
        """The endpoint for a node's `model.provider` and `model.name`."""
        name = provider_name(provider)
        found = (self.models.get(f"{name}:{model}"), self.providers.get(name))
        levels = [level for level in found if level is not None]
        alias = next((level.model for level in levels if level.model), None) or model
        base_url: str | None = None
        api_key: str | None = None
        for level in levels:
            api_key = api_key or level.api_key
            if level.base_url:
                base_url = level.base_url
                break
        else:
            base_url = self.default_base_url
            api_key = api_key or self.default_api_key
        if not base_url:
            raise ProviderNotConfigured(self._missing(name, model))
        return Endpoint(name, alias, base_url.rstrip("/"), api_key or None)

    def fallbacks(self, provider: str, model: str) -> tuple[tuple[str, str], ...]:
        """The providers file's fallbacks of a node's `model.provider` and `model.name`."""
        entry = self.models.get(f"{provider_name(provider)}:{model}")
        return entry.fallbacks if entry is not None else ()

    def _missing(self, name: str, model: str) -> str:
        where = f"the providers file {self.source}" if self.source else "a providers file"
        return (
            f"no base URL for LLM provider {name!r} (model {model!r}): set "
            f"FANFLOW_LLM_BASE_URL, or give providers.{name}.base_url in {where} "
            "(FANFLOW_LLM_PROVIDERS_FILE)"
        )


def provider_name(provider: str) -> str:
    """Dify's plugin ids (`langgenius/openai/openai`) name the provider last; empty → `default`."""
    parts = [part for part in str(provider or "").split("/") if part]
    return parts[-1] if parts else "default"


def providers_from_environment() -> Providers:
    """The process's providers when the caller passed none: `Settings()` from the env."""
    from fanflow.settings import Settings

    settings = Settings()
    path = settings.llm_providers_file
    providers, models = _load_cached(str(path), _mtime(path)) if path else ({}, {})
    return Providers(
        settings.llm_base_url or None,
        settings.llm_api_key or None,
        providers,
        models,
        settings.llm_timeout_s,
        str(path) if path else None,
    )


def check_llm_config(workflow: Any, providers: Providers) -> list[Problem]:
    """A problem per LLM-backed node of `workflow` whose provider has no base URL."""
    problems: list[Problem] = []
    for node in workflow.nodes.values():
        if node.type not in LLM_NODE_TYPES:
            continue
        model = node.data.get("model")
        if not isinstance(model, Mapping):
            continue  # the DSL checks report this one
        try:
            providers.resolve(str(model.get("provider") or ""), str(model.get("name") or ""))
        except ProviderNotConfigured as exc:
            problems.append(Problem(str(exc), node.id, node.title or None))
    return problems


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> tuple[dict[str, _Entry], dict[str, _Entry]]:
    return _load_file(Path(path))


def _load_file(path: Path) -> tuple[dict[str, _Entry], dict[str, _Entry]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvidersInvalid(f"cannot read the LLM providers file {path}: {exc}") from exc
    try:
        config = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ProvidersInvalid(f"the LLM providers file {path} is not valid: {exc}") from exc
    return _parse(config or {}, where=str(path), environ=None)


def _parse(
    config: Any, *, where: str, environ: Mapping[str, str] | None
) -> tuple[dict[str, _Entry], dict[str, _Entry]]:
    if not isinstance(config, Mapping):
        raise ProvidersInvalid(f"{where}: expected a mapping with `providers` and/or `models`")
    unknown = set(config) - {"providers", "models"}
    if unknown:
        raise ProvidersInvalid(f"{where}: unknown top-level key(s) {sorted(unknown)}")
    env = os.environ if environ is None else environ
    sections = []
    for section in ("providers", "models"):
        entries = config.get(section) or {}
        if not isinstance(entries, Mapping):
            raise ProvidersInvalid(f"{where}: `{section}` must be a mapping of name → settings")
        sections.append(
            {
                str(name): _entry(value, f"{where}: {section}.{name}", env)
                for name, value in entries.items()
            }
        )
    return sections[0], sections[1]


def _entry(value: Any, where: str, env: Mapping[str, str]) -> _Entry:
    if not isinstance(value, Mapping):
        raise ProvidersInvalid(f"{where}: expected a mapping {{base_url, api_key, model}}")
    unknown = set(value) - {"base_url", "api_key", "api_key_env", "model", "fallback_models"}
    if unknown:
        raise ProvidersInvalid(f"{where}: unknown key(s) {sorted(unknown)}")
    fallbacks = _fallbacks(value.get("fallback_models"), f"{where}.fallback_models")
    for key in ("base_url", "api_key", "api_key_env", "model"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise ProvidersInvalid(f"{where}.{key}: expected text, got {value[key]!r}")
    api_key = value.get("api_key")
    if not api_key and value.get("api_key_env"):
        api_key = env.get(value["api_key_env"])
        if not api_key:
            raise ProvidersInvalid(
                f"{where}.api_key_env: environment variable {value['api_key_env']} is not set"
            )
    return _Entry(
        value.get("base_url") or None, api_key or None, value.get("model") or None, fallbacks
    )


def _fallbacks(value: Any, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ProvidersInvalid(f"{where}: expected a list of `provider:model` names")
    found = []
    for index, entry in enumerate(value):
        if isinstance(entry, str) and ":" in entry.strip(":"):
            provider, model = entry.split(":", 1)
            found.append((provider, model))
        elif isinstance(entry, Mapping) and entry.get("provider") and entry.get("name"):
            found.append((str(entry["provider"]), str(entry["name"])))
        else:
            raise ProvidersInvalid(
                f"{where}[{index}]: expected `provider:model` or {{provider, name}}, got {entry!r}"
            )
    return tuple(found)
