"""The trigger's HTTP contract without workers: auth, validation, limits, admin, stop, ops.

No worker consumes here, so a run of examples/hello.yml stays `running` at its code node:
exactly what the limit and stop tests need.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import typer
from fanflow_services.trigger import api
from fanflow_services.trigger.client import import_app

from fanflow.mesh.amqp import AmqpBroker
from fanflow.mesh.driver import event_body
from fanflow.mesh.topology import Topology
from tests.trigger.conftest import ADMIN_TOKEN, HELLO, StartServer, bearer, read_sse

RUN = "/v1/workflows/run"
INVALID_DSL = """
kind: app
version: 0.1.5
app: {name: broken, mode: workflow}
workflow:
  graph:
    nodes:
      - id: start
        data: {type: start, title: Start, variables: []}
      - id: end
        data:
          type: end
          title: End
          outputs: [{variable: x, value_selector: [nowhere, x]}]
      - id: odd
        data: {type: no-such-node, title: Odd}
    edges:
      - {source: start, target: end}
"""


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


async def test_requests_without_a_valid_key_are_401(start_server: StartServer) -> None:
    server = await start_server()
    http = server.http
    body = {"inputs": {"name": "x"}, "user": "u"}
    assert_error(await http.post(RUN, json=body), 401, "unauthorized")
    assert_error(await http.post(RUN, json=body, headers=bearer("app-nope")), 401, "unauthorized")
    basic = {"Authorization": "Basic abc"}
    assert_error(await http.get("/v1/workflows/logs", headers=basic), 401, "unauthorized")
    assert_error(await http.get("/v1/workflows/run/x"), 401, "unauthorized")
    stop = "/v1/workflows/tasks/x/stop"
    assert_error(await http.post(stop, json={"user": "u"}), 401, "unauthorized")


async def test_invalid_inputs_are_400_naming_the_input(start_server: StartServer) -> None:
    server = await start_server()
    key = await server.import_app()
    headers = bearer(key)
    missing = await server.http.post(RUN, json={"inputs": {}, "user": "u"}, headers=headers)
    assert "name" in assert_error(missing, 400, "invalid_param")["message"]
    too_long = {"inputs": {"name": "x" * 49}, "user": "u"}
    response = await server.http.post(RUN, json=too_long, headers=headers)
    assert "name" in assert_error(response, 400, "invalid_param")["message"]
    no_user = await server.http.post(RUN, json={"inputs": {"name": "x"}}, headers=headers)
    assert "user" in assert_error(no_user, 400, "invalid_param")["message"]
    not_json = await server.http.post(RUN, content=b"{oops", headers=headers)
    assert_error(not_json, 400, "invalid_param")
    # nothing was started by any of them
    logs = await server.http.get("/v1/workflows/logs", headers=headers)
    assert logs.json()["total"] == 0


async def test_oversized_bodies_are_413(start_server: StartServer) -> None:
    server = await start_server(max_request_bytes=4096)
    key = await server.import_app()
    body = {"inputs": {"name": "x", "pad": "y" * 5000}, "user": "u"}
    response = await server.http.post(RUN, json=body, headers=bearer(key))
    assert_error(response, 413, "request_too_large")

    async def chunks():  # no Content-Length: the cap holds while reading
        for _ in range(10):
            yield b" " * 1000

    chunked = await server.http.post(RUN, content=chunks(), headers=bearer(key))
    assert_error(chunked, 413, "request_too_large")


async def test_runs_past_the_app_limit_are_429(start_server: StartServer) -> None:
    server = await start_server(app_max_active_runs=1, blocking_timeout_s=0.3)
    key = await server.import_app()
    body = {"inputs": {"name": "world"}, "response_mode": "blocking", "user": "u"}
    first = await server.http.post(RUN, json=body, headers=bearer(key))
    assert first.status_code == 200, first.text
    # no worker: the run waits at its code node, and the blocking call times out with it
    assert first.json()["data"]["status"] == "running"
    assert first.json()["data"]["outputs"] is None
    second = await server.http.post(RUN, json=body, headers=bearer(key))
    assert_error(second, 429, "too_many_requests")
    # other apps have their own budget
    other = await server.import_app()
    third = await server.http.post(RUN, json=body, headers=bearer(other))
    assert third.status_code == 200


async def test_admin_import(start_server: StartServer) -> None:
    server = await start_server()
    http = server.http
    yaml = {"Content-Type": "text/yaml"}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ok = await http.post("/admin/apps", content=HELLO.read_bytes(), headers={**admin, **yaml})
    assert ok.status_code == 201, ok.text
    assert ok.json()["api_key"].startswith("app-") and ok.json()["app_id"]
    as_json = await http.post("/admin/apps", json={"dsl": HELLO.read_text()}, headers=admin)
    assert as_json.status_code == 201 and as_json.json()["app_id"] != ok.json()["app_id"]

    invalid = await http.post("/admin/apps", content=INVALID_DSL, headers={**admin, **yaml})
    body = assert_error(invalid, 400, "invalid_param")
    assert len(body["problems"]) >= 2, body
    assert any("no-such-node" in p for p in body["problems"]), body
    assert all(p in body["message"] for p in body["problems"])

    wrong = {"Authorization": "Bearer nope"}
    assert_error(await http.post("/admin/apps", content="x", headers=wrong), 401, "unauthorized")


async def test_admin_api_is_off_without_a_token(start_server: StartServer) -> None:
    server = await start_server(admin_token=None)
    response = await server.http.post(
        "/admin/apps", content=HELLO.read_bytes(), headers={"Authorization": "Bearer x"}
    )
    assert "FANFLOW_ADMIN_TOKEN" in assert_error(response, 403, "forbidden")["message"]


async def test_import_client(start_server: StartServer, tmp_path: Path, capsys) -> None:
    server = await start_server()
    result = await asyncio.to_thread(import_app, HELLO, url=server.url, admin_token=ADMIN_TOKEN)
    assert result["api_key"].startswith("app-")

    broken = tmp_path / "broken.yml"
    broken.write_text(INVALID_DSL)
    with pytest.raises(typer.Exit) as invalid:
        await asyncio.to_thread(import_app, broken, url=server.url, admin_token=ADMIN_TOKEN)
    assert invalid.value.exit_code == 2
    with pytest.raises(typer.Exit) as refused:
        await asyncio.to_thread(import_app, HELLO, url=server.url, admin_token="wrong")
    assert refused.value.exit_code == 1
    with pytest.raises(typer.Exit):
        await asyncio.to_thread(import_app, HELLO, url="http://127.0.0.1:9", admin_token="t")
    err = capsys.readouterr().err
    assert "no-such-node" in err and "401" in err and "cannot reach" in err


async def test_stop_ends_a_streaming_run(start_server: StartServer) -> None:
    server = await start_server()
    key = await server.import_app()
    body = {"inputs": {"name": "world"}, "response_mode": "streaming", "user": "alice"}
    events: list[dict] = []
    async with server.http.stream("POST", RUN, json=body, headers=bearer(key)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in read_sse(response):
            events.append(event)
            # the code node is dispatched and nobody runs it: stop the run from outside
            if event["event"] == "node_started" and event["data"]["node_type"] == "code":
                stop = await server.http.post(
                    f"/v1/workflows/tasks/{event['task_id']}/stop",
                    json={"user": "alice"},
                    headers=bearer(key),
                )
                assert stop.json() == {"result": "success"}
    names = [e["event"] for e in events]
    assert names[0] == "workflow_started" and names[-1] == "workflow_finished", names
    finished = events[-1]["data"]
    assert finished["status"] == "stopped" and finished["error"] == "stopped by user"
    run_id = events[0]["workflow_run_id"]

    detail = await server.http.get(f"/v1/workflows/run/{run_id}", headers=bearer(key))
    assert detail.json()["status"] == "stopped"
    # stopping again, or a finished run, is fine; an unknown task is 404
    again = f"/v1/workflows/tasks/{run_id}/stop"
    assert (await server.http.post(again, json={"user": "a"}, headers=bearer(key))).json() == {
        "result": "success"
    }
    no_user = await server.http.post(again, json={}, headers=bearer(key))
    assert_error(no_user, 400, "invalid_param")
    unknown = await server.http.post(
        "/v1/workflows/tasks/nope/stop", json={"user": "a"}, headers=bearer(key)
    )
    assert_error(unknown, 404, "not_found")


async def test_runs_of_other_apps_are_not_found(start_server: StartServer) -> None:
    server = await start_server(blocking_timeout_s=0.1)
    mine, theirs = await server.import_app(), await server.import_app()
    body = {"inputs": {"name": "x"}, "user": "u"}
    run_id = (await server.http.post(RUN, json=body, headers=bearer(theirs))).json()[
        "workflow_run_id"
    ]
    detail = f"/v1/workflows/run/{run_id}"
    assert (await server.http.get(detail, headers=bearer(theirs))).status_code == 200
    assert_error(await server.http.get(detail, headers=bearer(mine)), 404, "not_found")
    stop = f"/v1/workflows/tasks/{run_id}/stop"
    assert_error(
        await server.http.post(stop, json={"user": "u"}, headers=bearer(mine)), 404, "not_found"
    )
    assert (await server.http.get("/v1/workflows/logs", headers=bearer(mine))).json()["total"] == 0
    assert_error(await server.http.get("/v1/nowhere"), 404, "not_found")
    bad_page = await server.http.get("/v1/workflows/logs?limit=500", headers=bearer(mine))
    assert "limit" in assert_error(bad_page, 400, "invalid_param")["message"]


async def test_healthz_metrics_and_docs(start_server: StartServer) -> None:
    server = await start_server()
    health = await server.http.get("/healthz")
    assert health.status_code == 200, health.text
    assert health.json()["checks"] == {"database": "ok", "broker": "ok", "events": "ok"}
    await server.http.post(RUN, json={})  # a 401, counted under its route template
    metrics = await server.http.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert (
        'fanflow_http_requests_total{method="POST",route="/v1/workflows/run",status="401"}' in text
    )
    assert (await server.http.get("/docs")).status_code == 200
    paths = (await server.http.get("/openapi.json")).json()["paths"]
    assert {"/v1/workflows/run", "/v1/workflows/logs", "/admin/apps"} <= set(paths)


async def _until_code_node(stream: AsyncIterator[dict]) -> list[dict]:
    """Events up to the code node's start (no worker runs it: the run waits there)."""
    events = []
    async for event in stream:
        events.append(event)
        if event["event"] == "node_started" and event["data"]["node_type"] == "code":
            return events
    raise AssertionError(f"the stream ended early: {events}")


