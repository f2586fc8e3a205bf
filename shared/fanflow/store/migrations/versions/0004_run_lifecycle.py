"""run lifecycle: idempotency keys of submits, callback deliveries of async runs, batches
and their rows, the redrive count of a run

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 12:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("app_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("body_hash", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name="fk_idempotency_keys_app_id_apps", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("app_id", "key", name="pk_idempotency_keys"),
    )
    op.create_table(
        "callback_deliveries",
        sa.Column("id", _SERIAL, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name="fk_callback_deliveries_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_callback_deliveries"),
    )
    op.create_index("ix_callback_deliveries_run_id", "callback_deliveries", ["run_id"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("app_id", sa.String(36), nullable=False),
        sa.Column("end_user", sa.String(), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["app_id"], ["apps.id"], name="fk_batches_app_id_apps", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_batches"),
    )
    op.create_index("ix_batches_app_id", "batches", ["app_id"])
    op.create_table(
        "batch_rows",
        sa.Column("batch_id", sa.String(36), nullable=False),
        sa.Column("row_index", sa.Integer(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_batch_rows_batch_id_batches", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("batch_id", "row_index", name="pk_batch_rows"),
    )
    # a plain ALTER TABLE ADD COLUMN on both (a batch copy of `runs` on SQLite would drop
    # the table, and with foreign keys on, cascade to its node executions)
    op.add_column(
        "runs", sa.Column("redrive_count", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column("runs", sa.Column("redriven_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("redriven_at")
        batch.drop_column("redrive_count")
    op.drop_index("ix_callback_deliveries_run_id", table_name="callback_deliveries")
    op.drop_table("callback_deliveries")
    op.drop_table("batch_rows")
    op.drop_index("ix_batches_app_id", table_name="batches")
    op.drop_table("batches")
    op.drop_table("idempotency_keys")
