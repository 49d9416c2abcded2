"""The `tickets` table, defined once here for queries.

The Alembic migration spells it out again on purpose (a migration is history and must not
change when this file does), and a test compares the two. What readers get back (list rows,
whole tickets, pages, filters) is plain data in `callbot.core.ticket_views`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timestamps stored as UTC and always read back timezone-aware.

    SQLite keeps no offset, so without this a time read back would be naive and compare wrongly
    with the aware times the rest of the program uses.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONDocument = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = sa.MetaData()

tickets = sa.Table(
    "tickets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_sid", sa.String(64), nullable=False),
    sa.Column("stream_sid", sa.String(64), nullable=False, server_default=""),
    sa.Column("account_sid", sa.String(64), nullable=False, server_default=""),
    sa.Column("from_number", sa.String(64), nullable=False, server_default=""),
    sa.Column("to_number", sa.String(64), nullable=False, server_default=""),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Column("duration_s", sa.Float, nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("end_reason", sa.String(200), nullable=False, server_default=""),
    sa.Column("realtime_model", sa.String(128), nullable=False, server_default=""),
    sa.Column("summary_model", sa.String(128), nullable=False, server_default=""),
    sa.Column("responses", sa.Integer, nullable=False, server_default="0"),
    sa.Column("input_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("output_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("input_text_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("input_audio_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cached_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("output_text_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("output_audio_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_context_tokens", sa.Integer, nullable=False, server_default="0"),
    sa.Column("summary", JSONDocument, nullable=True),
    sa.Column("title", sa.String(300), nullable=True),
    sa.Column("category", sa.String(32), nullable=True),
    sa.Column("priority", sa.String(16), nullable=True),
    sa.Column("sentiment", sa.String(16), nullable=True),
    sa.Column("follow_up_needed", sa.Boolean, nullable=True),
    sa.Column("transcript", JSONDocument, nullable=False),
    sa.Column("in_call_summaries", JSONDocument, nullable=False),
    sa.Column("tool_calls", JSONDocument, nullable=False, server_default=sa.text("'[]'")),
    sa.Column("response_usage", JSONDocument, nullable=True),  # migration 0005; null before it
    sa.Column("search_text", sa.Text, nullable=False, server_default=""),
    sa.Column("summary_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # the call's life as Twilio reports it (migration 0003, core/call_lifecycle.py)
    sa.Column("direction", sa.String(16), nullable=False, server_default="inbound"),
    sa.Column("twilio_status", sa.String(16), nullable=True),
    sa.Column("twilio_sequence", sa.Integer, nullable=True),
    sa.Column("twilio_duration_s", sa.Integer, nullable=True),
    sa.Column("answered_by", sa.String(32), nullable=True),
    sa.Column("voicemail_left", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("outcome", sa.String(32), nullable=True),
    sa.Column("placement_id", sa.String(64), nullable=True),
    sa.Column("instructions", sa.Text, nullable=True),
    sa.Column("call_context", JSONDocument, nullable=True),
    # Returning callers (migration 0004): the earlier tickets that seeded this call, whether this
    # ticket may seed later calls, and the index the lookup by number walks (newest first).
    sa.Column("memory_ticket_ids", JSONDocument, nullable=True),
    sa.Column("memory_excluded", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("owner_replica", sa.String(64), nullable=True),
    sa.Column("webhook_due_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("call_sid", name="uq_tickets_call_sid"),
    sa.Index("ix_tickets_status", "status"),
    sa.Index("ix_tickets_started_at", "started_at"),
    sa.Index("ix_tickets_category", "category"),
    sa.Index("ix_tickets_priority", "priority"),
    sa.Index("ix_tickets_from_number_started_at", "from_number", "started_at"),
    sa.Index("ix_tickets_to_number_started_at", "to_number", "started_at"),
    sa.Index("ix_tickets_owner_replica", "owner_replica"),
    sa.Index("ix_tickets_webhook_due_at", "webhook_due_at"),
)

# Issue 19 (migration 0006): one row per `callbot serve` process, its lease renewed every
# heartbeat; tickets.owner_replica names the replica carrying the call (callbot/core/leases.py).
replicas = sa.Table(
    "replicas",
    metadata,
    sa.Column("replica_id", sa.String(64), primary_key=True),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    sa.Index("ix_replicas_heartbeat_at", "heartbeat_at"),
)
