"""Durable state: apps, API keys, runs, node executions, iteration items, dedupe, outbox;
chatflow conversations, messages and conversation variables.

The only package that talks SQL. Works on PostgreSQL (`postgresql+asyncpg://...`) and
SQLite (`sqlite+aiosqlite:///path.db`) through the same SQLAlchemy Core code.
"""

from fanflow.defaults import DATABASE_URL as DEFAULT_DATABASE_URL
from fanflow.store.chat_records import (
    ConversationNotFound,
    ConversationRecord,
    ConversationVariableRecord,
    MessageNotFound,
    MessageRecord,
    Turn,
    TurnEnd,
)
from fanflow.store.conversations import Conversations
from fanflow.store.faults import Backoff, is_transient, retry_transient
from fanflow.store.migrate import migrate
from fanflow.store.records import (
    AppBusy,
    AppNotFound,
    AppRecord,
    NodeExecutionRecord,
    OutboxMessage,
    RunExists,
    RunNotFound,
    RunRecord,
    StoredItem,
    StoreError,
)
from fanflow.store.store import Store, hash_api_key
from fanflow.store.transaction import RunTransaction, node_execution_id

__all__ = [
    "DEFAULT_DATABASE_URL",
    "AppBusy",
    "AppNotFound",
    "AppRecord",
    "Backoff",
    "ConversationNotFound",
    "ConversationRecord",
    "ConversationVariableRecord",
    "Conversations",
    "MessageNotFound",
    "MessageRecord",
    "NodeExecutionRecord",
    "OutboxMessage",
    "RunExists",
    "RunNotFound",
    "RunRecord",
    "RunTransaction",
    "Store",
    "StoreError",
    "StoredItem",
    "Turn",
    "TurnEnd",
    "hash_api_key",
    "is_transient",
    "migrate",
    "node_execution_id",
    "retry_transient",
]
