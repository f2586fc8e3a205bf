"""Dify's Service API for chatflow apps: `POST /v1/chat-messages` (a conversation's turn,
blocking or streaming) and `POST /v1/chat-messages/{task_id}/stop`.

A turn is a run of the app's workflow with the conversation's id, turn number, variables
and earlier turns (memory). Its message row is written before the run starts and completed
in the run's last transaction, so `GET /v1/messages` and the next turn's memory see the
answer as soon as the run has ended.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fanflow_services.trigger import chat_payloads, payloads
from fanflow_services.trigger.api import (
    PING_INTERVAL_S,
    AppDep,
    StopBody,
    TriggerDep,
    _json_body,
    _wait_finished,
)
from fanflow_services.trigger.bodies import read_json_object
from fanflow_services.trigger.context import Trigger
from fanflow_services.trigger.errors import ApiError, invalid_param, not_found
from fanflow_services.trigger.streams import RunWatch, Shutdown
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fanflow.chat.turns import declared_variables, turns_to_load
from fanflow.errors import InputsInvalid
from fanflow.mesh.driver import FINISHED, Envelope
from fanflow.runtime import RunRequest
from fanflow.scheduler import StopRequested
from fanflow.store import AppRecord, ConversationNotFound, ConversationRecord, RunRecord
from fanflow.workflow import Workflow

log = logging.getLogger("fanflow.trigger")
router = APIRouter(prefix="/v1", tags=["Service API: chatflows"])

NEW_CONVERSATION_NAME = "New conversation"
#: an auto-generated name is the first query, cut to this many characters
AUTO_NAME_CHARS = 40


class ChatBody(BaseModel):
    """`ChatRequest`."""

    model_config = ConfigDict(extra="ignore")

    query: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    response_mode: Literal["blocking", "streaming"] = "blocking"
    user: str
    conversation_id: str | None = None
    files: list[dict[str, Any]] | None = None
    auto_generate_name: bool = True


def _parse(raw: dict[str, Any]) -> ChatBody:
    try:
        body = ChatBody.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise invalid_param(f"{field}: {first['msg']}") from None
    # as Dify: the query may be empty, NUL characters are dropped
    body.query = body.query.replace("\x00", "")
    if not body.user:
        raise invalid_param("user: must be a non-empty string")
    return body


def chat_workflow(trigger: Trigger, app: AppRecord) -> Workflow:
    """The app's workflow; 400 `not_chat_app` for a workflow app (as Dify answers)."""
    workflow: Workflow = trigger.driver.workflows.get(app)
    if workflow.mode != "advanced-chat":
        raise ApiError(
            400,
            "not_chat_app",
            f"App {app.id} is a {workflow.mode} app, not a chatflow: use /v1/workflows/run. "
            "Please check if your app mode matches the right API route.",
        )
    return workflow


def conversation_not_found(conversation_id: str) -> ApiError:
    return not_found(f"Conversation Not Exists: no conversation {conversation_id!r} for this user")


