"""Idempotency keys of run submits (`Idempotency-Key`), and the callback deliveries of
async runs.

A submit claims its key before its run starts: the (app, key) primary key lets exactly one
of two concurrent claims insert the row, on PostgreSQL and SQLite; the other reads the
winner's run id. A claim older than the retention window is replaced; a run that could not
start releases its claim.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import and_, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from fanflow.store._engine import write_transaction
from fanflow.store.schema import callback_deliveries, idempotency_keys


@dataclass(frozen=True)
class Claim:
    """The run an idempotency key stands for; `created`: this call claimed it."""

    run_id: str
    body_hash: str
    created: bool
    created_at: float


@dataclass(frozen=True)
class CallbackDelivery:
    run_id: str
    url: str
    attempt: int
    status_code: int | None
    error: str | None
    delivered: bool
    at: float


class IdempotencyKeys:
    """`store.idempotency`: claims of `Idempotency-Key`s and the callback deliveries."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def claim(
        self, app_id: str, key: str, *, body_hash: str, run_id: str, retention_s: float
    ) -> Claim:
        """Claim `key` for `run_id`, or the claim another submit holds within the window."""
        for _ in range(3):  # an expired claim deleted by a concurrent claimer: read again
            now = time.time()
            where = and_(idempotency_keys.c.app_id == app_id, idempotency_keys.c.key == key)
            try:
                async with write_transaction(self.engine) as connection:
                    row = (await connection.execute(select(idempotency_keys).where(where))).first()
                    if row is not None and row.created_at >= now - retention_s:
                        return Claim(row.run_id, row.body_hash, False, row.created_at)
                    if row is not None:
                        await connection.execute(delete(idempotency_keys).where(where))
                    await connection.execute(
                        idempotency_keys.insert().values(
                            app_id=app_id,
                            key=key,
                            body_hash=body_hash,
                            run_id=run_id,
                            created_at=now,
                        )
                    )
                    return Claim(run_id, body_hash, True, now)
            except IntegrityError:
                continue  # PostgreSQL: a concurrent claim committed first; read it
        raise RuntimeError(f"idempotency key {key!r} of app {app_id!r}: claim kept racing")

    async def get(self, app_id: str, key: str) -> Claim | None:
        where = and_(idempotency_keys.c.app_id == app_id, idempotency_keys.c.key == key)
        async with self.engine.connect() as connection:
            row = (await connection.execute(select(idempotency_keys).where(where))).first()
        return None if row is None else Claim(row.run_id, row.body_hash, False, row.created_at)

    async def release(self, app_id: str, key: str, run_id: str) -> None:
        """Forget the claim of a run that did not start (a retry may then claim the key)."""
        async with write_transaction(self.engine) as connection:
            await connection.execute(
                delete(idempotency_keys).where(
                    idempotency_keys.c.app_id == app_id,
                    idempotency_keys.c.key == key,
                    idempotency_keys.c.run_id == run_id,
                )
            )

    async def purge(self, *, older_than: float) -> int:
        """Delete claims created before `older_than` (epoch seconds); how many."""
        async with write_transaction(self.engine) as connection:
            result = await connection.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < older_than)
            )
        return int(result.rowcount or 0)

    # ---- callback deliveries ----------------------------------------------------------

    async def record_delivery(
        self,
        run_id: str,
        url: str,
        *,
        attempt: int,
        status_code: int | None,
        error: str | None,
        delivered: bool,
    ) -> None:
        async with write_transaction(self.engine) as connection:
            await connection.execute(
                callback_deliveries.insert().values(
                    run_id=run_id,
                    url=url,
                    attempt=attempt,
                    status_code=status_code,
                    error=error,
                    delivered=delivered,
                    at=time.time(),
                )
            )

    async def deliveries(self, run_id: str) -> list[CallbackDelivery]:
        """A run's callback tries, in order."""
        statement = (
            select(callback_deliveries)
            .where(callback_deliveries.c.run_id == run_id)
            .order_by(callback_deliveries.c.id)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [
            CallbackDelivery(
                r.run_id, r.url, r.attempt, r.status_code, r.error, bool(r.delivered), r.at
            )
            for r in rows
        ]
