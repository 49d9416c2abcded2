"""The call as people (and the ticket summariser) read it: transcript lines, offsets, summaries."""

from __future__ import annotations

from callbot.core.record import CallRecord, SummaryEvent, ToolCallEvent, TranscriptEntry

ROLE_LABELS = {"user": "Caller", "assistant": "Assistant", "system": "System"}


def format_offset(ms: int) -> str:
    """`mm:ss` (or `h:mm:ss`) since the call started."""
    seconds = max(0, ms) // 1000
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


TimelineEvent = TranscriptEntry | SummaryEvent | ToolCallEvent


def timeline(record: CallRecord) -> list[TimelineEvent]:
    """Turns (by when they were said), in-call summaries and tool calls (by when they ran) in
    call order, so a tool call sits between the turn that asked for it and the one that used it.

    A summary or function tool call sorts after turns of the same time (the agent speaks, then
    its tool runs); an MCP call sorts before them, since OpenAI runs it before the speech of its
    response, whose audio may start in the same millisecond. Turns of the same time keep the
    conversation's order.
    """
    events: list[TimelineEvent] = [*record.transcript, *record.summaries, *record.tool_calls]
    return sorted(events, key=_timeline_key)


def _timeline_key(event: TimelineEvent) -> tuple[int, int]:
    if isinstance(event, SummaryEvent):
        return event.at_ms, 2
    if isinstance(event, ToolCallEvent):
        return event.started_ms, 0 if event.kind == "mcp" else 2
    return event.spoken_at_ms, 1


def tool_call_line(event: ToolCallEvent) -> str:
    """`[mm:ss-mm:ss] System (tool lookup_order, ok): lookup_order({...}) answered {...}`.

    Written as a System line, so whoever reads the transcript (a person, the ticket summariser)
    sees what the agent did and the facts the tool gave it, in the order they happened."""
    when = format_offset(event.started_ms)
    if event.ended_ms is not None and event.ended_ms > event.started_ms:
        when += f"-{format_offset(event.ended_ms)}"
    if event.outcome == "ok":
        result = f"answered {event.output.strip()}" if event.output else "done"
    else:
        result = f"failed: {(event.error or event.outcome).strip()}"
    notes = f"(tool {event.name}, {event.outcome})"
    return f"[{when}] System {notes}: {event.name}({event.arguments}) {result}"


def entry_time(entry: TranscriptEntry) -> str:
    """`mm:ss-mm:ss` while the turn was spoken, or `mm:ss` when only its start (or arrival) is known."""
    start = format_offset(entry.spoken_at_ms)
    if entry.started_ms is None or entry.ended_ms is None:
        return start
    return f"{start}-{format_offset(entry.ended_ms)}"


def entry_line(entry: TranscriptEntry) -> str:
    label = ROLE_LABELS.get(entry.role, entry.role)
    notes = []
    if entry.interrupted:
        heard = f", heard {entry.heard_ms / 1000:.1f} s" if entry.heard_ms is not None else ""
        notes.append(f"interrupted by the caller{heard}")
    if entry.text is None:
        text = "(transcription failed)" if entry.status == "failed" else "(transcript not available)"
    else:
        text = entry.text.strip()
    suffix = f" ({'; '.join(notes)})" if notes else ""
    return f"[{entry_time(entry)}] {label}{suffix}: {text}"


def transcript_as_text(record: CallRecord) -> str:
    """The whole call as a readable conversation, one line per turn."""
    lines = []
    for event in timeline(record):
        if isinstance(event, SummaryEvent):
            lines.append(
                f"[{format_offset(event.at_ms)}] --- in-call summary {event.summary_id} "
                f"(covers {event.turns_folded} earlier turns): {event.text.strip()}"
            )
        elif isinstance(event, ToolCallEvent):
            lines.append(tool_call_line(event))
        else:
            lines.append(entry_line(event))
    return "\n".join(lines)


def context_change_text(tokens_before: int, tokens_after: int | None) -> str:
    """How an in-call summary changed the context size, saying so when the size after is unknown.

    The size after is measured by the first response priced after the deletes; when the call
    ended (or has not yet had one) before that, nobody knows it.
    """
    if tokens_after is None:
        return f"context {tokens_before} tokens before; after: unknown (no response was priced after it)"
    return f"context {tokens_before} -> {tokens_after} tokens"


def summary_request_text(record: CallRecord) -> str:
    """The user message for the ticket summariser: call details, then the transcript as data."""
    info = record.info
    duration = f"{record.duration_s:.0f} s" if record.duration_s is not None else "unknown"
    body = transcript_as_text(record) or "(no one said anything)"
    return (
        f"Call from {info.from_number or 'unknown'} to {info.to_number or 'unknown'}, "
        f"started {record.started_at.isoformat()}, duration {duration}, "
        f"ended because: {record.end_reason or 'unknown'}.\n\n<transcript>\n{body}\n</transcript>"
    )
