"""Which base URL, key and model name each node's calls use; config errors name the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fanflow.dsl.load import load_workflow
from fanflow.executors import ExecutionContext, execute_task
from fanflow.executors.llm import run_llm_node
from fanflow.llm import (
    Endpoint,
    ProviderNotConfigured,
    Providers,
    ProvidersInvalid,
    check_llm_config,
    providers_from_environment,
)
from fanflow.resilience.upstreams import UpstreamFailure
from tests.llm.conftest import LLM_DATA, make_task

CONFIG = {
    "providers": {
        "openai": {"base_url": "https://api.openai.example/v1/", "api_key": "sk-openai"},
        "ollama": {"base_url": "http://ollama:11434/v1"},
        "keyed": {"api_key": "sk-keyed"},
    },
    "models": {
        "openai:gpt-4o": {"model": "gpt-4o-2024-08-06"},
        "openai:special": {"base_url": "https://special.example/v1", "api_key": "sk-special"},
        "anthropic:claude": {"base_url": "https://proxy.example/v1"},
    },
}


def providers(**defaults: str) -> Providers:
    return Providers.from_mapping(CONFIG, **defaults)


def test_defaults_apply_to_unlisted_providers() -> None:
    resolved = providers(base_url="http://default/v1", api_key="sk-default").resolve("groq", "m")
    assert resolved == Endpoint("groq", "m", "http://default/v1", "sk-default")
    assert resolved.upstream == "groq:m"


def test_provider_and_model_overrides() -> None:
    p = providers(base_url="http://default/v1", api_key="sk-default")
    assert p.resolve("openai", "gpt-4o") == Endpoint(
        "openai", "gpt-4o-2024-08-06", "https://api.openai.example/v1", "sk-openai"
    )
    assert p.resolve("openai", "special") == Endpoint(
        "openai", "special", "https://special.example/v1", "sk-special"
    )
    # Dify's plugin ids name the provider last
    assert p.resolve("langgenius/openai/openai", "x").base_url == "https://api.openai.example/v1"
    # a provider with only a key uses the default base URL with its own key
    assert p.resolve("keyed", "m") == Endpoint("keyed", "m", "http://default/v1", "sk-keyed")


def test_the_default_key_never_goes_to_another_base_url() -> None:
    p = providers(base_url="http://default/v1", api_key="sk-default")
    assert p.resolve("ollama", "llama3").api_key is None
    assert p.resolve("anthropic", "claude").api_key is None


def test_missing_base_url_names_provider_and_setting() -> None:
    with pytest.raises(ProviderNotConfigured) as caught:
        providers().resolve("groq", "mixtral")
    message = str(caught.value)
    assert "'groq'" in message and "'mixtral'" in message
    assert "FANFLOW_LLM_BASE_URL" in message and "providers.groq.base_url" in message


def test_providers_file_yaml_json_and_key_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    yaml_file = tmp_path / "providers.yaml"
    yaml_file.write_text(
        "providers:\n  openai: {base_url: 'http://o/v1', api_key_env: MY_OPENAI_KEY}\n",
        encoding="utf-8",
    )
    json_file = tmp_path / "providers.json"
    json_file.write_text(json.dumps(CONFIG), encoding="utf-8")
    monkeypatch.setenv("MY_OPENAI_KEY", "sk-from-env")
    monkeypatch.setenv("FANFLOW_LLM_PROVIDERS_FILE", str(yaml_file))
    monkeypatch.setenv("FANFLOW_LLM_BASE_URL", "http://default/v1")
    monkeypatch.setenv("FANFLOW_LLM_TIMEOUT_S", "7.5")
    from_env = providers_from_environment()
    assert from_env.resolve("openai", "m").api_key == "sk-from-env"
    assert from_env.resolve("other", "m").base_url == "http://default/v1"
    assert from_env.timeout_s == 7.5
    monkeypatch.setenv("FANFLOW_LLM_PROVIDERS_FILE", str(json_file))
    assert providers_from_environment().resolve("openai", "gpt-4o").model == "gpt-4o-2024-08-06"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("providers: [1, 2]", "`providers` must be a mapping"),
        ("providers: {openai: {base_url: 3}}", "providers.openai.base_url: expected text"),
        ("providers: {openai: {url: x}}", "unknown key(s) ['url']"),
        ("other: {}", "unknown top-level key(s) ['other']"),
        ("providers: {openai: {api_key_env: FANFLOW_TEST_UNSET_VAR}}", "is not set"),
        ("providers: {", "is not valid"),
    ],
)
def test_invalid_providers_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "providers.yaml"
    path.write_text(content, encoding="utf-8")

    class FakeSettings:
        llm_providers_file = path
        llm_base_url = None
        llm_api_key = None
        llm_timeout_s = 60.0

    with pytest.raises(ProvidersInvalid) as caught:
        Providers.from_settings(FakeSettings())
    assert message in str(caught.value) and str(path) in str(caught.value)


def test_check_llm_config_lists_nodes_without_a_base_url() -> None:
    workflow = load_workflow(LLM_DATA / "classify_route.yml")
    problems = check_llm_config(workflow, Providers())
    assert [(p.node_id, p.node_title) for p in problems] == [("classify", "Classify")]
    assert "FANFLOW_LLM_BASE_URL" in str(problems[0])
    assert check_llm_config(workflow, Providers(default_base_url="http://x/v1")) == []


async def test_node_without_base_url_fails_with_a_clear_error() -> None:
    task = make_task(
        "llm",
        {
            "model": {"provider": "groq", "name": "mixtral", "mode": "chat"},
            "prompt_template": [{"role": "user", "text": "hi"}],
        },
    )
    context = ExecutionContext(llm_providers=Providers())
    with pytest.raises(UpstreamFailure) as caught:
        await run_llm_node(task, context)
    assert caught.value.retryable is False and caught.value.reason == "invalid"
    result = await execute_task(task, context)
    assert result.status == "failed" and result.error_type == "LLMConfigError"
    assert (result.reason, result.retryable) == ("invalid", False)
    assert result.error is not None
    assert result.error.startswith("n1 (Node): no base URL for LLM provider 'groq'")
    assert "FANFLOW_LLM_BASE_URL" in result.error
