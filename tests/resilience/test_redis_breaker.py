"""Circuit breakers shared through the real Redis: one process opening an upstream's
breaker stops the others; half-open probes limited fleet-wide; fallback without Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from fanflow.resilience.breaker import BreakerConfig
from fanflow.resilience.redis_breaker import SharedBreakers
from fanflow.resilience.redis_client import FleetRedis
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure, Upstreams
from tests.resilience.conftest import PrivateRedis, run_probes

ONCE = RetryPolicy(max_attempts=1)
BREAKER = BreakerConfig(window_size=10, min_calls=10, failure_rate=0.5, open_wait_s=30)
_OPEN: list[Upstreams] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _OPEN:
        await _OPEN.pop().aclose()


def worker(url: str, prefix: str, config: BreakerConfig = BREAKER, **options: float) -> Upstreams:
    redis = FleetRedis(url, prefix=prefix, **options)
    upstreams = Upstreams(breaker=config, shared_breakers=SharedBreakers(redis, config), retry=ONCE)
    _OPEN.append(upstreams)
    return upstreams


def name() -> str:
    return f"test:{uuid.uuid4().hex[:8]}"


async def fail() -> None:
    raise UpstreamFailure("HTTP 503", reason="status_5xx", retryable=True, status_code=503)


async def test_one_process_opening_the_breaker_stops_the_others_within_a_second(
    redis_url: str, redis_prefix: str
) -> None:
    upstream = name()
    start_at = time.time() + 2.0
    config = {
        "redis_url": redis_url,
        "prefix": redis_prefix,
        "upstream": upstream,
        "rps": 100,
        "start_at": start_at,
        "end_at": start_at + 4.0,
        "concurrency": 2,
        "breaker": {"window_size": 10, "min_calls": 10, "open_wait_s": 30},
    }
    probes = asyncio.create_task(asyncio.to_thread(run_probes, [config, config]))
    # this process is the worker that sees the upstream fail: 10 failures open its breaker
    failing = worker(redis_url, redis_prefix)
    await asyncio.sleep(max(0.0, start_at + 1.0 - time.time()))
    for _ in range(10):
        with pytest.raises(UpstreamFailure):
            await failing.call(upstream, fail, kind="llm")
    opened_at = time.time()
    assert failing.breaker_state(upstream) == "closed"  # the fleet's breaker holds it
    with pytest.raises(UpstreamFailure) as caught:
        await failing.call(upstream, fail, kind="llm")
    assert caught.value.reason == "breaker_open" and "shared by the fleet" in str(caught.value)
    reports = await probes
    for report in reports:
        before = [s for s in report["stamps"] if s < opened_at]
        late = [s for s in report["stamps"] if s > opened_at + 1.0]
        assert len(before) > 30  # they were calling until then (100 rps shared by two)
        assert late == [], f"{len(late)} calls more than 1 s after the breaker opened"
        assert report["refused"], "the other workers were refused"


async def test_half_open_probes_are_limited_fleet_wide_and_close_it(
    redis_url: str, redis_prefix: str
) -> None:
    upstream = name()
    config = BreakerConfig(
        window_size=4, min_calls=4, open_wait_s=0.3, half_open_probes=2, probe_timeout_s=5
    )
    workers = [worker(redis_url, redis_prefix, config) for _ in range(3)]
    for _ in range(4):
        with pytest.raises(UpstreamFailure):
            await workers[0].call(upstream, fail, kind="llm")
    await asyncio.sleep(0.35)
    ran = 0

    async def slow() -> str:
        nonlocal ran
        ran += 1
        await asyncio.sleep(0.2)
        return "ok"

    async def call(i: int) -> str:
        try:
            return await workers[i % 3].call(upstream, slow, kind="llm")
        except UpstreamFailure as failure:
            return failure.reason

    outcomes = await asyncio.gather(*(call(i) for i in range(12)))
    assert sorted(outcomes).count("ok") == 2 and ran == 2  # two probes for the whole fleet
    assert outcomes.count("breaker_open") == 10
    # both probes succeeded: closed for everyone
    assert await asyncio.gather(*(call(i) for i in range(6))) == ["ok"] * 6


async def test_a_failed_probe_opens_it_again_for_everyone(
    redis_url: str, redis_prefix: str
) -> None:
    upstream = name()
    config = BreakerConfig(window_size=4, min_calls=4, open_wait_s=0.3, half_open_probes=1)
    first, second = worker(redis_url, redis_prefix, config), worker(redis_url, redis_prefix, config)
    for _ in range(4):
        with pytest.raises(UpstreamFailure):
            await first.call(upstream, fail, kind="llm")
    await asyncio.sleep(0.35)
    with pytest.raises(UpstreamFailure) as probe:
        await second.call(upstream, fail, kind="llm")
    assert probe.value.reason == "status_5xx"  # the probe went and failed

    async def ok() -> str:
        return "ok"

    with pytest.raises(UpstreamFailure) as refused:
        await first.call(upstream, ok, kind="llm")
    assert refused.value.reason == "breaker_open"


async def test_without_redis_each_process_keeps_its_own_breaker(
    private_redis: PrivateRedis,
) -> None:
    upstream = name()
    config = BreakerConfig(window_size=4, min_calls=4, open_wait_s=30)
    alone = worker(private_redis.url, "t", config, timeout_s=0.3, retry_s=30)
    private_redis.stop()
    for _ in range(4):
        with pytest.raises(UpstreamFailure) as caught:
            await alone.call(upstream, fail, kind="llm")
        assert caught.value.reason == "status_5xx"
    assert alone.breaker_state(upstream) == "open"  # opened locally: the fallback
    with pytest.raises(UpstreamFailure) as refused:
        await alone.call(upstream, fail, kind="llm")
    assert refused.value.reason == "breaker_open"
    assert "shared by the fleet" not in str(refused.value)


async def test_a_cancelled_probe_gives_its_place_back(redis_url: str, redis_prefix: str) -> None:
    upstream = name()
    config = BreakerConfig(
        window_size=2, min_calls=2, open_wait_s=0.2, half_open_probes=1, probe_timeout_s=60
    )
    first, second = worker(redis_url, redis_prefix, config), worker(redis_url, redis_prefix, config)
    for _ in range(2):
        with pytest.raises(UpstreamFailure):
            await first.call(upstream, fail, kind="llm")
    await asyncio.sleep(0.25)

    async def hang() -> str:
        await asyncio.sleep(30)
        return "late"

    probe = asyncio.create_task(first.call(upstream, hang, kind="llm"))
    await asyncio.sleep(0.1)
    probe.cancel()  # the run stopped: the probe says nothing of the upstream
    with pytest.raises(asyncio.CancelledError):
        await probe

    async def ok() -> str:
        return "ok"

    # the round's one probe is free again: another worker's call probes and closes it
    assert await second.call(upstream, ok, kind="llm") == "ok"
    assert await first.call(upstream, ok, kind="llm") == "ok"
