"""A worker-like process for the fleet tests: `concurrency` loops call one upstream through
`Upstreams` from `start_at` to `end_at` (epoch seconds); prints the epoch time of every
attempt that ran, and of every refusal, as JSON. Without `redis_url`, the limits and the
breaker are this process's own.

    python -m tests.resilience.fleet_probe '{"redis_url": ..., "prefix": ..., "upstream": ...,
        "rps": 50, "start_at": ..., "end_at": ..., "concurrency": 8, "breaker": {...}}'
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx

from fanflow.llm.client import chat
from fanflow.llm.providers import Endpoint
from fanflow.resilience.breaker import BreakerConfig
from fanflow.resilience.ratelimit import UpstreamLimits
from fanflow.resilience.redis_breaker import SharedBreakers
from fanflow.resilience.redis_client import FleetRedis
from fanflow.resilience.redis_limits import FleetLimiter
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure, Upstreams


async def main(config: dict[str, Any]) -> None:
    url = config.get("redis_url")
    breaker = BreakerConfig(**config.get("breaker", {}))
    redis = FleetRedis(url, prefix=config["prefix"]) if url else None
    upstream = config["upstream"]
    rps = config.get("rps")
    upstreams = Upstreams(
        limits={upstream: UpstreamLimits(rps=rps)} if rps else {},
        breaker=breaker,
        fleet=FleetLimiter(redis) if redis else None,
        shared_breakers=SharedBreakers(redis, breaker) if redis else None,
        retry=RetryPolicy(max_attempts=1, max_in_worker_wait_s=10.0),
    )
    stamps: list[float] = []
    refused: list[float] = []
    statuses: dict[str, int] = {}
    base_url = config.get("base_url")  # call a real endpoint with the LLM client
    client = httpx.AsyncClient() if base_url else None

    async def attempt() -> None:
        stamps.append(time.time())
        if client is None:
            await asyncio.sleep(config.get("call_s", 0))
            return
        try:
            await chat(
                Endpoint("quota", "m", base_url),
                {"messages": [{"role": "user", "content": "hi"}]},
                label="probe",
                timeout_s=10,
                http_client=client,
            )
            statuses["200"] = statuses.get("200", 0) + 1
        except UpstreamFailure as failure:
            key = str(failure.status_code or failure.reason)
            statuses[key] = statuses.get(key, 0) + 1

    async def loop() -> None:
        while time.time() < config["end_at"]:
            try:
                await upstreams.call(upstream, attempt, kind="llm")
            except UpstreamFailure:
                refused.append(time.time())
                await asyncio.sleep(0.01)

    await asyncio.sleep(max(0.0, config["start_at"] - time.time()))
    await asyncio.gather(*(loop() for _ in range(config.get("concurrency", 1))))
    await upstreams.aclose()
    if client is not None:
        await client.aclose()
    print(json.dumps({"stamps": stamps, "refused": refused, "statuses": statuses}))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
