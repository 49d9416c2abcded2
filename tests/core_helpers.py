"""Builders of OpenAI Realtime GA server events and Twilio Media Streams messages for core tests.

Every Realtime server event built here is validated against the concrete class of the installed
`openai` SDK (`openai.types.realtime`) before it is returned, and rejected if any nested model
carries unknown fields (`model_extra`): the tests cannot drift from the GA protocol. Client
events the core emits are checked with `assert_client_event` against the SDK's
`RealtimeClientEvent` union in the same strict way. Twilio messages follow docs/protocols.md §4.2.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import itertools
import json
import sys
from pathlib import Path
from typing import Any

if importlib.util.find_spec("callbot") is None:  # plain `pytest` from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydantic
from openai.types.realtime import (
    ConversationItemAdded,
    ConversationItemDeletedEvent,
    ConversationItemDone,
    ConversationItemInputAudioTranscriptionCompletedEvent,
    ConversationItemInputAudioTranscriptionFailedEvent,
    ConversationItemTruncatedEvent,
    InputAudioBufferCommittedEvent,
    InputAudioBufferSpeechStartedEvent,
    InputAudioBufferSpeechStoppedEvent,
    McpListToolsCompleted,
    McpListToolsFailed,
    McpListToolsInProgress,
    RateLimitsUpdatedEvent,
    RealtimeErrorEvent,
    ResponseAudioDeltaEvent,
    ResponseAudioDoneEvent,
    ResponseAudioTranscriptDeltaEvent,
    ResponseAudioTranscriptDoneEvent,
    ResponseCreatedEvent,
    ResponseDoneEvent,
    ResponseMcpCallArgumentsDelta,
    ResponseMcpCallArgumentsDone,
    ResponseMcpCallCompleted,
    ResponseMcpCallFailed,
    ResponseMcpCallInProgress,
    ResponseOutputItemDoneEvent,
    SessionCreatedEvent,
    SessionUpdatedEvent,
)
from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import OutputAudioBufferStarted

STREAM_SID = "MZ3f9c0e1b2a4d5e6f708192a3b4c5d6e7"
CALL_SID = "CA1a2b3c4d5e6f70819a2b3c4d5e6f7081"
ACCOUNT_SID = "ACaaaabbbbccccddddeeeeffff00001111"

PCMU = {"type": "audio/pcmu"}
PCM24K = {"type": "audio/pcm", "rate": 24000}


# ----- strict validation -----------------------------------------------------------------------


@functools.cache
def _adapter(target: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(target)


def extras(model: Any, path: str = "") -> list[str]:
    """Paths of every non-empty `model_extra` in a validated model tree."""
    found: list[str] = []
    if isinstance(model, pydantic.BaseModel):
        if model.model_extra:
            found.append(f"{path or '<root>'}: {sorted(model.model_extra)}")
        for name in type(model).model_fields:
            found += extras(getattr(model, name), f"{path}.{name}" if path else name)
    elif isinstance(model, list | tuple):
        for i, value in enumerate(model):
            found += extras(value, f"{path}[{i}]")
    elif isinstance(model, dict):
        for key, value in model.items():
            found += extras(value, f"{path}.{key}")
    return found


def validated(cls: Any, event: dict[str, Any]) -> dict[str, Any]:
    """Validate `event` strictly as `cls`; return it unchanged (a plain dict, as the bridge feeds)."""
    model = _adapter(cls).validate_python(event)
    if not isinstance(model, pydantic.BaseModel) or model.model_dump().get("type") != event["type"]:
        raise AssertionError(f"{event['type']} did not validate as {cls}")
    unknown = extras(model)
    if unknown:
        raise AssertionError(f"{event['type']} has fields the SDK does not know: {unknown}")
    return event


def assert_client_event(event: dict[str, Any]) -> None:
    """A client event the core wants sent must be a valid GA `RealtimeClientEvent`, no extras."""
    model = _adapter(RealtimeClientEvent).validate_python(event)
    assert model.type == event["type"], f"{event['type']!r} validated as {type(model).__name__}"
    unknown = extras(model)
    assert not unknown, f"{event['type']} has fields the SDK does not know: {unknown}"


# ----- Realtime GA server events ---------------------------------------------------------------

_ids = itertools.count(1)


def _event_id() -> str:
    return f"event_{next(_ids):05d}"


def session_dict(
    in_format: dict[str, Any] | None = None, out_format: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The effective session as the server echoes it (GA `RealtimeSessionCreateRequest` shape)."""
    in_format = in_format if in_format is not None else PCM24K
    out_format = out_format if out_format is not None else in_format
    return {
        "type": "realtime",
        "model": "gpt-realtime-1.5",
        "output_modalities": ["audio"],
        "instructions": "Be brief.",
        "audio": {
            "input": {
                "format": in_format,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": out_format, "voice": "marin"},
        },
    }


def session_created(in_format: dict[str, Any] | None = None) -> dict[str, Any]:
    return validated(
        SessionCreatedEvent,
        {"type": "session.created", "event_id": _event_id(), "session": session_dict(in_format)},
    )


def session_updated(
    in_format: dict[str, Any] | None = None, out_format: dict[str, Any] | None = None
) -> dict[str, Any]:
    return validated(
        SessionUpdatedEvent,
        {"type": "session.updated", "event_id": _event_id(), "session": session_dict(in_format, out_format)},
    )


def speech_started(item_id: str, audio_start_ms: int = 1000) -> dict[str, Any]:
    return validated(
        InputAudioBufferSpeechStartedEvent,
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": _event_id(),
            "item_id": item_id,
            "audio_start_ms": audio_start_ms,
        },
    )


