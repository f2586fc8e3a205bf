"""`store.idempotency`: concurrent claims of one key from two processes' worth of
connections (two engines) end with one winner, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from fanflow.store import Store


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: Callable[[], str]
) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'claims.db'}"
    return postgres_url()


async def test_concurrent_claims_have_one_winner(database_url: str) -> None:
    first = await Store.open(database_url)
    second = await Store.open(database_url, migrate=False)
    try:
        app_id = await first.create_app("demo", "workflow", "dsl")
        for round_ in range(5):
            key = f"key-{round_}"
            claims = await asyncio.gather(
                *(
                    store.idempotency.claim(
                        app_id, key, body_hash="h", run_id=str(uuid.uuid4()), retention_s=60
                    )
                    for store in (first, second) * 8
                )
            )
            winners = [c for c in claims if c.created]
            assert len(winners) == 1, claims
            assert {c.run_id for c in claims} == {winners[0].run_id}
        # an expired claim is replaced; a released one is gone
        await asyncio.sleep(0.05)
        renewed = await first.idempotency.claim(
            app_id, "key-0", body_hash="h2", run_id="r-new", retention_s=0.01
        )
        assert renewed.created and renewed.run_id == "r-new"
        await second.idempotency.release(app_id, "key-0", "r-new")
        assert await first.idempotency.get(app_id, "key-0") is None
        assert await first.idempotency.purge(older_than=1e12) == 4
    finally:
        await first.close()
        await second.close()