async def test_duplicated_events_are_streamed_once(start_server: StartServer) -> None:
    server = await start_server()
    key = await server.import_app()
    body = {"inputs": {"name": "world"}, "response_mode": "streaming", "user": "u"}
    broker = AmqpBroker(server.settings.amqp_url, topology=Topology(server.settings.namespace))
    await broker.connect()
    try:
        async with server.http.stream("POST", RUN, json=body, headers=bearer(key)) as response:
            stream = read_sse(response)
            events = await _until_code_node(stream)
            run_id = events[0]["workflow_run_id"]
            start = next(e["data"] for e in events if e["data"].get("node_type") == "start")
            node = {
                "node_id": start["node_id"],
                "node_type": "start",
                "title": "Start",
                "scope": "",
            }
            # what a second relay of the same outbox rows would publish
            for name, data in [
                ("workflow_started", {"inputs": {"name": "world"}}),
                ("node_started", node),
                ("node_finished", {**node, "status": "succeeded", "outputs": {"name": "world"}}),
            ]:
                route = broker.topology.event_route(run_id, name)
                await broker.publish_raw(
                    route.exchange,
                    route.routing_key,
                    event_body(run_id, name, data, at=time.time()),
                    message_id=None,
                    persistent=False,
                    mandatory=False,
                )
            stop = f"/v1/workflows/tasks/{run_id}/stop"
            await server.http.post(stop, json={"user": "u"}, headers=bearer(key))
            events += [event async for event in stream]
    finally:
        await broker.close()
    keys = [(e["event"], e["data"].get("id")) for e in events]
    assert len(keys) == len(set(keys)), keys
    assert keys[-1][0] == "workflow_finished"