def speech_stopped(item_id: str, audio_end_ms: int = 2000) -> dict[str, Any]:
    return validated(
        InputAudioBufferSpeechStoppedEvent,
        {
            "type": "input_audio_buffer.speech_stopped",
            "event_id": _event_id(),
            "item_id": item_id,
            "audio_end_ms": audio_end_ms,
        },
    )


def committed(item_id: str, previous_item_id: str | None = None) -> dict[str, Any]:
    return validated(
        InputAudioBufferCommittedEvent,
        {
            "type": "input_audio_buffer.committed",
            "event_id": _event_id(),
            "item_id": item_id,
            "previous_item_id": previous_item_id,
        },
    )


# --- items (GA shapes, docs/protocols.md §10.1) ---


def user_audio_item(item_id: str, transcript: str | None = None, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": status,
        "content": [{"type": "input_audio", "transcript": transcript}],
    }


def user_text_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": text}],
    }


def assistant_audio_item(
    item_id: str, transcript: str | None = None, status: str = "in_progress"
) -> dict[str, Any]:
    content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def system_item(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "role": "system",
        "status": "completed",
        "content": [{"type": "input_text", "text": text}],
    }


def function_call_item(
    item_id: str, name: str, arguments: str, *, call_id: str | None = None, status: str = "completed"
) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "call_id": call_id or f"call_{item_id}",
        "name": name,
        "arguments": arguments,
    }


def mcp_list_item(item_id: str, server_label: str, *tool_names: str) -> dict[str, Any]:
    """An `mcp_list_tools` item (no `object` or `status`: `RealtimeMcpListTools` has neither)."""
    tools = [{"name": name, "input_schema": {"type": "object"}} for name in tool_names]
    return {"id": item_id, "type": "mcp_list_tools", "server_label": server_label, "tools": tools}


