"""Chatflows as a new user meets them: Dify's own Python SDK (dify-client from PyPI, base URL
changed only), stopping a turn, failed turns, and a classifier's memory on the mesh."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dify_client import ChatClient

from tests.chat.conftest import CLASSIFY_CHAT, MEMORY_CHAT, MockFactory, MockLLM
from tests.conftest import AMQP_URL, require_service
from tests.llm.conftest import mock_llm
from tests.mesh.cluster import Cluster
from tests.trigger.conftest import StartServer, bearer, read_sse
from tests.trigger.test_chat import CHAT, CHAT_EVENTS, chat_mesh, llm

__all__ = ["chat_mesh", "llm", "mock_llm"]


def _events(response: Any) -> list[dict[str, Any]]:
    return [
        json.loads(line[len(b"data: ") :])
        for line in response.iter_lines()
        if line.startswith(b"data: ")
    ]


def _sdk_conversation(base_url: str, key: str) -> dict[str, Any]:
    """Every chat call dify-client 0.1.x has, as its README shows them."""
    client = ChatClient(key)
    client.base_url = f"{base_url}/v1"
    seen: dict[str, Any] = {}
    first = client.create_chat_message(
        inputs={"topic": "owls"}, query="do owls sleep", user="sdk", response_mode="blocking"
    )
    first.raise_for_status()
    seen["first"] = first.json()
    conversation_id = seen["first"]["conversation_id"]
    streaming = client.create_chat_message(
        inputs={},
        query="where",
        user="sdk",
        response_mode="streaming",
        conversation_id=conversation_id,
    )
    streaming.raise_for_status()
    seen["stream"] = _events(streaming)
    messages = client.get_conversation_messages("sdk", conversation_id=conversation_id)
    messages.raise_for_status()
    seen["messages"] = messages.json()
    conversations = client.get_conversations("sdk")
    conversations.raise_for_status()
    seen["conversations"] = conversations.json()
    renamed = client.rename_conversation(conversation_id, "Owls", "sdk")
    renamed.raise_for_status()
    seen["renamed"] = renamed.json()
    feedback = client.message_feedback(seen["first"]["message_id"], "like", "sdk")
    feedback.raise_for_status()
    seen["feedback"] = feedback.json()
    parameters = client.get_application_parameters("sdk")
    parameters.raise_for_status()
    seen["parameters"] = parameters.json()
    seen["after"] = client.get_conversation_messages("sdk", conversation_id=conversation_id).json()
    return seen


async def test_dify_sdk_chat_calls(start_server: StartServer, chat_mesh: Cluster) -> None:
    server = await start_server(cluster=chat_mesh)
    key = await server.import_app(MEMORY_CHAT)
    seen = await asyncio.to_thread(_sdk_conversation, server.url, key)
    assert seen["first"]["answer"] == "do owls sleep (turn 1)"
    names = [e["event"] for e in seen["stream"]]
    assert set(names) <= CHAT_EVENTS and names[-1] == "message_end"
    streamed = "".join(e["answer"] for e in seen["stream"] if e["event"] == "message")
    assert streamed == "where (turn 2)"
    assert [m["query"] for m in seen["messages"]["data"]] == ["do owls sleep", "where"]
    assert [c["id"] for c in seen["conversations"]["data"]] == [seen["first"]["conversation_id"]]
    assert seen["renamed"]["name"] == "Owls"
    assert seen["feedback"] == {"result": "success"}
    assert seen["parameters"]["opening_statement"] == "Hello! Ask me anything."
    assert seen["after"]["data"][0]["feedback"] == {"rating": "like"}


async def test_a_failed_turn_answers_as_dify_and_is_kept(
    start_server: StartServer, chat_mesh: Cluster
) -> None:
    server = await start_server(cluster=chat_mesh)
    key = await server.import_app(MEMORY_CHAT)
    body = {"query": "please explode", "inputs": {}, "user": "u", "response_mode": "blocking"}
    blocking = await server.http.post(CHAT, json=body, headers=bearer(key))
    assert blocking.status_code == 400, blocking.text
    assert blocking.json()["code"] == "invalid_param"
    assert blocking.json()["message"].startswith("Run failed:")
    assert "the model exploded" in blocking.json()["message"]

    streaming = {**body, "response_mode": "streaming"}
    async with server.http.stream("POST", CHAT, json=streaming, headers=bearer(key)) as response:
        events = [e async for e in read_sse(response) if e["event"] != "ping"]
    names = [e["event"] for e in events]
    assert names[-2:] == ["workflow_finished", "error"], names
    assert events[-2]["data"]["status"] == "failed"
    assert events[-1]["status"] == 400 and "the model exploded" in events[-1]["message"]
    conversation_id = events[0]["conversation_id"]
    history = await server.http.get(
        "/v1/messages",
        params={"user": "u", "conversation_id": conversation_id},
        headers=bearer(key),
    )
    [message] = history.json()["data"]
    assert message["status"] == "error" and "the model exploded" in message["error"]
    assert message["answer"] == ""


async def test_classifier_memory_through_the_mesh(
    start_server: StartServer, chat_mesh: Cluster, llm: MockLLM
) -> None:
    server = await start_server(cluster=chat_mesh)
    key = await server.import_app(CLASSIFY_CHAT)

    async def turn(query: str, conversation_id: str = "") -> dict[str, Any]:
        body = {"query": query, "inputs": {}, "user": "u", "conversation_id": conversation_id}
        response = await server.http.post(CHAT, json=body, headers=bearer(key))
        assert response.status_code == 200, response.text
        return dict(response.json())

    first = await turn("I like cats")
    assert first["answer"] == "about cats"
    assert "Human:" not in llm.last_body()["messages"][0]["content"]  # no earlier turn
    second = await turn("and dogs", first["conversation_id"])
    assert second["answer"] == "about dogs"
    system = llm.last_body()["messages"][0]["content"]
    assert "Human: I like cats\nAssistant: about cats" in system
    third = await turn("what about dogs", first["conversation_id"])
    system = llm.last_body()["messages"][0]["content"]
    # the window is one turn: only the second
    assert "Human: and dogs\nAssistant: about dogs" in system and "I like cats" not in system
    assert third["answer"] == "about dogs"


@pytest.fixture
async def slow_mesh(tmp_path: Path, mock_llm: MockFactory) -> AsyncIterator[Cluster]:
    """A worker whose model takes 20 s to answer, and an aggregator."""
    require_service(AMQP_URL, "RabbitMQ")
    slow = mock_llm("--mode", "echo", "--latency-ms", "20000")
    cluster = await Cluster.open(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'slow.db'}",
        amqp_url=AMQP_URL,
        log_dir=tmp_path / "logs",
        namespace=f"fanflow-chat-{uuid.uuid4().hex[:10]}",
    )
    try:
        cluster.start_worker(FANFLOW_LLM_BASE_URL=slow.url)
        cluster.start_aggregator()
        await cluster.wait_ready()
        yield cluster
    finally:
        await cluster.close()


async def test_stop_a_streaming_turn(start_server: StartServer, slow_mesh: Cluster) -> None:
    server = await start_server(cluster=slow_mesh)
    key = await server.import_app(MEMORY_CHAT)
    body = {"query": "take your time", "inputs": {}, "user": "u", "response_mode": "streaming"}
    events: list[dict[str, Any]] = []
    async with server.http.stream("POST", CHAT, json=body, headers=bearer(key)) as response:
        async for event in read_sse(response):
            events.append(event)
            if event["event"] == "node_started" and event["data"]["node_id"] == "llm":
                task_id = event["task_id"]
                other = await server.http.post(
                    f"{CHAT}/{task_id}/stop", json={"user": "someone else"}, headers=bearer(key)
                )
                assert other.status_code == 404 and task_id in other.json()["message"]
                stop = await server.http.post(
                    f"{CHAT}/{task_id}/stop", json={"user": "u"}, headers=bearer(key)
                )
                assert stop.status_code == 200 and stop.json() == {"result": "success"}
    names = [e["event"] for e in events if e["event"] != "ping"]
    assert names[-2:] == ["workflow_finished", "message_end"], names
    finished = next(e for e in events if e["event"] == "workflow_finished")
    assert finished["data"]["status"] == "stopped"
    again = await server.http.post(
        f"{CHAT}/{task_id}/stop", json={"user": "u"}, headers=bearer(key)
    )
    assert again.status_code == 200  # a finished turn: nothing to do
