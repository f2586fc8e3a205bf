"""`fanflow: {tolerated_failure_percentage, tolerated_failure_count}` on an iteration: the
pure scheduler, then the mesh (trigger-less: driver + real workers) and the embedded runner
over a real HTTP upstream whose failing items reset the connection."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from fanflow.context import ExecutionContext
from fanflow.dsl import validate_workflow
from fanflow.dsl.load import load_workflow, parse_workflow
from fanflow.runner import EmbeddedRunner
from fanflow.runtime import RunRequest
from tests.lifecycle.upstream import Upstream, running_upstream
from tests.mesh.conftest import MakeCluster
from tests.scheduler.harness import simulate

FETCH = Path(__file__).resolve().parents[1] / "data" / "lifecycle" / "fetch.yml"

PURE = textwrap.dedent(
    """
    app: {name: tolerate, mode: workflow}
    kind: app
    version: 0.3.0
    workflow:
      graph:
        edges:
          - {id: e1, source: start, target: each, sourceHandle: source}
          - {id: e2, source: eachstart, target: work, sourceHandle: source}
          - {id: e3, source: each, target: end, sourceHandle: source}
        nodes:
          - id: start
            data: {type: start, title: Start, variables: []}
          - id: each
            data:
              type: iteration
              title: Each
              iterator_selector: [start, items]
              output_selector: [work, out]
              is_parallel: true
              parallel_nums: 10
              start_node_id: eachstart
              fanflow: FANFLOW
          - id: eachstart
            parentId: each
            data: {type: iteration-start, title: '', iteration_id: each}
          - id: work
            parentId: each
            data:
              type: code
              title: Work
              code_language: python3
              code: "def main(x): return {}"
              variables: [{variable: x, value_selector: [each, item]}]
              outputs: {out: {type: number}}
              fail_items: FAIL
          - id: end
            data:
              type: end
              title: End
              outputs: [{variable: results, value_selector: [each, output]}]
    """
)


def _pure(fanflow: dict[str, Any], fail: list[int]):  # type: ignore[no-untyped-def]
    text = PURE.replace("FANFLOW", yaml.safe_dump(fanflow, default_flow_style=True).strip())
    workflow = parse_workflow(text.replace("FAIL", str(fail)))
    return workflow


@pytest.mark.parametrize(
    ("fanflow", "failing", "succeeds"),
    [
        ({"tolerated_failure_percentage": 5}, 3, True),
        ({"tolerated_failure_percentage": 5}, 5, True),
        ({"tolerated_failure_percentage": 5}, 6, False),
        ({"tolerated_failure_count": 2}, 2, True),
        ({"tolerated_failure_count": 2}, 3, False),
        ({"tolerated_failure_count": 0}, 1, False),
        ({"tolerated_failure_count": 10, "tolerated_failure_percentage": 3}, 4, False),
    ],
)
def test_the_scheduler_tolerates_up_to_the_threshold(
    fanflow: dict[str, Any], failing: int, succeeds: bool
) -> None:
    fail = list(range(7, 7 + 13 * failing, 13))  # spread over the 100 items
    workflow = _pure(fanflow, fail)
    # any delivery order: results arrive out of item order
    trace = simulate(workflow, inputs={"items": list(range(100))}, choose=lambda n: n * 7 + 3)
    if succeeds:
        assert trace.status == "partial-succeeded", trace.error
        results = trace.outputs["results"]
        assert len(results) == 100
        assert [i for i, value in enumerate(results) if value is None] == fail
    else:
        assert trace.status == "failed"
        assert f"{failing} of 100 items failed, more than the tolerated" in (trace.error or "")


def test_pending_items_are_not_dispatched_once_the_threshold_is_crossed() -> None:
    workflow = _pure({"tolerated_failure_count": 1}, [0, 1])
    trace = simulate(workflow, inputs={"items": list(range(100))})
    assert trace.status == "failed"
    started = [scope for scope, node in trace.finished_nodes if node == "work"]
    # a window of 10: items 0..9 were in flight, nothing past them started
    assert len(started) <= 11, started
    assert "2 of 100 items failed, more than the tolerated 1" in (trace.error or "")


def test_bad_tolerances_are_refused_at_validate() -> None:
    for fanflow, expected in (
        ({"tolerated_failure_percentage": 150}, "from 0 to 100"),
        ({"tolerated_failure_count": -1}, "whole number >= 0"),
        ({"tolerated_failure_count": "3"}, "whole number >= 0"),
    ):
        problems = [str(p) for p in validate_workflow(_pure(fanflow, []))]
        assert any(expected in p and "each" in p for p in problems), problems
    text = PURE.replace("FANFLOW", "{tolerated_failure_count: 2}").replace("FAIL", "[]")
    text = text.replace(
        "start_node_id: eachstart",
        "start_node_id: eachstart\n          error_handle_mode: continue-on-error",
    )
    problems = [str(p) for p in validate_workflow(parse_workflow(text))]
    assert any("need error_handle_mode 'terminated'" in p for p in problems), problems


def fetch_dsl(directory: Path, fanflow: dict[str, Any] | None) -> Path:
    """examples of the lifecycle: fetch.yml with `fanflow` on its iteration."""
    document = yaml.safe_load(FETCH.read_text())
    if fanflow is not None:
        for node in document["workflow"]["graph"]["nodes"]:
            if node["id"] == "each":
                node["data"]["fanflow"] = fanflow
    path = directory / f"fetch-{len(list(directory.glob('fetch-*.yml')))}.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def expected_results(count: int, failing: set[int]) -> list[Any]:
    return [None if i in failing else str(i * i + 1) for i in range(count)]


@pytest.mark.timeout(180)
async def test_five_percent_over_100_items_on_the_mesh(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(
        "postgres", workers=1, worker_env={"FANFLOW_HTTP_ALLOW_PRIVATE_NETWORKS": "true"}
    )
    app = await cluster.register(fetch_dsl(tmp_path, {"tolerated_failure_percentage": 5}))
    async with running_upstream() as upstream:
        upstream.failing = {3, 50, 97}
        run_id = await cluster.start_run(app, {"n": 100, "upstream": upstream.url})
        run = await cluster.wait(run_id, timeout_s=120)
        assert run.status == "partial-succeeded", (run.error, cluster.logs())
        assert run.outputs == {"results": expected_results(100, upstream.failing)}
        assert run.exceptions_count == 3
        assert upstream.total == 100
        executions = {e.node_id: e for e in await cluster.node_executions(run_id)}
        failed = executions["each"].outputs["failed_items"]
        assert [f["index"] for f in failed] == [3, 50, 97]

        upstream.failing = {0, 1, 2, 3, 4, 5}
        upstream.requests.clear()
        run_id = await cluster.start_run(app, {"n": 100, "upstream": upstream.url})
        run = await cluster.wait(run_id, timeout_s=120)
        assert run.status == "failed", cluster.logs()
        assert "6 of 100 items failed, more than the tolerated 5" in (run.error or "")
        # the six failures are in the first window of 25: the items still pending once they
        # are seen are never dispatched (results arrive in batches, so not an exact count)
        assert upstream.total < 100, upstream.total


async def _embedded(path: Path, upstream: Upstream, n: int) -> Any:
    runner = EmbeddedRunner(context=ExecutionContext(allow_private_networks=True))
    workflow = load_workflow(path)
    return await runner.async_run(workflow, RunRequest(inputs={"n": n, "upstream": upstream.url}))


@pytest.mark.timeout(120)
async def test_five_percent_over_100_items_embedded(tmp_path: Path) -> None:
    path = fetch_dsl(tmp_path, {"tolerated_failure_percentage": 5})
    async with running_upstream() as upstream:
        upstream.failing = {0, 42, 99}
        result = await _embedded(path, upstream, 100)
        assert result.status == "partial-succeeded", result.error
        assert result.outputs == {"results": expected_results(100, upstream.failing)}
        upstream.failing = {1, 2, 3, 4, 5, 6}
        result = await _embedded(path, upstream, 100)
        assert result.status == "failed"
        assert "6 of 100 items failed" in (result.error or "")
