"""The mapping between ticket rows and core objects, and the query pieces built over the table.

Plain functions over `store_models.tickets`: the columns a call record or a summary is saved as
(text made storable on the way), the filters and list columns the review pages read with, the
returning callers' lookup, and whole rows read back into `TicketView`s. Unlike the store
(store_sql) they do no I/O and hold no engine, so each can be read, tested and explained alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from callbot.adapters.store_models import tickets
from callbot.core.call_lifecycle import Lifecycle
from callbot.core.record import TRANSFERRED_PREFIX, CallRecord, UsageTotals
from callbot.core.record_json import (
    entry_from_json,
    entry_to_json,
    response_usage_to_json,
    response_usages_from_json,
    summary_event_from_json,
    summary_event_to_json,
    tool_call_from_json,
    tool_call_to_json,
)
from callbot.core.ticket import StructuredSummary, TicketStatus, transcript_as_text
from callbot.core.ticket_views import TicketFilters, TicketListItem, TicketView
from callbot.errors import RecordJsonError, StoreUnavailable

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value: Any) -> Any:
    """`value` with NUL and lone surrogates in its text as U+FFFD: PostgreSQL keeps NUL in no text
    or JSON, and a surrogate has no UTF-8 (a model's function call arguments, a tool's error or a
    transcript may hold either); without this such a ticket could never be saved."""
    if isinstance(value, str):
        return UNSTORABLE.sub("\ufffd", value) if UNSTORABLE.search(value) else value
    if isinstance(value, list):
        return [storable(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    return value


def record_values(record: CallRecord) -> dict[str, Any]:
    return {key: storable(value) for key, value in raw_record_values(record).items()}


def raw_record_values(record: CallRecord) -> dict[str, Any]:
    info, usage = record.info, record.usage
    return {
        "call_sid": info.call_sid,
        "stream_sid": info.stream_sid,
        "account_sid": info.account_sid,
        "from_number": info.from_number,
        "to_number": info.to_number,
        "direction": info.direction,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "duration_s": record.duration_s,
        "end_reason": record.end_reason[:200],
        "realtime_model": record.realtime_model,
        "summary_model": record.summary_model,
        "responses": usage.responses,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "input_text_tokens": usage.input_text_tokens,
        "input_audio_tokens": usage.input_audio_tokens,
        "cached_tokens": usage.cached_tokens,
        "output_text_tokens": usage.output_text_tokens,
        "output_audio_tokens": usage.output_audio_tokens,
        "last_context_tokens": usage.last_context_tokens,
        "transcript": [entry_to_json(e) for e in record.transcript],
        "in_call_summaries": [summary_event_to_json(s) for s in record.summaries],
        "tool_calls": [tool_call_to_json(t) for t in record.tool_calls],
        "memory_ticket_ids": list(record.memory_ticket_ids),
        "response_usage": [response_usage_to_json(u) for u in record.response_usage],
        "search_text": "\n".join(
            [info.call_sid, info.from_number, info.to_number, transcript_as_text(record)]
        ).lower(),
    }


def calls_of(number: str) -> sa.ColumnElement[bool]:
    """A phone number's calls: the ones it made (inbound, `From`) and the ones placed to it."""
    return sa.or_(
        sa.and_(tickets.c.from_number == number, tickets.c.direction != "outbound"),
        sa.and_(tickets.c.to_number == number, tickets.c.direction == "outbound"),
    )


def earlier_calls_statement(number: str, since: datetime, limit: int) -> sa.Select[Any]:
    """The select `SqlTicketStore.earlier_calls` issues (also what bench/memory_lookup.py explains).

    The same tickets as `calls_of(number)` with the memory filters, but as two index ranges
    merged: the calls the number made walk `ix_tickets_from_number_started_at` and the calls
    placed to it walk `ix_tickets_to_number_started_at`, each backwards from `limit` newest,
    then the at most 2 * `limit` rows are merged and cut to `limit`. One `OR` of the two made
    SQLite walk `ix_tickets_started_at` over every ticket of the window instead (63 ms at 100k
    tickets, 147 ms at 300k). The two halves are disjoint (`direction` is outbound or not), so
    UNION ALL never counts a ticket twice."""
    remembered = (
        tickets.c.started_at >= since,
        tickets.c.status.in_([TicketStatus.COMPLETE.value, TicketStatus.TRANSFERRED.value]),
        tickets.c.memory_excluded.is_(False),
    )
    columns = (tickets.c.id, tickets.c.started_at, tickets.c.summary)
    newest = (tickets.c.started_at.desc(), tickets.c.id.desc())
    made = (
        sa.select(*columns)
        .where(tickets.c.from_number == number, tickets.c.direction != "outbound", *remembered)
        .order_by(*newest)
        .limit(limit)
        .subquery("made")
    )
    placed = (
        sa.select(*columns)
        .where(tickets.c.to_number == number, tickets.c.direction == "outbound", *remembered)
        .order_by(*newest)
        .limit(limit)
        .subquery("placed")
    )
    both = sa.union_all(sa.select(made), sa.select(placed)).subquery("calls")
    return sa.select(both).order_by(both.c.started_at.desc(), both.c.id.desc()).limit(limit)


