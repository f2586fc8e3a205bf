"""Runs all the way through: trigger (uvicorn) → RabbitMQ → worker and aggregator processes.

The worker and aggregator are the real services, started as `python -m fanflow_services.cli ...`
subprocesses on the test's namespace and SQLite database.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from dify_client import DifyClient

from tests.mesh.cluster import Cluster
from tests.trigger.conftest import FANOUT, HELLO_OUTPUTS, StartServer, bearer, read_sse

RUN = "/v1/workflows/run"


async def test_blocking_run_detail_and_logs(start_server: StartServer, mesh: Cluster) -> None:
    server = await start_server(cluster=mesh)
    key = await server.import_app()
    body = {"inputs": {"name": "world"}, "response_mode": "blocking", "user": "alice"}
    response = await server.http.post(RUN, json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    answer = response.json()
    run_id = answer["workflow_run_id"]
    assert answer["task_id"] == run_id
    data = answer["data"]
    assert data["status"] == "succeeded", data
    assert data["outputs"] == HELLO_OUTPUTS
    assert data["id"] == run_id and data["error"] is None and data["exceptions_count"] == 0
    assert data["total_steps"] == 4 and data["total_tokens"] == 0
    assert data["elapsed_time"] > 0 and data["finished_at"] >= data["created_at"]

    detail = (await server.http.get(f"/v1/workflows/run/{run_id}", headers=bearer(key))).json()
    assert json.loads(detail["inputs"]) == {"name": "world"}  # a JSON string, as in Dify
    assert detail["outputs"] == HELLO_OUTPUTS
    assert detail["status"] == "succeeded" and detail["workflow_id"] == data["workflow_id"]

    other = {"inputs": {"name": "bob"}, "response_mode": "blocking", "user": "bob"}
    assert (await server.http.post(RUN, json=other, headers=bearer(key))).status_code == 200
    logs = await server.http.get("/v1/workflows/logs", headers=bearer(key))
    page = logs.json()
    assert page["total"] == 2 and page["page"] == 1 and page["has_more"] is False
    item = page["data"][1]  # newest first
    assert item["workflow_run"]["id"] == run_id and item["workflow_run"]["status"] == "succeeded"
    assert item["created_by_end_user"]["session_id"] == "alice"
    found = await server.http.get("/v1/workflows/logs?keyword=WORLD", headers=bearer(key))
    assert [i["id"] for i in found.json()["data"]] == [run_id]
    paged = await server.http.get(
        "/v1/workflows/logs?status=succeeded&limit=1&page=1", headers=bearer(key)
    )
    assert paged.json()["total"] == 2 and paged.json()["has_more"] is True
    failed = await server.http.get("/v1/workflows/logs?status=failed", headers=bearer(key))
    assert failed.json()["total"] == 0


async def test_streaming_run_events(start_server: StartServer, mesh: Cluster) -> None:
    server = await start_server(cluster=mesh)
    key = await server.import_app(FANOUT)
    body = {"inputs": {"items": "apple\nbanana\ncherry"}, "response_mode": "streaming", "user": "u"}
    events: list[dict[str, Any]] = []
    async with server.http.stream("POST", RUN, json=body, headers=bearer(key)) as response:
        assert response.status_code == 200
        events = [event async for event in read_sse(response)]
    names = [e["event"] for e in events]
    assert names[0] == "workflow_started" and names[-1] == "workflow_finished", names
    run_id = events[0]["workflow_run_id"]
    assert all(e["task_id"] == run_id == e["workflow_run_id"] for e in events)
    assert names.count("iteration_started") == 1 and names.count("iteration_completed") == 1
    assert sorted(e["data"]["index"] for e in events if e["event"] == "iteration_next") == [0, 1, 2]
    assert len(names) == len({json.dumps(e, sort_keys=True) for e in events}), "duplicates"

    started = {e["data"]["id"]: e["data"] for e in events if e["event"] == "node_started"}
    finished = {e["data"]["id"]: e["data"] for e in events if e["event"] == "node_finished"}
    assert started.keys() == finished.keys()
    for node_execution, done in finished.items():
        assert done["status"] == "succeeded", done
        assert done["index"] == started[node_execution]["index"]
        assert done["elapsed_time"] >= 0 and done["finished_at"] >= done["created_at"]
    in_items = [d for d in finished.values() if d.get("iteration_id")]
    assert len(in_items) == 3 * 2  # iteration-start and the code node, per item
    assert sorted({d["iteration_index"] for d in in_items}) == [0, 1, 2]

    end = events[-1]["data"]
    assert end["status"] == "succeeded" and end["id"] == run_id
    assert end["outputs"] == {
        "count": 3,
        "results": ["0: APPLE (5)", "1: BANANA (6)", "2: CHERRY (6)"],
    }
    assert end["total_steps"] > 0 and end["exceptions_count"] == 0


async def test_concurrent_blocking_runs_share_one_subscription(
    start_server: StartServer, mesh: Cluster
) -> None:
    server = await start_server(cluster=mesh)
    key = await server.import_app()

    async def run(name: str) -> dict[str, Any]:
        body = {"inputs": {"name": name}, "response_mode": "blocking", "user": name}
        response = await server.http.post(RUN, json=body, headers=bearer(key))
        assert response.status_code == 200, response.text
        return dict(response.json()["data"])

    names = [f"n{i}" for i in range(12)]
    results = await asyncio.gather(*(run(name) for name in names))
    for name, data in zip(names, results, strict=True):
        assert data["status"] == "succeeded"
        assert data["outputs"]["shout"] == f"HELLO, {name.upper()}!"
    health = (await server.http.get("/healthz")).json()
    assert health["status"] == "ok"
    assert server.app.state.trigger.events.watched_runs == 0  # every binding released


def _dify_runs(base_url: str, key: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Dify's own Python client, unchanged but for its base URL. dify-client 0.1.x has no
    workflow class; its DifyClient request method is what its classes call for every route."""
    client = DifyClient(key)
    client.base_url = f"{base_url}/v1"
    inputs = {"name": "world"}
    blocking = client._send_request(
        "POST", "/workflows/run", {"inputs": inputs, "response_mode": "blocking", "user": "dify"}
    )
    blocking.raise_for_status()
    streaming = client._send_request(
        "POST",
        "/workflows/run",
        {"inputs": inputs, "response_mode": "streaming", "user": "dify"},
        stream=True,
    )
    streaming.raise_for_status()
    events = [
        json.loads(line[len(b"data: ") :])
        for line in streaming.iter_lines()
        if line.startswith(b"data: ")
    ]
    return blocking.json(), events


async def test_dify_client(start_server: StartServer, mesh: Cluster) -> None:
    server = await start_server(cluster=mesh)
    key = await server.import_app()
    blocking, events = await asyncio.to_thread(_dify_runs, server.url, key)
    assert blocking["data"]["status"] == "succeeded"
    assert blocking["data"]["outputs"] == HELLO_OUTPUTS
    assert events[0]["event"] == "workflow_started" and events[-1]["event"] == "workflow_finished"
    assert events[-1]["data"]["outputs"] == HELLO_OUTPUTS
    nodes = [e["data"]["node_type"] for e in events if e["event"] == "node_finished"]
    assert nodes == ["start", "template-transform", "code", "end"]
