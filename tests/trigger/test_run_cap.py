"""The per-app cap on runs in progress holds under concurrent requests, on both databases.

Counting and then inserting in two transactions let 186 runs start against a cap of 100:
every request counted before any of them had inserted. No worker runs here, so every run
that starts stays `running`, and exactly `cap` of a burst may start.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from fanflow.store import Store
from tests.trigger.conftest import StartServer, bearer

CAP = 5
BURST = 60


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_a_burst_of_runs_starts_exactly_the_cap(
    start_server: StartServer, postgres_url: Callable[[], str], database: str
) -> None:
    overrides: dict[str, Any] = {"app_max_active_runs": CAP, "blocking_timeout_s": 0.3}
    if database == "postgresql":
        overrides["database_url"] = postgres_url()
    server = await start_server(**overrides)
    key = await server.import_app()
    body = {"inputs": {"name": "x"}, "response_mode": "blocking", "user": "u"}
    responses = await asyncio.gather(
        *(
            server.http.post("/v1/workflows/run", json=body, headers=bearer(key))
            for _ in range(BURST)
        )
    )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: CAP, 429: BURST - CAP}, statuses
    refused = next(r for r in responses if r.status_code == 429).json()
    assert refused["code"] == "too_many_requests" and f"{CAP} run(s)" in refused["message"]
    store = await Store.open(server.settings.database_url, migrate=False)
    try:
        started = [r.json()["data"]["workflow_id"] for r in responses if r.status_code == 200]
        app_id = started[0]
        assert await store.count_running(app_id) == CAP
    finally:
        await store.close()
