"""The `llm` node against a real `fanflow mock-llm`: prompts sent, outputs, failures classified."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from fanflow.executors import ExecutionContext, execute_task
from fanflow.executors.llm import run_llm_node
from fanflow.http_pool import HttpPool
from fanflow.llm import Providers
from fanflow.resilience.breaker import BreakerConfig
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure, Upstreams
from tests.llm.conftest import MockFactory, llm_data, make_task

QUESTION = {"start.q": "how many legs has a spider", "start.topic": "arachnids"}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "legs": {"type": "integer"}},
    "required": ["name", "legs"],
}


def chat_task(**extra: Any) -> Any:
    prompt = extra.pop(
        "prompt",
        [
            {"role": "system", "text": "You know {{#context#}}."},
            {"role": "user", "text": "Q: {{#start.q#}}"},
        ],
    )
    return make_task("llm", llm_data(prompt, **extra), QUESTION)


async def test_basic_prompt_context_and_usage(mock_llm: MockFactory) -> None:
    mock = mock_llm("--mode", "echo")
    task = chat_task(context={"enabled": True, "variable_selector": ["start", "topic"]})
    outcome = await run_llm_node(task, mock.context())
    assert mock.last_body()["messages"] == [
        {"role": "system", "content": "You know arachnids."},
        {"role": "user", "content": "Q: how many legs has a spider"},
    ]
    assert mock.last_body()["model"] == "gpt-test"
    assert outcome.outputs["text"] == "Q: how many legs has a spider"
    assert outcome.outputs["finish_reason"] == "stop"
    assert outcome.outputs["reasoning_content"] == ""
    usage = outcome.outputs["usage"]
    # the mock counts words: 3 + 7 prompt, 7 completion
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        10,
        7,
        17,
    )
    assert usage["currency"] == "USD" and usage["total_price"] == 0.0
    assert outcome.total_tokens == 17
    assert "structured_output" not in outcome.outputs


async def test_jinja2_prompt(mock_llm: MockFactory) -> None:
    mock = mock_llm("--mode", "echo")
    prompt = [
        {
            "role": "user",
            "edition_type": "jinja2",
            "text": "",
            "jinja2_text": "{{ q | title }} ({{ t }})",
        }
    ]
    config = {
        "jinja2_variables": [
            {"variable": "q", "value_selector": ["start", "q"]},
            {"variable": "t", "value_selector": ["start", "topic"]},
        ]
    }
    outcome = await run_llm_node(chat_task(prompt=prompt, prompt_config=config), mock.context())
    assert outcome.outputs["text"] == "How Many Legs Has A Spider (arachnids)"


async def test_completion_params_and_key_are_sent(mock_llm: MockFactory) -> None:
    mock = mock_llm("--api-key", "sk-test")
    params = {
        "temperature": 0.3,
        "top_p": 0.8,
        "max_tokens": 99,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "stop": ["\n\n"],
        "seed": 42,
        "top_k": 3,
    }
    providers = Providers(default_base_url=mock.url, default_api_key="sk-test")
    await run_llm_node(
        chat_task(model={"completion_params": params}), ExecutionContext(llm_providers=providers)
    )
    body = mock.last_body()
    assert {k: v for k, v in body.items() if k not in ("messages", "model")} == {
        "temperature": 0.3,
        "top_p": 0.8,
        "max_tokens": 99,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "stop": ["\n\n"],
        "seed": 42,
    }
    assert mock.requests()[-1]["authorization"] == "Bearer sk-test"
    # a wrong key is a 4xx: not worth a retry
    wrong = Providers(default_base_url=mock.url, default_api_key="sk-wrong")
    with pytest.raises(UpstreamFailure) as caught:
        await run_llm_node(chat_task(), ExecutionContext(llm_providers=wrong))
    assert (caught.value.reason, caught.value.retryable, caught.value.status_code) == (
        "status_4xx",
        False,
        401,
    )
    assert "invalid API key" in str(caught.value)


async def test_structured_output(mock_llm: MockFactory) -> None:
    mock = mock_llm()
    task = chat_task(structured_output_enabled=True, structured_output={"schema": SCHEMA})
    outcome = await run_llm_node(task, mock.context())
    assert mock.last_body()["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "structured_output", "schema": SCHEMA},
    }
    structured = outcome.outputs["structured_output"]
    assert set(structured) == {"name", "legs"}
    assert isinstance(structured["name"], str) and isinstance(structured["legs"], int)
    # switched off (Dify keeps the schema around): plain text
    off = chat_task(structured_output_enabled=False, structured_output={"schema": SCHEMA})
    assert "structured_output" not in (await run_llm_node(off, mock.context())).outputs


async def test_structured_output_not_following_the_schema_is_a_format_failure(
    mock_llm: MockFactory,
) -> None:
    mock = mock_llm(replies=[{"model": "gpt-test", "json": {"name": "x", "legs": "eight"}}])
    task = chat_task(structured_output_enabled=True, structured_output={"schema": SCHEMA})
    with pytest.raises(UpstreamFailure) as caught:
        await run_llm_node(task, mock.context())
    assert (caught.value.reason, caught.value.retryable) == ("format", True)
    assert "$.legs: expected integer, got string" in str(caught.value)


async def test_separated_reasoning(mock_llm: MockFactory) -> None:
    mock = mock_llm(replies=[{"model": "gpt-test", "text": "<think>hmm, eight</think>Eight."}])
    outcome = await run_llm_node(chat_task(reasoning_format="separated"), mock.context())
    assert (outcome.outputs["text"], outcome.outputs["reasoning_content"]) == (
        "Eight.",
        "hmm, eight",
    )
    tagged = await run_llm_node(chat_task(), mock.context())
    assert tagged.outputs["text"] == "<think>hmm, eight</think>Eight."


@pytest.mark.parametrize(
    ("args", "reason", "retry_after_s"),
    [
        (("--error-rate", "1"), "status_5xx", None),
        (("--rate-limit-rate", "1", "--retry-after-s", "3"), "status_429", 3.0),
        (("--malformed-rate", "1"), "format", None),
    ],
)
async def test_faults_are_classified(
    mock_llm: MockFactory, args: tuple[str, ...], reason: str, retry_after_s: float | None
) -> None:
    mock = mock_llm(*args)
    with pytest.raises(UpstreamFailure) as caught:
        await run_llm_node(chat_task(), mock.context())
    failure = caught.value
    assert (failure.reason, failure.retryable, failure.retry_after_s) == (
        reason,
        True,
        retry_after_s,
    )
    assert str(failure).startswith(f"n1 (Node): LLM openai:gpt-test at {mock.url}/chat/completions")
    assert mock.stats()["faults"][reason if reason != "format" else "malformed"] == 1


async def test_malformed_structured_content_is_a_format_failure(mock_llm: MockFactory) -> None:
    mock = mock_llm("--malformed-rate", "1")
    task = chat_task(structured_output_enabled=True, structured_output={"schema": SCHEMA})
    with pytest.raises(
        UpstreamFailure, match="structured output: the reply is not a JSON"
    ) as caught:
        await run_llm_node(task, mock.context())
    assert caught.value.reason == "format"


async def test_timeout_and_connect_failures(mock_llm: MockFactory) -> None:
    mock = mock_llm("--timeout-rate", "1", "--timeout-sleep-s", "5")
    with pytest.raises(UpstreamFailure) as caught:
        await run_llm_node(chat_task(), mock.context(timeout_s=0.3))
    assert (caught.value.reason, caught.value.retryable) == ("timeout", True)
    assert "no reply within 0.3 s" in str(caught.value)
    closed = Providers(default_base_url="http://127.0.0.1:9/v1")  # discard port: refused
    with pytest.raises(UpstreamFailure) as caught:
        await run_llm_node(chat_task(), ExecutionContext(llm_providers=closed))
    assert (caught.value.reason, caught.value.retryable) == ("connect", True)


async def test_failed_task_results_carry_the_reason(mock_llm: MockFactory) -> None:
    mock = mock_llm(replies=[{"model": "gpt-test", "error": "context too long", "status": 400}])
    result = await execute_task(chat_task(), mock.context())
    assert result.status == "failed"
    assert result.error is not None and "HTTP 400: context too long" in result.error
    assert (result.reason, result.retryable) == ("status_4xx", False)
    limited = mock_llm("--rate-limit-rate", "1", "--retry-after-s", "2.5")
    result = await execute_task(chat_task(), limited.context())
    assert (result.reason, result.retryable, result.retry_after_ms) == ("status_429", True, 2500)


def upstream_calls(upstream: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "fanflow_upstream_calls_total", {"upstream": upstream, "kind": "llm", "outcome": outcome}
    )
    return value or 0.0


async def test_calls_through_upstreams_match_the_mock_stats(mock_llm: MockFactory) -> None:
    mock = mock_llm("--error-rate", "0.3", "--malformed-rate", "0.3", "--seed", "11")
    # a unique model name: the metrics are process-wide
    name = f"gpt-{uuid.uuid4().hex[:8]}"
    upstream = f"openai:{name}"
    upstreams = Upstreams(
        breaker=BreakerConfig(failure_rate=1.0, window_size=20, min_calls=20),
        retry=RetryPolicy(max_attempts=30, initial_backoff_s=0.001, jitter=False),
    )
    async with HttpPool() as pool:
        context = mock.context(upstreams=upstreams, http_pool=pool)
        for _ in range(5):
            outcome = await run_llm_node(chat_task(model={"name": name}), context)
            assert outcome.outputs["text"].startswith("mock-")
    stats = mock.stats()
    assert stats["succeeded"] == upstream_calls(upstream, "success") == 5
    assert stats["faults"]["status_5xx"] == upstream_calls(upstream, "status_5xx") > 0
    assert stats["faults"]["malformed"] == upstream_calls(upstream, "format") > 0
    assert stats["requests"] == 5 + stats["faults"]["status_5xx"] + stats["faults"]["malformed"]
