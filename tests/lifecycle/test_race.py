"""`fanflow: {join: race}`: a 50 ms and a 2 s upstream call race; the answer comes with the
first, the slow call is cancelled (the upstream sees its connection closed) and its node
ends `stopped`. On the mesh (real trigger, worker, aggregator) and embedded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import yaml

from fanflow.context import ExecutionContext
from fanflow.dsl import validate_workflow
from fanflow.dsl.load import load_workflow, parse_workflow
from fanflow.runner import EmbeddedRunner
from fanflow.runtime import RunRequest
from tests.lifecycle.upstream import Upstream, running_upstream
from tests.mesh.conftest import MakeCluster
from tests.trigger.conftest import StartServer, bearer

pytestmark = pytest.mark.timeout(120)

RACE = Path(__file__).resolve().parents[1] / "data" / "lifecycle" / "race.yml"


async def until_hung_up(upstream: Upstream, path: str, *, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while path not in upstream.hung_up:
        assert time.monotonic() < deadline, (upstream.requests, upstream.hung_up)
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_a_race_answers_with_the_first_branch_on_the_mesh(
    backend: str, make_cluster: MakeCluster, start_server: StartServer
) -> None:
    cluster = await make_cluster(
        backend, workers=1, worker_env={"FANFLOW_HTTP_ALLOW_PRIVATE_NETWORKS": "true"}
    )
    server = await start_server(cluster=cluster)
    key = await server.import_app(RACE)
    async with running_upstream() as upstream:
        body = {"inputs": {"upstream": upstream.url}, "user": "u", "response_mode": "blocking"}
        # a first run warms the worker's pools and the app's parse
        warm = await server.http.post("/v1/workflows/run", json=body, headers=bearer(key))
        assert warm.json()["data"]["status"] == "succeeded", warm.text
        await until_hung_up(upstream, "/slow/2000")
        upstream.hung_up.clear()
        started = time.monotonic()
        response = await server.http.post("/v1/workflows/run", json=body, headers=bearer(key))
        took = time.monotonic() - started
        print(f"\n{backend}: race of 50 ms and 2 s answered in {took * 1000:.0f} ms")
        data = response.json()["data"]
        assert data["status"] == "succeeded", data
        assert data["outputs"] == {"winner": "slow 50"}
        assert took < 0.5, took
        await until_hung_up(upstream, "/slow/2000")  # the slow call was cancelled
    executions = {e.node_id: e for e in await cluster.node_executions(data["id"])}
    assert executions["slow"].status == "stopped"
    assert "join: race" in (executions["slow"].error or "")
    assert executions["fast"].status == "succeeded"
    assert executions["first"].status == "succeeded"


async def test_a_race_answers_with_the_first_branch_embedded() -> None:
    runner = EmbeddedRunner(context=ExecutionContext(allow_private_networks=True))
    workflow = load_workflow(RACE)
    finished: dict[str, str] = {}

    def on_event(emit) -> None:  # type: ignore[no-untyped-def]
        if emit.event == "node_finished":
            finished[emit.data["node_id"]] = emit.data["status"]

    runner.on_event = on_event
    async with running_upstream() as upstream:
        started = time.monotonic()
        result = await runner.async_run(workflow, RunRequest(inputs={"upstream": upstream.url}))
        took = time.monotonic() - started
        assert result.status == "succeeded", result.error
        assert result.outputs == {"winner": "slow 50"}
        print(f"\nembedded: race of 50 ms and 2 s answered in {took * 1000:.0f} ms")
        assert took < 0.5, took
        await until_hung_up(upstream, "/slow/2000")
    assert finished["slow"] == "stopped" and finished["fast"] == "succeeded"


def test_join_values_are_checked_at_validate() -> None:
    document = yaml.safe_load(RACE.read_text())
    nodes = document["workflow"]["graph"]["nodes"]
    first = next(n for n in nodes if n["id"] == "first")
    first["data"]["fanflow"]["join"] = "fastest"
    problems = [str(p) for p in validate_workflow(parse_workflow(yaml.safe_dump(document)))]
    assert any("fanflow.join must be one of all, race" in p and "first" in p for p in problems)
    fast = next(n for n in nodes if n["id"] == "fast")
    fast["data"]["fanflow"] = {"join": "race"}
    first["data"]["fanflow"]["join"] = "race"
    problems = [str(p) for p in validate_workflow(parse_workflow(yaml.safe_dump(document)))]
    assert any("at least two incoming edges" in p and "fast" in p for p in problems), problems
