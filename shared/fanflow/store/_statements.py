"""The run transaction's statements, built once per dialect and reused for every call.

Building a Core statement (``insert(...).values(...)``, ``.excluded``, ``.where(...)``)
generates column proxies and a cache key each time: on the aggregator's hot path that
cost more than the database round trips. These statements take every value as a bound
parameter, so one object serves every run and batch (executemany with a list of dicts),
and SQLAlchemy's compiled cache finds them by their memoized cache key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Delete, Insert, Update
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.selectable import Select

from fanflow.store.schema import iteration_items, node_executions, outbox, processed_messages, runs

#: run columns `RunTransaction.save` writes (besides `version`, which it increments)
SAVED_COLUMNS = (
    "state",
    "status",
    "outputs",
    "error",
    "total_steps",
    "total_tokens",
    "exceptions_count",
    "finished_at",
    "elapsed_time",
)


@dataclass(frozen=True)
class Statements:
    lock_run: Select[Any]
    seen_ids: Select[Any]
    insert_seen: Insert
    upsert_items: Insert
    stored_items: Select[Any]
    delete_items: Delete
    forget_items: Delete
    forget_seen: Delete
    save_run: Update
    insert_outbox: Insert
    #: by (inputs given, outputs given): a None keeps what an earlier event recorded
    upsert_executions: dict[tuple[bool, bool], Insert]


_BY_DIALECT: dict[str, Statements] = {}


def statements_for(dialect_name: str) -> Statements:
    """The prebuilt statements for `postgresql` or `sqlite` (built on first use)."""
    built = _BY_DIALECT.get(dialect_name)
    if built is None:
        built = _BY_DIALECT[dialect_name] = _build(dialect_name)
    return built


def _build(dialect_name: str) -> Statements:
    insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    run_id: BindParameter[str] = bindparam("run_id")
    items_where = (iteration_items.c.run_id == run_id) & (
        iteration_items.c.iteration == bindparam("iteration")
    )
    upsert_items = insert(iteration_items)
    upsert_items = upsert_items.on_conflict_do_update(
        index_elements=["run_id", "iteration", "item_index"],
        set_={"value": upsert_items.excluded.value, "removed": upsert_items.excluded.removed},
    )
    return Statements(
        # FOR UPDATE serializes transactions on one run in PostgreSQL (others run in
        # parallel); SQLite omits it, BEGIN IMMEDIATE already holds the write lock
        lock_run=select(runs).where(runs.c.id == run_id).with_for_update(),
        seen_ids=select(processed_messages.c.message_id).where(
            processed_messages.c.message_id.in_(bindparam("ids", expanding=True))
        ),
        insert_seen=insert(processed_messages).on_conflict_do_nothing(
            index_elements=["message_id"]
        ),
        upsert_items=upsert_items,
        stored_items=select(
            iteration_items.c.item_index, iteration_items.c.value, iteration_items.c.removed
        )
        .where(items_where)
        .order_by(iteration_items.c.item_index),
        delete_items=delete(iteration_items).where(items_where),
        forget_items=delete(iteration_items).where(iteration_items.c.run_id == run_id),
        forget_seen=delete(processed_messages).where(processed_messages.c.run_id == run_id),
        save_run=update(runs)
        .where(runs.c.id == run_id)
        .values(
            {
                **{name: bindparam(f"new_{name}") for name in SAVED_COLUMNS},
                "version": runs.c.version + 1,
            }
        ),
        insert_outbox=outbox.insert().returning(outbox.c.id, sort_by_parameter_order=True),
        upsert_executions={
            (inputs, outputs): _upsert_execution(insert, inputs=inputs, outputs=outputs)
            for inputs in (False, True)
            for outputs in (False, True)
        },
    )


def _upsert_execution(insert: Any, *, inputs: bool, outputs: bool) -> Insert:
    statement = insert(node_executions)
    new = statement.excluded
    kept = {
        name: func.coalesce(new[name], node_executions.c[name])
        for name in ("started_at", "finished_at")
    }
    # JSON columns: SQL NULL vs JSON null makes COALESCE unreliable; decided in Python
    if inputs:
        kept["inputs"] = new.inputs
    if outputs:
        kept["outputs"] = new.outputs
    upsert: Insert = statement.on_conflict_do_update(
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
    return upsert
