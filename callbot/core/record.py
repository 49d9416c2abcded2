"""The call's record: what a ticket is built from and what the store persists.

Plain frozen dataclasses, shared by the conversation state (which produces them), the ticket
builder and the store (which persist them). Times are milliseconds since the call started,
except the wall-clock `started_at`/`ended_at` which the bridge stamps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Role = Literal["user", "assistant", "system"]
TranscriptStatus = Literal["complete", "pending", "failed"]


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One turn of the call as people will read it on the ticket.

    `text` is None while a caller transcript is still pending or when transcription failed.
    `interrupted` marks an assistant turn the caller talked over: `text` then holds only what
    was heard (as far as the transcript can tell) and `heard_ms` how much audio was played.
    `summary_id` names the summary this turn was folded into, if any: the turn stays in the
    record verbatim even after it left the live model context.

    `at_ms` is when the item reached callbot; `started_ms`/`ended_ms` are when its speech
    started and ended (the caller's from the server VAD's audio times, the assistant's from
    when its audio played to the caller). They are None when nobody spoke the turn (text
    items such as keypad digits) and in records stored before they were kept; `spoken_at_ms`
    then falls back to `at_ms`.
    """

    item_id: str
    role: Role
    text: str | None
    status: TranscriptStatus = "complete"
    interrupted: bool = False
    at_ms: int = 0
    heard_ms: int | None = None
    summary_id: str | None = None
    started_ms: int | None = None
    ended_ms: int | None = None

    @property
    def spoken_at_ms(self) -> int:
        """When the turn was said, as far as the record knows: its speech start, else its arrival."""
        return self.at_ms if self.started_ms is None else self.started_ms


@dataclass(frozen=True, slots=True)
class SummaryEvent:
    """A summary inserted into the live conversation during the call."""

    summary_id: str
    at_ms: int
    text: str
    tokens_before: int
    turns_folded: int
    folded_item_ids: tuple[str, ...]
    tokens_after: int | None = None


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Token usage summed over the call's in-conversation responses."""

    responses: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    cached_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    last_context_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class ResponseUsage:
    """One in-conversation response's `response.done` usage, at `at_ms` since the call started.

    `input_tokens` is everything the model read for this response (the whole live context,
    cached part included), so the series over a call is the context's growth and the summaries'
    cuts (docs/cost.md). `cached_text_tokens`/`cached_audio_tokens` split `cached_tokens` by
    modality when the server reported the split (0 and 0 otherwise).
    """

    at_ms: int
    input_tokens: int = 0
    cached_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0

    @property
    def output_tokens(self) -> int:
        return self.output_text_tokens + self.output_audio_tokens


@dataclass(frozen=True, slots=True)
class CallInfo:
    """Who called whom, from Twilio's `start` message and the webhook's parameters."""

    call_sid: str
    stream_sid: str
    account_sid: str = ""
    from_number: str = ""
    to_number: str = ""
    direction: str = "inbound"  # "inbound" | "outbound" (a call callbot placed)


@dataclass(frozen=True, slots=True)
class CallRecord:
    """Everything known about a call at one moment; the final one is built at hang-up."""

    info: CallInfo
    started_at: datetime
    ended_at: datetime | None = None
    transcript: tuple[TranscriptEntry, ...] = ()
    summaries: tuple[SummaryEvent, ...] = ()
    usage: UsageTotals = field(default_factory=UsageTotals)
    realtime_model: str = ""
    summary_model: str = ""
    end_reason: str = ""
    memory_ticket_ids: tuple[int, ...] = ()
    """The earlier tickets whose summaries seeded this call (core/memory.py)."""
    response_usage: tuple[ResponseUsage, ...] = ()

    @property
    def duration_s(self) -> float | None:
        if self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()
