"""Dify's Service API for a chatflow's conversations: list, rename, delete, their messages,
conversation variables, message feedback and suggested questions.

Every call names the end `user`; a conversation (or message) of another user or another
app is answered 404 naming the id, exactly as an unknown one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fanflow_services.trigger import chat_payloads
from fanflow_services.trigger.api import AppDep, TriggerDep
from fanflow_services.trigger.app_info import features_of, variable_descriptions
from fanflow_services.trigger.bodies import read_json_object
from fanflow_services.trigger.chat import AUTO_NAME_CHARS, chat_workflow, conversation_not_found
from fanflow_services.trigger.context import Trigger
from fanflow_services.trigger.errors import error_responses, invalid_param, not_found
from fastapi import APIRouter, Query, Request, Response

from fanflow.chat.turns import value_type_error
from fanflow.store import AppRecord, ConversationNotFound, ConversationRecord, MessageNotFound
from fanflow.store.conversations import SORT_KEYS

router = APIRouter(
    prefix="/v1",
    tags=["Service API: conversations"],
    responses=error_responses(400, 401, 404, 413, 429, 503),
)

Limit = Annotated[int, Query(ge=1, le=100)]


def _user(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise invalid_param("user: Arg user must be provided.")
    return value


async def _body_and_user(request: Request, trigger: Trigger) -> tuple[dict[str, Any], str]:
    """The JSON object body and the end `user` it must name."""
    raw = await read_json_object(request, trigger.max_request_bytes)
    return raw, _user(raw.get("user"))


async def _conversation(
    trigger: Trigger, app: AppRecord, user: str, conversation_id: str
) -> ConversationRecord:
    chat_workflow(trigger, app)
    found: ConversationRecord | None = await trigger.store.conversations.get(
        app.id, user, conversation_id
    )
    if found is None:
        raise conversation_not_found(conversation_id)
    return found


def _introduction(app: AppRecord) -> str:
    return str(features_of(app).get("opening_statement") or "")


@router.get("/conversations", summary="Get Conversations")
async def list_conversations(
    app: AppDep,
    trigger: TriggerDep,
    user: str | None = None,
    last_id: str | None = None,
    limit: Limit = 20,
    sort_by: str = "-updated_at",
) -> dict[str, Any]:
    """The user's conversations, most recently active first (`sort_by` changes that)."""
    chat_workflow(trigger, app)
    user = _user(user)
    if sort_by not in SORT_KEYS:
        raise invalid_param(f"sort_by: expected one of {', '.join(SORT_KEYS)}, got {sort_by!r}")
    try:
        found, more = await trigger.store.conversations.page(
            app.id,
            user,
            last_id=last_id or None,
            limit=limit,
            sort_by=sort_by,
        )
    except ConversationNotFound as exc:
        raise not_found(str(exc)) from None
    introduction = _introduction(app)
    items = [chat_payloads.conversation_item(c, introduction=introduction) for c in found]
    answer: dict[str, Any] = chat_payloads.page(items, limit=limit, has_more=more)
    return answer


@router.delete("/conversations/{conversation_id}", summary="Delete Conversation", status_code=204)
async def delete_conversation(
    conversation_id: str, request: Request, app: AppDep, trigger: TriggerDep
) -> Response:
    _, user = await _body_and_user(request, trigger)
    await _conversation(trigger, app, user, conversation_id)
    try:
        await trigger.store.conversations.delete(app.id, user, conversation_id)
    except ConversationNotFound:
        raise conversation_not_found(conversation_id) from None
    return Response(status_code=204)


@router.post("/conversations/{conversation_id}/name", summary="Rename Conversation")
async def rename_conversation(
    conversation_id: str, request: Request, app: AppDep, trigger: TriggerDep
) -> dict[str, Any]:
    """A new name, or with `auto_generate` one made from the conversation's first query."""
    raw, user = await _body_and_user(request, trigger)
    await _conversation(trigger, app, user, conversation_id)
    name = raw.get("name")
    if raw.get("auto_generate"):
        first, _ = await trigger.store.conversations.messages(conversation_id, limit=1_000_000)
        name = first[0].query.strip()[:AUTO_NAME_CHARS] if first else ""
    if not isinstance(name, str) or not name.strip():
        raise invalid_param("name: a non-empty name is required unless auto_generate is true")
    try:
        renamed = await trigger.store.conversations.rename(app.id, user, conversation_id, name)
    except ConversationNotFound:
        raise conversation_not_found(conversation_id) from None
    answer: dict[str, Any] = chat_payloads.conversation_item(
        renamed, introduction=_introduction(app)
    )
    return answer


