"""Provider failover against a real `fanflow mock-llm` answering 503, 429 and 400 for the
primary model: the call moves to the fallback, and the outputs record which model answered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from fanflow.context import ExecutionContext
from fanflow.errors import NodeError
from fanflow.executors.llm import run_llm_node
from fanflow.llm import Providers
from fanflow.resilience.breaker import BreakerConfig
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure, Upstreams
from tests.llm.conftest import LLM_DATA, ROOT, MockFactory, llm_data, make_task

FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.005)


def failing(model: str, status: int) -> list[dict[str, Any]]:
    return [{"model": model, "error": f"{model} is down", "status": status}]


def task(fallbacks: Any, *, name: str = "primary") -> Any:
    data = llm_data(
        [{"role": "user", "text": "hello {{#start.q#}}"}],
        model={"name": name},
        fanflow={"fallback_models": fallbacks},
    )
    return make_task("llm", data, {"start.q": "there"})


def models_asked(mock: Any) -> list[str]:
    return [request["body"]["model"] for request in mock.requests()]


@pytest.mark.parametrize(("status", "reason"), [(503, "status_5xx"), (429, "status_429")])
async def test_a_failing_primary_fails_over_after_its_retries(
    mock_llm: MockFactory, status: int, reason: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    mock = mock_llm("--mode", "echo", replies=failing(f"primary-{suffix}", status))
    before = REGISTRY.get_sample_value(
        "fanflow_llm_failovers_total", {"model": f"openai:primary-{suffix}", "reason": reason}
    )
    outcome = await run_llm_node(
        task(["backup"], name=f"primary-{suffix}"),
        mock.context(upstreams=Upstreams(retry=FAST)),
    )
    assert outcome.outputs["text"] == "hello there"
    assert outcome.outputs["model"] == {
        "provider": "openai",
        "name": "backup",
        "failed_over": [{"model": f"openai:primary-{suffix}", "reason": reason}],
    }
    # the primary got its three attempts, then the fallback answered at once
    assert models_asked(mock) == [f"primary-{suffix}"] * 3 + ["backup"]
    after = REGISTRY.get_sample_value(
        "fanflow_llm_failovers_total", {"model": f"openai:primary-{suffix}", "reason": reason}
    )
    assert (after or 0) - (before or 0) == 1


async def test_an_open_breaker_fails_over_without_calling_the_primary(
    mock_llm: MockFactory,
) -> None:
    mock = mock_llm("--mode", "echo", replies=failing("primary", 503))
    upstreams = Upstreams(
        retry=RetryPolicy(max_attempts=1),
        breaker=BreakerConfig(window_size=2, min_calls=2, open_wait_s=60),
    )
    context = mock.context(upstreams=upstreams)
    for _ in range(2):  # no fallbacks: the node fails, the breaker counts
        with pytest.raises(UpstreamFailure):
            await run_llm_node(task([]), context)
    assert upstreams.breaker_state("openai:primary") == "open"
    outcome = await run_llm_node(task([{"name": "backup"}]), context)
    assert outcome.outputs["model"]["failed_over"] == [
        {"model": "openai:primary", "reason": "breaker_open"}
    ]
    assert models_asked(mock) == ["primary", "primary", "backup"]


async def test_a_4xx_does_not_fail_over(mock_llm: MockFactory) -> None:
    mock = mock_llm("--mode", "echo", replies=failing("primary", 400))
    with pytest.raises(UpstreamFailure) as caught:
        await run_llm_node(task(["backup"]), mock.context(upstreams=Upstreams(retry=FAST)))
    assert caught.value.reason == "status_4xx"
    assert models_asked(mock) == ["primary"]


async def test_every_model_failing_names_them_all(mock_llm: MockFactory) -> None:
    rules = failing("primary", 503) + failing("second", 503) + failing("third", 429)
    mock = mock_llm("--mode", "echo", replies=rules)
    fallbacks = ["second", {"provider": "other", "name": "third"}]
    with pytest.raises(UpstreamFailure) as caught:
        await run_llm_node(
            task(fallbacks),
            mock.context(upstreams=Upstreams(retry=RetryPolicy(max_attempts=1))),
        )
    assert caught.value.reason == "status_429"
    assert "after failing over from openai:primary, openai:second" in str(caught.value)
    assert models_asked(mock) == ["primary", "second", "third"]


async def test_fallbacks_from_the_providers_file_come_after_the_nodes(
    mock_llm: MockFactory,
) -> None:
    rules = failing("primary", 503) + failing("node-backup", 503)
    mock = mock_llm("--mode", "echo", replies=rules)
    providers = Providers.from_mapping(
        {"models": {"openai:primary": {"fallback_models": ["openai:file-backup"]}}},
        base_url=mock.url,
    )
    context = ExecutionContext(
        llm_providers=providers, upstreams=Upstreams(retry=RetryPolicy(max_attempts=1))
    )
    outcome = await run_llm_node(task(["node-backup"]), context)
    assert outcome.outputs["model"]["name"] == "file-backup"
    assert models_asked(mock) == ["primary", "node-backup", "file-backup"]


async def test_bad_fallback_lists_are_named() -> None:
    # refused before any call: nothing listens there
    unreachable = ExecutionContext(llm_providers=Providers(default_base_url="http://127.0.0.1:9"))
    with pytest.raises(NodeError, match=r"n1 \(Node\): fanflow.fallback_models must be a list"):
        await run_llm_node(task("backup"), unreachable)
    with pytest.raises(NodeError, match=r"fallback_models\[1\]: expected a model name"):
        await run_llm_node(task(["a", {"provider": "x"}]), unreachable)


def test_providers_file_fallbacks_are_checked() -> None:
    from fanflow.llm.providers import ProvidersInvalid

    with pytest.raises(ProvidersInvalid, match=r"models.openai:a.fallback_models\[0\]"):
        Providers.from_mapping({"models": {"openai:a": {"fallback_models": ["nocolon"]}}})


def test_a_run_records_which_model_answered(mock_llm: MockFactory) -> None:
    mock = mock_llm("--mode", "echo", replies=failing("primary", 503))
    env = {**os.environ, "FANFLOW_LLM_BASE_URL": mock.url}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fanflow_services.cli",
            "run",
            str(LLM_DATA / "failover.yml"),
            "-i",
            "q=ping",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "succeeded"
    assert run["outputs"]["text"] == "ping"
    assert run["outputs"]["model"]["name"] == "backup"
    assert run["outputs"]["model"]["failed_over"] == [
        {"model": "openai:primary", "reason": "status_5xx"}
    ]
