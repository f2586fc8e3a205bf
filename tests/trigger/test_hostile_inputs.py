"""Hostile request bodies against a real trigger: each is a clear 4xx naming the field, fast,
and without growing the process.

Deep nesting (65 and 100,000 levels) in run, stop and admin bodies, lone surrogates and NULs
in inputs, `user`, keys, paths and queries — on SQLite and on PostgreSQL, which refuses NUL
in text columns. No worker runs here: a run that starts stays `running`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fanflow_services.trigger.json_guard import MAX_JSON_DEPTH

from tests.trigger.conftest import ADMIN_TOKEN, Server, StartServer, bearer

RUN = "/v1/workflows/run"
STOP = "/v1/workflows/tasks/{}/stop"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}


def nested(levels: int, inner: str = "1") -> str:
    return "[" * levels + inner + "]" * levels


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture(params=["sqlite", "postgresql"])
async def server(
    request: pytest.FixtureRequest, start_server: StartServer, postgres_url: Callable[[], str]
) -> Server:
    overrides: dict[str, Any] = {"blocking_timeout_s": 0.2}
    if request.param == "postgresql":
        overrides["database_url"] = postgres_url()
    return await start_server(**overrides)


def assert_400(response: httpx.Response, *fragments: str) -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == "invalid_param" and body["status"] == 400, body
    message: str = body["message"]
    for fragment in fragments:
        assert fragment in message, message
    return message


def run_body(inputs: str, user: str = '"u"') -> bytes:
    return f'{{"inputs": {inputs}, "response_mode": "blocking", "user": {user}}}'.encode()


async def test_deep_run_bodies_are_400_naming_the_field_before_parsing(server: Server) -> None:
    key = await server.import_app()
    headers = bearer(key) | {"Content-Type": "application/json"}
    # the body is level 1 and inputs level 2: this one is just past the limit
    just_past = run_body(f'{{"name": {nested(MAX_JSON_DEPTH - 1)}}}')
    message = assert_400(await server.http.post(RUN, content=just_past, headers=headers))
    assert message.startswith("inputs.name"), message
    assert f"deeper than {MAX_JSON_DEPTH}" in message
    at_limit = run_body(f'{{"name": {nested(MAX_JSON_DEPTH - 3)}}}')
    # within the limit the body parses: the answer is about the input, not the nesting
    message = assert_400(await server.http.post(RUN, content=at_limit, headers=headers), "name")
    assert "deeper" not in message
    for body in (
        run_body(f'{{"name": "x", "deep": {nested(100_000)}}}'),
        run_body('{"name": "x"}', user=nested(100_000, '"u"')),
        nested(100_000).encode(),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000).encode(),
        b"[" * 1_000_000,  # unbalanced and nothing else: the cap on the body size is 1 MiB
    ):
        started = time.perf_counter()
        message = assert_400(await server.http.post(RUN, content=body, headers=headers), "deeper")
        assert time.perf_counter() - started < 1.0
    assert "inputs.deep" in assert_400(
        await server.http.post(
            RUN, content=run_body(f'{{"deep": {nested(100_000)}}}'), headers=headers
        )
    )


async def test_deep_stop_and_admin_bodies_are_400(server: Server) -> None:
    key = await server.import_app()
    stop = await server.http.post(
        STOP.format("some-run"),
        content=f'{{"user": {nested(100_000)}}}'.encode(),
        headers=bearer(key),
    )
    assert_400(stop, "user", "deeper")
    admin = await server.http.post(
        "/admin/apps", content=f'{{"dsl": {nested(100_000)}}}'.encode(), headers=ADMIN
    )
    assert_400(admin, "dsl", "deeper")


async def test_lone_surrogates_and_nuls_are_400_naming_the_field(server: Server) -> None:
    key = await server.import_app()
    headers = bearer(key) | {"Content-Type": "application/json"}
    for body, field in (
        (run_body('{"name": "\\ud800"}'), "inputs.name"),
        (run_body('{"name": "ok", "list": ["a", "b\\udfff"]}'), "inputs.list[1]"),
        (run_body('{"name": "ok", "\\ud800": 1}'), "inputs: a key"),
        (run_body('{"name": "ok"}', user='"\\ud800"'), "user"),
        (run_body('{"name": "ok"}', user='"a\\u0000b"'), "user"),
        (run_body('{"name": "a\\u0000"}'), "inputs.name"),
    ):
        message = assert_400(await server.http.post(RUN, content=body, headers=headers))
        assert message.startswith(field), message
        assert "surrogate" in message or "NUL" in message
    # a valid surrogate pair is just an emoji
    fine = await server.http.post(
        RUN, content=run_body('{"name": "\\ud83d\\ude00"}'), headers=headers
    )
    assert fine.status_code == 200, fine.text
    stop = await server.http.post(STOP.format("x"), content=b'{"user": "\\ud800"}', headers=headers)
    assert_400(stop, "user", "surrogate")
    admin = await server.http.post("/admin/apps", content=b'{"dsl": "a: \\u0000"}', headers=ADMIN)
    assert_400(admin, "dsl", "NUL")


async def test_nuls_in_paths_and_queries_are_4xx(server: Server) -> None:
    key = await server.import_app()
    http = server.http
    assert (await http.get("/v1/workflows/run/a%00b", headers=bearer(key))).status_code == 404
    stop = await http.post(STOP.format("a%00b"), json={"user": "u"}, headers=bearer(key))
    assert stop.status_code == 404, stop.text
    logs = await http.get("/v1/workflows/logs", params={"keyword": "a\x00b"}, headers=bearer(key))
    assert_400(logs, "keyword", "NUL")


async def test_a_batch_of_hostile_bodies_is_fast_and_does_not_grow_the_process(
    server: Server,
) -> None:
    key = await server.import_app()
    headers = bearer(key) | {"Content-Type": "application/json"}
    bodies = [
        nested(500_000).encode(),
        run_body(f'{{"deep": {nested(200_000)}}}'),
        run_body('{"name": "' + "\\ud800" * 100_000 + '"}'),
        run_body('{"name": "x", "many": [' + ",".join(['"a"'] * 150_000) + ',"\\udfff"]}'),
    ]
    await http_batch(server, bodies, headers, rounds=1)  # warm up allocator and caches
    before = rss_mb()
    slowest = await http_batch(server, bodies, headers, rounds=10)
    grown = rss_mb() - before
    print(f"slowest hostile request {slowest:.3f} s, RSS growth {grown:.1f} MB")
    assert slowest < 1.0, f"slowest bad request took {slowest:.2f} s"
    assert grown < 50, f"the process grew {grown:.0f} MB over 40 hostile requests"


async def http_batch(
    server: Server, bodies: list[bytes], headers: dict[str, str], *, rounds: int
) -> float:
    slowest = 0.0
    for _ in range(rounds):
        for body in bodies:
            started = time.perf_counter()
            response = await server.http.post(RUN, content=body, headers=headers)
            slowest = max(slowest, time.perf_counter() - started)
            assert 400 <= response.status_code < 500, response.text[:300]
    return slowest


async def test_concurrent_hostile_bodies_all_answer_4xx(server: Server) -> None:
    key = await server.import_app()
    headers = bearer(key) | {"Content-Type": "application/json"}
    body = nested(300_000).encode()
    responses = await asyncio.gather(
        *(server.http.post(RUN, content=body, headers=headers) for _ in range(20))
    )
    assert {r.status_code for r in responses} == {400}
