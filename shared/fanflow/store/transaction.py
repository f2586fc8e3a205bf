"""One run's unit of work: the run row locked, every change committed together or not at all."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from fanflow.store._engine import insert_for
from fanflow.store.records import ItemLike, OutboxMessage, StoredItem, StoreError
from fanflow.store.schema import (
    iteration_items,
    node_executions,
    outbox,
    processed_messages,
    runs,
)


def node_execution_id(run_id: str, scope: str, node_id: str) -> str:
    return f"{run_id}/{scope}/{node_id}"


def outbox_rows(run_id: str | None, messages: Iterable[OutboxMessage]) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "run_id": run_id,
            "message_id": message.message_id,
            "kind": message.kind,
            "routing": message.routing,
            "body": message.body,
            "headers": dict(message.headers),
            "delay_ms": message.delay_ms,
            "created_at": now,
        }
        for message in messages
    ]


@dataclass(frozen=True, slots=True)
class _Item:
    iteration: str
    index: int
    value: Any
    removed: bool


class RunTransaction:
    """The run row, locked for the lifetime of `Store.run_transaction(run_id)`.

    Obtained only from the store. Everything done through it commits when the `async with`
    block exits cleanly and rolls back when it raises. Other transactions on the same run
    wait for this one (PostgreSQL: `SELECT ... FOR UPDATE`; SQLite: `BEGIN IMMEDIATE`).
    """

    def __init__(self, connection: AsyncConnection, row: Row[Any]) -> None:
        self._connection: AsyncConnection | None = connection
        self._insert = insert_for(connection)
        self.run_id: str = row.id
        self.app_id: str = row.app_id
        self.status: str = row.status
        self.version: int = row.version
        self.created_at: float = row.created_at
        self._state: bytes = bytes(row.state)

    def state(self) -> bytes:
        """The run state as last saved (`load_state` decodes it)."""
        return self._state

    @property
    def _conn(self) -> AsyncConnection:
        if self._connection is None:
            raise StoreError(f"the transaction on run {self.run_id} is over")
        return self._connection

    def _close(self) -> None:
        self._connection = None

    async def seen(self, message_id: str) -> bool:
        """True when `message_id` was processed before; otherwise records it and says False.

        The record is part of this transaction: a rollback forgets it with the rest.
        """
        statement = (
            self._insert(processed_messages)
            .values(message_id=message_id, run_id=self.run_id, at=time.time())
            .on_conflict_do_nothing(index_elements=["message_id"])
        )
        result = await self._conn.execute(statement)
        return result.rowcount == 0

    async def forget_scratch(self) -> None:
        """Drop what only a running run needs: its stored iteration items and the ids of
        the messages it processed (a finished run ignores late messages by its status)."""
        for table in (iteration_items, processed_messages):
            await self._conn.execute(delete(table).where(table.c.run_id == self.run_id))

    async def save(
        self,
        state: bytes,
        *,
        status: str,
        outputs: dict[str, Any] | None,
        error: str | None,
        total_steps: int,
        total_tokens: int,
        exceptions_count: int,
        finished_at: float | None = None,
        elapsed_time: float | None = None,
    ) -> None:
        """Write the new state and the run's summary columns (bumps `version`)."""
        await self._conn.execute(
            update(runs)
            .where(runs.c.id == self.run_id)
            .values(
                state=state,
                status=status,
                outputs=outputs,
                error=error,
                total_steps=total_steps,
                total_tokens=total_tokens,
                exceptions_count=exceptions_count,
                finished_at=finished_at,
                elapsed_time=elapsed_time,
                version=runs.c.version + 1,
            )
        )
        self._state = state
        self.status = status
        self.version += 1

    async def record_item(
        self, iteration: str, index: int, value: Any = None, removed: bool = False
    ) -> None:
        """Store one iteration item's result; recording the same index again overwrites."""
        await self.record_items([_Item(iteration, index, value, removed)])

    async def record_items(self, items: Iterable[ItemLike]) -> None:
        """`record_item` for many items in one statement (e.g. the scheduler's `RecordItem`s)."""
        rows = [
            {
                "run_id": self.run_id,
                "iteration": item.iteration,
                "item_index": item.index,
                "value": item.value,
                "removed": item.removed,
            }
            for item in items
        ]
        if not rows:
            return
        statement = self._insert(iteration_items)
        statement = statement.on_conflict_do_update(
            index_elements=["run_id", "iteration", "item_index"],
            set_={"value": statement.excluded.value, "removed": statement.excluded.removed},
        )
        await self._conn.execute(statement, rows)

    async def collect_items(self, iteration: str) -> list[StoredItem]:
        """Every recorded item of `iteration`, ordered by index, removed from the store.

        Removal is part of this transaction, so a rollback puts the items back.
        """
        where = (iteration_items.c.run_id == self.run_id) & (
            iteration_items.c.iteration == iteration
        )
        result = await self._conn.execute(
            select(iteration_items.c.item_index, iteration_items.c.value, iteration_items.c.removed)
            .where(where)
            .order_by(iteration_items.c.item_index)
        )
        items = [StoredItem(row.item_index, row.value, bool(row.removed)) for row in result]
        await self._conn.execute(delete(iteration_items).where(where))
        return items

    async def upsert_node_execution(
        self,
        *,
        node_id: str,
        node_type: str,
        status: str,
        scope: str = "",
        title: str = "",
        inputs: dict[str, Any] | None = None,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
        attempts: int = 0,
        total_tokens: int = 0,
        started_at: float | None = None,
        finished_at: float | None = None,
    ) -> str:
        """Insert or update the node's row in `scope`; returns its id.

        On update, status, error, attempts and tokens are replaced; inputs, outputs and
        timestamps given as None keep what an earlier event recorded.
        """
        execution_id = node_execution_id(self.run_id, scope, node_id)
        statement = self._insert(node_executions).values(
            id=execution_id,
            run_id=self.run_id,
            node_id=node_id,
            node_type=node_type,
            title=title,
            scope=scope,
            status=status,
            inputs=inputs,
            outputs=outputs,
            error=error,
            attempts=attempts,
            total_tokens=total_tokens,
            started_at=started_at,
            finished_at=finished_at,
            created_at=time.time(),
        )
        new = statement.excluded
        kept = {
            name: func.coalesce(new[name], node_executions.c[name])
            for name in ("started_at", "finished_at")
        }
        # JSON columns: SQL NULL vs JSON null makes COALESCE unreliable; decide in Python
        if inputs is not None:
            kept["inputs"] = new.inputs
        if outputs is not None:
            kept["outputs"] = new.outputs
        statement = statement.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "node_type": new.node_type,
                "title": new.title,
                "status": new.status,
                "error": new.error,
                "attempts": new.attempts,
                "total_tokens": new.total_tokens,
                **kept,
            },
        )
        await self._conn.execute(statement)
        return execution_id

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> list[int]:
        """Queue messages to publish after commit; returns their outbox ids, in order."""
        return await add_outbox(self._conn, self.run_id, messages)


async def add_outbox(
    connection: AsyncConnection, run_id: str | None, messages: Sequence[OutboxMessage]
) -> list[int]:
    rows = outbox_rows(run_id, messages)
    if not rows:
        return []
    result = await connection.execute(
        outbox.insert().returning(outbox.c.id, sort_by_parameter_order=True), rows
    )
    return [row.id for row in result]
