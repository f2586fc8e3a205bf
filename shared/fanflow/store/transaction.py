"""One run's unit of work: the run row locked, every change committed together or not at all.

Writes are buffered in the transaction and flushed in bulk just before commit (one
executemany per table), so a batch of results costs a few statements, not a few per
result. Reads through the transaction see the buffered writes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from fanflow.store._statements import SAVED_COLUMNS, Statements, statements_for
from fanflow.store.chat_records import TurnEnd
from fanflow.store.records import ItemLike, OutboxMessage, StoredItem, StoreError
from fanflow.store.schema import iteration_items, runs
from fanflow.vocabulary import RunStatus

#: a run that ends so keeps its iteration items for a redrive
_REDRIVABLE = frozenset({RunStatus.FAILED, RunStatus.STOPPED})


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
        self._sql: Statements = statements_for(connection.dialect.name)
        self.run_id: str = row.id
        self.app_id: str = row.app_id
        self.status: str = row.status
        self.version: int = row.version
        self.created_at: float = row.created_at
        self._state: bytes = bytes(row.state)
        # buffered until `_flush`: processed message ids, items, node execution rows
        self._seen: set[str] = set()
        self._new_seen: list[str] = []
        self._items: dict[tuple[str, int], _Item] = {}
        self._executions: dict[str, dict[str, Any]] = {}

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
        [before] = await self.seen_many([message_id])
        return before

    async def seen_many(self, message_ids: Sequence[str]) -> list[bool]:
        """`seen` for many ids with one query: per id, True when processed before (in an
        earlier transaction, or earlier in this one or in `message_ids`)."""
        unknown = [m for m in dict.fromkeys(message_ids) if m not in self._seen]
        if unknown:
            result = await self._conn.execute(self._sql.seen_ids, {"ids": unknown})
            self._seen.update(row.message_id for row in result)
        answers = []
        for message_id in message_ids:
            before = message_id in self._seen
            if not before:
                self._seen.add(message_id)
                self._new_seen.append(message_id)
            answers.append(before)
        return answers

    async def forget_scratch(self) -> None:
        """Drop what only a running run needs: its stored iteration items and the ids of
        the messages it processed (a finished run ignores late messages by its status).

        A run saved failed or stopped keeps its items: a redrive does not run them again.
        """
        self._new_seen.clear()
        params = {"run_id": self.run_id}
        if self.status not in _REDRIVABLE:
            self._items.clear()
            await self._conn.execute(self._sql.forget_items, params)
        await self._conn.execute(self._sql.forget_seen, params)

    async def item_indexes(self, iteration: str) -> list[int]:
        """Indexes of the items recorded for `iteration` (stored or in this transaction),
        ascending; they stay recorded."""
        stored = await self._conn.execute(
            select(iteration_items.c.item_index).where(
                iteration_items.c.run_id == self.run_id, iteration_items.c.iteration == iteration
            )
        )
        found = {row.item_index for row in stored}
        found.update(index for key, index in self._items if key == iteration)
        return sorted(found)

    async def mark_redriven(self) -> int:
        """Count a redrive of the run (its deadline restarts now); the new count."""
        await self._conn.execute(
            update(runs)
            .where(runs.c.id == self.run_id)
            .values(redrive_count=runs.c.redrive_count + 1, redriven_at=time.time())
        )
        count = await self._conn.scalar(
            select(runs.c.redrive_count).where(runs.c.id == self.run_id)
        )
        return int(count or 0)

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
        values = dict(
            state=state,
            status=status,
            outputs=outputs,
            error=error,
            total_steps=total_steps,
            total_tokens=total_tokens,
            exceptions_count=exceptions_count,
            finished_at=finished_at,
            elapsed_time=elapsed_time,
        )
        params: dict[str, Any] = {f"new_{name}": values[name] for name in SAVED_COLUMNS}
        params["run_id"] = self.run_id
        await self._conn.execute(self._sql.save_run, params)
        self._state = state
        self.status = status
        self.version += 1

    async def record_item(
        self, iteration: str, index: int, value: Any = None, removed: bool = False
    ) -> None:
        """Store one iteration item's result; recording the same index again overwrites."""
        await self.record_items([_Item(iteration, index, value, removed)])

    async def record_items(self, items: Iterable[ItemLike]) -> None:
        """`record_item` for many items (e.g. the scheduler's `RecordItem`s); written in
        bulk at commit, unless collected before."""
        for item in items:
            self._items[(item.iteration, item.index)] = _Item(
                item.iteration, item.index, item.value, item.removed
            )

    async def collect_items(self, iteration: str) -> list[StoredItem]:
        """Every recorded item of `iteration`, ordered by index, removed from the store.

        Removal is part of this transaction, so a rollback puts the items back.
        """
        params = {"run_id": self.run_id, "iteration": iteration}
        result = await self._conn.execute(self._sql.stored_items, params)
        by_index = {
            row.item_index: StoredItem(row.item_index, row.value, bool(row.removed))
            for row in result
        }
        if by_index:
            await self._conn.execute(self._sql.delete_items, params)
        # recorded in this transaction: never written, they overwrite what was stored
        for key in [key for key in self._items if key[0] == iteration]:
            item = self._items.pop(key)
            by_index[item.index] = StoredItem(item.index, item.value, item.removed)
        return [by_index[index] for index in sorted(by_index)]

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
        """Insert or update the node's row in `scope` (at commit); returns its id.

        On update, status, error, attempts and tokens are replaced; inputs, outputs and
        timestamps given as None keep what an earlier event recorded.
        """
        execution_id = node_execution_id(self.run_id, scope, node_id)
        row = self._executions.get(execution_id)
        if row is None:
            self._executions[execution_id] = {
                "id": execution_id,
                "run_id": self.run_id,
                "node_id": node_id,
                "node_type": node_type,
                "title": title,
                "scope": scope,
                "status": status,
                "inputs": inputs,
                "outputs": outputs,
                "error": error,
                "attempts": attempts,
                "total_tokens": total_tokens,
                "started_at": started_at,
                "finished_at": finished_at,
                "created_at": time.time(),
            }
            return execution_id
        # a second event for the node in this transaction: merged as the upsert would
        row.update(
            node_type=node_type,
            title=title,
            status=status,
            error=error,
            attempts=attempts,
            total_tokens=total_tokens,
        )
        for name, value in (
            ("inputs", inputs),
            ("outputs", outputs),
            ("started_at", started_at),
            ("finished_at", finished_at),
        ):
            if value is not None:
                row[name] = value
        return execution_id

    async def add_outbox(self, messages: Sequence[OutboxMessage]) -> list[int]:
        """Queue messages to publish after commit; returns their outbox ids, in order."""
        return await add_outbox(self._conn, self.run_id, messages)

    async def finish_turn(self, end: TurnEnd) -> None:
        """A chatflow turn ended with this run: its message's answer and the conversation's
        variables commit with the run's end."""
        from fanflow.store._chat_rows import finish_turn

        await finish_turn(self._conn, self.run_id, end)

    async def _flush(self) -> None:
        """Write the buffered rows: one executemany per table (and kind of upsert)."""
        connection, sql = self._conn, self._sql
        if self._new_seen:
            now = time.time()
            rows = [{"message_id": m, "run_id": self.run_id, "at": now} for m in self._new_seen]
            self._new_seen = []
            await connection.execute(sql.insert_seen, rows)
        if self._items:
            items = [
                {
                    "run_id": self.run_id,
                    "iteration": item.iteration,
                    "item_index": item.index,
                    "value": item.value,
                    "removed": item.removed,
                }
                for item in self._items.values()
            ]
            self._items.clear()
            await connection.execute(sql.upsert_items, items)
        if self._executions:
            by_kind: dict[tuple[bool, bool], list[dict[str, Any]]] = {}
            for row in self._executions.values():
                kind = (row["inputs"] is not None, row["outputs"] is not None)
                by_kind.setdefault(kind, []).append(row)
            self._executions.clear()
            for kind, rows in by_kind.items():
                await connection.execute(sql.upsert_executions[kind], rows)


async def add_outbox(
    connection: AsyncConnection, run_id: str | None, messages: Sequence[OutboxMessage]
) -> list[int]:
    rows = outbox_rows(run_id, messages)
    if not rows:
        return []
    statement = statements_for(connection.dialect.name).insert_outbox
    result = await connection.execute(statement, rows)
    return [row.id for row in result]
