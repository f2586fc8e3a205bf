"""The breaker chain end to end: a failing primary model opens its breaker, runs fall back to
the backup model, then to the default value, and the primary comes back through half-open.

One worker (breakers are per process) with small breaker settings: window 4, min 4 calls,
open 2 s, 2 probes. A providers file sends model `primary` to mock A and `backup` to mock B
(`--mode fixed`, so the answer names its source). Mock A stays up but answers 503 to
everything, so its /stats counts exactly the attempts that reached it.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import E2E_DATA, Mocks, free_port, scrape, total
from tests.llm.conftest import MockLLM
from tests.mesh.conftest import running_cluster

pytestmark = pytest.mark.timeout(120)

OPEN_WAIT_S = 2.0
GAUGE = "fanflow_circuit_breaker_state"
STATES = {0: "closed", 1: "half_open", 2: "open"}
FROM_A, FROM_B, DEFAULT = "from-primary", "from-backup", "default answer"


async def test_breaker_chain(tmp_path: Path, mocks: Mocks) -> None:
    port_a = free_port()
    mock_a = mocks.start("--mode", "fixed", "--reply", FROM_A, "--error-rate", "1.0", port=port_a)
    mock_b = mocks.start("--mode", "fixed", "--reply", FROM_B)
    providers = tmp_path / "providers.json"
    providers.write_text(
        json.dumps(
            {
                "models": {
                    "openai:primary": {"base_url": mock_a.url},
                    "openai:backup": {"base_url": mock_b.url},
                }
            }
        )
    )
    metrics_port = free_port()
    env = {
        "FANFLOW_LLM_PROVIDERS_FILE": str(providers),
        "FANFLOW_BREAKER_WINDOW_SIZE": "4",
        "FANFLOW_BREAKER_MIN_CALLS": "4",
        "FANFLOW_BREAKER_OPEN_WAIT_S": str(OPEN_WAIT_S),
        "FANFLOW_BREAKER_HALF_OPEN_PROBES": "2",
        "FANFLOW_METRICS_PORT": str(metrics_port),
    }
    timeline: list[str] = []
    async with running_cluster("sqlite", tmp_path, workers=1, worker_env=env) as cluster:
        app = await cluster.register(E2E_DATA / "breaker_chain.yml")
        a_requests = {"a": mock_a}

        def state(upstream: str) -> str:
            value = total(scrape(metrics_port), GAUGE, upstream=upstream)
            return STATES[int(value)]

        async def run(phase: str, count: int = 1) -> list[str]:
            """`count` runs at once; their answers. Logs a timeline line per batch."""
            started = time.monotonic()
            ids = [await cluster.start_run(app, {"q": f"{phase} {i}"}) for i in range(count)]
            runs = await asyncio.gather(*(cluster.wait(i, timeout_s=30) for i in ids))
            answers = []
            for record in runs:
                assert record.status in ("succeeded", "partial-succeeded"), (
                    record.status,
                    record.error,
                    cluster.logs(),
                )
                answers.append(record.outputs["answer"])
            timeline.append(
                f"{phase:<28} runs={count} answers={sorted(set(answers))} "
                f"A.requests={_requests(a_requests['a'])} "
                f"B.requests={_requests(mock_b)} primary={state('openai:primary')} "
                f"backup={_state_or_none(metrics_port, 'openai:backup')} "
                f"({time.monotonic() - started:.2f} s)"
            )
            return answers

        try:
            # 1. A fails: 3 attempts in the worker, then the fail branch answers from B
            assert await run("A 503: run 1") == [FROM_B]
            assert mock_a.stats()["requests"] == 3
            assert state("openai:primary") == "closed"  # 3 calls < min_calls 4
            # the 4th failure opens the breaker; the worker's retry is refused
            assert await run("A 503: run 2") == [FROM_B]
            assert mock_a.stats()["requests"] == 4
            assert state("openai:primary") == "open"
            # 2. open: runs go straight to the backup, A sees nothing
            assert await run("A open: 5 runs at once", 5) == [FROM_B] * 5
            assert mock_a.stats()["requests"] == 4
            assert state("openai:primary") == "open"
            refused = total(
                scrape(metrics_port),
                "fanflow_upstream_calls_total",
                upstream="openai:primary",
                outcome="breaker_open",
            )
            assert refused >= 6  # run 2's retry and the 5 runs
            # 3. B down too (nothing listens): the backup's default value answers; B's
            # breaker opens after 4 connect errors. A gets at most a probe per open wait.
            mocks.stop(mock_b)
            a_before = mock_a.stats()["requests"]
            for i in range(3):
                assert await run(f"A open, B down: run {i + 1}") == [DEFAULT]
            assert state("openai:backup") == "open"
            assert mock_a.stats()["requests"] - a_before <= 2
            # 4. A returns healthy on its port; after the open wait, 2 probes close it
            mocks.stop(mock_a)
            mock_a = mocks.start("--mode", "fixed", "--reply", FROM_A, port=port_a)
            a_requests["a"] = mock_a
            await asyncio.sleep(OPEN_WAIT_S + 0.3)
            assert await run("A back: probe 1") == [FROM_A]
            assert state("openai:primary") == "half_open"
            assert await run("A back: probe 2") == [FROM_A]
            assert state("openai:primary") == "closed"
            assert await run("A closed: 3 runs at once", 3) == [FROM_A] * 3
            assert mock_a.stats()["requests"] == 5
        finally:
            print("\nbreaker chain timeline:\n" + "\n".join(timeline))


def _requests(mock: MockLLM) -> str:
    try:
        return str(mock.stats()["requests"])
    except httpx.HTTPError:
        return "down"


def _state_or_none(port: int, upstream: str) -> str:
    samples = scrape(port)
    if not any(name == GAUGE and ("upstream", upstream) in labels for name, labels in samples):
        return "-"
    return STATES[int(total(samples, GAUGE, upstream=upstream))]
