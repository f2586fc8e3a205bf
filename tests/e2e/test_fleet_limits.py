"""Fleet-wide flow control on the mesh: two real workers with FANFLOW_REDIS_URL share one
rate limit of the mock LLM's upstream and one run ledger (the machine's Redis, keys under
a random prefix)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.e2e.conftest import E2E_DATA, Mocks, free_port, scrape, total
from tests.mesh.conftest import running_cluster

pytestmark = pytest.mark.timeout(120)

ITEMS = 40
RPS = 10
UPSTREAM = "openai:mock"


async def test_two_workers_share_one_rate_limit_and_one_ledger(
    tmp_path: Path, mocks: Mocks, redis_url: str, redis_prefix: str
) -> None:
    mock = mocks.start()
    limits = tmp_path / "limits.yml"
    limits.write_text(f'"{UPSTREAM}": {{rps: {RPS}}}\n')
    prices = tmp_path / "prices.yml"
    prices.write_text(f'"{UPSTREAM}": {{prompt: 1, completion: 2}}\n')
    ports = [free_port(), free_port()]
    async with running_cluster("postgres", tmp_path, workers=0) as cluster:
        common = {
            "FANFLOW_LLM_BASE_URL": mock.url,
            "FANFLOW_WORKER_PREFETCH": "16",
            "FANFLOW_REDIS_URL": redis_url,
            "FANFLOW_REDIS_PREFIX": redis_prefix,
            "FANFLOW_UPSTREAM_LIMITS_FILE": str(limits),
            "FANFLOW_LLM_PRICES_FILE": str(prices),
        }
        workers = [cluster.start_worker(**common, FANFLOW_METRICS_PORT=str(p)) for p in ports]
        await cluster.wait_ready(*workers)
        app = await cluster.register(E2E_DATA / "llm_fanout.yml")
        started = time.monotonic()
        run_id = await cluster.start_run(app, {"n": ITEMS})
        run = await cluster.wait(run_id, timeout_s=60)
        elapsed = time.monotonic() - started
        assert run.status == "succeeded", (run.status, run.error, cluster.logs())
        metrics = [scrape(port) for port in ports]
    stats = mock.stats()
    assert stats["requests"] == ITEMS
    per_worker = [
        total(m, "fanflow_upstream_calls_total", upstream=UPSTREAM, outcome="success")
        for m in metrics
    ]
    assert all(count > 0 for count in per_worker), per_worker  # both worked
    for samples in metrics:
        assert total(samples, "fanflow_flow_control_mode", mode="global") == 1
        assert total(samples, "fanflow_flow_control_deferred_total") == 0
    # 40 calls at 10 a second for the fleet: not faster than 3.9 s (per worker it would
    # be half that), and not much slower
    assert elapsed >= (ITEMS - 1) / RPS, elapsed
    assert elapsed <= (ITEMS - 1) / RPS * 1.2 + 6.0, elapsed  # + the run's own work
    ledger = redis.Redis.from_url(redis_url).hgetall(f"{redis_prefix}:run:{run_id}:llm")
    assert int(ledger[b"prompt_tokens"]) == stats["prompt_tokens"]
    assert int(ledger[b"completion_tokens"]) == stats["completion_tokens"]
    billed = sum(total(m, "fanflow_llm_tokens_total", model=UPSTREAM) for m in metrics)
    assert billed == stats["prompt_tokens"] + stats["completion_tokens"]
