"""Cost accounting against a real `fanflow mock-llm`: every billed answer counted once
(retries and parallel iterations included), prices, a per-run budget, a shared ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from fanflow.context import ExecutionContext
from fanflow.dsl import load_workflow
from fanflow.executors.llm import run_llm_node
from fanflow.llm import Providers
from fanflow.llm.costs import CostAccounting, MemoryLedger, Price, Prices, RedisLedger
from fanflow.resilience.redis_client import FleetRedis
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure, Upstreams
from fanflow.runner import EmbeddedRunner
from fanflow.runtime import RunRequest
from tests.llm.conftest import ROOT, MockFactory, llm_data, make_task

FAST = RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.005, max_attempts=4)
#: per million tokens
PRICE = Price(prompt=2.0, completion=8.0)


def tokens(model: str, kind: str) -> float:
    return (
        REGISTRY.get_sample_value("fanflow_llm_tokens_total", {"model": model, "kind": kind}) or 0
    )


def task(model: str, *, run_id: str = "run", **extra: Any):  # type: ignore[no-untyped-def]
    data = llm_data([{"role": "user", "text": "one two three"}], model={"name": model}, **extra)
    built = make_task("llm", data)
    return built.model_copy(update={"run_id": run_id})


def context(mock: Any, costs: CostAccounting, **options: Any) -> ExecutionContext:
    return ExecutionContext(
        llm_providers=Providers(default_base_url=mock.url, timeout_s=10),
        upstreams=Upstreams(retry=FAST),
        llm_costs=costs,
        **options,
    )


async def test_usage_carries_prices_and_metrics_count_tokens(mock_llm: MockFactory) -> None:
    mock = mock_llm("--mode", "echo")
    model = f"priced-{uuid.uuid4().hex[:6]}"
    costs = CostAccounting(prices=Prices({f"openai:{model}": PRICE}))
    outcome = await run_llm_node(task(model), context(mock, costs))
    usage = outcome.outputs["usage"]
    # the mock counts words: 3 prompt, 3 completion
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 3)
    assert usage["prompt_unit_price"] == 2.0 and usage["prompt_price_unit"] == 1e-6
    assert usage["prompt_price"] == pytest.approx(6e-6)
    assert usage["completion_price"] == pytest.approx(24e-6)
    assert usage["total_price"] == pytest.approx(30e-6) and usage["currency"] == "USD"
    assert tokens(f"openai:{model}", "prompt") == 3 and tokens(f"openai:{model}", "completion") == 3
    cost = REGISTRY.get_sample_value(
        "fanflow_llm_cost_total", {"model": f"openai:{model}", "currency": "USD"}
    )
    assert cost == pytest.approx(30e-6)


async def test_a_100_item_parallel_iteration_counts_exactly_what_the_mock_billed(
    mock_llm: MockFactory,
) -> None:
    # 503s and 429s on a quarter of the requests: retried in the worker and by the scheduler
    mock = mock_llm("--error-rate", "0.15", "--rate-limit-rate", "0.1", "--retry-after-s", "0.01")
    ledger = MemoryLedger()
    costs = CostAccounting(prices=Prices({"openai:mock": PRICE}), ledger=ledger)
    before = tokens("openai:mock", "prompt") + tokens("openai:mock", "completion")
    workflow = load_workflow(ROOT / "tests" / "data" / "e2e" / "llm_fanout.yml")
    runner = EmbeddedRunner(context=context(mock, costs))
    result = await runner.async_run(workflow, RunRequest(inputs={"n": 100}))
    assert result.status == "succeeded", result.error
    stats = mock.stats()
    assert stats["faults"]["status_5xx"] + stats["faults"]["status_429"] > 10
    billed = (stats["prompt_tokens"], stats["completion_tokens"])
    prompt, completion, cost = ledger.totals(result.id)
    assert (prompt, completion) == billed
    assert result.total_tokens == sum(billed)  # the run's own count: no item twice
    after = tokens("openai:mock", "prompt") + tokens("openai:mock", "completion")
    assert after - before == sum(billed)
    assert cost == pytest.approx((billed[0] * 2.0 + billed[1] * 8.0) / 1e6)


async def test_answers_that_fail_their_check_were_billed_and_are_counted(
    mock_llm: MockFactory,
) -> None:
    model = f"notjson-{uuid.uuid4().hex[:6]}"
    mock = mock_llm(replies=[{"model": model, "text": "not json at all"}])
    ledger = MemoryLedger()
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    structured = {"structured_output_enabled": True, "structured_output": {"schema": schema}}
    with pytest.raises(UpstreamFailure) as caught:
        await run_llm_node(
            task(model, run_id="r1", **structured), context(mock, CostAccounting(ledger=ledger))
        )
    assert caught.value.reason == "format"
    stats = mock.stats()
    assert stats["succeeded"] == 4  # four attempts, each answered and billed
    assert ledger.totals("r1")[:2] == (stats["prompt_tokens"], stats["completion_tokens"])


async def test_the_run_budget_stops_the_run_with_a_clear_error(mock_llm: MockFactory) -> None:
    mock = mock_llm("--mode", "echo")
    # 30e-6 a call: the second call crosses 50e-6
    costs = CostAccounting(prices=Prices({"openai:*": PRICE}), run_budget=50e-6)
    ctx = context(mock, costs)
    await run_llm_node(task("m", run_id="r1"), ctx)
    with pytest.raises(UpstreamFailure) as crossed:
        await run_llm_node(task("m", run_id="r1"), ctx)
    assert crossed.value.error_type == "BudgetExceededError" and not crossed.value.retryable
    assert "the run's LLM budget of 5e-05 is spent (0.000060 so far" in str(crossed.value)
    assert str(crossed.value).startswith("n1 (Node): ")
    with pytest.raises(UpstreamFailure) as refused:
        await run_llm_node(task("m", run_id="r1"), ctx)
    assert refused.value.error_type == "BudgetExceededError"
    assert mock.stats()["requests"] == 2  # refused before calling
    await run_llm_node(task("m", run_id="r2"), ctx)  # another run has its own budget

    workflow = load_workflow(ROOT / "tests" / "data" / "e2e" / "llm_fanout.yml")
    result = await EmbeddedRunner(context=ctx).async_run(workflow, RunRequest(inputs={"n": 5}))
    assert result.status == "failed"
    assert result.error is not None and "LLM budget of 5e-05 is spent" in result.error


async def test_workers_share_a_runs_ledger_and_budget_through_redis(
    mock_llm: MockFactory, redis_url: str, redis_prefix: str
) -> None:
    mock = mock_llm("--mode", "echo")
    clients = [FleetRedis(redis_url, prefix=redis_prefix) for _ in range(2)]
    workers = [
        context(
            mock,
            CostAccounting(
                prices=Prices({"openai:*": PRICE}), ledger=RedisLedger(c), run_budget=100e-6
            ),
        )
        for c in clients
    ]
    run_id = uuid.uuid4().hex
    for i in range(3):  # 90e-6 across both workers
        await run_llm_node(task("m", run_id=run_id), workers[i % 2])
    with pytest.raises(UpstreamFailure, match=r"LLM budget of 0\.0001 is spent"):
        await run_llm_node(task("m", run_id=run_id), workers[1])  # crosses it: 120e-6
    with pytest.raises(UpstreamFailure, match="LLM budget"):
        await run_llm_node(task("m", run_id=run_id), workers[0])
    assert mock.stats()["requests"] == 4
    for client in clients:
        await client.aclose()


def test_prices_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.yml"
    path.write_text('"openai:gpt-4o": {prompt: 2.5, completion: 10}\n"ollama:*": {prompt: 0}\n')
    prices = Prices.load(path)
    assert prices.of("openai:gpt-4o") == Price(2.5, 10.0)
    assert prices.of("ollama:llama3") == Price(0.0, 0.0)
    assert prices.of("openai:other") is None
    path.write_text('"openai:x": {prompt: 1, cost: 3}\n')
    with pytest.raises(ValueError, match=r"the price of 'openai:x' must be a mapping with keys"):
        Prices.load(path)


def test_fanflow_run_wires_prices_budget_and_the_redis_ledger(
    mock_llm: MockFactory, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """`fanflow run` builds the accounting from its settings: the prices file, the budget,
    and with FANFLOW_REDIS_URL the ledger (and cache, limits, breakers) in Redis."""
    mock = mock_llm("--mode", "echo")
    prices = tmp_path / "prices.yml"
    prices.write_text('"openai:*": {prompt: 1000, completion: 1000}\n')  # per million tokens
    env = {
        **os.environ,
        "FANFLOW_LLM_BASE_URL": mock.url,
        "FANFLOW_LLM_PRICES_FILE": str(prices),
        "FANFLOW_LLM_RUN_BUDGET": "0.05",  # ~0.012 a call: the fifth call crosses it
        "FANFLOW_REDIS_URL": redis_url,
        "FANFLOW_REDIS_PREFIX": redis_prefix,
    }
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"n": 30}))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fanflow_services.cli",
            "run",
            str(ROOT / "tests" / "data" / "e2e" / "llm_fanout.yml"),
            "--inputs-file",
            str(inputs),
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    run = json.loads(done.stdout)
    assert run["status"] == "failed"
    assert "the run's LLM budget of 0.05 is spent" in run["error"]
    ledger = redis.Redis.from_url(redis_url).hgetall(f"{redis_prefix}:run:{run['id']}:llm")
    assert float(ledger[b"cost"]) > 0.05
    billed = mock.stats()
    assert int(ledger[b"prompt_tokens"]) == billed["prompt_tokens"]
    assert int(ledger[b"completion_tokens"]) == billed["completion_tokens"]
