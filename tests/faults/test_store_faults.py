"""The store against a private PostgreSQL that restarts: real driver errors are classified
transient (the database is away) or permanent (the statement is wrong), and pooled
connections survive a restart (`pool_pre_ping`): no caller pays for a dead connection."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fanflow.store import Backoff, Store, is_transient, retry_transient
from tests.faults.postgres import PrivatePostgres

pytestmark = pytest.mark.timeout(120)


async def test_errors_of_a_database_that_is_away_are_transient(postgres: PrivatePostgres) -> None:
    store = await Store.open(await postgres.create_database())
    try:
        await store.get_run("warm")  # a pooled connection
        await asyncio.to_thread(postgres.stop, "immediate")
        errors = []
        for _ in range(2):  # the pooled connection (now dead), then a new one (refused)
            with pytest.raises(Exception) as caught:
                await store.get_run("x")
            errors.append(caught.value)
        assert all(is_transient(e) for e in errors), [repr(e) for e in errors]
    finally:
        await asyncio.to_thread(postgres.start)
        await store.close()


async def test_errors_of_a_wrong_statement_are_permanent(postgres: PrivatePostgres) -> None:
    store = await Store.open(await postgres.create_database())
    try:
        app_id = await store.create_app("a", "workflow", "dsl")
        with pytest.raises(Exception) as caught:  # the same id twice: a constraint violation
            await store.create_app("b", "workflow", "dsl", app_id=app_id)
        assert not is_transient(caught.value), repr(caught.value)
        assert not is_transient(ValueError("no"))
    finally:
        await store.close()


async def test_pooled_connections_survive_a_restart(postgres: PrivatePostgres) -> None:
    store = await Store.open(await postgres.create_database())
    try:
        # fill the pool with several connections
        await asyncio.gather(*(store.count_running(f"app-{i}") for i in range(5)))
        await asyncio.to_thread(postgres.restart, "immediate")
        # each pooled connection is dead; pre-ping replaces it before any caller sees it
        assert await asyncio.gather(*(store.count_running(f"app-{i}") for i in range(5))) == [0] * 5
    finally:
        await store.close()


async def test_a_pool_without_pre_ping_fails_transiently(postgres: PrivatePostgres) -> None:
    """What pre-ping saves callers from, and that the failure is at least transient."""
    store = await Store.open(await postgres.create_database(), pool_pre_ping=False)
    try:
        await asyncio.gather(*(store.count_running(f"app-{i}") for i in range(3)))
        await asyncio.to_thread(postgres.restart, "immediate")
        outcomes = await asyncio.gather(
            *(store.count_running(f"app-{i}") for i in range(3)), return_exceptions=True
        )
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        assert failures, "every dead pooled connection answered?"
        assert all(is_transient(f) for f in failures), [repr(f) for f in failures]
    finally:
        await store.close()


async def test_retry_transient_rides_through_a_short_outage(postgres: PrivatePostgres) -> None:
    store = await Store.open(await postgres.create_database())
    try:
        await asyncio.to_thread(postgres.stop, "immediate")
        back = asyncio.create_task(asyncio.to_thread(postgres.start))
        await asyncio.sleep(0)  # the start runs while the retries wait
        count = await retry_transient(
            lambda: store.count_running("app"),
            budget_s=30,
            what="counting",
            log=logging.getLogger("test"),
            backoff=Backoff(initial_s=0.05, cap_s=0.5),
        )
        await back
        assert count == 0
        # a permanent error is raised at once, not retried for the budget
        with pytest.raises(ValueError):

            async def wrong() -> None:
                raise ValueError("wrong")

            await retry_transient(wrong, budget_s=30, what="x", log=logging.getLogger("test"))
    finally:
        await store.close()


def test_backoff_is_jittered_capped_and_resets() -> None:
    backoff = Backoff(initial_s=0.1, cap_s=1.0)
    delays = [backoff.next_delay() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 1.0 for d in delays) and max(delays) >= 0.5
    backoff.reset()
    assert backoff.next_delay() <= 0.1
    with pytest.raises(ValueError):
        Backoff(initial_s=1, cap_s=0.5)
