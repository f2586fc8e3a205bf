"""Fleet-wide limits in the real Redis: shared by processes, keyed, tokens, leases, and the
fallback to per-process limits when Redis goes away."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from fanflow.resilience.ratelimit import UpstreamLimits, load_limits
from fanflow.resilience.redis_client import FleetRedis
from fanflow.resilience.redis_limits import CallKeys, FleetLimiter, estimate_tokens
from fanflow.resilience.upstreams import RetryPolicy, UpstreamFailure, Upstreams
from fanflow.settings import Settings
from tests.resilience.conftest import PrivateRedis, run_probes

ROOT = Path(__file__).resolve().parents[2]
ONCE = RetryPolicy(max_attempts=1, max_in_worker_wait_s=5.0)


def name() -> str:
    return f"test:{uuid.uuid4().hex[:8]}"


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


_OPEN: list[FleetRedis] = []


def fleet(url: str, prefix: str, **options: float) -> FleetLimiter:
    redis = FleetRedis(url, prefix=prefix)
    _OPEN.append(redis)
    return FleetLimiter(redis, **options)


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _OPEN:
        await _OPEN.pop().aclose()


def probes(url: str | None, prefix: str, upstream: str, rps: float, *, count: int, seconds: float):  # type: ignore[no-untyped-def]
    start_at = time.time() + 2.0  # every process imported and waiting by then
    end_at = start_at + seconds
    config = {
        "redis_url": url,
        "prefix": prefix,
        "upstream": upstream,
        "rps": rps,
        "start_at": start_at,
        "end_at": end_at,
        "concurrency": 8,
    }
    results = run_probes([config] * count)
    stamps = sorted(s for r in results for s in r["stamps"])
    return stamps, start_at, end_at


def test_three_processes_share_one_50_rps_limit(redis_url: str, redis_prefix: str) -> None:
    upstream = name()
    stamps, start_at, end_at = probes(redis_url, redis_prefix, upstream, 50, count=3, seconds=3)
    calls = [s for s in stamps if start_at <= s <= end_at]
    # GCRA allows the burst (1) at once, then one call per 20 ms across all three
    assert len(calls) <= 50 * 3 + 2, len(calls)
    assert len(calls) >= 50 * 3 * 0.7, len(calls)  # and the budget is used, not wasted
    # in no second of the run do the three together pass the limit
    for second in range(3):
        window = [s for s in calls if start_at + second <= s < start_at + second + 1]
        assert len(window) <= 51, (second, len(window))


@pytest.fixture
def quota_server(tmp_path: Path) -> Iterator[str]:
    """A fake provider allowing 60 requests in any sliding 3 s (429 past it)."""
    port_file = tmp_path / "quota.port"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.resilience.quota_server", str(port_file), "60", "3.0"],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 20
    while not (port_file.exists() and port_file.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, "quota server down"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port_file.read_text()}"
    while True:
        try:
            httpx.get(f"{url}/stats", timeout=1)
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "quota server did not answer"
            time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.parametrize("shared", [True, False])
def test_four_workers_against_a_provider_quota(
    quota_server: str, redis_url: str, redis_prefix: str, shared: bool
) -> None:
    """The issue's demo, scaled down: 4 worker processes against a provider that allows 60
    requests in any 3 s. Held fleet-wide at 19/s (a limit at exactly the quota meets it
    head-on: any scheduling jitter bunches calls into one of the provider's windows),
    almost nothing is refused and the quota is used; held per worker, most are refused."""
    start_at = time.time() + 2.0
    seconds = 6.0
    config = {
        "redis_url": redis_url if shared else None,
        "prefix": redis_prefix,
        "upstream": name(),
        "rps": 19 if shared else 20,
        "start_at": start_at,
        "end_at": start_at + seconds,
        "concurrency": 8,
        "base_url": quota_server,
    }
    reports = run_probes([config] * 4)
    ok = sum(r["statuses"].get("200", 0) for r in reports)
    refused = sum(r["statuses"].get("429", 0) for r in reports)
    print(f"\n4 workers, limits {'shared' if shared else 'per worker'}: {ok} ok, {refused} 429")
    if shared:
        assert refused <= 0.01 * (ok + refused), (ok, refused)
        assert ok >= 20 * seconds / 1.2, ok  # within 1.2x of the quota-bound ideal
    else:
        assert refused > ok, (ok, refused)


def test_per_worker_limits_let_three_processes_triple_the_rate(redis_prefix: str) -> None:
    stamps, start_at, end_at = probes(None, redis_prefix, name(), 50, count=3, seconds=2)
    calls = [s for s in stamps if start_at <= s <= end_at]
    # each process holds only its own 50: well past one shared limit (100 in 2 s)
    assert len(calls) >= 50 * 2 * 1.5, len(calls)


async def test_concurrency_is_shared_across_clients(redis_url: str, redis_prefix: str) -> None:
    upstream = name()
    limits = {upstream: UpstreamLimits(max_concurrency=3)}
    workers = [Upstreams(limits=limits, fleet=fleet(redis_url, redis_prefix)) for _ in range(3)]
    running = 0
    most = 0

    async def attempt() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05)
        running -= 1

    await asyncio.gather(
        *(workers[i % 3].call(upstream, attempt, kind="llm", retry=ONCE) for i in range(30))
    )
    assert most == 3


_HOLDER = """
import asyncio, sys
from fanflow.resilience.ratelimit import UpstreamLimits
from fanflow.resilience.redis_client import FleetRedis
from fanflow.resilience.redis_limits import FleetLimiter

async def main(url, prefix, upstream):
    limiter = FleetLimiter(FleetRedis(url, prefix=prefix), lease_ttl_s=1.0)
    for _ in range(2):
        await limiter.acquire(upstream, UpstreamLimits(max_concurrency=2))
    print("held", flush=True)
    await asyncio.sleep(60)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_killed_workers_slots_come_back_when_its_leases_expire(
    redis_url: str, redis_prefix: str
) -> None:
    upstream = name()
    limits = UpstreamLimits(max_concurrency=2)
    # a worker process takes both slots, then is killed without handing them back
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, redis_url, redis_prefix, upstream],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=10)
    holder.stdout.close()
    killed_at = time.monotonic()
    alive = Upstreams(
        limits={upstream: limits},
        fleet=fleet(redis_url, redis_prefix),
        retry=RetryPolicy(max_attempts=1, max_in_worker_wait_s=3.0),
    )

    async def attempt() -> str:
        return "ok"

    assert await alive.call(upstream, attempt, kind="llm") == "ok"
    waited = time.monotonic() - killed_at
    assert 0.5 <= waited <= 2.0, waited  # the leases lived 1 s: the call waited them out


