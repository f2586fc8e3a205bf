"""What the store hands out for chatflows: conversations, messages, conversation variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fanflow.store.records import StoreError


class ConversationNotFound(StoreError, LookupError):
    """No conversation with this id for this app and user."""


class MessageNotFound(StoreError, LookupError):
    """No message with this id for this app and user."""


@dataclass(frozen=True)
class ConversationRecord:
    id: str
    app_id: str
    user: str
    name: str
    inputs: dict[str, Any]
    dialogue_count: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class MessageRecord:
    """One turn: the user's query and the chatflow's answer."""

    id: str
    conversation_id: str
    run_id: str
    query: str
    answer: str
    inputs: dict[str, Any]
    files: list[Any]
    status: str
    error: str | None
    total_tokens: int
    elapsed_time: float | None
    feedback_rating: str | None
    feedback_content: str | None
    created_at: float


@dataclass(frozen=True)
class ConversationVariableRecord:
    id: str
    name: str
    value_type: str
    value: Any
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Turn:
    """An earlier turn as memory sees it."""

    query: str
    answer: str


@dataclass(frozen=True)
class TurnEnd:
    """What a finished turn writes, in its run's last transaction.

    `variables` maps each declared conversation variable to `(value_type, value)`.
    """

    conversation_id: str
    answer: str
    status: str
    error: str | None
    total_tokens: int
    elapsed_time: float | None
    variables: Mapping[str, tuple[str, Any]] = field(default_factory=dict)