async def test_shutdown_ends_streams_and_blocking_calls(start_server: StartServer) -> None:
    server = await start_server(blocking_timeout_s=60)
    key = await server.import_app()
    blocking = asyncio.create_task(
        server.http.post(RUN, json={"inputs": {"name": "b"}, "user": "u"}, headers=bearer(key))
    )
    body = {"inputs": {"name": "s"}, "response_mode": "streaming", "user": "u"}
    async with server.http.stream("POST", RUN, json=body, headers=bearer(key)) as response:
        stream = read_sse(response)
        await _until_code_node(stream)
        server.app.state.trigger.events.begin_shutdown()
        rest = [event async for event in stream]
    assert [e["event"] for e in rest] == ["error"], rest
    assert rest[0]["status"] == 503 and "/v1/workflows/run/" in rest[0]["message"]
    answer = await asyncio.wait_for(blocking, 10)
    assert answer.status_code == 200 and answer.json()["data"]["status"] == "running"


async def test_quiet_streams_get_pings(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "PING_INTERVAL_S", 0.1)
    server = await start_server()
    key = await server.import_app()
    body = {"inputs": {"name": "world"}, "response_mode": "streaming", "user": "u"}
    async with server.http.stream("POST", RUN, json=body, headers=bearer(key)) as response:
        stream = read_sse(response)
        events = await _until_code_node(stream)
        pings = 0
        async for event in stream:
            if event["event"] == "ping":
                pings += 1
                if pings == 2:
                    run_id = events[0]["workflow_run_id"]
                    stop = f"/v1/workflows/tasks/{run_id}/stop"
                    await server.http.post(stop, json={"user": "u"}, headers=bearer(key))
            events.append(event)
    assert pings >= 2 and events[-1]["event"] == "workflow_finished"
