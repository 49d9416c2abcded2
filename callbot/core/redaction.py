"""Redaction of what a call said: payment card numbers (Luhn-checked) and configured patterns.

Applied to transcripts, in-call summaries and the ticket's summary before they are stored or
sent to the summariser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from callbot.core.record import CallRecord, ToolCallEvent

_CARD_CANDIDATE = re.compile(r"(?<![\d])\d(?:[ -]?\d)*")
"""A run of digits with single spaces or dashes between them; its length is checked after."""
CARD_MARKER = "[REDACTED CARD]"
REDACTED_MARKER = "[REDACTED]"


def luhn_ok(digits: str) -> bool:
    """The checksum every payment card number passes (and ~1 in 10 random digit runs)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_or_keep(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return CARD_MARKER if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group(0)


def compile_patterns(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    """Compile configured redaction regexes, naming the one that is broken."""
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"invalid redaction pattern {pattern!r}: {exc}") from exc
    return compiled


def redact(text: str, patterns: Sequence[str | re.Pattern[str]] = ()) -> str:
    """Remove card numbers (13-19 digits passing Luhn) and whatever the configured regexes match."""
    text = _CARD_CANDIDATE.sub(_card_or_keep, text)
    for pattern in patterns:
        text = re.sub(pattern, REDACTED_MARKER, text)
    return text


def redact_record(record: CallRecord, patterns: Sequence[str | re.Pattern[str]] = ()) -> CallRecord:
    """The record with every transcript and in-call summary text redacted."""
    return replace(
        record,
        transcript=tuple(
            replace(e, text=redact(e.text, patterns)) if e.text is not None else e for e in record.transcript
        ),
        summaries=tuple(replace(s, text=redact(s.text, patterns)) for s in record.summaries),
        tool_calls=tuple(_redact_tool_call(t, patterns) for t in record.tool_calls),
    )


def _redact_tool_call(event: ToolCallEvent, patterns: Sequence[str | re.Pattern[str]]) -> ToolCallEvent:
    """A tool call's arguments, result and error pass the same redaction as the transcript."""
    return replace(
        event,
        arguments=redact(event.arguments, patterns),
        output=redact(event.output, patterns) if event.output is not None else None,
        error=redact(event.error, patterns) if event.error is not None else None,
    )


def redact_json(value: Any, patterns: Sequence[str | re.Pattern[str]] = ()) -> Any:
    """Every string inside a JSON-like value, redacted."""
    if isinstance(value, str):
        return redact(value, patterns)
    if isinstance(value, Mapping):
        return {k: redact_json(v, patterns) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(v, patterns) for v in value]
    return value