def complete_values(summary: StructuredSummary, now: datetime) -> dict[str, Any]:
    """The columns a summary completes (at `now`): `transferred` when the agent handed the caller
    to a person."""
    return {
        "status": sa.case(
            (tickets.c.end_reason.startswith(TRANSFERRED_PREFIX), TicketStatus.TRANSFERRED.value),
            else_=TicketStatus.COMPLETE.value,
        ),
        "summary": summary.to_dict(),
        "title": summary.title[:300],
        "category": summary.category[:32] or None,
        "priority": summary.priority[:16] or None,
        "sentiment": summary.sentiment[:16] or None,
        "follow_up_needed": summary.follow_up_needed,
        "summary_attempts": tickets.c.summary_attempts + 1,
        "last_error": None,
        "search_text": tickets.c.search_text + ("\n" + summary_search_text(summary)),
        "updated_at": now,
    }


def summary_search_text(summary: StructuredSummary) -> str:
    parts = [summary.title, summary.summary, summary.caller_request, summary.outcome]
    parts += [f"{f.label} {f.value}" for f in summary.facts]
    parts += [a.description for a in summary.action_items]
    return "\n".join(parts).lower()


def where(filters: TicketFilters) -> list[sa.ColumnElement[bool]]:
    clauses: list[sa.ColumnElement[bool]] = []
    if filters.search:
        # Every word must appear somewhere: title, summary, transcript or phone numbers.
        for term in filters.search.lower().split()[:10]:
            clauses.append(tickets.c.search_text.contains(term, autoescape=True))
    if filters.status:
        clauses.append(tickets.c.status == filters.status)
    if filters.category:
        clauses.append(tickets.c.category == filters.category)
    if filters.priority:
        clauses.append(tickets.c.priority == filters.priority)
    if filters.since:
        clauses.append(tickets.c.started_at >= filters.since)
    if filters.until:
        clauses.append(tickets.c.started_at < filters.until)
    if filters.call_sid:
        clauses.append(tickets.c.call_sid == filters.call_sid)
    if filters.number:
        clauses.append(sa.or_(tickets.c.from_number == filters.number, tickets.c.to_number == filters.number))
    return clauses


LIST_COLUMNS = [
    tickets.c[name]
    for name in (
        "id", "call_sid", "from_number", "to_number", "started_at", "ended_at", "duration_s", "status",
        "title", "category", "priority", "sentiment", "follow_up_needed", "summary", "summary_attempts",
        "last_error", "created_at", "updated_at", "memory_excluded",
    )
]  # fmt: skip


def list_item(row: Mapping[str, Any]) -> TicketListItem:
    return TicketListItem(**{c.name: row[c.name] for c in LIST_COLUMNS})


def view(row: Mapping[str, Any]) -> TicketView:
    try:
        transcript = tuple(entry_from_json(e) for e in row["transcript"] or [])
        summaries = tuple(summary_event_from_json(s) for s in row["in_call_summaries"] or [])
        tool_calls = tuple(tool_call_from_json(t) for t in row["tool_calls"] or [])
        response_usage = response_usages_from_json(row.get("response_usage"))
    except RecordJsonError as exc:
        raise StoreUnavailable(f"ticket {row['id']} has an unreadable transcript: {exc}") from exc
    return TicketView(
        item=list_item(row),
        stream_sid=row["stream_sid"],
        account_sid=row["account_sid"],
        end_reason=row["end_reason"],
        realtime_model=row["realtime_model"],
        summary_model=row["summary_model"],
        usage=UsageTotals(
            responses=row["responses"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            input_text_tokens=row["input_text_tokens"],
            input_audio_tokens=row["input_audio_tokens"],
            cached_tokens=row["cached_tokens"],
            output_text_tokens=row["output_text_tokens"],
            output_audio_tokens=row["output_audio_tokens"],
            last_context_tokens=row["last_context_tokens"],
        ),
        transcript=transcript,
        summaries=summaries,
        direction=row.get("direction") or "inbound",
        lifecycle=lifecycle(row),
        outcome=row.get("outcome"),
        instructions=row.get("instructions"),
        context=row.get("call_context"),
        tool_calls=tool_calls,
        memory_ticket_ids=tuple(i for i in row["memory_ticket_ids"] or [] if isinstance(i, int)),
        response_usage=response_usage,
    )


def with_outcome(search_text: str, old: str | None, new: str) -> str:
    """The search text with `outcome:<new>` in it (searchable: "voicemail_left"), and not the old one."""
    if old and old != new:
        search_text = search_text.replace(f"\noutcome:{old}", "")
    marker = f"\noutcome:{new}"
    return search_text if marker in search_text else search_text + marker


def lifecycle(row: Mapping[str, Any]) -> Lifecycle:
    return Lifecycle(
        twilio_status=row.get("twilio_status"),
        sequence=row.get("twilio_sequence"),
        duration_s=row.get("twilio_duration_s"),
        answered_by=row.get("answered_by"),
        voicemail_left=bool(row.get("voicemail_left")),
    )
