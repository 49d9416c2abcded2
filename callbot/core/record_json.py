"""The call's record as plain JSON, for the spool on disk and the store's JSON columns.

Hand-written rather than `dataclasses.asdict` so the format is explicit and stable: a spooled
file written by one release must still be read by the next, and reading it back checks every
field instead of trusting the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from callbot.core.record import (
    CallInfo,
    CallRecord,
    ResponseUsage,
    Role,
    SummaryEvent,
    TranscriptEntry,
    UsageTotals,
)
from callbot.errors import RecordJsonError

FORMAT_VERSION = 1


_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "system": "system"}


def entry_to_json(entry: TranscriptEntry) -> dict[str, Any]:
    return {
        "item_id": entry.item_id,
        "role": entry.role,
        "text": entry.text,
        "status": entry.status,
        "interrupted": entry.interrupted,
        "at_ms": entry.at_ms,
        "heard_ms": entry.heard_ms,
        "summary_id": entry.summary_id,
        "started_ms": entry.started_ms,
        "ended_ms": entry.ended_ms,
    }


def entry_from_json(obj: Any) -> TranscriptEntry:
    data = _mapping(obj, "transcript entry")
    role = _ROLES.get(_str(data, "role"))
    if role is None:
        raise RecordJsonError(f"transcript entry: unknown role {data.get('role')!r}")
    status = data.get("status", "complete")
    if status not in ("complete", "pending", "failed"):
        raise RecordJsonError(f"transcript entry: unknown status {status!r}")
    return TranscriptEntry(
        item_id=_str(data, "item_id"),
        role=role,
        text=_opt_str(data, "text"),
        status=status,
        interrupted=bool(data.get("interrupted", False)),
        at_ms=_int(data, "at_ms", 0),
        heard_ms=_opt_int(data, "heard_ms"),
        summary_id=_opt_str(data, "summary_id"),
        started_ms=_opt_int(data, "started_ms"),  # absent in records stored before issue #20
        ended_ms=_opt_int(data, "ended_ms"),
    )


def summary_event_to_json(event: SummaryEvent) -> dict[str, Any]:
    return {
        "summary_id": event.summary_id,
        "at_ms": event.at_ms,
        "text": event.text,
        "tokens_before": event.tokens_before,
        "turns_folded": event.turns_folded,
        "folded_item_ids": list(event.folded_item_ids),
        "tokens_after": event.tokens_after,
    }


def summary_event_from_json(obj: Any) -> SummaryEvent:
    data = _mapping(obj, "in-call summary")
    folded = data.get("folded_item_ids", [])
    if not isinstance(folded, list) or not all(isinstance(i, str) for i in folded):
        raise RecordJsonError("in-call summary: folded_item_ids must be a list of strings")
    return SummaryEvent(
        summary_id=_str(data, "summary_id"),
        at_ms=_int(data, "at_ms", 0),
        text=_str(data, "text"),
        tokens_before=_int(data, "tokens_before", 0),
        turns_folded=_int(data, "turns_folded", 0),
        folded_item_ids=tuple(folded),
        tokens_after=_opt_int(data, "tokens_after"),
    )


USAGE_FIELDS = (
    "responses", "input_tokens", "output_tokens", "input_text_tokens", "input_audio_tokens",
    "cached_tokens", "output_text_tokens", "output_audio_tokens", "last_context_tokens",
)  # fmt: skip


def usage_to_json(usage: UsageTotals) -> dict[str, int]:
    return {name: getattr(usage, name) for name in USAGE_FIELDS}


def usage_from_json(obj: Any) -> UsageTotals:
    data = _mapping(obj, "usage")
    return UsageTotals(**{name: _int(data, name, 0) for name in USAGE_FIELDS})


RESPONSE_USAGE_FIELDS = (
    "at_ms", "input_tokens", "cached_tokens", "input_text_tokens", "input_audio_tokens",
    "output_text_tokens", "output_audio_tokens", "cached_text_tokens", "cached_audio_tokens",
)  # fmt: skip


def response_usage_to_json(usage: ResponseUsage) -> dict[str, int]:
    return {name: getattr(usage, name) for name in RESPONSE_USAGE_FIELDS}


def response_usage_from_json(obj: Any) -> ResponseUsage:
    data = _mapping(obj, "response usage")
    return ResponseUsage(**{name: _int(data, name, 0) for name in RESPONSE_USAGE_FIELDS})


def response_usages_from_json(obj: Any) -> tuple[ResponseUsage, ...]:
    """The per-response list of a record or a ticket row; absent (older rows) is empty."""
    if obj is None:
        return ()
    if not isinstance(obj, list):
        raise RecordJsonError("record: response_usage must be a list")
    return tuple(response_usage_from_json(u) for u in obj)


def record_to_json(record: CallRecord) -> dict[str, Any]:
    info = record.info
    return {
        "version": FORMAT_VERSION,
        "info": {
            "call_sid": info.call_sid,
            "stream_sid": info.stream_sid,
            "account_sid": info.account_sid,
            "from_number": info.from_number,
            "to_number": info.to_number,
        },
        "started_at": record.started_at.isoformat(),
        "ended_at": record.ended_at.isoformat() if record.ended_at else None,
        "transcript": [entry_to_json(e) for e in record.transcript],
        "summaries": [summary_event_to_json(s) for s in record.summaries],
        "usage": usage_to_json(record.usage),
        "realtime_model": record.realtime_model,
        "summary_model": record.summary_model,
        "end_reason": record.end_reason,
        "memory_ticket_ids": list(record.memory_ticket_ids),
        "response_usage": [response_usage_to_json(u) for u in record.response_usage],
    }


def record_from_json(obj: Any) -> CallRecord:
    data = _mapping(obj, "record")
    if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise RecordJsonError(f"record: unsupported format version {data.get('version')!r}")
    info = _mapping(data.get("info"), "record.info")
    ended = _opt_str(data, "ended_at")
    return CallRecord(
        info=CallInfo(
            call_sid=_str(info, "call_sid"),
            stream_sid=_str(info, "stream_sid"),
            account_sid=_str(info, "account_sid", ""),
            from_number=_str(info, "from_number", ""),
            to_number=_str(info, "to_number", ""),
        ),
        started_at=_datetime(_str(data, "started_at")),
        ended_at=_datetime(ended) if ended else None,
        transcript=tuple(entry_from_json(e) for e in _list(data, "transcript")),
        summaries=tuple(summary_event_from_json(s) for s in _list(data, "summaries")),
        usage=usage_from_json(data.get("usage", {})),
        realtime_model=_str(data, "realtime_model", ""),
        summary_model=_str(data, "summary_model", ""),
        end_reason=_str(data, "end_reason", ""),
        memory_ticket_ids=_ids(data.get("memory_ticket_ids", [])),
        response_usage=response_usages_from_json(data.get("response_usage")),
    )


def _ids(value: Any) -> tuple[int, ...]:
    """Ticket ids; records written before issue 17 have none."""
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise RecordJsonError("record: memory_ticket_ids must be a list of ticket ids")
    return tuple(value)


def _datetime(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise RecordJsonError(f"record: bad timestamp {text!r}") from exc
    # A naive time can only have come from a UTC clock in this program.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _mapping(obj: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise RecordJsonError(f"{what} must be an object")
    return obj


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise RecordJsonError(f"record: {key} must be a list")
    return value


_MISSING = object()


def _str(data: Mapping[str, Any], key: str, default: Any = _MISSING) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RecordJsonError(f"field {key!r} must be a string")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise RecordJsonError(f"field {key!r} must be a string or null")
    return value


def _int(data: Mapping[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RecordJsonError(f"field {key!r} must be an integer")
    return value


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    return _int(data, key, 0)
