"""Batch runs through a real trigger and the mesh: a 500-row CSV at concurrency 20 runs every
row exactly once; JSONL; bad bodies are 400."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.mesh.cluster import Cluster
from tests.trigger.conftest import HELLO, StartServer, bearer

pytestmark = pytest.mark.timeout(300)

BATCH = "/v1/workflows/batch"


async def until_done(server, key: str, batch_id: str, *, timeout_s: float = 240) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        progress = (await server.http.get(f"{BATCH}/{batch_id}", headers=bearer(key))).json()
        if progress["status"] == "finished":
            return dict(progress)
        assert time.monotonic() < deadline, progress["counts"]
        await asyncio.sleep(0.25)


async def test_a_500_row_csv_at_concurrency_20(start_server: StartServer, mesh: Cluster) -> None:
    server = await start_server(cluster=mesh)
    key = await server.import_app(HELLO)
    csv_body = "name\n" + "".join(f"person {i}\n" for i in range(500))
    started = time.monotonic()
    response = await server.http.post(
        f"{BATCH}?user=batcher&concurrency=20",
        content=csv_body.encode(),
        headers={**bearer(key), "Content-Type": "text/csv"},
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    assert response.json()["total"] == 500
    progress = await until_done(server, key, batch_id)
    print(f"\n500 rows at concurrency 20: {time.monotonic() - started:.1f} s")
    assert progress["counts"] == {"succeeded": 500}
    rows = progress["rows"]
    assert [r["index"] for r in rows] == list(range(500))
    run_ids = [r["run_id"] for r in rows]
    assert len(set(run_ids)) == 500
    # every row ran exactly once: 500 runs, one per name
    logs = (await server.http.get("/v1/workflows/logs?limit=1", headers=bearer(key))).json()
    assert logs["total"] == 500
    for index in (0, 257, 499):
        detail = (
            await server.http.get(f"/v1/workflows/run/{run_ids[index]}", headers=bearer(key))
        ).json()
        assert json.loads(detail["inputs"]) == {"name": f"person {index}"}
        assert detail["outputs"]["greeting"] == f"Hello, person {index}!"


async def test_jsonl_rows_and_invalid_inputs(start_server: StartServer, mesh: Cluster) -> None:
    server = await start_server(cluster=mesh)
    key = await server.import_app(HELLO)
    body = '{"name": "a"}\n\n{"other": 1}\n{"name": "c"}\n'
    response = await server.http.post(
        f"{BATCH}?user=u&concurrency=2",
        content=body.encode(),
        headers={**bearer(key), "Content-Type": "application/jsonl"},
    )
    assert response.status_code == 202, response.text
    progress = await until_done(server, key, response.json()["id"])
    statuses = [r["status"] for r in progress["rows"]]
    assert statuses == ["succeeded", "invalid", "succeeded"]
    assert "name" in (progress["rows"][1]["error"] or "")


@pytest.mark.parametrize(
    ("content_type", "body", "query", "expected"),
    [
        ("text/plain", "name\nx\n", "user=u", "Content-Type"),
        ("text/csv", "", "user=u", "header row"),
        ("text/csv", "name\n", "user=u", "no rows"),
        ("text/csv", "name\na,b\n", "user=u", "more fields"),
        ("application/jsonl", "[1]\n", "user=u", "line 1"),
        ("application/jsonl", '{"a": 1}\nnope\n', "user=u", "line 2"),
        ("application/jsonl", "[" * 5000 + "]" * 5000, "user=u", "line 1"),
        ("text/csv", "name\nx\n", "user=u&concurrency=0", "concurrency"),
    ],
)
async def test_bad_batches_are_400(
    start_server: StartServer, content_type: str, body: str, query: str, expected: str
) -> None:
    server = await start_server()
    key = await server.import_app(HELLO)
    response = await server.http.post(
        f"{BATCH}?{query}",
        content=body.encode(),
        headers={**bearer(key), "Content-Type": content_type},
    )
    assert response.status_code == 400, response.text
    assert expected in response.json()["message"], response.json()


async def test_another_apps_batch_is_not_found(start_server: StartServer) -> None:
    server = await start_server()
    key = await server.import_app(HELLO)
    other = await server.import_app(HELLO)
    response = await server.http.post(
        f"{BATCH}?user=u",
        content=b"name\nx\n",
        headers={**bearer(key), "Content-Type": "text/csv"},
    )
    batch_id = response.json()["id"]
    assert (await server.http.get(f"{BATCH}/{batch_id}", headers=bearer(other))).status_code == 404
    assert (await server.http.get(f"{BATCH}/nope", headers=bearer(key))).status_code == 404
