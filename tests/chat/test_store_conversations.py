"""Conversations, turns and conversation variables in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from fanflow.scheduler.state import RunState, dump_state
from fanflow.store import ConversationNotFound, MessageNotFound, Store, Turn, TurnEnd
from tests.conftest import fresh_postgres_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('chat') / 'chat.db'}"
        return
    with fresh_postgres_database("fanflow_chat") as url:
        yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def app_id(store: Store) -> str:
    return await store.create_app("chat", "advanced-chat", "app: {mode: advanced-chat}")


async def _turn(
    store: Store,
    app_id: str,
    *,
    user: str = "alice",
    conversation_id: str | None = None,
    query: str = "hi",
    answer: str | None = "hello",
    variables: dict[str, tuple[str, object]] | None = None,
) -> tuple[str, str]:
    """One whole turn (start, run, finish); its conversation and message ids."""
    run_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    conversation, _ = await store.conversations.start_turn(
        app_id,
        user,
        conversation_id=conversation_id,
        message_id=message_id,
        run_id=run_id,
        query=query,
        inputs={"topic": "cats"},
        variables=variables,
    )
    await store.create_run(run_id, app_id, inputs={}, state=dump_state(RunState(run_id=run_id)))
    if answer is not None:
        async with store.run_transaction(run_id) as tx:
            await tx.finish_turn(
                TurnEnd(
                    conversation_id=conversation.id,
                    answer=answer,
                    status="normal",
                    error=None,
                    total_tokens=7,
                    elapsed_time=0.5,
                    variables=variables or {},
                )
            )
    return conversation.id, message_id


async def test_a_conversation_keeps_its_turns_inputs_and_count(store: Store, app_id: str) -> None:
    conversation_id, first = await _turn(store, app_id, query="q1", answer="a1")
    _, second = await _turn(store, app_id, conversation_id=conversation_id, query="q2", answer="a2")
    _, running = await _turn(store, app_id, conversation_id=conversation_id, answer=None)

    conversation = await store.conversations.require(app_id, "alice", conversation_id)
    assert conversation.dialogue_count == 3
    assert conversation.inputs == {"topic": "cats"}
    # memory: answered turns only, oldest first, the window from the end
    history = await store.conversations.history(conversation_id)
    assert history == [Turn("q1", "a1"), Turn("q2", "a2")]
    assert await store.conversations.history(conversation_id, limit=1) == [Turn("q2", "a2")]

    page, more = await store.conversations.messages(conversation_id, limit=2)
    assert [m.id for m in page] == [second, running] and more
    assert page[0].answer == "a2" and page[0].total_tokens == 7 and page[0].status == "normal"
    assert page[1].status == "running"
    older, more = await store.conversations.messages(conversation_id, first_id=second, limit=2)
    assert [m.id for m in older] == [first] and not more


async def test_conversations_belong_to_one_user_of_one_app(store: Store, app_id: str) -> None:
    conversation_id, message_id = await _turn(store, app_id, user="alice")
    other_app = await store.create_app("other", "advanced-chat", "app: {}")
    assert await store.conversations.get(app_id, "bob", conversation_id) is None
    assert await store.conversations.get(other_app, "alice", conversation_id) is None
    with pytest.raises(ConversationNotFound, match=conversation_id):
        await _turn(store, app_id, user="bob", conversation_id=conversation_id)
    with pytest.raises(ConversationNotFound, match=conversation_id):
        await store.conversations.rename(app_id, "bob", conversation_id, "mine now")
    with pytest.raises(ConversationNotFound, match=conversation_id):
        await store.conversations.delete(other_app, "alice", conversation_id)
    with pytest.raises(MessageNotFound, match=message_id):
        await store.conversations.set_feedback(
            app_id, "bob", message_id, rating="like", content=None
        )
    # bob's failed turn left nothing behind
    assert (await store.conversations.require(app_id, "alice", conversation_id)).dialogue_count == 1


async def test_pages_of_conversations_follow_last_id(store: Store, app_id: str) -> None:
    user = f"pager-{uuid.uuid4().hex[:6]}"
    ids = [(await _turn(store, app_id, user=user))[0] for _ in range(5)]
    newest_first = list(reversed(ids))
    first, more = await store.conversations.page(app_id, user, limit=2)
    assert [c.id for c in first] == newest_first[:2] and more
    second, more = await store.conversations.page(app_id, user, last_id=first[-1].id, limit=2)
    assert [c.id for c in second] == newest_first[2:4] and more
    last, more = await store.conversations.page(app_id, user, last_id=second[-1].id, limit=2)
    assert [c.id for c in last] == newest_first[4:] and not more
    oldest, _ = await store.conversations.page(app_id, user, sort_by="created_at", limit=5)
    assert [c.id for c in oldest] == ids
    with pytest.raises(ConversationNotFound, match="nope"):
        await store.conversations.page(app_id, user, last_id="nope")


async def test_rename_delete_and_feedback(store: Store, app_id: str) -> None:
    conversation_id, message_id = await _turn(store, app_id, variables={"n": ("number", 1)})
    renamed = await store.conversations.rename(app_id, "alice", conversation_id, "Cats")
    assert renamed.name == "Cats"
    await store.conversations.set_feedback(
        app_id, "alice", message_id, rating="like", content="nice"
    )
    message = await store.conversations.get_message(app_id, "alice", message_id)
    assert (message.feedback_rating, message.feedback_content) == ("like", "nice")
    await store.conversations.delete(app_id, "alice", conversation_id)
    assert await store.conversations.get(app_id, "alice", conversation_id) is None
    assert await store.conversations.variables(conversation_id) == []
    assert (await store.conversations.messages(conversation_id))[0] == []


async def test_variables_start_at_defaults_and_take_each_turns_values(
    store: Store, app_id: str
) -> None:
    conversation_id, _ = await _turn(
        store, app_id, variables={"n": ("number", 0), "tags": ("array[string]", [])}, answer=None
    )
    defaults = {v.name: v.value for v in await store.conversations.variables(conversation_id)}
    assert defaults == {"n": 0, "tags": []}
    await _turn(
        store,
        app_id,
        conversation_id=conversation_id,
        variables={"n": ("number", 2), "tags": ("array[string]", ["x"])},
    )
    put = await store.conversations.set_variable(conversation_id, "n", "number", 5)
    assert put.value == 5 and put.updated_at >= put.created_at
    values = {v.name: v.value for v in await store.conversations.variables(conversation_id)}
    assert values == {"n": 5, "tags": ["x"]}


async def test_abandoned_first_turn_leaves_no_conversation(store: Store, app_id: str) -> None:
    message_id = str(uuid.uuid4())
    conversation, created = await store.conversations.start_turn(
        app_id,
        "carol",
        conversation_id=None,
        message_id=message_id,
        run_id=str(uuid.uuid4()),
        query="q",
        inputs={},
    )
    assert created
    await store.conversations.abandon_turn(message_id, drop_conversation=True)
    assert await store.conversations.get(app_id, "carol", conversation.id) is None
