"""The database schema: SQLAlchemy Core tables shared by PostgreSQL and SQLite.

Timestamps are epoch seconds (floats), as Dify's API reports them. Ids are free-form
strings: run ids are chosen by the trigger, node execution and message ids are derived
deterministically from the run, scope and node. `migrations/versions` mirrors this file by
hand; a test checks that the two agree.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid alias), not a BIGINT one.
_SERIAL = BigInteger().with_variant(Integer(), "sqlite")

apps = Table(
    "apps",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("mode", String(32), nullable=False),
    Column("dsl", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    # sha256 hex of the whole key; the plaintext is shown once and never stored
    Column("key_hash", String(64), primary_key=True),
    Column("app_id", ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String, primary_key=True),
    Column("app_id", ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
    Column("status", String(32), nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("outputs", JSON, nullable=True),
    Column("error", Text, nullable=True),
    # dump_state() bytes; only the run's transaction reads and writes it
    Column("state", LargeBinary, nullable=False),
    # "user" is reserved in PostgreSQL
    Column("end_user", String, nullable=True),
    Column("total_steps", Integer, nullable=False),
    Column("total_tokens", BigInteger, nullable=False),
    Column("exceptions_count", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
    Column("elapsed_time", Float, nullable=True),
    # bumped by every save: lets a reader tell whether a run moved on
    Column("version", Integer, nullable=False),
    # how often `redrive` restarted the run from its failed nodes (migration 0004)
    Column("redrive_count", Integer, nullable=False, server_default="0"),
    # when the last redrive began: the run's deadline counts from it
    Column("redriven_at", Float, nullable=True),
    Index("ix_runs_app_created", "app_id", "created_at"),
    Index("ix_runs_app_status", "app_id", "status"),
    # the aggregators' deadline sweep: running runs, oldest first
    Index("ix_runs_status_created", "status", "created_at"),
)

node_executions = Table(
    "node_executions",
    metadata,
    # f"{run_id}/{scope}/{node_id}": one row per node per scope, upserted as events arrive
    Column("id", String, primary_key=True),
    Column("run_id", ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("node_id", String, nullable=False),
    Column("node_type", String(64), nullable=False),
    Column("title", String, nullable=False),
    Column("scope", String, nullable=False),
    Column("status", String(32), nullable=False),
    Column("inputs", JSON, nullable=True),
    Column("outputs", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("total_tokens", BigInteger, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    # first sighting; orders a run's executions
    Column("created_at", Float, nullable=False),
)

iteration_items = Table(
    "iteration_items",
    metadata,
    Column("run_id", ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
    Column("iteration", String, primary_key=True),
    Column("item_index", Integer, primary_key=True),
    Column("value", JSON, nullable=True),
    Column("removed", Boolean, nullable=False),
)

processed_messages = Table(
    "processed_messages",
    metadata,
    Column("message_id", String, primary_key=True),
    Column("run_id", ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("at", Float, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", _SERIAL, primary_key=True, autoincrement=True),
    # no foreign key: a message may outlive its run's row (e.g. a cancel after a purge)
    Column("run_id", String, nullable=True, index=True),
    Column("message_id", String, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("routing", String, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("delay_ms", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

# ---- chatflows: conversations, their messages (one per turn) and variables -------------

conversations = Table(
    "conversations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("app_id", ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
    Column("end_user", String, nullable=False),
    Column("name", String, nullable=False),
    # the inputs of the first turn: every later turn of the conversation runs with them
    Column("inputs", JSON, nullable=False),
    Column("dialogue_count", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # a user's conversations, most recently active first (GET /conversations)
    Index("ix_conversations_app_user_updated", "app_id", "end_user", "updated_at"),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "conversation_id",
        ForeignKey("conversations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # the turn's run; no foreign key: a message outlives a purged run
    Column("run_id", String, nullable=False, unique=True),
    Column("query", Text, nullable=False),
    Column("answer", Text, nullable=False),
    Column("inputs", JSON, nullable=False),
    Column("files", JSON, nullable=False),
    # running, normal, error, stopped
    Column("status", String(16), nullable=False),
    Column("error", Text, nullable=True),
    Column("total_tokens", BigInteger, nullable=False),
    Column("elapsed_time", Float, nullable=True),
    # `like`, `dislike` or None, as posted to /messages/{id}/feedbacks
    Column("feedback_rating", String(16), nullable=True),
    Column("feedback_content", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Index("ix_messages_conversation_created", "conversation_id", "created_at"),
)

conversation_variables = Table(
    "conversation_variables",
    metadata,
    Column(
        "conversation_id",
        ForeignKey("conversations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", String, primary_key=True),
    Column("id", String(36), nullable=False),
    Column("value_type", String(32), nullable=False),
    Column("value", JSON, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# ---- run lifecycle: idempotent submits, callbacks of async runs ------------------------

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    # one run per (app, Idempotency-Key): the primary key makes two concurrent claims of
    # the same key end with one winner, on PostgreSQL and on SQLite
    Column("app_id", ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(255), primary_key=True),
    # sha256 hex of the request body, canonical JSON: the same key with another body is 409
    Column("body_hash", String(64), nullable=False),
    # no foreign key: the key is claimed before its run's row exists
    Column("run_id", String, nullable=False),
    Column("created_at", Float, nullable=False),
)

callback_deliveries = Table(
    "callback_deliveries",
    metadata,
    Column("id", _SERIAL, primary_key=True, autoincrement=True),
    Column("run_id", ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("url", Text, nullable=False),
    # 1, 2, ...: one row per try
    Column("attempt", Integer, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("delivered", Boolean, nullable=False),
    Column("at", Float, nullable=False),
)

batches = Table(
    "batches",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("app_id", ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("end_user", String, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
)

batch_rows = Table(
    "batch_rows",
    metadata,
    Column("batch_id", ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("row_index", Integer, primary_key=True),
    Column("inputs", JSON, nullable=False),
    # pending, running, then the run's end status (or `invalid`: its inputs were refused)
    Column("status", String(32), nullable=False),
    Column("run_id", String, nullable=True),
    Column("error", Text, nullable=True),
)
