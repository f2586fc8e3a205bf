"""Batch runs: one run per row of an uploaded CSV or JSONL file (`store.batches`).

Rows move pending -> running (a run id assigned as the row is claimed, atomically, so no
row is started twice) -> the run's end status, or `invalid` when its inputs were refused.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from fanflow.store._engine import write_transaction
from fanflow.store.schema import batch_rows, batches

PENDING, RUNNING, INVALID = "pending", "running", "invalid"


@dataclass(frozen=True)
class BatchRow:
    index: int
    status: str
    run_id: str | None
    error: str | None


@dataclass(frozen=True)
class BatchRecord:
    id: str
    app_id: str
    user: str
    concurrency: int
    total: int
    created_at: float
    #: status -> rows
    counts: dict[str, int]


class Batches:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self, app_id: str, user: str, rows: Sequence[dict[str, Any]], *, concurrency: int
    ) -> str:
        batch_id = str(uuid.uuid4())
        async with write_transaction(self.engine) as connection:
            await connection.execute(
                batches.insert().values(
                    id=batch_id,
                    app_id=app_id,
                    end_user=user,
                    concurrency=concurrency,
                    total=len(rows),
                    created_at=time.time(),
                )
            )
            if rows:
                await connection.execute(
                    batch_rows.insert(),
                    [
                        {"batch_id": batch_id, "row_index": i, "inputs": row, "status": PENDING}
                        for i, row in enumerate(rows)
                    ],
                )
        return batch_id

    async def claim_next(self, batch_id: str) -> tuple[int, dict[str, Any], str] | None:
        """The first pending row, now running with a new run id; None when none is left."""
        async with write_transaction(self.engine) as connection:
            statement = (
                select(batch_rows.c.row_index, batch_rows.c.inputs)
                .where(batch_rows.c.batch_id == batch_id, batch_rows.c.status == PENDING)
                .order_by(batch_rows.c.row_index)
                .limit(1)
            )
            if connection.dialect.name == "postgresql":
                statement = statement.with_for_update(skip_locked=True)
            row = (await connection.execute(statement)).first()
            if row is None:
                return None
            run_id = str(uuid.uuid4())
            await connection.execute(
                update(batch_rows)
                .where(batch_rows.c.batch_id == batch_id, batch_rows.c.row_index == row.row_index)
                .values(status=RUNNING, run_id=run_id)
            )
        return row.row_index, dict(row.inputs), run_id

    async def finish_row(
        self, batch_id: str, index: int, status: str, *, error: str | None = None
    ) -> None:
        async with write_transaction(self.engine) as connection:
            await connection.execute(
                update(batch_rows)
                .where(batch_rows.c.batch_id == batch_id, batch_rows.c.row_index == index)
                .values(status=status, error=error)
            )

    async def get(self, batch_id: str) -> BatchRecord | None:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(select(batches).where(batches.c.id == batch_id))
            ).first()
            if row is None:
                return None
            counts = {
                r.status: int(r.n)
                for r in await connection.execute(
                    select(batch_rows.c.status, func.count().label("n"))
                    .where(batch_rows.c.batch_id == batch_id)
                    .group_by(batch_rows.c.status)
                )
            }
        return BatchRecord(
            row.id, row.app_id, row.end_user, row.concurrency, row.total, row.created_at, counts
        )

    async def rows(self, batch_id: str, *, offset: int = 0, limit: int = 1000) -> list[BatchRow]:
        statement = (
            select(
                batch_rows.c.row_index, batch_rows.c.status, batch_rows.c.run_id, batch_rows.c.error
            )
            .where(batch_rows.c.batch_id == batch_id)
            .order_by(batch_rows.c.row_index)
            .offset(offset)
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            return [
                BatchRow(r.row_index, r.status, r.run_id, r.error)
                for r in await connection.execute(statement)
            ]
