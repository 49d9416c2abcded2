"""OpenAI Realtime GA server events, parsed once at the edge of the core into frozen dataclasses.

The bridge reads each event as a plain dict (orjson, not the SDK's pydantic models: the audio
hot path) and `parse` turns it into one of the types below; `CallSession.receive_realtime`
matches on them and never looks into a dict again. The shapes follow the SDK's models in
`openai/types/realtime/` (docs/protocols.md §9.1); only the fields callbot acts on are kept.

Parsing never raises. A type callbot does not know becomes `Unknown` (logged once per type: it
is how a renamed event gets noticed, §9.2), a known type it ignores on purpose `Ignored`, and
a handled type without a field callbot needs (no `item_id`, a `response` that is not an object)
`Invalid` with a reason, never a made-up value such as the item id `"None"`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

JsonObject = dict[str, Any]
"""A JSON object as orjson decodes it."""


# ----- handled events (docs/protocols.md §9.1) -----
@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """`session.updated`: the effective audio formats (`type` of each format, None if absent)."""

    input_format: str | None
    output_format: str | None


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """`input_audio_buffer.speech_started`; `audio_start_ms` is on the session's input-audio clock."""

    item_id: str
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ItemAdded:
    """`conversation.item.added` (and the beta `conversation.item.created`).

    `item` is the item object itself (content parts, role), read by `ConversationState`; its
    `id` is checked here and given as `item_id`.
    """

    item_id: str
    item: JsonObject
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class ItemDone:
    item_id: str
    item: JsonObject
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class ItemDeleted:
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptionCompleted:
    """The caller's words for a user item (docs/protocols.md §10.6)."""

    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class TranscriptionFailed:
    item_id: str
    message: str | None


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str | None
    out_of_band: bool


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """The response stopped generating (not playing, §9.3); `usage` is `RealtimeResponseUsage`."""

    response_id: str | None
    out_of_band: bool
    usage: JsonObject | None
    status: str | None = None
    """`completed`, `cancelled`, `incomplete` or `failed`; a cancelled response's tools never run."""
    reason: str | None = None
    """`status_details.reason`, e.g. `turn_detected` for a barge-in."""


@dataclass(frozen=True, slots=True)
class OutputItemDone:
    """`response.output_item.done`: where a function call is final (docs/call-control.md §6)."""

    response_id: str | None
    item: JsonObject


@dataclass(frozen=True, slots=True)
class McpListFailed:
    """`mcp_list_tools.failed`: OpenAI could not list a remote MCP server's tools, so the agent
    cannot use that server on this session (docs/call-control.md §6)."""

    item_id: str


@dataclass(frozen=True, slots=True)
class McpCallStarted:
    """`response.mcp_call.in_progress`: OpenAI has begun calling the MCP server, so the call's
    duration on the ticket runs from here to its `mcp_call` item's `output_item.done`."""

    item_id: str


@dataclass(frozen=True, slots=True)
class AudioDelta:
    """`response.output_audio.delta`: `delta` is base64, decoded by the core only if it is used."""

    item_id: str
    response_id: str | None
    delta: str


@dataclass(frozen=True, slots=True)
class AudioDone:
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    """The assistant's words; they run ahead of what the caller has heard."""

    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """`error`; `client_event_id` is the `event_id` of the client event that failed, if any."""

    code: str | None
    message: str | None
    error_type: str | None
    client_event_id: str | None

    @property
    def harmless_race(self) -> bool:
        """An error that a race makes expected and that changes nothing (docs/protocols.md §8.2)."""
        return self.code in _HARMLESS_RACES


_HARMLESS_RACES = frozenset({"response_cancel_not_active", "conversation_already_has_active_response"})


# ----- everything else -----
@dataclass(frozen=True, slots=True)
class Ignored:
    """A known event with nothing to do for a phone bridge (docs/protocols.md §9.2)."""

    type: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event type callbot does not know."""

    type: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A known event callbot cannot use; `reason` says why, for the log."""

    type: str
    reason: str


