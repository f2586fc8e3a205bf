"""Chatflow turns, conversations and messages in the shapes of Dify's Service API.

A chat stream is the workflow stream (`payloads.StreamFormatter`) with every event also
naming its `conversation_id`, `message_id` and `created_at`, the Answer nodes' text as
`message` events (`answer` a chunk; Dify's `text_chunk` is not sent in chat mode), and
after `workflow_finished` a `message_end` (usage, metadata) — or, for a failed run, an
`error` event, as Dify's chat pipeline does. `message_replace` is only sent by Dify's
output moderation, which fanflow does not do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from fanflow_services.trigger.payloads import StreamFormatter

from fanflow.mesh.amqp import Event
from fanflow.store import (
    ConversationRecord,
    ConversationVariableRecord,
    MessageRecord,
    NodeExecutionRecord,
    RunRecord,
)
from fanflow.vocabulary import RunStatus

MODE = "advanced-chat"
_PRICE_ZERO = "0"


def _ts(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds)


def usage(executions: Iterable[NodeExecutionRecord], *, latency_s: float | None) -> dict[str, Any]:
    """`Usage` of a turn: its model calls' tokens added up (fanflow knows no prices)."""
    prompt = completion = total = 0
    for execution in executions:
        outputs = execution.outputs or {}
        used = outputs.get("usage") or outputs.get("__usage")
        if isinstance(used, dict):
            prompt += int(used.get("prompt_tokens") or 0)
            completion += int(used.get("completion_tokens") or 0)
            total += int(used.get("total_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "prompt_unit_price": _PRICE_ZERO,
        "prompt_price_unit": _PRICE_ZERO,
        "prompt_price": _PRICE_ZERO,
        "completion_tokens": completion,
        "completion_unit_price": _PRICE_ZERO,
        "completion_price_unit": _PRICE_ZERO,
        "completion_price": _PRICE_ZERO,
        "total_tokens": total,
        "total_price": _PRICE_ZERO,
        "currency": "USD",
        "latency": round(latency_s or 0.0, 3),
    }


def run_failure(run: RunRecord) -> str:
    """The message of a failed turn, worded as Dify's chat pipeline words it."""
    return f"Run failed: {run.error or 'unknown error'}"


def blocking_response(
    *, run: RunRecord, message: MessageRecord, usage_: dict[str, Any]
) -> dict[str, Any]:
    """`ChatCompletionResponse`."""
    return {
        "event": "message",
        "task_id": run.id,
        "id": message.id,
        "message_id": message.id,
        "conversation_id": message.conversation_id,
        "mode": MODE,
        "answer": message.answer,
        "metadata": {"usage": usage_, "retriever_resources": []},
        "created_at": _ts(message.created_at),
    }


class ChatStreamFormatter:
    """One chat stream's converter (duplicates dropped by the workflow formatter)."""

    def __init__(
        self, run_id: str, *, workflow_id: str, conversation_id: str, message_id: str
    ) -> None:
        self.workflow = StreamFormatter(run_id, workflow_id=workflow_id)
        self.run_id = run_id
        self.conversation_id = conversation_id
        self.message_id = message_id
        self.created_at = int(time.time())

    def _ids(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "created_at": self.created_at,
        }

    def is_new(self, event: Event) -> bool:
        new: bool = self.workflow.is_new(event)
        return new

    def convert(self, event: Event) -> dict[str, Any]:
        if event.name == "text_chunk":
            data = event.payload.get("data") or {}
            return {
                "event": "message",
                "id": self.message_id,
                "task_id": self.run_id,
                **self._ids(),
                "answer": data.get("text", ""),
                "from_variable_selector": [data.get("node_id"), "answer"],
            }
        return {**self.workflow.convert(event), **self._ids()}

    def finished(self, run: RunRecord) -> dict[str, Any]:
        return {**self.workflow.finished(run), **self._ids()}

    def end(self, run: RunRecord, usage_: dict[str, Any]) -> dict[str, Any]:
        """What follows `workflow_finished`: `message_end`, or `error` for a failed run."""
        if run.status == RunStatus.FAILED:
            return self.error(400, "invalid_param", run_failure(run))
        return {
            "event": "message_end",
            "id": self.message_id,
            "task_id": self.run_id,
            **self._ids(),
            "metadata": {"usage": usage_, "retriever_resources": []},
            "files": [],
        }

    def error(self, status: int, code: str, message: str) -> dict[str, Any]:
        return {
            "event": "error",
            "task_id": self.run_id,
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "status": status,
            "code": code,
            "message": message,
        }


# ---- conversations, messages, variables ------------------------------------------------


def conversation_item(conversation: ConversationRecord, *, introduction: str) -> dict[str, Any]:
    """`ConversationListItem`."""
    return {
        "id": conversation.id,
        "name": conversation.name,
        "inputs": conversation.inputs,
        "status": "normal",
        "introduction": introduction,
        "created_at": _ts(conversation.created_at),
        "updated_at": _ts(conversation.updated_at),
    }


def message_item(message: MessageRecord) -> dict[str, Any]:
    """`ConversationMessageItem`."""
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "parent_message_id": None,
        "inputs": message.inputs,
        "query": message.query,
        "answer": message.answer,
        "status": message.status,
        "error": message.error,
        "message_files": [],
        "feedback": {"rating": message.feedback_rating} if message.feedback_rating else None,
        "retriever_resources": [],
        "agent_thoughts": [],
        "created_at": _ts(message.created_at),
        "extra_contents": [],
        "message_tokens": 0,
        "answer_tokens": 0,
        "total_tokens": message.total_tokens,
        "provider_response_latency": message.elapsed_time or 0.0,
        "total_price": None,
        "currency": None,
    }


def variable_value_text(value: Any) -> str:
    """`ConversationVariableItem.value` is a string: text as is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def variable_item(variable: ConversationVariableRecord, *, description: str) -> dict[str, Any]:
    """`ConversationVariableItem`."""
    return {
        "id": variable.id,
        "name": variable.name,
        "value_type": variable.value_type,
        "value": variable_value_text(variable.value),
        "description": description,
        "created_at": _ts(variable.created_at),
        "updated_at": _ts(variable.updated_at),
    }


def page(items: list[dict[str, Any]], *, limit: int, has_more: bool) -> dict[str, Any]:
    return {"limit": limit, "has_more": has_more, "data": items}
