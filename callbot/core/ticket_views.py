"""What readers of tickets get: list rows, whole tickets, pages, and the filters that select them.

Plain frozen data, built by the ticket store (adapters/store_sql) and shown by the review pages
and the CLI, so neither of those imports the database adapter to read a ticket.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from callbot.core.call_lifecycle import Lifecycle
from callbot.core.record import (
    CallInfo,
    CallRecord,
    ResponseUsage,
    SummaryEvent,
    TranscriptEntry,
    UsageTotals,
)
from callbot.core.record_json import (
    entry_to_json,
    response_usage_to_json,
    summary_event_to_json,
    usage_to_json,
)
from callbot.core.ticket import CATEGORIES, PRIORITIES, TicketStatus
from callbot.errors import FilterError


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
    memory_excluded: bool = False
    """`callbot tickets forget`: this ticket never seeds a later call's memory."""

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
            "memory_excluded": self.memory_excluded,
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
    direction: str = "inbound"
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    outcome: str | None = None
    instructions: str | None = None
    context: dict[str, Any] | None = None
    memory_ticket_ids: tuple[int, ...] = ()
    """The earlier tickets that seeded this call (core/memory.py)."""
    response_usage: tuple[ResponseUsage, ...] = ()

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
                direction=self.direction,
            ),
            started_at=self.item.started_at,
            ended_at=self.item.ended_at,
            transcript=self.transcript,
            summaries=self.summaries,
            usage=self.usage,
            realtime_model=self.realtime_model,
            summary_model=self.summary_model,
            end_reason=self.end_reason,
            memory_ticket_ids=self.memory_ticket_ids,
            response_usage=self.response_usage,
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
            "direction": self.direction,
            "twilio_status": self.lifecycle.twilio_status,
            "twilio_duration_s": self.lifecycle.duration_s,
            "answered_by": self.lifecycle.answered_by,
            "voicemail_left": self.lifecycle.voicemail_left,
            "outcome": self.outcome,
            "instructions": self.instructions,
            "context": self.context,
            "memory_ticket_ids": list(self.memory_ticket_ids),
            "response_usage": [response_usage_to_json(u) for u in self.response_usage],
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
    number: str | None = None
    """Calls from or to this number (exactly; spaces and dashes are dropped)."""

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
        number: str | None = None,
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
            number=_number(number),
        )


def _number(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    compact = re.sub(r"[\s().-]", "", text)
    if not re.fullmatch(r"\+?[0-9A-Za-z]{1,40}", compact):
        raise FilterError(f"number {text!r} is not a phone number")
    return compact


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