RealtimeEvent = (
    SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | ItemAdded
    | ItemDone
    | ItemDeleted
    | TranscriptionCompleted
    | TranscriptionFailed
    | ResponseCreated
    | ResponseDone
    | OutputItemDone
    | McpListFailed
    | McpCallStarted
    | AudioDelta
    | AudioDone
    | TranscriptDelta
    | TranscriptDone
    | ServerError
    | Ignored
    | Unknown
    | Invalid
)

IGNORED_TYPES = frozenset(
    {
        "session.created",
        "conversation.created",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "input_audio_buffer.timeout_triggered",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.segment",
        "conversation.item.truncated",
        "conversation.item.retrieved",
        "response.output_item.added",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_text.delta",
        "response.output_text.done",
        "rate_limits.updated",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        # remote MCP (docs/call-control.md §6): OpenAI runs the calls; the items say what happened
        "mcp_list_tools.in_progress",
        "mcp_list_tools.completed",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
        "response.mcp_call.failed",
    }
)
"""Known server events callbot ignores on purpose (docs/protocols.md §9.2)."""


# ----- parsing -----
def parse(event: JsonObject) -> RealtimeEvent:
    """The typed form of one server event. Never raises, whatever the peer sent."""
    if not isinstance(event, dict):
        return Invalid("", "the event is not a JSON object")
    kind = event.get("type")
    if kind == "response.output_audio.delta":  # the hot path: ~50 a second per call, kept inline
        item_id, delta = event.get("item_id"), event.get("delta")
        if isinstance(item_id, str) and isinstance(delta, str):
            response_id = event.get("response_id")
            return AudioDelta(item_id, response_id if isinstance(response_id, str) else None, delta)
        return Invalid(kind, "no string item_id and delta")
    if not isinstance(kind, str):
        return Invalid("", "the event has no string type")
    parser = _PARSERS.get(kind)
    if parser is not None:
        return parser(kind, event)
    return Ignored(kind) if kind in IGNORED_TYPES else Unknown(kind)


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _object(value: object) -> JsonObject:
    """A nested object, or an empty one for anything else (fields inside it are then absent)."""
    return value if isinstance(value, dict) else {}


def _format_type(audio: JsonObject, direction: str) -> str | None:
    return _opt_str(_object(_object(audio.get(direction)).get("format")).get("type"))


def _session_updated(kind: str, event: JsonObject) -> RealtimeEvent:
    # Without an audio config the formats are None: the core's format check then fails the call,
    # rather than waiting for a session.updated that already came (docs/protocols.md §7.2).
    audio = _object(_object(event.get("session")).get("audio"))
    return SessionUpdated(_format_type(audio, "input"), _format_type(audio, "output"))


def _speech(kind: str, event: JsonObject) -> RealtimeEvent:
    field = "audio_start_ms" if kind == "input_audio_buffer.speech_started" else "audio_end_ms"
    item_id, audio_ms = event.get("item_id"), event.get(field)
    if not isinstance(item_id, str):
        return Invalid(kind, "no string item_id")
    if not isinstance(audio_ms, int) or isinstance(audio_ms, bool):
        return Invalid(kind, f"no integer {field}")
    if field == "audio_start_ms":
        return SpeechStarted(item_id, audio_ms)
    return SpeechStopped(item_id, audio_ms)


def _item(kind: str, event: JsonObject) -> RealtimeEvent:
    item = event.get("item")
    if not isinstance(item, dict):
        return Invalid(kind, "no item object")
    item_id = item.get("id")
    if not isinstance(item_id, str):
        return Invalid(kind, "the item has no string id")
    previous = _opt_str(event.get("previous_item_id"))
    if kind == "conversation.item.done":
        return ItemDone(item_id, item, previous)
    return ItemAdded(item_id, item, previous)


def _item_id_and_text(
    build: Callable[[str, str], RealtimeEvent], text_field: str
) -> Callable[[str, JsonObject], RealtimeEvent]:
    def parse_one(kind: str, event: JsonObject) -> RealtimeEvent:
        item_id, text = event.get("item_id"), event.get(text_field)
        if not isinstance(item_id, str):
            return Invalid(kind, "no string item_id")
        if not isinstance(text, str):
            return Invalid(kind, f"no string {text_field}")
        return build(item_id, text)

    return parse_one


