"""OpenAI Realtime GA client events we send, built as plain dicts.

Every builder here produces an event that validates against the SDK's client-event models
(`openai/types/realtime/`); the fake Realtime server checks that in every test. Dicts rather
than SDK models keep the audio hot path free of pydantic (docs/protocols.md §6.2: the SDK does not
validate outgoing dicts anyway, so the tests are where shape errors are caught).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

AudioMode = Literal["pcm24k", "pcmu"]

FORMATS: dict[str, dict[str, Any]] = {
    "pcm24k": {"type": "audio/pcm", "rate": 24000},
    "pcmu": {"type": "audio/pcmu"},
}


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What the Realtime session is told at the start of each call (from Settings)."""

    model: str = "gpt-realtime-1.5"
    voice: str = "marin"
    instructions: str = ""
    greeting: str = ""
    audio_mode: AudioMode = "pcm24k"
    transcription_model: str | None = "gpt-realtime-whisper"
    transcription_language: str | None = None
    vad_type: str = "server_vad"
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    vad_eagerness: str = "auto"
    noise_reduction: str | None = "near_field"
    truncation_retention_ratio: float | None = None
    session_tools: tuple[dict[str, Any], ...] = ()
    """`session.tools`: function tools and `mcp` servers (core/tool_config.py `realtime_tools`)."""


def _turn_detection(cfg: AgentConfig) -> dict[str, Any]:
    if cfg.vad_type == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": cfg.vad_eagerness,
            "create_response": True,
            "interrupt_response": True,
        }
    return {
        "type": "server_vad",
        "threshold": cfg.vad_threshold,
        "prefix_padding_ms": cfg.vad_prefix_padding_ms,
        "silence_duration_ms": cfg.vad_silence_duration_ms,
        "create_response": True,
        "interrupt_response": True,
    }


def session_update(cfg: AgentConfig) -> dict[str, Any]:
    """The GA `session.update` for a phone call (docs/protocols.md §7.1): audio in and out, server VAD."""
    audio_in: dict[str, Any] = {
        "format": FORMATS[cfg.audio_mode],
        "turn_detection": _turn_detection(cfg),
    }
    if cfg.noise_reduction:
        audio_in["noise_reduction"] = {"type": cfg.noise_reduction}
    if cfg.transcription_model:
        transcription: dict[str, Any] = {"model": cfg.transcription_model}
        if cfg.transcription_language:
            transcription["language"] = cfg.transcription_language
        audio_in["transcription"] = transcription
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "instructions": cfg.instructions,
        "audio": {"input": audio_in, "output": {"format": FORMATS[cfg.audio_mode], "voice": cfg.voice}},
    }
    if cfg.session_tools:
        session["tools"] = [dict(tool) for tool in cfg.session_tools]
        session["tool_choice"] = "auto"
    if cfg.truncation_retention_ratio is not None:
        session["truncation"] = {"type": "retention_ratio", "retention_ratio": cfg.truncation_retention_ratio}
    return {"type": "session.update", "event_id": "evt_session_update", "session": session}


def formats_problem(input_format: str | None, output_format: str | None, mode: AudioMode) -> str | None:
    """Check the effective formats echoed in `session.updated` (docs/protocols.md §7.2)."""
    want = FORMATS[mode]["type"]
    if input_format != want or output_format != want:
        return (
            f"Realtime session has audio formats in={input_format!r} out={output_format!r}, expected {want!r}"
        )
    return None


def append(audio_b64: str) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": audio_b64}


def response_create(instructions: str | None = None, event_id: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.create"}
    if instructions is not None:
        event["response"] = {"instructions": instructions}
    if event_id:
        event["event_id"] = event_id
    return event


def response_cancel(response_id: str | None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.cancel", "event_id": f"evt_cancel_{response_id or 'active'}"}
    if response_id:
        event["response_id"] = response_id
    return event


def truncate(item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncate",
        "event_id": f"evt_truncate_{item_id}",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": max(0, int(audio_end_ms)),
    }


def _create_message(
    item_id: str, role: str, part_type: str, text: str, previous_item_id: str | None
) -> dict[str, Any]:
    """`conversation.item.create` of a text message; `previous_item_id` None appends it."""
    event: dict[str, Any] = {
        "type": "conversation.item.create",
        "event_id": f"evt_create_{item_id}",
        "item": {
            "id": item_id,
            "type": "message",
            "role": role,
            "content": [{"type": part_type, "text": text}],
        },
    }
    if previous_item_id is not None:
        event["previous_item_id"] = previous_item_id
    return event


def system_message(item_id: str, text: str, previous_item_id: str | None = "root") -> dict[str, Any]:
    return _create_message(item_id, "system", "input_text", text, previous_item_id)


def user_text(item_id: str, text: str) -> dict[str, Any]:
    return _create_message(item_id, "user", "input_text", text, None)


def assistant_text(item_id: str, text: str, previous_item_id: str | None = None) -> dict[str, Any]:
    """Assistant history can only be inserted as text (docs/protocols.md §10.1)."""
    return _create_message(item_id, "assistant", "output_text", text, previous_item_id)


def delete(item_id: str) -> dict[str, Any]:
    return {"type": "conversation.item.delete", "event_id": f"evt_delete_{item_id}", "item_id": item_id}


def function_call_output(call_id: str, output: str) -> dict[str, Any]:
    """A tool's result for the model (docs/call-control.md §6): appended, then a `response.create`."""
    return {
        "type": "conversation.item.create",
        "event_id": f"evt_output_{call_id}",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }
