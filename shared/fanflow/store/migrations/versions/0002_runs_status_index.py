"""index runs by status and creation time, for the deadline sweep

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_runs_status_created", "runs", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_created", table_name="runs")
