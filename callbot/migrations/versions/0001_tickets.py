"""Create the tickets table: one row per call, from its start to its structured summary.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Spelled out here instead of imported from store_models: a migration records the schema as it
# was at this revision, and must not change when the models do.
_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp(name: str, nullable: bool) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _counter(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer, nullable=False, server_default="0")


def _text(name: str, length: int) -> sa.Column:
    return sa.Column(name, sa.String(length), nullable=False, server_default="")


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("call_sid", sa.String(64), nullable=False),
        _text("stream_sid", 64),
        _text("account_sid", 64),
        _text("from_number", 64),
        _text("to_number", 64),
        _timestamp("started_at", nullable=False),
        _timestamp("ended_at", nullable=True),
        sa.Column("duration_s", sa.Float, nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        _text("end_reason", 200),
        _text("realtime_model", 128),
        _text("summary_model", 128),
        _counter("responses"),
        _counter("input_tokens"),
        _counter("output_tokens"),
        _counter("total_tokens"),
        _counter("input_text_tokens"),
        _counter("input_audio_tokens"),
        _counter("cached_tokens"),
        _counter("output_text_tokens"),
        _counter("output_audio_tokens"),
        _counter("last_context_tokens"),
        sa.Column("summary", _JSON, nullable=True),
        sa.Column("title", sa.String(300), nullable=True),
        sa.Column("category", sa.String(32), nullable=True),
        sa.Column("priority", sa.String(16), nullable=True),
        sa.Column("sentiment", sa.String(16), nullable=True),
        sa.Column("follow_up_needed", sa.Boolean, nullable=True),
        sa.Column("transcript", _JSON, nullable=False),
        sa.Column("in_call_summaries", _JSON, nullable=False),
        sa.Column("search_text", sa.Text, nullable=False, server_default=""),
        _counter("summary_attempts"),
        sa.Column("last_error", sa.Text, nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        sa.UniqueConstraint("call_sid", name="uq_tickets_call_sid"),
    )
    op.create_index("ix_tickets_status", "tickets", ["status"])
    op.create_index("ix_tickets_started_at", "tickets", ["started_at"])
    op.create_index("ix_tickets_category", "tickets", ["category"])
    op.create_index("ix_tickets_priority", "tickets", ["priority"])


def downgrade() -> None:
    op.drop_table("tickets")