@router.post("/chat-messages", summary="Send Chat Message", openapi_extra=_json_body(ChatBody))
async def chat_messages(request: Request, app: AppDep, trigger: TriggerDep) -> Any:
    """One turn of a conversation (a new one when `conversation_id` is empty): answer when it
    ends (`blocking`) or stream its events (`streaming`)."""
    if trigger.events.shutting_down:
        raise ApiError(503, "service_unavailable", "the trigger is shutting down; retry")
    workflow = chat_workflow(trigger, app)
    limit = trigger.settings.app_max_active_runs
    if await trigger.store.count_running(app.id) >= limit:
        raise ApiError(
            429,
            "too_many_requests",
            f"Too many requests: the app has {limit} run(s) in progress already. "
            "Please try again later.",
        )
    body = _parse(await read_json_object(request, trigger.max_request_bytes))
    conversations = trigger.store.conversations
    existing: ConversationRecord | None = None
    if body.conversation_id:
        existing = await conversations.get(app.id, body.user, body.conversation_id)
        if existing is None:
            raise conversation_not_found(body.conversation_id)
    history: tuple[tuple[str, str], ...] = ()
    values: dict[str, Any] = {}
    if existing is not None:
        wanted = turns_to_load(workflow)
        if wanted:
            turns = await conversations.history(existing.id, limit=wanted)
            history = tuple((turn.query, turn.answer) for turn in turns)
        values = {v.name: v.value for v in await conversations.variables(existing.id)}
    run_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
    name = body.query.strip()[:AUTO_NAME_CHARS] if body.auto_generate_name else ""
    try:
        conversation, created = await conversations.start_turn(
            app.id,
            body.user,
            conversation_id=existing.id if existing else None,
            message_id=message_id,
            run_id=run_id,
            query=body.query,
            inputs=body.inputs,
            files=body.files or (),
            name=name or NEW_CONVERSATION_NAME,
            variables=declared_variables(workflow),
        )
    except ConversationNotFound:  # deleted meanwhile
        raise conversation_not_found(body.conversation_id or "") from None
    streaming = body.response_mode == "streaming"
    watch = await trigger.events.watch(run_id, stream=streaming)
    turn = RunRequest(
        inputs=conversation.inputs,
        user=body.user,
        query=body.query,
        files=tuple(body.files or ()),
        conversation_id=conversation.id,
        dialogue_count=conversation.dialogue_count,
        conversation_values=values,
        history=history,
    )
    try:
        outbox_ids = await trigger.driver.start_run(app, run_id, turn)
    except InputsInvalid as exc:
        watch.close()
        await conversations.abandon_turn(message_id, drop_conversation=created)
        raise invalid_param(str(exc)) from None
    except BaseException:
        watch.close()
        await conversations.abandon_turn(message_id, drop_conversation=created)
        raise
    await trigger.publish(run_id, outbox_ids)
    if streaming:
        formatter = chat_payloads.ChatStreamFormatter(
            run_id, workflow_id=app.id, conversation_id=conversation.id, message_id=message_id
        )
        return StreamingResponse(
            _stream(trigger, watch, formatter),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        await _wait_finished(trigger, watch, trigger.settings.blocking_timeout_s)
    finally:
        watch.close()
    run = await trigger.store.get_run(run_id)
    message = await conversations.message_for_run(run_id)
    assert run is not None and message is not None  # written above, never deleted by a run
    if run.status not in FINISHED:
        raise ApiError(
            504,
            "gateway_timeout",
            f"the turn did not end within {trigger.settings.blocking_timeout_s:g} s; it goes on "
            f"(task {run_id}): GET /v1/messages?conversation_id={conversation.id}",
        )
    if run.status == "failed":
        raise invalid_param(chat_payloads.run_failure(run))
    return chat_payloads.blocking_response(
        run=run, message=message, usage_=await _usage(trigger, run)
    )


async def _usage(trigger: Trigger, run: RunRecord) -> dict[str, Any]:
    executions = await trigger.store.list_node_executions(run.id)
    used: dict[str, Any] = chat_payloads.usage(executions, latency_s=run.elapsed_time)
    return used


async def _stream(
    trigger: Trigger, watch: RunWatch, formatter: chat_payloads.ChatStreamFormatter
) -> AsyncIterator[bytes]:
    try:
        while True:
            event = await watch.next(PING_INTERVAL_S)
            if isinstance(event, Shutdown):
                yield payloads.sse(
                    formatter.error(
                        503,
                        "service_unavailable",
                        "the trigger is shutting down; the turn goes on: GET /v1/messages"
                        f"?conversation_id={formatter.conversation_id}",
                    )
                )
                return
            run: RunRecord | None = None
            if event is None:  # quiet for a ping interval: keep alive, and the safety net
                run = await trigger.store.get_run(watch.run_id)
                if run is None or run.status not in FINISHED:
                    yield payloads.PING
                    continue
            elif not formatter.is_new(event):
                continue
            elif event.name == payloads.WORKFLOW_FINISHED:
                run = await trigger.store.get_run(watch.run_id)
            else:
                yield payloads.sse(formatter.convert(event))
                continue
            assert run is not None
            yield payloads.sse(formatter.finished(run))
            yield payloads.sse(formatter.end(run, await _usage(trigger, run)))
            return
    except Exception as exc:
        log.exception("streaming turn %s failed", watch.run_id)
        yield payloads.sse(formatter.error(500, "internal_server_error", str(exc)))
    finally:
        watch.close()


@router.post(
    "/chat-messages/{task_id}/stop",
    summary="Stop Chat Message Generation",
    openapi_extra=_json_body(StopBody),
)
async def stop_chat(task_id: str, request: Request, app: AppDep, trigger: TriggerDep) -> Any:
    """Stop a turn (the task id is its run's id); stopping a finished turn is a no-op."""
    raw = await read_json_object(request, trigger.max_request_bytes)
    user = raw.get("user")
    if not isinstance(user, str) or not user:
        raise invalid_param("user: Arg user must be provided.")
    run = await trigger.store.get_run(task_id)
    if run is None or run.app_id != app.id or run.user != user:
        raise not_found(f"Task Not Exists: no chat task {task_id!r} for this user")
    if run.status not in FINISHED:
        outbox_ids = await trigger.driver.apply(app, run.id, [Envelope(StopRequested())])
        await trigger.publish(run.id, outbox_ids)
    return {"result": "success"}
