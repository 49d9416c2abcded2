"""The `tickets` table and the read-side views the store hands to the web pages and the CLI.

The table is defined once here for queries; the Alembic migration spells it out again on purpose
(a migration is history and must not change when this file does), and a test compares the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from callbot.core.record import CallInfo, CallRecord, SummaryEvent, TranscriptEntry, UsageTotals
from callbot.core.record_json import entry_to_json, summary_event_to_json, usage_to_json
from callbot.core.ticket import CATEGORIES, PRIORITIES, TicketStatus


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
    sa.Column("search_text", sa.Text, nullable=False, server_default=""),
    sa.Column("summary_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("call_sid", name="uq_tickets_call_sid"),
    sa.Index("ix_tickets_status", "status"),
    sa.Index("ix_tickets_started_at", "started_at"),
    sa.Index("ix_tickets_category", "category"),
    sa.Index("ix_tickets_priority", "priority"),
)


# ----- what readers get -----


@dataclass(frozen=True, slots=True)
class TicketListItem:
    """One row of a ticket list: everything but the transcript."""

    id: int
    call_sid: str
    from_number: str
    to_number: str
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    status: str
    title: str | None
    category: str | None
    priority: str | None
    sentiment: str | None
    follow_up_needed: bool | None
    summary: dict[str, Any] | None
    summary_attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "call_sid": self.call_sid,
            "from_number": self.from_number,
            "to_number": self.to_number,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "duration_s": self.duration_s,
            "status": self.status,
            "title": self.title,
            "category": self.category,
            "priority": self.priority,
            "sentiment": self.sentiment,
            "follow_up_needed": self.follow_up_needed,
            "summary": self.summary,
            "summary_attempts": self.summary_attempts,
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class TicketView:
    """A whole ticket: the list row plus the call details and the full transcript."""

    item: TicketListItem
    stream_sid: str
    account_sid: str
    end_reason: str
    realtime_model: str
    summary_model: str
    usage: UsageTotals
    transcript: tuple[TranscriptEntry, ...]
    summaries: tuple[SummaryEvent, ...]

    @property
    def id(self) -> int:
        return self.item.id

    @property
    def call_sid(self) -> str:
        return self.item.call_sid

    @property
    def status(self) -> str:
        return self.item.status

    def to_record(self) -> CallRecord:
        """The call's record again, e.g. to summarise a pending ticket after a restart."""
        return CallRecord(
            info=CallInfo(
                call_sid=self.item.call_sid,
                stream_sid=self.stream_sid,
                account_sid=self.account_sid,
                from_number=self.item.from_number,
                to_number=self.item.to_number,
            ),
            started_at=self.item.started_at,
            ended_at=self.item.ended_at,
            transcript=self.transcript,
            summaries=self.summaries,
            usage=self.usage,
            realtime_model=self.realtime_model,
            summary_model=self.summary_model,
            end_reason=self.end_reason,
        )

    def to_json(self) -> dict[str, Any]:
        """The ticket as the JSON API and the webhook publish it."""
        return {
            **self.item.to_json(),
            "stream_sid": self.stream_sid,
            "account_sid": self.account_sid,
            "end_reason": self.end_reason,
            "realtime_model": self.realtime_model,
            "summary_model": self.summary_model,
            "usage": {**usage_to_json(self.usage), "total_tokens": self.usage.total_tokens},
            "transcript": [entry_to_json(e) for e in self.transcript],
            "in_call_summaries": [summary_event_to_json(s) for s in self.summaries],
        }


@dataclass(frozen=True, slots=True)
class TicketPage:
    items: list[TicketListItem]
    total: int
    page: int
    page_size: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))

    def to_json(self) -> dict[str, Any]:
        return {
            "items": [i.to_json() for i in self.items],
            "total": self.total,
            "page": self.page,
            "page_size": self.page_size,
            "pages": self.pages,
        }


class FilterError(ValueError):
    """A filter value a person typed is not usable; the message says which and why."""


@dataclass(frozen=True, slots=True)
class TicketFilters:
    """What to list. `since` is inclusive and `until` exclusive, both on the call's start time.

    `call_sid` matches one call exactly (the softphone finds its own call's ticket with it).
    """

    search: str | None = None
    status: str | None = None
    category: str | None = None
    priority: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    call_sid: str | None = None

    @classmethod
    def from_strings(
        cls,
        *,
        search: str | None = None,
        status: str | None = None,
        category: str | None = None,
        priority: str | None = None,
        since: str | None = None,
        until: str | None = None,
        call_sid: str | None = None,
    ) -> TicketFilters:
        """Filters from a form or a command line; empty strings mean "any".

        A bare date for `until` includes that whole day, which is what people mean by
        "until 2024-05-31".
        """
        status, category, priority = (
            v.strip() if v and v.strip() else None for v in (status, category, priority)
        )
        _check_choice("status", status, [s.value for s in TicketStatus])
        _check_choice("category", category, CATEGORIES, strict=False)
        _check_choice("priority", priority, PRIORITIES, strict=False)
        return cls(
            search=search.strip() if search and search.strip() else None,
            status=status,
            category=category,
            priority=priority,
            since=parse_time_bound("since", since, end_of_day=False),
            until=parse_time_bound("until", until, end_of_day=True),
            call_sid=call_sid.strip() if call_sid and call_sid.strip() else None,
        )


def _check_choice(name: str, value: str | None, allowed: Any, strict: bool = True) -> None:
    # Categories and priorities can come from a custom schema, so only their shape is checked.
    if value is None:
        return
    if strict and value not in allowed:
        raise FilterError(f"{name} must be one of {', '.join(allowed)}")
    if not strict and (len(value) > 32 or not value.replace("_", "").replace("-", "").isalnum()):
        raise FilterError(f"{name} {value!r} is not a valid value")


def parse_time_bound(name: str, text: str | None, *, end_of_day: bool) -> datetime | None:
    """`YYYY-MM-DD` (a whole day, UTC) or an ISO timestamp (naive means UTC)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            bound = datetime.combine(day, time(), tzinfo=UTC)
            return bound + timedelta(days=1) if end_of_day else bound
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FilterError(f"{name} {text!r} is not a date (use YYYY-MM-DD or an ISO timestamp)") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)
