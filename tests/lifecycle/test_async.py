"""Async submits, idempotency keys and callbacks, through a real trigger (uvicorn) and the
mesh's worker and aggregator processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from fanflow_services.trigger.callbacks import SIGNATURE_HEADER, verify

from fanflow.store import Store
from tests.lifecycle.receiver import running_receiver
from tests.mesh.cluster import Cluster
from tests.mesh.conftest import MakeCluster
from tests.trigger.conftest import HELLO, HELLO_OUTPUTS, Server, StartServer, bearer

pytestmark = pytest.mark.timeout(180)

RUN = "/v1/workflows/run"
SLEEPY = Path(__file__).resolve().parents[1] / "data" / "mesh" / "sleepy.yml"
SECRET = "test-callback-secret"


async def until_finished(server: Server, key: str, run_id: str, *, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        detail = (await server.http.get(f"{RUN}/{run_id}", headers=bearer(key))).json()
        if detail["status"] not in ("running",):
            return dict(detail)
        assert time.monotonic() < deadline, f"run {run_id} still running"
        await asyncio.sleep(0.1)


async def run_count(server: Server, key: str) -> int:
    page = (await server.http.get("/v1/workflows/logs", headers=bearer(key))).json()
    return int(page["total"])


async def test_async_answers_202_at_once_and_the_run_goes_on(
    start_server: StartServer, mesh: Cluster
) -> None:
    server = await start_server(cluster=mesh)
    key = await server.import_app(SLEEPY)
    body = {"inputs": {"n": 2}, "response_mode": "async", "user": "u"}
    started = time.monotonic()
    response = await server.http.post(RUN, json=body, headers=bearer(key))
    answered = time.monotonic() - started
    assert response.status_code == 202, response.text
    run_id = response.json()["workflow_run_id"]
    assert response.json() == {
        "task_id": run_id,
        "workflow_run_id": run_id,
        "data": {"id": run_id, "status": "running"},
    }
    assert response.headers["location"] == f"{RUN}/{run_id}"
    assert answered < 1.5, answered  # the run sleeps 2 s
    detail = await until_finished(server, key, run_id)
    assert detail["status"] == "succeeded", detail

    # strict clients keep Dify's body and say async in a header
    hello = await server.import_app(HELLO)
    plain = {"inputs": {"name": "world"}, "response_mode": "blocking", "user": "u"}
    response = await server.http.post(
        RUN, json=plain, headers={**bearer(hello), "X-Fanflow-Response-Mode": "async"}
    )
    assert response.status_code == 202, response.text
    detail = await until_finished(server, hello, response.json()["workflow_run_id"])
    assert detail["outputs"] == HELLO_OUTPUTS


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
async def test_one_run_per_idempotency_key(
    backend: str, make_cluster: MakeCluster, start_server: StartServer
) -> None:
    cluster = await make_cluster(backend, workers=1)
    server = await start_server(cluster=cluster)
    key = await server.import_app(HELLO)
    body = {"inputs": {"name": "world"}, "response_mode": "async", "user": "u"}
    headers = {**bearer(key), "Idempotency-Key": "order-1"}

    # twenty at once with the same key: one run, every answer names it
    answers = await asyncio.gather(
        *(server.http.post(RUN, json=body, headers=headers) for _ in range(20))
    )
    assert {a.status_code for a in answers} == {202}, [a.text for a in answers]
    run_ids = {a.json()["workflow_run_id"] for a in answers}
    assert len(run_ids) == 1, run_ids
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 19
    (run_id,) = run_ids
    await until_finished(server, key, run_id)
    assert await run_count(server, key) == 1

    # later, the same key and body: the same run; a blocking replay answers its result
    again = await server.http.post(RUN, json=body, headers=headers)
    assert again.status_code == 202 and again.json()["workflow_run_id"] == run_id
    other_key = {**bearer(key), "Idempotency-Key": "order-2"}
    blocking = {**body, "response_mode": "blocking"}
    first = await server.http.post(RUN, json=blocking, headers=other_key)
    replayed = await server.http.post(RUN, json=blocking, headers=other_key)
    assert first.status_code == replayed.status_code == 200
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == first.json()
    assert first.json()["data"]["outputs"] == HELLO_OUTPUTS

    # the same key with another body: 409, and no run
    changed = {**body, "inputs": {"name": "mallory"}}
    conflict = await server.http.post(RUN, json=changed, headers=headers)
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["code"] == "idempotency_key_conflict"
    assert "order-1" in conflict.json()["message"]
    assert await run_count(server, key) == 2

    # keys are per app: another app's same key is a new run
    other_app = await server.import_app(HELLO)
    elsewhere = await server.http.post(
        RUN, json=body, headers={**bearer(other_app), "Idempotency-Key": "order-1"}
    )
    assert elsewhere.status_code == 202
    assert elsewhere.json()["workflow_run_id"] != run_id


async def test_a_key_whose_run_did_not_start_can_be_used_again(
    start_server: StartServer, mesh: Cluster
) -> None:
    server = await start_server(cluster=mesh)
    key = await server.import_app(HELLO)
    headers = {**bearer(key), "Idempotency-Key": "k"}
    bad = {"inputs": {}, "response_mode": "async", "user": "u"}  # `name` is required
    response = await server.http.post(RUN, json=bad, headers=headers)
    assert response.status_code == 400, response.text
    good = {"inputs": {"name": "x"}, "response_mode": "async", "user": "u"}
    response = await server.http.post(RUN, json=good, headers=headers)
    assert response.status_code == 202, response.text
    assert "idempotent-replayed" not in response.headers


async def test_the_retention_window_ends(start_server: StartServer, mesh: Cluster) -> None:
    server = await start_server(cluster=mesh, idempotency_retention_s=0.5)
    key = await server.import_app(HELLO)
    body = {"inputs": {"name": "x"}, "response_mode": "async", "user": "u"}
    headers = {**bearer(key), "Idempotency-Key": "short"}
    first = (await server.http.post(RUN, json=body, headers=headers)).json()["workflow_run_id"]
    await asyncio.sleep(0.7)
    second = (await server.http.post(RUN, json=body, headers=headers)).json()["workflow_run_id"]
    assert first != second


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"X-Fanflow-Response-Mode": "later"}, {}, "x-fanflow-response-mode"),
        ({"Idempotency-Key": "k" * 256}, {}, "Idempotency-Key"),
        ({"Idempotency-Key": "a\tb"}, {}, "Idempotency-Key"),
        ({"Idempotency-Key": "k"}, {"response_mode": "streaming"}, "not to streaming"),
        ({}, {"response_mode": "blocking", "callback_url": "http://example.com/"}, "only async"),
        ({}, {"response_mode": "async", "callback_url": 7}, "callback_url"),
        ({}, {"response_mode": "async", "callback_url": "ftp://example.com/x"}, "http(s) URL"),
    ],
)
async def test_bad_lifecycle_requests_are_400(
    start_server: StartServer,
    headers: dict[str, str],
    body: dict[str, Any],
    expected: str,
) -> None:
    server = await start_server(callback_secret=SECRET)
    key = await server.import_app(HELLO)
    payload = {"inputs": {"name": "x"}, "user": "u", **body}
    response = await server.http.post(
        RUN, content=json.dumps(payload), headers={**bearer(key), **headers}
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_param"
    assert expected in response.json()["message"], response.json()


async def test_callbacks_need_a_secret(start_server: StartServer) -> None:
    server = await start_server()
    key = await server.import_app(HELLO)
    body = {"inputs": {"name": "x"}, "user": "u", "response_mode": "async"}
    body["callback_url"] = "https://example.com/hook"
    response = await server.http.post(RUN, json=body, headers=bearer(key))
    assert response.status_code == 400
    assert "FANFLOW_CALLBACK_SECRET" in response.json()["message"]


async def test_the_callback_is_signed_retried_and_recorded(
    start_server: StartServer, mesh: Cluster
) -> None:
    server = await start_server(
        cluster=mesh,
        callback_secret=SECRET,
        callback_backoff_s=0.1,
        http_allow_list="127.0.0.1",
    )
    key = await server.import_app(HELLO)
    async with running_receiver() as receiver:
        receiver.answers = [503, 500]  # then 200
        body = {"inputs": {"name": "world"}, "user": "u", "response_mode": "async"}
        body["callback_url"] = receiver.url
        response = await server.http.post(RUN, json=body, headers=bearer(key))
        assert response.status_code == 202, response.text
        run_id = response.json()["workflow_run_id"]
        deadline = time.monotonic() + 30
        while len(receiver.received) < 3:
            assert time.monotonic() < deadline, receiver.received
            await asyncio.sleep(0.05)
    attempts = [r.headers["x-fanflow-delivery-attempt"] for r in receiver.received]
    assert attempts == ["1", "2", "3"]
    last = receiver.received[-1]
    assert verify(SECRET, last.headers[SIGNATURE_HEADER.lower()], last.body)
    assert not verify("another secret", last.headers[SIGNATURE_HEADER.lower()], last.body)
    assert not verify(SECRET, last.headers[SIGNATURE_HEADER.lower()], last.body + b" ")
    payload = json.loads(last.body)
    assert payload["event"] == "workflow_finished" and payload["workflow_run_id"] == run_id
    assert payload["data"]["status"] == "succeeded"
    assert payload["data"]["outputs"] == HELLO_OUTPUTS

    store = await Store.open(mesh.database_url, migrate=False)
    try:
        deliveries = await store.idempotency.deliveries(run_id)
    finally:
        await store.close()
    assert [(d.attempt, d.status_code, d.delivered) for d in deliveries] == [
        (1, 503, False),
        (2, 500, False),
        (3, 200, True),
    ]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
        "http://127.0.0.1:6379/",  # loopback: Redis
        "http://localhost:5432/",  # a name resolving to loopback
        "http://[::ffff:10.0.0.1]/",  # IPv4-mapped private
        "http://10.1.2.3/hook",
        "http://0.0.0.0/",
    ],
)
async def test_callbacks_to_internal_addresses_are_refused(
    start_server: StartServer, url: str
) -> None:
    server = await start_server(callback_secret=SECRET)
    key = await server.import_app(HELLO)
    body = {"inputs": {"name": "x"}, "user": "u", "response_mode": "async", "callback_url": url}
    response = await server.http.post(RUN, json=body, headers=bearer(key))
    assert response.status_code == 400, response.text
    assert "refused" in response.json()["message"], response.json()
    assert await run_count(server, key) == 0


async def test_a_callback_redirect_is_not_followed(
    start_server: StartServer, mesh: Cluster
) -> None:
    server = await start_server(
        cluster=mesh, callback_secret=SECRET, callback_backoff_s=0.1, http_allow_list="127.0.0.1"
    )
    key = await server.import_app(HELLO)
    async with running_receiver() as receiver:
        receiver.answers = [302]
        body = {"inputs": {"name": "x"}, "user": "u", "response_mode": "async"}
        body["callback_url"] = receiver.url
        response = await server.http.post(RUN, json=body, headers=bearer(key))
        run_id = response.json()["workflow_run_id"]
        store = await Store.open(mesh.database_url, migrate=False)
        try:
            deadline = time.monotonic() + 30
            while not (deliveries := await store.idempotency.deliveries(run_id)):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # no second try comes
            deliveries = await store.idempotency.deliveries(run_id)
        finally:
            await store.close()
    assert [(d.status_code, d.delivered) for d in deliveries] == [(302, False)]
    assert len(receiver.received) == 1


async def test_a_trigger_stopping_cancels_pending_callbacks(
    start_server: StartServer, mesh: Cluster
) -> None:
    server = await start_server(cluster=mesh, callback_secret=SECRET, http_allow_list="127.0.0.1")
    key = await server.import_app(SLEEPY)
    body = {"inputs": {"n": 30}, "user": "u", "response_mode": "async"}
    body["callback_url"] = "http://127.0.0.1:9/never"
    response = await server.http.post(RUN, json=body, headers=bearer(key))
    assert response.status_code == 202
    trigger = server.app.state.trigger
    assert len(trigger.background) == 1
    # the fixture's teardown stops the server (within 15 s, or the test errors): the task
    # waiting on the 30 s run must not hold it up
