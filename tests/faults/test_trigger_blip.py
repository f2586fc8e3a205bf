"""The trigger through a database blip, on the private PostgreSQL: a blocking client gets
its run id in a header before the body and its exact answer once the run ends; a stream
keeps going (no `error` event); a request while the database stays away gets a generic
503 — the driver's text (address, port, "Connect call failed") never reaches a client.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from fanflow_services.trigger.resilient import RUN_ID_HEADER

from tests.faults.conftest import MakeMesh
from tests.faults.matrix import ITEMS, WORKLOAD, expected_outputs
from tests.faults.postgres import PrivatePostgres
from tests.faults.rabbit import PrivateRabbit
from tests.trigger.conftest import StartServer, bearer, read_sse, start_server

__all__ = ["start_server"]  # the fixture, imported for this module
pytestmark = pytest.mark.timeout(240)

#: what must never be in a body a client reads
LEAKS = ("Connect call failed", "127.0.0.1", "ConnectionRefusedError", "asyncpg", "sqlalchemy")


def assert_no_leak(text: str, postgres: PrivatePostgres) -> None:
    for leak in (*LEAKS, str(postgres.port)):
        assert leak not in text, f"{leak!r} leaked to the client: {text[:500]}"


async def outage(postgres: PrivatePostgres, seconds: float, *, after_s: float) -> float:
    """Stop the database (immediate) after `after_s`, start it again `seconds` later; the
    monotonic time it was back."""
    await asyncio.sleep(after_s)
    await asyncio.to_thread(postgres.stop, "immediate")
    await asyncio.sleep(seconds)
    await asyncio.to_thread(postgres.start)
    return time.monotonic()


async def test_blocking_run_through_a_database_outage(
    mesh: MakeMesh, start_server: StartServer, postgres: PrivatePostgres, broker: PrivateRabbit
) -> None:
    cluster = await mesh()
    server = await start_server(cluster=cluster, amqp_url=broker.url)
    key = await server.import_app(WORKLOAD)
    body = {"inputs": {"n": ITEMS}, "response_mode": "blocking", "user": "faults"}
    async with server.http.stream(
        "POST", "/v1/workflows/run", json=body, headers=bearer(key), timeout=120
    ) as response:
        # the headers arrive while the run is still going
        run_id = response.headers[RUN_ID_HEADER]
        assert cluster.store is not None
        run = await cluster.store.get_run(run_id)
        assert run is not None and run.status == "running"
        back = asyncio.create_task(outage(postgres, 5, after_s=0.5))
        raw = await response.aread()
        await back
    assert response.status_code == 200, raw
    answer = response.json()
    assert answer["workflow_run_id"] == run_id
    assert answer["data"]["status"] == "succeeded", answer
    assert answer["data"]["outputs"] == expected_outputs()


async def test_stream_through_a_database_outage_has_no_error_event(
    mesh: MakeMesh, start_server: StartServer, postgres: PrivatePostgres, broker: PrivateRabbit
) -> None:
    cluster = await mesh()
    server = await start_server(cluster=cluster, amqp_url=broker.url)
    key = await server.import_app(WORKLOAD)
    body = {"inputs": {"n": ITEMS}, "response_mode": "streaming", "user": "faults"}
    events = []
    async with server.http.stream(
        "POST", "/v1/workflows/run", json=body, headers=bearer(key), timeout=120
    ) as response:
        assert response.status_code == 200
        run_id = response.headers[RUN_ID_HEADER]
        back = asyncio.create_task(outage(postgres, 5, after_s=0.5))
        async for event in read_sse(response):
            events.append(event)
        await back
    names = [e["event"] for e in events]
    assert "error" not in names, [e for e in events if e["event"] == "error"]
    assert names[0] == "workflow_started" and names[-1] == "workflow_finished"
    assert events[-1]["workflow_run_id"] == run_id
    assert events[-1]["data"]["outputs"] == expected_outputs()


async def test_requests_while_the_database_is_away(
    mesh: MakeMesh, start_server: StartServer, postgres: PrivatePostgres, broker: PrivateRabbit
) -> None:
    cluster = await mesh()
    server = await start_server(cluster=cluster, amqp_url=broker.url)
    key = await server.import_app(WORKLOAD)
    body = {"inputs": {"n": 3}, "response_mode": "blocking", "user": "faults"}
    # a blip shorter than the trigger's retry budget: the request just takes longer
    blip = asyncio.create_task(outage(postgres, 1.5, after_s=0))
    await asyncio.sleep(0.3)
    response = await server.http.post(
        "/v1/workflows/run", json=body, headers=bearer(key), timeout=60
    )
    await blip
    assert response.status_code == 200, response.text
    assert response.json()["data"]["status"] == "succeeded"
    # an outage longer than the budget: 503, generic, for runs, streams, details and health
    await asyncio.to_thread(postgres.stop, "immediate")
    try:
        for mode in ("blocking", "streaming"):
            started = time.monotonic()
            response = await server.http.post(
                "/v1/workflows/run",
                json={**body, "response_mode": mode},
                headers=bearer(key),
                timeout=60,
            )
            assert response.status_code == 503, response.text
            assert time.monotonic() - started < 15
            assert response.json()["code"] == "service_unavailable"
            assert_no_leak(response.text, postgres)
        detail = await server.http.get(f"/v1/workflows/run/{'0' * 8}", headers=bearer(key))
        assert detail.status_code == 503
        assert_no_leak(detail.text, postgres)
        health = await server.http.get("/healthz")
        assert health.status_code == 503
        assert_no_leak(health.text, postgres)
    finally:
        await asyncio.to_thread(postgres.start)


async def test_an_unexpected_error_reaches_no_client_as_text(
    mesh: MakeMesh, start_server: StartServer, postgres: PrivatePostgres, broker: PrivateRabbit
) -> None:
    """The attack: an error whose text names internals (an address, a port) breaks the read
    at the end of a run; the SSE `error` event and every body stay generic."""
    cluster = await mesh()
    server = await start_server(cluster=cluster, amqp_url=broker.url)
    key = await server.import_app(WORKLOAD)
    store = server.app.state.trigger.store
    secret = "Connect call failed ('10.1.2.3', 5433) password=hunter2"

    async def broken_get_run(run_id: str, **options: object) -> None:
        raise RuntimeError(secret)

    store.get_run = broken_get_run
    body = {"inputs": {"n": 2}, "response_mode": "streaming", "user": "faults"}
    async with server.http.stream(
        "POST", "/v1/workflows/run", json=body, headers=bearer(key), timeout=60
    ) as response:
        events = [event async for event in read_sse(response)]
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["status"] == 500, events
    assert "the run goes on" in errors[0]["message"]
    for event in events:
        assert "hunter2" not in str(event) and "10.1.2.3" not in str(event)
    # the detail of a run: the same read, a generic 500
    detail = await server.http.get(
        f"/v1/workflows/run/{events[0]['workflow_run_id']}", headers=bearer(key)
    )
    assert detail.status_code == 500
    assert "hunter2" not in detail.text and "10.1.2.3" not in detail.text
