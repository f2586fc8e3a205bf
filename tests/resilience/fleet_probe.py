"""A worker-like process for the fleet tests: `concurrency` loops call one upstream through
`Upstreams` from `start_at` to `end_at` (epoch seconds); prints the epoch time of every
attempt as JSON. Without a Redis URL ("-"), the limits are this process's own.

    python -m tests.resilience.fleet_probe REDIS_URL PREFIX UPSTREAM RPS START_AT END_AT CONCURRENCY
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from fanflow.resilience.ratelimit import UpstreamLimits
from fanflow.resilience.redis_client import FleetRedis
from fanflow.resilience.redis_limits import FleetLimiter
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure, Upstreams


async def main(argv: list[str]) -> None:
    url, prefix, upstream, rps, start_at, end_at, concurrency = argv
    fleet = None if url == "-" else FleetLimiter(FleetRedis(url, prefix=prefix))
    upstreams = Upstreams(
        limits={upstream: UpstreamLimits(rps=float(rps))},
        fleet=fleet,
        retry=RetryPolicy(max_attempts=1, max_in_worker_wait_s=10.0),
    )
    stamps: list[float] = []
    deferred = 0

    async def attempt() -> None:
        stamps.append(time.time())

    async def loop() -> None:
        nonlocal deferred
        while time.time() < float(end_at):
            try:
                await upstreams.call(upstream, attempt, kind="llm")
            except UpstreamFailure:
                deferred += 1

    await asyncio.sleep(max(0.0, float(start_at) - time.time()))
    await asyncio.gather(*(loop() for _ in range(int(concurrency))))
    print(json.dumps({"stamps": stamps, "deferred": deferred}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
