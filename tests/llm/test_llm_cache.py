"""The LLM response cache (`fanflow: {cache: {ttl_s}}`) against a real `fanflow mock-llm`:
in memory and in the real Redis, per app, temperature 0 only by default."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY

from fanflow.errors import NodeError
from fanflow.executors.llm import run_llm_node
from fanflow.llm.cache import MemoryCache, RedisCache
from fanflow.resilience.redis_client import FleetRedis
from tests.llm.conftest import MockFactory, llm_data, make_task
from tests.resilience.conftest import PrivateRedis

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def task(*, app: str | None = "app-1", temperature: float = 0, cache: Any = None, **extra: Any):  # type: ignore[no-untyped-def]
    data = llm_data(
        [{"role": "user", "text": "say {{#start.q#}}"}],
        model={"completion_params": {"temperature": temperature}},
        fanflow={"cache": cache if cache is not None else {"ttl_s": 60}},
        **extra,
    )
    variables: dict[str, Any] = {"start.q": "cheese"}
    if app is not None:
        variables["sys.app_id"] = app
    return make_task("llm", data, variables)


def cache_count(result: str) -> float:
    return REGISTRY.get_sample_value("fanflow_llm_cache_requests_total", {"result": result}) or 0


async def test_the_second_identical_call_is_answered_from_memory(mock_llm: MockFactory) -> None:
    mock = mock_llm("--mode", "echo")
    context = mock.context(llm_cache=MemoryCache())
    hits, misses = cache_count("hit"), cache_count("miss")
    first = await run_llm_node(task(), context)
    second = await run_llm_node(task(), context)
    assert mock.stats()["requests"] == 1
    assert first.outputs["text"] == second.outputs["text"] == "say cheese"
    assert first.total_tokens > 0 and second.total_tokens == 0  # a hit costs nothing
    assert (cache_count("hit") - hits, cache_count("miss") - misses) == (1, 1)


async def test_other_apps_temperatures_and_prompts_are_other_entries(
    mock_llm: MockFactory,
) -> None:
    mock = mock_llm("--mode", "echo")
    context = mock.context(llm_cache=MemoryCache())
    await run_llm_node(task(app="app-1"), context)
    await run_llm_node(task(app="app-2"), context)  # never shared across apps
    await run_llm_node(task(temperature=0.7), context)  # sampled: not cached
    await run_llm_node(task(temperature=0.7), context)
    await run_llm_node(task(temperature=0.7, cache={"ttl_s": 60, "any_temperature": True}), context)
    await run_llm_node(task(temperature=0.7, cache={"ttl_s": 60, "any_temperature": True}), context)
    assert mock.stats()["requests"] == 5


async def test_a_task_without_its_app_is_not_cached(mock_llm: MockFactory) -> None:
    mock = mock_llm("--mode", "echo")
    context = mock.context(llm_cache=MemoryCache())
    before = cache_count("no_app")
    await run_llm_node(task(app=None), context)
    await run_llm_node(task(app=None), context)
    assert mock.stats()["requests"] == 2
    assert cache_count("no_app") - before == 2


async def test_entries_expire_after_their_ttl(mock_llm: MockFactory) -> None:
    mock = mock_llm("--mode", "echo")
    context = mock.context(llm_cache=MemoryCache())
    await run_llm_node(task(cache={"ttl_s": 0.2}), context)
    await run_llm_node(task(cache={"ttl_s": 0.2}), context)
    await asyncio.sleep(0.3)
    await run_llm_node(task(cache={"ttl_s": 0.2}), context)
    assert mock.stats()["requests"] == 2


async def test_structured_output_is_checked_on_a_hit_too(mock_llm: MockFactory) -> None:
    mock = mock_llm()
    context = mock.context(llm_cache=MemoryCache())
    extra = {"structured_output_enabled": True, "structured_output": {"schema": SCHEMA}}
    first = await run_llm_node(task(**extra), context)
    second = await run_llm_node(task(**extra), context)
    assert mock.stats()["requests"] == 1
    assert second.outputs["structured_output"] == first.outputs["structured_output"]
    assert isinstance(second.outputs["structured_output"]["n"], int)


async def test_workers_share_answers_through_redis(
    mock_llm: MockFactory, redis_url: str, redis_prefix: str
) -> None:
    mock = mock_llm("--mode", "echo")
    clients = [FleetRedis(redis_url, prefix=redis_prefix) for _ in range(2)]
    workers = [mock.context(llm_cache=RedisCache(client)) for client in clients]
    app = f"app-{uuid.uuid4().hex[:6]}"
    first = await run_llm_node(task(app=app), workers[0])
    second = await run_llm_node(task(app=app), workers[1])
    other_app = await run_llm_node(task(app=f"{app}-other"), workers[1])
    assert mock.stats()["requests"] == 2
    assert first.outputs["text"] == second.outputs["text"] == other_app.outputs["text"]
    for client in clients:
        await client.aclose()


async def test_redis_away_means_misses_not_failures(
    mock_llm: MockFactory, private_redis: PrivateRedis
) -> None:
    mock = mock_llm("--mode", "echo")
    client = FleetRedis(private_redis.url, prefix="t", timeout_s=0.3)
    context = mock.context(llm_cache=RedisCache(client))
    await run_llm_node(task(), context)
    await run_llm_node(task(), context)
    assert mock.stats()["requests"] == 1
    private_redis.stop()
    outcome = await run_llm_node(task(), context)
    assert outcome.outputs["text"] == "say cheese"
    assert mock.stats()["requests"] == 2
    await client.aclose()


async def test_a_bad_cache_config_is_named(mock_llm: MockFactory) -> None:
    mock = mock_llm("--mode", "echo")
    with pytest.raises(
        NodeError, match=r"n1 \(Node\): fanflow.cache must be a mapping with `ttl_s`"
    ):
        await run_llm_node(task(cache={"ttl": 5}), mock.context(llm_cache=MemoryCache()))
    assert mock.stats()["requests"] == 0
