"""Rows of the chatflow tables as records, and the writes a turn's end makes.

Shared by `Conversations` and the run transaction (`RunTransaction.finish_turn`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from sqlalchemy import and_, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from fanflow.store._engine import insert_for
from fanflow.store.chat_records import (
    ConversationNotFound,
    ConversationRecord,
    ConversationVariableRecord,
    MessageRecord,
    TurnEnd,
)
from fanflow.store.schema import conversation_variables, conversations, messages

R = TypeVar("R")


def variable_id(conversation_id: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fanflow:conversation:{conversation_id}:{name}"))


def _record(cls: type[R], row: Row[Any], **columns: str) -> R:
    """`cls` from the row: each field from the column of its name (`columns` renames)."""
    mapping = row._mapping
    return cls(**{f.name: mapping[columns.get(f.name, f.name)] for f in fields(cls)})  # type: ignore[arg-type]


def conversation_record(row: Row[Any]) -> ConversationRecord:
    return _record(ConversationRecord, row, user="end_user")


def message_record(row: Row[Any]) -> MessageRecord:
    return _record(MessageRecord, row)


def variable_record(row: Row[Any]) -> ConversationVariableRecord:
    return _record(ConversationVariableRecord, row)


def conversation_not_found(conversation_id: str) -> ConversationNotFound:
    return ConversationNotFound(
        f"Conversation Not Exists: no conversation {conversation_id!r} for this user"
    )


def owned(app_id: str, user: str, conversation_id: str) -> Any:
    return and_(
        conversations.c.id == conversation_id,
        conversations.c.app_id == app_id,
        conversations.c.end_user == user,
    )


async def upsert_variables(
    connection: AsyncConnection,
    conversation_id: str,
    variables: Mapping[str, tuple[str, Any]],
    *,
    keep_existing: bool,
) -> None:
    if not variables:
        return
    now = time.time()
    insert = insert_for(connection)(conversation_variables)
    rows = [
        {
            "conversation_id": conversation_id,
            "name": name,
            "id": variable_id(conversation_id, name),
            "value_type": value_type,
            "value": value,
            "created_at": now,
            "updated_at": now,
        }
        for name, (value_type, value) in variables.items()
    ]
    keys = ["conversation_id", "name"]
    if keep_existing:
        statement = insert.on_conflict_do_nothing(index_elements=keys)
    else:
        statement = insert.on_conflict_do_update(
            index_elements=keys,
            set_={
                "value": insert.excluded.value,
                "value_type": insert.excluded.value_type,
                "updated_at": insert.excluded.updated_at,
            },
        )
    await connection.execute(statement, rows)


async def finish_turn(connection: AsyncConnection, run_id: str, end: TurnEnd) -> None:
    """Complete the turn of `run_id` inside the run's transaction (see `RunTransaction`).

    A run that is no conversation's turn (no message row) changes nothing.
    """
    conversation_id = await connection.scalar(
        select(messages.c.conversation_id).where(messages.c.run_id == run_id)
    )
    if conversation_id is None:
        return
    await connection.execute(
        update(messages)
        .where(messages.c.run_id == run_id)
        .values(
            answer=end.answer,
            status=end.status,
            error=end.error,
            total_tokens=end.total_tokens,
            elapsed_time=end.elapsed_time,
        )
    )
    await connection.execute(
        update(conversations)
        .where(conversations.c.id == conversation_id)
        .values(updated_at=time.time())
    )
    await upsert_variables(connection, conversation_id, end.variables, keep_existing=False)
