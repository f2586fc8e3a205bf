"""Conversations of chatflow apps: their turns (messages) and conversation variables.

A conversation belongs to one app and one end user; every lookup takes both, so nobody
sees another user's (or another app's) conversations. A turn's message row is written
before its run starts and completed by the run's last transaction (`finish_turn`), so the
answer, the tokens and the conversation variables commit together with the run's end.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from fanflow.store._chat_rows import (
    conversation_not_found,
    conversation_record,
    message_record,
    owned,
    upsert_variables,
    variable_record,
)
from fanflow.store._engine import write_transaction
from fanflow.store.chat_records import (
    ConversationNotFound,
    ConversationRecord,
    ConversationVariableRecord,
    MessageNotFound,
    MessageRecord,
    Turn,
)
from fanflow.store.schema import conversation_variables, conversations, messages

SortBy = Literal["created_at", "-created_at", "updated_at", "-updated_at"]
SORT_KEYS: tuple[str, ...] = ("created_at", "-created_at", "updated_at", "-updated_at")
#: Dify reads at most this many earlier turns into memory
MAX_HISTORY_TURNS = 500
MESSAGE_RUNNING, MESSAGE_NORMAL, MESSAGE_ERROR, MESSAGE_STOPPED = (
    "running",
    "normal",
    "error",
    "stopped",
)


class Conversations:
    """Conversations, messages and conversation variables (`store.conversations`)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # ---- turns ------------------------------------------------------------------------

    async def start_turn(
        self,
        app_id: str,
        user: str,
        *,
        conversation_id: str | None,
        message_id: str,
        run_id: str,
        query: str,
        inputs: dict[str, Any],
        files: Sequence[Any] = (),
        name: str = "",
        variables: Mapping[str, tuple[str, Any]] | None = None,
    ) -> tuple[ConversationRecord, bool]:
        """Record a new turn (its message, running); a new conversation when
        `conversation_id` is None, with `inputs` and the declared `variables` (defaults).

        Returns the conversation as of this turn (`dialogue_count` counts it) and whether
        it is new. Raises `ConversationNotFound` for an id this user has no conversation
        of. A later turn keeps the conversation's first inputs; `inputs` is ignored then.
        """
        now = time.time()
        async with write_transaction(self.engine) as connection:
            created = conversation_id is None
            if conversation_id is None:
                conversation_id = str(uuid.uuid4())
                await connection.execute(
                    conversations.insert().values(
                        id=conversation_id,
                        app_id=app_id,
                        end_user=user,
                        name=name,
                        inputs=inputs,
                        dialogue_count=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
                await upsert_variables(
                    connection, conversation_id, variables or {}, keep_existing=True
                )
            else:
                result = await connection.execute(
                    update(conversations)
                    .where(owned(app_id, user, conversation_id))
                    .values(dialogue_count=conversations.c.dialogue_count + 1, updated_at=now)
                )
                if not result.rowcount:
                    raise conversation_not_found(conversation_id)
            row = (
                await connection.execute(
                    select(conversations).where(conversations.c.id == conversation_id)
                )
            ).one()
            record = conversation_record(row)
            await connection.execute(
                messages.insert().values(
                    id=message_id,
                    conversation_id=conversation_id,
                    run_id=run_id,
                    query=query,
                    answer="",
                    inputs=record.inputs,
                    files=list(files),
                    status=MESSAGE_RUNNING,
                    error=None,
                    total_tokens=0,
                    elapsed_time=None,
                    feedback_rating=None,
                    feedback_content=None,
                    created_at=now,
                )
            )
        return record, created

    async def abandon_turn(self, message_id: str, *, drop_conversation: bool) -> None:
        """Undo `start_turn` for a run that could not start (its inputs were refused)."""
        async with write_transaction(self.engine) as connection:
            conversation_id = await connection.scalar(
                select(messages.c.conversation_id).where(messages.c.id == message_id)
            )
            if conversation_id is None:
                return
            await connection.execute(delete(messages).where(messages.c.id == message_id))
            if drop_conversation:
                await connection.execute(
                    delete(conversations).where(conversations.c.id == conversation_id)
                )
            else:
                await connection.execute(
                    update(conversations)
                    .where(conversations.c.id == conversation_id)
                    .values(dialogue_count=conversations.c.dialogue_count - 1)
                )

    async def history(self, conversation_id: str, *, limit: int = MAX_HISTORY_TURNS) -> list[Turn]:
        """The conversation's last `limit` answered turns, oldest first (memory)."""
        limit = max(1, min(limit, MAX_HISTORY_TURNS))
        statement = (
            select(messages.c.query, messages.c.answer)
            .where(messages.c.conversation_id == conversation_id, messages.c.answer != "")
            .order_by(messages.c.created_at.desc(), messages.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [Turn(row.query, row.answer) for row in reversed(rows)]

    async def message_for_run(self, run_id: str) -> MessageRecord | None:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(select(messages).where(messages.c.run_id == run_id))
            ).first()
        return None if row is None else message_record(row)

    # ---- conversations ----------------------------------------------------------------

    async def get(self, app_id: str, user: str, conversation_id: str) -> ConversationRecord | None:
        statement = select(conversations).where(owned(app_id, user, conversation_id))
        async with self.engine.connect() as connection:
            row = (await connection.execute(statement)).first()
        return None if row is None else conversation_record(row)

    async def require(self, app_id: str, user: str, conversation_id: str) -> ConversationRecord:
        found = await self.get(app_id, user, conversation_id)
        if found is None:
            raise conversation_not_found(conversation_id)
        return found

    async def page(
        self,
        app_id: str,
        user: str,
        *,
        last_id: str | None = None,
        limit: int = 20,
        sort_by: SortBy = "-updated_at",
    ) -> tuple[list[ConversationRecord], bool]:
        """One page of the user's conversations and whether more follow. `last_id`: the
        last conversation of the previous page (`ConversationNotFound` if unknown)."""
        if sort_by not in SORT_KEYS:
            raise ValueError(f"sort_by must be one of {', '.join(SORT_KEYS)}, got {sort_by!r}")
        column = conversations.c[sort_by.lstrip("-")]
        descending = sort_by.startswith("-")
        where = [conversations.c.app_id == app_id, conversations.c.end_user == user]
        async with self.engine.connect() as connection:
            if last_id:
                last = (
                    await connection.execute(
                        select(conversations).where(owned(app_id, user, last_id))
                    )
                ).first()
                if last is None:
                    raise ConversationNotFound(
                        f"Last Conversation Not Exists: no conversation {last_id!r} for this user"
                    )
                pivot = last._mapping[column.name]
                beyond = column < pivot if descending else column > pivot
                tie = conversations.c.id < last.id if descending else conversations.c.id > last.id
                where.append(or_(beyond, and_(column == pivot, tie)))
            order = (
                (column.desc(), conversations.c.id.desc())
                if descending
                else (column, conversations.c.id)
            )
            rows = (
                await connection.execute(
                    select(conversations).where(*where).order_by(*order).limit(limit + 1)
                )
            ).all()
        return [conversation_record(row) for row in rows[:limit]], len(rows) > limit

    async def rename(
        self, app_id: str, user: str, conversation_id: str, name: str
    ) -> ConversationRecord:
        async with write_transaction(self.engine) as connection:
            result = await connection.execute(
                update(conversations)
                .where(owned(app_id, user, conversation_id))
                .values(name=name, updated_at=time.time())
            )
            if not result.rowcount:
                raise conversation_not_found(conversation_id)
        return await self.require(app_id, user, conversation_id)

    async def delete(self, app_id: str, user: str, conversation_id: str) -> None:
        """Delete the conversation with its messages and variables."""
        async with write_transaction(self.engine) as connection:
            found = await connection.scalar(
                select(conversations.c.id).where(owned(app_id, user, conversation_id))
            )
            if found is None:
                raise conversation_not_found(conversation_id)
            # explicit: SQLite enforces ON DELETE CASCADE only with foreign keys on
            for table in (conversation_variables, messages):
                await connection.execute(
                    delete(table).where(table.c.conversation_id == conversation_id)
                )
            await connection.execute(delete(conversations).where(conversations.c.id == found))

    # ---- messages ---------------------------------------------------------------------

    async def messages(
        self, conversation_id: str, *, first_id: str | None = None, limit: int = 20
    ) -> tuple[list[MessageRecord], bool]:
        """The page of turns just before `first_id` (else the newest), oldest first, and
        whether older ones exist. `MessageNotFound` for a `first_id` not in the conversation."""
        where = [messages.c.conversation_id == conversation_id]
        async with self.engine.connect() as connection:
            if first_id:
                first = (
                    await connection.execute(
                        select(messages.c.created_at, messages.c.id).where(
                            messages.c.id == first_id, messages.c.conversation_id == conversation_id
                        )
                    )
                ).first()
                if first is None:
                    raise MessageNotFound(
                        f"First Message Not Exists: no message {first_id!r} in conversation "
                        f"{conversation_id!r}"
                    )
                where.append(
                    or_(
                        messages.c.created_at < first.created_at,
                        and_(messages.c.created_at == first.created_at, messages.c.id < first.id),
                    )
                )
            rows = (
                await connection.execute(
                    select(messages)
                    .where(*where)
                    .order_by(messages.c.created_at.desc(), messages.c.id.desc())
                    .limit(limit + 1)
                )
            ).all()
        page = [message_record(row) for row in rows[:limit]]
        return list(reversed(page)), len(rows) > limit

    async def get_message(self, app_id: str, user: str, message_id: str) -> MessageRecord:
        statement = (
            select(messages)
            .join(conversations, conversations.c.id == messages.c.conversation_id)
            .where(
                messages.c.id == message_id,
                conversations.c.app_id == app_id,
                conversations.c.end_user == user,
            )
        )
        async with self.engine.connect() as connection:
            row = (await connection.execute(statement)).first()
        if row is None:
            raise MessageNotFound(f"Message Not Exists: no message {message_id!r} for this user")
        return message_record(row)

    async def set_feedback(
        self, app_id: str, user: str, message_id: str, *, rating: str | None, content: str | None
    ) -> None:
        """Store (or, with rating None, clear) the user's feedback on a message."""
        await self.get_message(app_id, user, message_id)
        async with write_transaction(self.engine) as connection:
            await connection.execute(
                update(messages)
                .where(messages.c.id == message_id)
                .values(feedback_rating=rating, feedback_content=content)
            )

    # ---- conversation variables -------------------------------------------------------

    async def variables(self, conversation_id: str) -> list[ConversationVariableRecord]:
        statement = (
            select(conversation_variables)
            .where(conversation_variables.c.conversation_id == conversation_id)
            .order_by(conversation_variables.c.created_at, conversation_variables.c.name)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [variable_record(row) for row in rows]

    async def set_variable(
        self, conversation_id: str, name: str, value_type: str, value: Any
    ) -> ConversationVariableRecord:
        async with write_transaction(self.engine) as connection:
            await upsert_variables(
                connection, conversation_id, {name: (value_type, value)}, keep_existing=False
            )
        for record in await self.variables(conversation_id):
            if record.name == name:
                return record
        raise AssertionError("a variable just written is gone")  # pragma: no cover
