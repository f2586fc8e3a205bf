"""500 LLM calls in one run on the mesh, against a mock that fails 40 % of the requests.

Two workers (each its own /metrics port) and an aggregator run `llm_fanout.yml`: a parallel
iteration (25 at a time) whose body is an `llm` node with a `fanflow.retry` extension. The
mock answers 503 to 30 % of the requests and 429 (Retry-After 0.2 s) to 10 %, seeded. Every
call must end succeeded, and what fanflow counts must match what the mock saw: requests ==
attempts, 503s == `status_5xx` attempts, 429s == `status_429` attempts, and every failed
attempt was retried once — in the worker (`fanflow_upstream_retries_total`) or, when the
worker's attempts ran out, by the scheduler (`node_retry` events).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.conftest import E2E_DATA, Mocks, by_label, free_port, scrape, total
from tests.mesh.conftest import running_cluster

pytestmark = pytest.mark.timeout(150)

ITEMS = 500
UPSTREAM = "openai:mock"
#: the mock's fault mix (the issue's numbers); a small Retry-After keeps the test fast
MOCK_ARGS = ("--error-rate", "0.3", "--rate-limit-rate", "0.1", "--retry-after-s", "0.2")


async def test_500_llm_calls_through_faults_on_two_workers(tmp_path: Path, mocks: Mocks) -> None:
    mock = mocks.start(*MOCK_ARGS, "--seed", "7")
    ports = [free_port(), free_port()]
    async with running_cluster("postgres", tmp_path, workers=0) as cluster:
        common = {
            "FANFLOW_LLM_BASE_URL": mock.url,
            "FANFLOW_WORKER_PREFETCH": "16",
            # This test counts retries against the mock's faults, so the breaker stays out
            # of it: the default one (50 calls, opens at 50 % failures) does open on streaks
            # of this fault rate, and then its refusals are retried after its 30 s wait —
            # the run still succeeds, only slower and with refusals in the counts (see
            # test_retry_gaps.py for the default breaker). 50 failures in a row open it here.
            "FANFLOW_BREAKER_FAILURE_RATE": "1.0",
        }
        workers = [cluster.start_worker(**common, FANFLOW_METRICS_PORT=str(p)) for p in ports]
        await cluster.wait_ready(*workers)
        app = await cluster.register(E2E_DATA / "llm_fanout.yml")
        started = time.monotonic()
        run_id = await cluster.start_run(app, {"n": ITEMS}, record_events=True)
        run = await cluster.wait(run_id, timeout_s=120)
        elapsed = time.monotonic() - started
        assert run.status == "succeeded", (run.status, run.error, cluster.logs())
        texts = run.outputs["texts"]
        assert len(texts) == ITEMS
        assert all(isinstance(text, str) and text for text in texts)

        stats = mock.stats()
        metrics = [scrape(port) for port in ports]
        executions = await cluster.node_executions(run_id)
        events = cluster.events(run_id)

    calls: Counter[str] = Counter()
    per_worker = []
    in_worker_retries = 0.0
    failed_tasks = 0.0
    queue_waits = 0.0
    for samples in metrics:
        outcomes = by_label(samples, "fanflow_upstream_calls_total", "outcome", upstream=UPSTREAM)
        per_worker.append(sum(outcomes.values()))
        calls.update(outcomes)
        in_worker_retries += total(samples, "fanflow_upstream_retries_total", upstream=UPSTREAM)
        failed_tasks += total(
            samples, "fanflow_node_executions_total", node_type="llm", status="failed"
        )
        queue_waits += total(samples, "fanflow_task_queue_wait_seconds_count", node_class="llm")
    # scheduler-level retries (the aggregator's fanflow_node_retries_total counts them too);
    # here from the run's node_retry events (which may arrive twice: count distinct ones)
    scheduler_retries = len(
        {
            (data["data"]["scope"], data["data"]["retry_index"])
            for name, data in events
            if name == "node_retry" and data["data"]["node_id"] == "ask"
        }
    )
    failures = stats["faults"]["status_5xx"] + stats["faults"]["status_429"]
    print(
        f"\n{ITEMS} items on 2 workers in {elapsed:.1f} s"
        f"\nmock /stats: requests={stats['requests']} succeeded={stats['succeeded']} "
        f"503={stats['faults']['status_5xx']} 429={stats['faults']['status_429']}"
        f"\nfanflow_upstream_calls_total by outcome (both workers): {dict(calls)}"
        f" per worker: {per_worker}"
        f"\nretries: in-worker (fanflow_upstream_retries_total)={in_worker_retries:g}"
        f" + scheduler (node_retry events)={scheduler_retries}"
        f" = {in_worker_retries + scheduler_retries:g} vs failed requests={failures}"
        f"\nfanflow_node_executions_total{{llm,failed}}={failed_tasks:g}"
    )

    assert all(count > 0 for count in per_worker), "both workers took LLM tasks"
    # every LLM task delivery measured its wait in the queue
    assert queue_waits == ITEMS + scheduler_retries
    assert calls["breaker_open"] == 0
    assert stats["requests"] == sum(calls.values())
    assert stats["faults"]["status_5xx"] == calls["status_5xx"] > 0
    assert stats["faults"]["status_429"] == calls["status_429"] > 0
    assert stats["succeeded"] == calls["success"] == ITEMS
    assert set(calls) <= {"success", "status_5xx", "status_429"}
    # every failed attempt was retried exactly once: in the worker or by the scheduler
    assert in_worker_retries + scheduler_retries == failures
    # a task whose in-worker attempts ran out is a failed execution the scheduler re-queued
    assert failed_tasks == scheduler_retries > 0
    asks = [e for e in executions if e.node_id == "ask"]
    assert len(asks) == ITEMS and {e.status for e in asks} == {"succeeded"}