def mcp_call_item(
    item_id: str,
    server_label: str,
    name: str,
    arguments: str,
    *,
    output: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An `mcp_call` item (`RealtimeMcpToolCall`: no `status`), with its output or error if given."""
    item: dict[str, Any] = {
        "id": item_id,
        "type": "mcp_call",
        "server_label": server_label,
        "name": name,
        "arguments": arguments,
    }
    if output is not None:
        item["output"] = output
    if error is not None:
        item["error"] = error
    return item


def mcp_approval_item(item_id: str, server_label: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "mcp_approval_request",
        "server_label": server_label,
        "name": name,
        "arguments": arguments,
    }


_MCP_EVENTS: dict[str, Any] = {
    "mcp_list_tools.in_progress": McpListToolsInProgress,
    "mcp_list_tools.completed": McpListToolsCompleted,
    "mcp_list_tools.failed": McpListToolsFailed,
    "response.mcp_call_arguments.delta": ResponseMcpCallArgumentsDelta,
    "response.mcp_call_arguments.done": ResponseMcpCallArgumentsDone,
    "response.mcp_call.in_progress": ResponseMcpCallInProgress,
    "response.mcp_call.completed": ResponseMcpCallCompleted,
    "response.mcp_call.failed": ResponseMcpCallFailed,
}


def mcp_event(kind: str, item_id: str, **fields: Any) -> dict[str, Any]:
    """An MCP progress event (`mcp_list_tools.*`, `response.mcp_call*`) with the fields its SDK
    class requires besides `item_id` (`output_index`, `response_id`, `delta`, `arguments`)."""
    return validated(_MCP_EVENTS[kind], {"type": kind, "event_id": _event_id(), "item_id": item_id, **fields})


def output_item_done(response_id: str, item: dict[str, Any], output_index: int = 1) -> dict[str, Any]:
    return validated(
        ResponseOutputItemDoneEvent,
        {
            "type": "response.output_item.done",
            "event_id": _event_id(),
            "response_id": response_id,
            "output_index": output_index,
            "item": item,
        },
    )


def item_added(item: dict[str, Any], previous_item_id: str | None = None) -> dict[str, Any]:
    return validated(
        ConversationItemAdded,
        {
            "type": "conversation.item.added",
            "event_id": _event_id(),
            "previous_item_id": previous_item_id,
            "item": item,
        },
    )


def item_done(item: dict[str, Any], previous_item_id: str | None = None) -> dict[str, Any]:
    return validated(
        ConversationItemDone,
        {
            "type": "conversation.item.done",
            "event_id": _event_id(),
            "previous_item_id": previous_item_id,
            "item": item,
        },
    )


def item_deleted(item_id: str) -> dict[str, Any]:
    return validated(
        ConversationItemDeletedEvent,
        {"type": "conversation.item.deleted", "event_id": _event_id(), "item_id": item_id},
    )


def item_truncated(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return validated(
        ConversationItemTruncatedEvent,
        {
            "type": "conversation.item.truncated",
            "event_id": _event_id(),
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": audio_end_ms,
        },
    )


# --- responses ---


def usage(
    input_tokens: int = 100,
    output_tokens: int = 50,
    *,
    input_text: int = 40,
    input_audio: int = 60,
    cached: int = 10,
    output_text: int = 10,
    output_audio: int = 40,
) -> dict[str, Any]:
    """A `RealtimeResponseUsage`; `total_tokens` is input + output."""
    return {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": {
            "text_tokens": input_text,
            "audio_tokens": input_audio,
            "cached_tokens": cached,
            "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


def _response(
    response_id: str,
    status: str,
    *,
    reason: str | None = None,
    usage_: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    output: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    response: dict[str, Any] = {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "conversation_id": None if metadata else "conv_1",
        "output_modalities": ["audio"],
        "output": output or [],
        "max_output_tokens": "inf",
        "metadata": metadata,
        "usage": usage_,
    }
    if status != "in_progress":
        details: dict[str, Any] = {"type": status}
        if reason is not None:
            details["reason"] = reason
        response["status_details"] = details
    return response


def response_created(response_id: str, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    return validated(
        ResponseCreatedEvent,
        {
            "type": "response.created",
            "event_id": _event_id(),
            "response": _response(response_id, "in_progress", metadata=metadata),
        },
    )


def response_done(
    response_id: str,
    status: str = "completed",
    *,
    reason: str | None = None,
    usage_: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    output: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return validated(
        ResponseDoneEvent,
        {
            "type": "response.done",
            "event_id": _event_id(),
            "response": _response(
                response_id, status, reason=reason, usage_=usage_, metadata=metadata, output=output
            ),
        },
    )


def audio_delta(response_id: str, item_id: str, audio: bytes) -> dict[str, Any]:
    return validated(
        ResponseAudioDeltaEvent,
        {
            "type": "response.output_audio.delta",
            "event_id": _event_id(),
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": base64.b64encode(audio).decode("ascii"),
        },
    )


def audio_done(response_id: str, item_id: str) -> dict[str, Any]:
    return validated(
        ResponseAudioDoneEvent,
        {
            "type": "response.output_audio.done",
            "event_id": _event_id(),
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
        },
    )


def transcript_delta(response_id: str, item_id: str, delta: str) -> dict[str, Any]:
    return validated(
        ResponseAudioTranscriptDeltaEvent,
        {
            "type": "response.output_audio_transcript.delta",
            "event_id": _event_id(),
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "delta": delta,
        },
    )


def transcript_done(response_id: str, item_id: str, transcript: str) -> dict[str, Any]:
    return validated(
        ResponseAudioTranscriptDoneEvent,
        {
            "type": "response.output_audio_transcript.done",
            "event_id": _event_id(),
            "response_id": response_id,
            "item_id": item_id,
            "output_index": 0,
            "content_index": 0,
            "transcript": transcript,
        },
    )


def input_transcription_completed(item_id: str, transcript: str) -> dict[str, Any]:
    return validated(
        ConversationItemInputAudioTranscriptionCompletedEvent,
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": _event_id(),
            "item_id": item_id,
            "content_index": 0,
            "transcript": transcript,
            "usage": {"type": "duration", "seconds": 1.5},
        },
    )


def input_transcription_failed(item_id: str, message: str = "transcription failed") -> dict[str, Any]:
    return validated(
        ConversationItemInputAudioTranscriptionFailedEvent,
        {
            "type": "conversation.item.input_audio_transcription.failed",
            "event_id": _event_id(),
            "item_id": item_id,
            "content_index": 0,
            "error": {"type": "transcription_error", "code": "audio_unintelligible", "message": message},
        },
    )


def error(code: str | None, message: str, *, client_event_id: str | None = None) -> dict[str, Any]:
    return validated(
        RealtimeErrorEvent,
        {
            "type": "error",
            "event_id": _event_id(),
            "error": {
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": None,
                "event_id": client_event_id,
            },
        },
    )


def rate_limits_updated() -> dict[str, Any]:
    return validated(
        RateLimitsUpdatedEvent,
        {
            "type": "rate_limits.updated",
            "event_id": _event_id(),
            "rate_limits": [
                {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
                {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 1.2},
            ],
        },
    )


def output_audio_buffer_started(response_id: str) -> dict[str, Any]:
    """A GA event that is WebRTC/SIP-only: a Media Streams bridge does not handle it."""
    return validated(
        OutputAudioBufferStarted,
        {"type": "output_audio_buffer.started", "event_id": _event_id(), "response_id": response_id},
    )


# ----- Twilio Media Streams messages (docs/protocols.md §4.2) -----------------------------------------

_seq = itertools.count(1)


def _sequence() -> str:
    return str(next(_seq))


def tw_connected() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def tw_start_dict(
    custom_parameters: dict[str, str] | None = None,
    *,
    stream_sid: str = STREAM_SID,
    call_sid: str = CALL_SID,
    encoding: str = "audio/x-mulaw",
    sample_rate: int = 8000,
    channels: int = 1,
) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": ACCOUNT_SID,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": custom_parameters if custom_parameters is not None else {},
            "mediaFormat": {"encoding": encoding, "sampleRate": sample_rate, "channels": channels},
        },
        "streamSid": stream_sid,
    }


def tw_start(custom_parameters: dict[str, str] | None = None, **kwargs: Any) -> str:
    return json.dumps(tw_start_dict(custom_parameters, **kwargs))


def tw_media_dict(audio: bytes, timestamp_ms: int = 0, chunk: int = 1) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": _sequence(),
        "media": {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str(timestamp_ms),
            "payload": base64.b64encode(audio).decode("ascii"),
        },
        "streamSid": STREAM_SID,
    }


def tw_media(audio: bytes, timestamp_ms: int = 0, chunk: int = 1) -> str:
    return json.dumps(tw_media_dict(audio, timestamp_ms, chunk))


def tw_mark(name: str) -> str:
    return json.dumps(
        {"event": "mark", "sequenceNumber": _sequence(), "streamSid": STREAM_SID, "mark": {"name": name}}
    )


def tw_dtmf(digit: str) -> str:
    return json.dumps(
        {
            "event": "dtmf",
            "streamSid": STREAM_SID,
            "sequenceNumber": _sequence(),
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


def tw_stop() -> str:
    return json.dumps(
        {
            "event": "stop",
            "sequenceNumber": _sequence(),
            "streamSid": STREAM_SID,
            "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID},
        }
    )


# ----- a fake Twilio player (docs/protocols.md §4.3/§4.4) ---------------------------------------------


class FakeTwilioPlayer:
    """Plays outbound audio in real time and echoes marks the way Twilio does.

    Audio is played in the order received; a mark is echoed once everything queued before it
    has played (or at once if nothing is buffered); `clear` drops queued audio and echoes every
    pending mark immediately. Times are the same fake milliseconds the core is driven with.
    `heard_bytes` is the audio before the last mark echoed as played: what the caller heard.
    """

    def __init__(self, stream_sid: str = STREAM_SID) -> None:
        self.stream_sid = stream_sid
        self.play_end_ms = 0  # when the last queued byte finishes playing
        self.pending: list[tuple[int, str, int]] = []  # (echo due at, mark name, bytes before it)
        self.received: list[bytes] = []  # every media payload, decoded, in order
        self.received_bytes = 0
        self.heard_bytes = 0
        self.marks_sent: list[str] = []
        self.clears = 0

    def frame(self, audio: bytes, now_ms: int) -> None:
        start = max(self.play_end_ms, now_ms)
        self.play_end_ms = start + len(audio) // 8
        self.received.append(audio)
        self.received_bytes += len(audio)

    def mark(self, name: str, now_ms: int) -> None:
        self.marks_sent.append(name)
        self.pending.append((max(self.play_end_ms, now_ms), name, self.received_bytes))

    def clear(self, now_ms: int) -> list[str]:
        self.clears += 1
        echoed = [name for _, name, _ in self.pending]
        self.pending.clear()
        self.play_end_ms = now_ms
        return echoed

    def receive(self, text: str, now_ms: int) -> list[str]:
        """Take one JSON message the bridge sent; returns marks echoed at once (after a clear)."""
        msg = json.loads(text)
        assert msg["streamSid"] == self.stream_sid
        if msg["event"] == "media":
            assert set(msg) == {"event", "streamSid", "media"} and set(msg["media"]) == {"payload"}
            self.frame(base64.b64decode(msg["media"]["payload"], validate=True), now_ms)
            return []
        if msg["event"] == "mark":
            assert set(msg) == {"event", "streamSid", "mark"} and set(msg["mark"]) == {"name"}
            self.mark(msg["mark"]["name"], now_ms)
            return []
        assert msg == {"event": "clear", "streamSid": self.stream_sid}
        return self.clear(now_ms)

    def echoes_due(self, now_ms: int) -> list[str]:
        """Mark names whose audio has finished playing by `now_ms`, in order."""
        due = [(name, offset) for at, name, offset in self.pending if at <= now_ms]
        self.pending = [p for p in self.pending if p[0] > now_ms]
        for _, offset in due:
            self.heard_bytes = max(self.heard_bytes, offset)
        return [name for name, _ in due]
