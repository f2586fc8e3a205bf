"""Chatflows over Dify's Service API, all the way through: trigger (uvicorn) → RabbitMQ →
real worker and aggregator processes → a real mock LLM; conversations in SQLite."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.chat.conftest import MEMORY_CHAT, MockFactory, MockLLM
from tests.conftest import AMQP_URL, KIT, fresh_postgres_database, require_service
from tests.llm.conftest import mock_llm
from tests.mesh.cluster import Cluster
from tests.trigger.conftest import HELLO, Server, StartServer, bearer, read_sse

__all__ = ["mock_llm"]

CHAT = "/v1/chat-messages"
#: every event Dify's chat stream may carry (ChunkChatEvent in openapi_service.json)
_OPENAPI = json.loads((KIT / "dify" / "openapi_service.json").read_text(encoding="utf-8"))
CHAT_EVENTS = frozenset(
    _OPENAPI["components"]["schemas"]["ChunkChatEvent"]["properties"]["event"]["enum"]
)


@pytest.fixture
async def llm(mock_llm: MockFactory) -> MockLLM:
    # echo the query; a query holding "explode" gets a 400 from the model (not retried)
    return mock_llm(
        "--mode",
        "echo",
        replies=[{"contains": "explode", "error": "the model exploded", "status": 400}],
    )


@pytest.fixture
async def chat_mesh(tmp_path: Path, llm: MockLLM) -> AsyncIterator[Cluster]:
    """A worker (its LLM calls going to the mock) and an aggregator."""
    require_service(AMQP_URL, "RabbitMQ")
    cluster = await Cluster.open(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
        amqp_url=AMQP_URL,
        log_dir=tmp_path / "logs",
        namespace=f"fanflow-chat-{uuid.uuid4().hex[:10]}",
    )
    try:
        cluster.start_worker(FANFLOW_LLM_BASE_URL=llm.url)
        cluster.start_aggregator()
        await cluster.wait_ready()
        yield cluster
    finally:
        await cluster.close()


async def _turn(
    server: Server, key: str, query: str, conversation_id: str = "", **extra: Any
) -> dict[str, Any]:
    body = {
        "query": query,
        "inputs": extra.pop("inputs", {}),
        "user": extra.pop("user", "alice"),
        "response_mode": "blocking",
        "conversation_id": conversation_id,
        **extra,
    }
    response = await server.http.post(CHAT, json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_three_turns_with_memory_and_conversation_variables(
    start_server: StartServer, chat_mesh: Cluster, llm: MockLLM
) -> None:
    await _three_turns(await start_server(cluster=chat_mesh), llm)


@pytest.fixture
async def chat_mesh_postgres(tmp_path: Path, llm: MockLLM) -> AsyncIterator[Cluster]:
    """`chat_mesh` on a fresh PostgreSQL database."""
    require_service(AMQP_URL, "RabbitMQ")
    with fresh_postgres_database("fanflow_chat_mesh") as url:
        cluster = await Cluster.open(
            database_url=url,
            amqp_url=AMQP_URL,
            log_dir=tmp_path / "logs",
            namespace=f"fanflow-chat-{uuid.uuid4().hex[:10]}",
        )
        try:
            cluster.start_worker(FANFLOW_LLM_BASE_URL=llm.url)
            cluster.start_aggregator()
            await cluster.wait_ready()
            yield cluster
        finally:
            await cluster.close()


async def test_three_turns_on_postgresql(
    start_server: StartServer, chat_mesh_postgres: Cluster, llm: MockLLM
) -> None:
    await _three_turns(await start_server(cluster=chat_mesh_postgres), llm)


async def _three_turns(server: Server, llm: MockLLM) -> None:
    key = await server.import_app(MEMORY_CHAT)

    first = await _turn(server, key, "what is a spider", inputs={"topic": "arachnids"})
    conversation_id = first["conversation_id"]
    uuid.UUID(conversation_id)  # a new conversation
    assert first["event"] == "message" and first["mode"] == "advanced-chat"
    assert first["answer"] == "what is a spider (turn 1)"
    assert first["id"] == first["message_id"] and first["task_id"] != first["message_id"]
    usage = first["metadata"]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert first["metadata"]["retriever_resources"] == []

    # later turns keep the first turn's inputs; the assigner's writes of turn 1 are read in 2
    second = await _turn(server, key, "how many legs", conversation_id, inputs={"topic": "x"})
    assert second["conversation_id"] == conversation_id
    assert second["answer"] == "how many legs (turn 2)"
    assert llm.last_body()["messages"][0] == {
        "role": "system",
        "content": "Topic arachnids; turn 2; previous question: what is a spider",
    }

    third = await _turn(server, key, "do they bite", conversation_id)
    assert third["answer"] == "do they bite (turn 3)"
    # the third turn's request carries the first two turns
    assert llm.last_body()["messages"] == [
        {
            "role": "system",
            "content": "Topic arachnids; turn 3; previous question: how many legs",
        },
        {"role": "user", "content": "what is a spider"},
        {"role": "assistant", "content": "what is a spider (turn 1)"},
        {"role": "user", "content": "how many legs"},
        {"role": "assistant", "content": "how many legs (turn 2)"},
        {"role": "user", "content": "do they bite"},
    ]

    params = {"user": "alice", "conversation_id": conversation_id}
    history = (await server.http.get("/v1/messages", params=params, headers=bearer(key))).json()
    assert history["has_more"] is False and history["limit"] == 20
    assert [(m["query"], m["answer"]) for m in history["data"]] == [
        ("what is a spider", "what is a spider (turn 1)"),
        ("how many legs", "how many legs (turn 2)"),
        ("do they bite", "do they bite (turn 3)"),
    ]
    assert [m["id"] for m in history["data"]] == [
        first["message_id"],
        second["message_id"],
        third["message_id"],
    ]
    assert all(
        m["status"] == "normal" and m["inputs"] == {"topic": "arachnids"} for m in history["data"]
    )
    older = await server.http.get(
        "/v1/messages",
        params={**params, "first_id": third["message_id"], "limit": 1},
        headers=bearer(key),
    )
    assert [m["id"] for m in older.json()["data"]] == [second["message_id"]]
    assert older.json()["has_more"] is True

    variables = await server.http.get(
        f"/v1/conversations/{conversation_id}/variables",
        params={"user": "alice"},
        headers=bearer(key),
    )
    assert variables.status_code == 200, variables.text
    values = {v["name"]: (v["value_type"], v["value"]) for v in variables.json()["data"]}
    assert values == {"turns": ("number", "3"), "last_query": ("string", "do they bite")}

    listed = (
        await server.http.get("/v1/conversations", params={"user": "alice"}, headers=bearer(key))
    ).json()
    assert [c["id"] for c in listed["data"]] == [conversation_id]
    item = listed["data"][0]
    assert item["name"] == "what is a spider" and item["inputs"] == {"topic": "arachnids"}
    assert item["introduction"] == "Hello! Ask me anything." and item["status"] == "normal"


async def test_streaming_turn_event_order(
    start_server: StartServer, chat_mesh: Cluster, llm: MockLLM
) -> None:
    server = await start_server(cluster=chat_mesh)
    key = await server.import_app(MEMORY_CHAT)
    body = {"query": "hello there", "inputs": {}, "user": "u", "response_mode": "streaming"}
    async with server.http.stream("POST", CHAT, json=body, headers=bearer(key)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [event async for event in read_sse(response) if event["event"] != "ping"]
    names = [e["event"] for e in events]
    assert set(names) <= CHAT_EVENTS, names
    assert names[0] == "workflow_started"
    assert names[-2:] == ["workflow_finished", "message_end"], names
    assert "text_chunk" not in names  # chat streams carry the answer as `message` events
    conversation_id, message_id = events[0]["conversation_id"], events[0]["message_id"]
    task_id = events[0]["task_id"]
    assert all(e["conversation_id"] == conversation_id for e in events)
    assert all(e["message_id"] == message_id and e["task_id"] == task_id for e in events)
    messages = [e for e in events if e["event"] == "message"]
    assert messages and all(m["id"] == message_id for m in messages)
    answer = "".join(m["answer"] for m in messages)
    assert answer == "hello there (turn 1)"
    # the answer streams after the LLM finished and before the run ends
    llm_done = next(
        i
        for i, e in enumerate(events)
        if e["event"] == "node_finished" and e["data"]["node_id"] == "llm"
    )
    assert llm_done < names.index("message") < names.index("workflow_finished")
    finished = events[-2]["data"]
    assert finished["status"] == "succeeded" and finished["outputs"]["answer"] == answer
    end = events[-1]
    assert end["id"] == message_id and end["metadata"]["usage"]["total_tokens"] > 0
    # the streamed turn is in the history, with the same ids
    history = await server.http.get(
        "/v1/messages",
        params={"user": "u", "conversation_id": conversation_id},
        headers=bearer(key),
    )
    [stored] = history.json()["data"]
    assert (stored["id"], stored["answer"]) == (message_id, answer)


async def test_refusals_name_what_is_wrong(start_server: StartServer, chat_mesh: Cluster) -> None:
    server = await start_server(cluster=chat_mesh)
    key = await server.import_app(MEMORY_CHAT)
    first = await _turn(server, key, "mine")
    conversation_id = first["conversation_id"]
    unknown = str(uuid.uuid4())

    async def post(body: dict[str, Any]) -> Any:
        return await server.http.post(CHAT, json=body, headers=bearer(key))

    response = await post({"query": "q", "inputs": {}, "user": "alice", "conversation_id": unknown})
    assert response.status_code == 404 and unknown in response.json()["message"]
    # another user's conversation is unknown to them, named the same way
    response = await post(
        {"query": "q", "inputs": {}, "user": "mallory", "conversation_id": conversation_id}
    )
    assert response.status_code == 404 and conversation_id in response.json()["message"]
    for body, field in (
        ({"inputs": {}, "user": "alice"}, "query"),
        ({"query": 5, "inputs": {}, "user": "alice"}, "query"),
        ({"query": "q", "inputs": {}}, "user"),
        ({"query": "q", "inputs": {}, "user": "alice", "response_mode": "fast"}, "response_mode"),
        ({"query": "q", "inputs": {"topic": "x" * 100}, "user": "alice"}, "topic"),
    ):
        response = await post(body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["code"] == "invalid_param" and field in response.json()["message"]

    async def get(path: str, **params: Any) -> Any:
        return await server.http.get(path, params=params, headers=bearer(key))

    missing = await get("/v1/messages", user="alice", conversation_id=unknown)
    assert missing.status_code == 404 and unknown in missing.json()["message"]
    assert (await get("/v1/messages", user="alice")).status_code == 400
    bad_first = await get(
        "/v1/messages", user="alice", conversation_id=conversation_id, first_id="nope"
    )
    assert bad_first.status_code == 404 and "nope" in bad_first.json()["message"]
    bad_last = await get("/v1/conversations", user="alice", last_id="nope")
    assert bad_last.status_code == 404 and "nope" in bad_last.json()["message"]
    bad_sort = await get("/v1/conversations", user="alice", sort_by="name")
    assert bad_sort.status_code == 400 and "sort_by" in bad_sort.json()["message"]
    assert (await get("/v1/conversations")).status_code == 400  # no user
    variables = await get(f"/v1/conversations/{unknown}/variables", user="alice")
    assert variables.status_code == 404 and unknown in variables.json()["message"]

    # a workflow app has no chat routes
    workflow_key = await server.import_app(HELLO)
    response = await server.http.post(
        CHAT, json={"query": "q", "inputs": {}, "user": "a"}, headers=bearer(workflow_key)
    )
    assert response.status_code == 400 and response.json()["code"] == "not_chat_app"


async def test_conversation_management(start_server: StartServer, chat_mesh: Cluster) -> None:
    server = await start_server(cluster=chat_mesh)
    key = await server.import_app(MEMORY_CHAT)
    ids = []
    for index in range(3):
        answer = await _turn(server, key, f"question {index}", auto_generate_name=index != 1)
        ids.append(answer["conversation_id"])
    newest_first = list(reversed(ids))

    async def get(path: str, **params: Any) -> Any:
        response = await server.http.get(
            path, params={"user": "alice", **params}, headers=bearer(key)
        )
        assert response.status_code == 200, response.text
        return response.json()

    page = await get("/v1/conversations", limit=2)
    assert [c["id"] for c in page["data"]] == newest_first[:2] and page["has_more"] is True
    rest = await get("/v1/conversations", limit=2, last_id=page["data"][-1]["id"])
    assert [c["id"] for c in rest["data"]] == newest_first[2:] and rest["has_more"] is False
    oldest = await get("/v1/conversations", sort_by="created_at")
    assert [c["id"] for c in oldest["data"]] == ids
    names = {c["id"]: c["name"] for c in oldest["data"]}
    assert names[ids[0]] == "question 0" and names[ids[1]] == "New conversation"

    rename = f"/v1/conversations/{ids[1]}/name"
    renamed = await server.http.post(
        rename, json={"name": "Legs", "user": "alice"}, headers=bearer(key)
    )
    assert renamed.status_code == 200 and renamed.json()["name"] == "Legs"
    auto = await server.http.post(
        rename, json={"auto_generate": True, "user": "alice"}, headers=bearer(key)
    )
    assert auto.json()["name"] == "question 1"
    stolen = await server.http.post(rename, json={"name": "x", "user": "bob"}, headers=bearer(key))
    assert stolen.status_code == 404 and ids[1] in stolen.json()["message"]

    variables = (await get(f"/v1/conversations/{ids[0]}/variables"))["data"]
    turns = next(v for v in variables if v["name"] == "turns")
    put = f"/v1/conversations/{ids[0]}/variables/{turns['id']}"
    wrong = await server.http.put(put, json={"value": "many", "user": "alice"}, headers=bearer(key))
    assert wrong.status_code == 400 and "turns" in wrong.json()["message"]
    updated = await server.http.put(put, json={"value": 41, "user": "alice"}, headers=bearer(key))
    assert updated.status_code == 200 and updated.json()["value"] == "41"
    # the next turn starts from the value set over the API
    answer = await _turn(server, key, "again", ids[0])
    assert answer["answer"] == "again (turn 42)"

    message_id = answer["message_id"]
    feedback = f"/v1/messages/{message_id}/feedbacks"
    liked = await server.http.post(
        feedback, json={"rating": "like", "user": "alice", "content": "good"}, headers=bearer(key)
    )
    assert liked.status_code == 200 and liked.json() == {"result": "success"}
    history = await get("/v1/messages", conversation_id=ids[0])
    assert history["data"][-1]["feedback"] == {"rating": "like"}
    bad = await server.http.post(
        feedback, json={"rating": "love", "user": "alice"}, headers=bearer(key)
    )
    assert bad.status_code == 400
    suggested = await get(f"/v1/messages/{message_id}/suggested")
    assert suggested == {"result": "success", "data": []}

    deleted = await server.http.request(
        "DELETE", f"/v1/conversations/{ids[2]}", json={"user": "alice"}, headers=bearer(key)
    )
    assert deleted.status_code == 204
    again = await server.http.request(
        "DELETE", f"/v1/conversations/{ids[2]}", json={"user": "alice"}, headers=bearer(key)
    )
    assert again.status_code == 404 and ids[2] in again.json()["message"]
    assert ids[2] not in [c["id"] for c in (await get("/v1/conversations"))["data"]]


async def test_parameters_info_meta_site_for_both_modes(
    start_server: StartServer, chat_mesh: Cluster
) -> None:
    server = await start_server(cluster=chat_mesh)
    chat_key = await server.import_app(MEMORY_CHAT)
    workflow_key = await server.import_app(HELLO)
    params = (await server.http.get("/v1/parameters", headers=bearer(chat_key))).json()
    assert params["opening_statement"] == "Hello! Ask me anything."
    assert params["suggested_questions"] == ["What can you do?"]
    [topic] = params["user_input_form"]
    assert topic["text-input"]["variable"] == "topic" and topic["text-input"]["max_length"] == 48
    assert topic["text-input"]["required"] is False
    assert params["file_upload"]["image"]["enabled"] is True
    assert params["file_upload"]["image"]["number_limits"] == 2
    assert params["system_parameters"]["file_size_limit"] == 15
    assert params["suggested_questions_after_answer"] == {"enabled": False}

    info = (await server.http.get("/v1/info", headers=bearer(chat_key))).json()
    assert info["name"] == "memory-chat" and info["mode"] == "advanced-chat"
    workflow_info = (await server.http.get("/v1/info", headers=bearer(workflow_key))).json()
    assert workflow_info["mode"] == "workflow"
    workflow_params = (await server.http.get("/v1/parameters", headers=bearer(workflow_key))).json()
    assert [next(iter(item)) for item in workflow_params["user_input_form"]] == ["text-input"]
    meta = (await server.http.get("/v1/meta", headers=bearer(chat_key))).json()
    assert meta == {"tool_icons": {}}
    site = (await server.http.get("/v1/site", headers=bearer(chat_key))).json()
    assert site["title"] == "memory-chat"
    assert (await server.http.get("/v1/info")).status_code == 401