async def test_budget_past_the_wait_bound_is_a_retry_later_and_reserves_nothing(
    redis_url: str, redis_prefix: str
) -> None:
    upstream = name()
    upstreams = Upstreams(
        limits={upstream: UpstreamLimits(rpm=6)}, fleet=fleet(redis_url, redis_prefix)
    )
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    policy = RetryPolicy(max_attempts=3, max_in_worker_wait_s=1.0)
    assert await upstreams.call(upstream, attempt, kind="llm", retry=policy) == "ok"
    waits = []
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(UpstreamFailure) as caught:
            await upstreams.call(upstream, attempt, kind="llm", retry=policy)
        assert time.monotonic() - started < 0.5  # nobody slept holding the task
        failure = caught.value
        assert failure.reason == "status_429" and failure.retryable
        assert failure.error_type == "RateLimitedError"
        assert "rpm limit of upstream" in str(failure) and upstream in str(failure)
        assert failure.retry_after_s is not None
        waits.append(failure.retry_after_s)
    assert calls == 1
    # refusals reserve nothing: the wait stays ~10 s instead of growing by 10 s each time
    assert all(8.0 <= w <= 10.5 for w in waits), waits
    assert (
        sample("fanflow_flow_control_deferred_total", upstream=upstream, kind="llm", limit="rpm")
        == 3
    )


async def test_per_app_and_per_user_limits_are_separate_budgets(
    redis_url: str, redis_prefix: str
) -> None:
    upstream = name()
    limits = UpstreamLimits(
        per_app=UpstreamLimits(rpm=3, rpm_burst=3), per_user=UpstreamLimits(rpm=1)
    )
    limiter = fleet(redis_url, redis_prefix)
    upstreams = Upstreams(limits={upstream: limits}, fleet=limiter, retry=ONCE)
    policy = RetryPolicy(max_attempts=1, max_in_worker_wait_s=0.5)

    async def attempt() -> str:
        return "ok"

    async def call(app: str, user: str) -> str:
        try:
            return await upstreams.call(
                upstream, attempt, kind="llm", retry=policy, keys=CallKeys(app, user)
            )
        except UpstreamFailure as failure:
            assert failure.reason == "status_429"
            return "user" if "user" in str(failure).split("limit of ")[1][:5] else "app"

    assert await call("a1", "u1") == "ok"
    assert await call("a1", "u1") == "user"  # u1 had its one call this minute
    assert await call("a1", "u2") == "ok"
    assert await call("a1", "u3") == "ok"
    assert await call("a1", "u4") == "app"  # the app's 3 a minute are used up
    assert await call("a2", "u1") == "ok"  # another app, another budget