@router.get("/messages", summary="Get Conversation History Messages")
async def list_messages(
    app: AppDep,
    trigger: TriggerDep,
    conversation_id: str | None = None,
    user: str | None = None,
    first_id: str | None = None,
    limit: Limit = 20,
) -> dict[str, Any]:
    """A page of the conversation's turns, oldest first: those before `first_id`, else the
    newest ones."""
    user = _user(user)
    if not conversation_id:
        raise invalid_param("conversation_id: is required")
    await _conversation(trigger, app, user, conversation_id)
    try:
        found, more = await trigger.store.conversations.messages(
            conversation_id, first_id=first_id or None, limit=limit
        )
    except MessageNotFound as exc:
        raise not_found(str(exc)) from None
    items = [chat_payloads.message_item(m) for m in found]
    answer: dict[str, Any] = chat_payloads.page(items, limit=limit, has_more=more)
    return answer


@router.get("/conversations/{conversation_id}/variables", summary="Get Conversation Variables")
async def conversation_variables(
    conversation_id: str,
    app: AppDep,
    trigger: TriggerDep,
    user: str | None = None,
    last_id: str | None = None,
    limit: Limit = 20,
    variable_name: str | None = None,
) -> dict[str, Any]:
    """The conversation's variables as its last turn left them (declared order)."""
    user = _user(user)
    await _conversation(trigger, app, user, conversation_id)
    variables = await trigger.store.conversations.variables(conversation_id)
    if variable_name:
        variables = [v for v in variables if v.name == variable_name]
    if last_id:
        ids = [v.id for v in variables]
        if last_id not in ids:
            raise not_found(f"Last Variable Not Exists: no variable {last_id!r}")
        variables = variables[ids.index(last_id) + 1 :]
    descriptions = variable_descriptions(app)
    items = [
        chat_payloads.variable_item(v, description=descriptions.get(v.name, ""))
        for v in variables[:limit]
    ]
    answer: dict[str, Any] = chat_payloads.page(items, limit=limit, has_more=len(variables) > limit)
    return answer


@router.put(
    "/conversations/{conversation_id}/variables/{variable_id}",
    summary="Update Conversation Variable",
)
async def update_variable(
    conversation_id: str,
    variable_id: str,
    request: Request,
    app: AppDep,
    trigger: TriggerDep,
) -> dict[str, Any]:
    """Set one variable; the value must be of the variable's declared type."""
    raw, user = await _body_and_user(request, trigger)
    if "value" not in raw:
        raise invalid_param("value: is required")
    await _conversation(trigger, app, user, conversation_id)
    variables = await trigger.store.conversations.variables(conversation_id)
    variable = next((v for v in variables if v.id == variable_id), None)
    if variable is None:
        raise not_found(
            f"Conversation Variable Not Exists: no variable {variable_id!r} in conversation "
            f"{conversation_id!r}"
        )
    problem = value_type_error(variable.value_type, raw["value"])
    if problem:
        raise invalid_param(f"value: variable {variable.name!r}: {problem}")
    updated = await trigger.store.conversations.set_variable(
        conversation_id, variable.name, variable.value_type, raw["value"]
    )
    description = variable_descriptions(app).get(updated.name, "")
    answer: dict[str, Any] = chat_payloads.variable_item(updated, description=description)
    return answer


@router.post("/messages/{message_id}/feedbacks", summary="Message Feedback")
async def message_feedback(
    message_id: str, request: Request, app: AppDep, trigger: TriggerDep
) -> dict[str, Any]:
    """Store `like` / `dislike` (null clears it) and an optional `content`."""
    raw, user = await _body_and_user(request, trigger)
    rating = raw.get("rating")
    if rating not in ("like", "dislike", None):
        raise invalid_param(f"rating: expected like, dislike or null, got {rating!r}")
    content = raw.get("content")
    if content is not None and not isinstance(content, str):
        raise invalid_param("content: must be a string")
    try:
        await trigger.store.conversations.set_feedback(
            app.id, user, message_id, rating=rating, content=content
        )
    except MessageNotFound as exc:
        raise not_found(str(exc)) from None
    return {"result": "success"}


@router.get("/messages/{message_id}/suggested", summary="Next Suggested Questions")
async def suggested_questions(
    message_id: str, app: AppDep, trigger: TriggerDep, user: str | None = None
) -> dict[str, Any]:
    """Always an empty list: fanflow generates no suggested questions."""
    user = _user(user)
    try:
        await trigger.store.conversations.get_message(app.id, user, message_id)
    except MessageNotFound as exc:
        raise not_found(str(exc)) from None
    return {"result": "success", "data": []}
