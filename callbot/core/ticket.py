"""The post-call support ticket: its status, the validated structured summary, and redaction of it.

Pure functions over the call's record. The summary is produced by a model under OpenAI's strict
structured outputs (the schema and prompt: `ticket_schema`), and the reply is still validated
here: a model, a proxy or a custom schema file can all hand back something else, and a ticket
with a wrong shape must not reach the store.

This module is also the ticket's front door: it re-exports the names of `ticket_schema`,
`transcript_text` and `redaction` that ticket code uses, so `from callbot.core.ticket import ...`
keeps working for all of them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from callbot.core.redaction import (
    CARD_MARKER,
    REDACTED_MARKER,
    compile_patterns,
    luhn_ok,
    redact,
    redact_json,
    redact_record,
)
from callbot.core.ticket_schema import (
    CATEGORIES,
    DEFAULT_TICKET_PROMPT,
    PRIORITIES,
    SENTIMENTS,
    TICKET_SCHEMA,
    check_strict_schema,
    json_type,
    load_prompt,
    load_schema,
    schema_errors,
)
from callbot.core.transcript_text import (
    ROLE_LABELS,
    context_change_text,
    entry_line,
    entry_time,
    format_offset,
    summary_request_text,
    timeline,
    transcript_as_text,
)
from callbot.errors import TicketSchemaError, TicketSummaryInvalid

__all__ = [
    "CARD_MARKER",
    "CATEGORIES",
    "DEFAULT_TICKET_PROMPT",
    "PRIORITIES",
    "REDACTED_MARKER",
    "ROLE_LABELS",
    "SENTIMENTS",
    "STATUS_RANK",
    "TICKET_SCHEMA",
    "ActionItem",
    "Fact",
    "StructuredSummary",
    "TicketSchemaError",
    "TicketStatus",
    "TicketSummaryInvalid",
    "check_strict_schema",
    "compile_patterns",
    "context_change_text",
    "entry_line",
    "entry_time",
    "format_offset",
    "load_prompt",
    "load_schema",
    "luhn_ok",
    "redact",
    "redact_json",
    "redact_record",
    "redact_summary",
    "schema_errors",
    "summary_from_dict",
    "summary_request_text",
    "timeline",
    "transcript_as_text",
    "validate_summary",
]


class TicketStatus(StrEnum):
    """Where a ticket is in its life; it only moves forward (see `STATUS_RANK`)."""

    IN_PROGRESS = "in_progress"  # the call is running; the transcript so far is saved
    PENDING_SUMMARY = "pending_summary"  # the call ended; the structured summary is not there yet
    COMPLETE = "complete"
    TRANSFERRED = "transferred"  # complete, and the agent handed the caller to a person


STATUS_RANK = {
    TicketStatus.IN_PROGRESS: 0,
    TicketStatus.PENDING_SUMMARY: 1,
    TicketStatus.COMPLETE: 2,
    TicketStatus.TRANSFERRED: 2,
}
FINAL_STATUSES = frozenset({TicketStatus.COMPLETE, TicketStatus.TRANSFERRED})
"""A late or duplicate write must never move a ticket back (e.g. a progress save after hang-up)."""


@dataclass(frozen=True, slots=True)
class ActionItem:
    description: str
    owner: str | None = None
    due: str | None = None


@dataclass(frozen=True, slots=True)
class Fact:
    label: str
    value: str


@dataclass(frozen=True)
class StructuredSummary:
    """The validated final summary. `data` is the whole object, including custom-schema fields."""

    title: str
    summary: str
    caller_request: str = ""
    outcome: str = ""
    category: str = "other"
    priority: str = "normal"
    sentiment: str = "neutral"
    action_items: tuple[ActionItem, ...] = ()
    facts: tuple[Fact, ...] = ()
    follow_up_needed: bool = False
    language: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The object as the model returned it (a copy), ready to store as JSON."""
        return copy.deepcopy(dict(self.data))


def validate_summary(obj: Any, schema: Mapping[str, Any]) -> StructuredSummary:
    """Check a model's reply against the requested schema and build the summary from it."""
    if not isinstance(obj, dict):
        raise TicketSummaryInvalid(f"summary must be a JSON object, got {json_type(obj)}")
    errors = schema_errors(obj, schema, schema)
    if errors:
        shown = "; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else "")
        raise TicketSummaryInvalid(f"summary does not match the ticket schema: {shown}")
    return summary_from_dict(obj)


def summary_from_dict(obj: Mapping[str, Any]) -> StructuredSummary:
    """Build a summary from an already validated object (e.g. one read back from the spool).

    Lenient about fields a custom schema may leave out; strict about the title, which every
    ticket list shows.
    """
    title = obj.get("title")
    if not isinstance(title, str) or not title.strip():
        raise TicketSummaryInvalid("summary has an empty or missing 'title'")
    return StructuredSummary(
        title=title.strip(),
        summary=_text(obj, "summary"),
        caller_request=_text(obj, "caller_request"),
        outcome=_text(obj, "outcome"),
        category=_text(obj, "category") or "other",
        priority=_text(obj, "priority") or "normal",
        sentiment=_text(obj, "sentiment") or "neutral",
        action_items=tuple(
            ActionItem(_text(a, "description"), _opt_text(a, "owner"), _opt_text(a, "due"))
            for a in _objects(obj.get("action_items"))
        ),
        facts=tuple(Fact(_text(f, "label"), _text(f, "value")) for f in _objects(obj.get("facts"))),
        follow_up_needed=obj.get("follow_up_needed") is True,
        language=_text(obj, "language"),
        data=copy.deepcopy(dict(obj)),
    )


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    return value if isinstance(value, str) else ""


def _opt_text(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _objects(value: Any) -> Iterable[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list | tuple) else []


def redact_summary(
    summary: StructuredSummary, patterns: Sequence[str | re.Pattern[str]] = ()
) -> StructuredSummary:
    return summary_from_dict(redact_json(summary.data, patterns))