@pytest.mark.parametrize("workers", [1, 3])
async def test_tokens_per_minute_hold_within_10_percent_with_corrected_estimates(
    redis_url: str, redis_prefix: str, workers: int
) -> None:
    """60,000 tokens a minute (1,000 a second, 500 at once) over 6 s, shared by `workers`
    clients whose estimates are 5x too low (20 said, 100 used): the corrections keep the
    tokens used within 10 % of the budget (plus its burst)."""
    upstream = name()
    limits = UpstreamLimits(tpm=60_000, tpm_burst=500)
    clients = [
        Upstreams(
            limits={upstream: limits},
            fleet=fleet(redis_url, redis_prefix),
            retry=RetryPolicy(max_attempts=1, max_in_worker_wait_s=10.0),
        )
        for _ in range(workers)
    ]
    used: list[float] = []

    async def attempt() -> int:
        await asyncio.sleep(0.01)
        used.append(time.monotonic())
        return 100

    started = time.monotonic()
    seconds = 6.0

    async def loop(client: Upstreams) -> None:
        while time.monotonic() - started < seconds:
            await client.call(
                upstream, attempt, kind="llm", tokens=20, usage_of=lambda tokens: tokens
            )

    await asyncio.gather(*(loop(clients[i % workers]) for i in range(6)))
    within = 100 * sum(1 for at in used if at - started <= seconds)
    budget = 1000 * seconds
    print(f"\ntpm workers={workers}: {within} tokens in {seconds} s (budget {budget:g})")
    assert within <= 1.1 * budget + 500, within
    assert within >= 0.9 * budget, within


async def test_redis_going_away_mid_run_falls_back_without_failing_a_call(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = name()
    redis = FleetRedis(private_redis.url, prefix="t", retry_s=0.3, timeout_s=0.3)
    upstreams = Upstreams(
        limits={upstream: UpstreamLimits(rps=200, max_concurrency=4)},
        fleet=FleetLimiter(redis),
        retry=ONCE,
    )
    fallbacks = sample("fanflow_flow_control_fallbacks_total")

    async def attempt() -> str:
        await asyncio.sleep(0.005)
        return "ok"

    async def calls(n: int) -> list[str]:
        return await asyncio.gather(
            *(upstreams.call(upstream, attempt, kind="llm") for _ in range(n))
        )

    assert await calls(20) == ["ok"] * 20
    assert redis.mode == "global" and sample("fanflow_flow_control_mode", mode="global") == 1
    running = asyncio.create_task(calls(200))
    await asyncio.sleep(0.1)
    private_redis.stop()
    assert await running == ["ok"] * 200
    assert await calls(50) == ["ok"] * 50
    assert redis.mode == "local"
    assert sample("fanflow_flow_control_mode", mode="local") == 1
    assert sample("fanflow_flow_control_mode", mode="global") == 0
    assert sample("fanflow_flow_control_fallbacks_total") == fallbacks + 1
    assert "fall back to per-process" in caplog.text
    await redis.aclose()


def test_settings_and_limits_file(tmp_path: Path) -> None:
    path = tmp_path / "limits.yml"
    path.write_text(
        "openai:gpt-4o:\n  rpm: 500\n  tpm: 30000\n  per_app: {rpm: 100}\n"
        "  per_user: {tpm: 2000, max_concurrency: 2}\n"
    )
    limits = load_limits(path)["openai:gpt-4o"]
    assert limits.rpm == 500 and limits.tpm == 30000 and limits.local_rps == 500 / 60
    assert limits.per_app == UpstreamLimits(rpm=100)
    assert limits.per_user == UpstreamLimits(tpm=2000, max_concurrency=2)
    path.write_text("x:\n  per_app: {per_user: {rpm: 1}}\n")
    with pytest.raises(ValueError, match=r"limits of 'x'\.per_app must be a mapping"):
        load_limits(path)
    settings = Settings(redis_url="redis://r:6379/0", namespace="ns", upstream_limits_file=None)
    built = Upstreams.from_settings(settings)
    assert built.fleet is not None and built.fleet.redis.prefix == "ns"
    assert Upstreams.from_settings(Settings(redis_url=None)).fleet is None


def test_token_estimate_counts_messages_and_max_tokens() -> None:
    body = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}
    assert estimate_tokens(body) == 100 + 4 + 50