def _item_deleted(kind: str, event: JsonObject) -> RealtimeEvent:
    item_id = event.get("item_id")
    return ItemDeleted(item_id) if isinstance(item_id, str) else Invalid(kind, "no string item_id")


def _audio_done(kind: str, event: JsonObject) -> RealtimeEvent:
    item_id = event.get("item_id")
    return AudioDone(item_id) if isinstance(item_id, str) else Invalid(kind, "no string item_id")


def _mcp_list_failed(kind: str, event: JsonObject) -> RealtimeEvent:
    item_id = event.get("item_id")
    return McpListFailed(item_id) if isinstance(item_id, str) else Invalid(kind, "no string item_id")


def _mcp_call_started(kind: str, event: JsonObject) -> RealtimeEvent:
    item_id = event.get("item_id")
    return McpCallStarted(item_id) if isinstance(item_id, str) else Invalid(kind, "no string item_id")


def _transcription_failed(kind: str, event: JsonObject) -> RealtimeEvent:
    item_id = event.get("item_id")
    if not isinstance(item_id, str):
        return Invalid(kind, "no string item_id")
    return TranscriptionFailed(item_id, _opt_str(_object(event.get("error")).get("message")))


def _is_out_of_band(response: JsonObject) -> bool:
    """Out-of-band responses must not touch call state (docs/protocols.md §10.5).

    callbot never creates one itself (summaries use a separate text model), so only a response
    tagged with a `purpose` in its metadata counts; `conversation_id` alone is not trusted
    because its presence on in-band `response.created` events is unverified.
    """
    return bool(_object(response.get("metadata")).get("purpose"))


def _response(kind: str, event: JsonObject) -> RealtimeEvent:
    response = event.get("response")
    if not isinstance(response, dict):
        return Invalid(kind, "no response object")
    response_id = _opt_str(response.get("id"))
    out_of_band = _is_out_of_band(response)
    if kind == "response.created":
        return ResponseCreated(response_id, out_of_band)
    usage = response.get("usage")
    return ResponseDone(
        response_id,
        out_of_band,
        usage if isinstance(usage, dict) else None,
        _opt_str(response.get("status")),
        _opt_str(_object(response.get("status_details")).get("reason")),
    )


def _output_item_done(kind: str, event: JsonObject) -> RealtimeEvent:
    item = event.get("item")
    if not isinstance(item, dict):
        return Invalid(kind, "no item object")
    return OutputItemDone(_opt_str(event.get("response_id")), item)


def _error(kind: str, event: JsonObject) -> RealtimeEvent:
    error = _object(event.get("error"))
    return ServerError(
        code=_opt_str(error.get("code")),
        message=_opt_str(error.get("message")),
        error_type=_opt_str(error.get("type")),
        client_event_id=_opt_str(error.get("event_id")),
    )


_Parser = Callable[[str, JsonObject], RealtimeEvent]
_PARSERS: dict[str, _Parser] = {
    "session.updated": _session_updated,
    "input_audio_buffer.speech_started": _speech,
    "input_audio_buffer.speech_stopped": _speech,
    "conversation.item.added": _item,
    "conversation.item.created": _item,  # beta name; whether GA still sends it is unverified (§13)
    "conversation.item.done": _item,
    "conversation.item.deleted": _item_deleted,
    "conversation.item.input_audio_transcription.completed": _item_id_and_text(
        TranscriptionCompleted, "transcript"
    ),
    "conversation.item.input_audio_transcription.failed": _transcription_failed,
    "response.created": _response,
    "response.done": _response,
    "response.output_item.done": _output_item_done,
    "mcp_list_tools.failed": _mcp_list_failed,
    "response.mcp_call.in_progress": _mcp_call_started,
    "response.output_audio.done": _audio_done,
    "response.output_audio_transcript.delta": _item_id_and_text(TranscriptDelta, "delta"),
    "response.output_audio_transcript.done": _item_id_and_text(TranscriptDone, "transcript"),
    "error": _error,
}
