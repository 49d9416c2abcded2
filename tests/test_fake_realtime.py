"""The fake OpenAI Realtime server, driven through the real `openai` SDK client.

Everything the fake sends is validated against the SDK's pydantic models on the way out, so a
happy-path test that ends with `server.violations == []` also proves the event shapes are GA.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from callbot.testing.fake_realtime_audio import PCM24K, PCMU, AudioFormat, ulaw_decode, ulaw_encode
from callbot.testing.fake_realtime_state import ScriptedMcpCall, text_tokens
from callbot.testing.protocol_check import ProtocolViolation, validate_client_event, validate_server_event
from callbot.testing.speech import duration_ms_for_text, silence, synth_speech

MODEL = "gpt-realtime-1.5"
INSTRUCTIONS = "You answer the phone for Acme Dental."
DELTAS = {
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.output_text.delta",
    "conversation.item.input_audio_transcription.delta",
}
RESPONSE_OPEN = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
RESPONSE_CLOSE = [
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]
USER_TURN = [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.done",
]
FORMATS = {"audio/pcm": PCM24K, "audio/pcmu": PCMU}


# ----------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def realtime(
    script: Script | None = None, **server_kw: Any
) -> AsyncIterator[tuple[FakeRealtimeServer, Any]]:
    """A fake server plus an SDK connection that has already received `session.created`."""
    async with FakeRealtimeServer(script or Script(realtime_factor=0), **server_kw) as server:
        client = AsyncOpenAI(api_key="fake", base_url=server.base_url)
        async with client.realtime.connect(model=MODEL) as conn:
            created = await recv(conn)
            assert created.type == "session.created"
            yield server, conn


async def recv(conn: Any, timeout: float = 5.0) -> Any:
    return await asyncio.wait_for(conn.recv(), timeout)


async def collect(conn: Any, stop: str, *, count: int = 1, timeout: float = 10.0) -> list[Any]:
    """Receive events until the `count`-th event of type `stop` (inclusive)."""
    events: list[Any] = []
    async with asyncio.timeout(timeout):
        while count:
            event = await conn.recv()
            events.append(event)
            if event.type == stop:
                count -= 1
    return events


def kinds(events: list[Any]) -> list[str]:
    return [e.type for e in events if e.type not in DELTAS]


def fmt_json(fmt: str) -> dict[str, Any]:
    return {"type": "audio/pcm", "rate": 24000} if fmt == "audio/pcm" else {"type": fmt}


async def configure(
    conn: Any,
    fmt: str = "audio/pcmu",
    *,
    transcription: bool = True,
    turn_detection: dict[str, Any] | str | None = "default",
    instructions: str = INSTRUCTIONS,
) -> Any:
    td = {"type": "server_vad", "silence_duration_ms": 500} if turn_detection == "default" else turn_detection
    session = {
        "type": "realtime",
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": fmt_json(fmt),
                "transcription": {"model": "gpt-4o-transcribe", "language": "en"} if transcription else None,
                "turn_detection": td,
            },
            "output": {"format": fmt_json(fmt), "voice": "marin"},
        },
    }
    await conn.send({"type": "session.update", "event_id": "evt_cfg", "session": session})
    updated = await recv(conn)
    assert updated.type == "session.updated"
    return updated


def utterance(fmt: AudioFormat, *, speech_ms: int = 1200, silence_ms: int = 800, lead_ms: int = 0) -> bytes:
    pcm = np.concatenate(
        [silence(lead_ms, fmt.rate), synth_speech(speech_ms, fmt.rate, seed=7), silence(silence_ms, fmt.rate)]
    )
    return fmt.encode(pcm)


async def append(conn: Any, data: bytes, fmt: AudioFormat, chunk_ms: int = 20) -> None:
    step = fmt.nbytes(chunk_ms)
    for i in range(0, len(data), step):
        chunk = base64.b64encode(data[i : i + step]).decode()
        await conn.send({"type": "input_audio_buffer.append", "audio": chunk})


def audio_of(events: list[Any], response_id: str | None = None) -> bytes:
    return b"".join(
        base64.b64decode(e.delta)
        for e in events
        if e.type == "response.output_audio.delta" and response_id in (None, e.response_id)
    )


def first(events: list[Any], kind: str) -> Any:
    return next(e for e in events if e.type == kind)


# ----------------------------------------------------------------------------- protocol_check units

VALID_CLIENT = [
    {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
            },
        },
    },
    {"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "e1"},
    {"type": "input_audio_buffer.commit"},
    {
        "type": "conversation.item.create",
        "previous_item_id": "root",
        "item": {
            "id": "sum_1",
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": "x"}],
        },
    },
    {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 1500},
    {
        "type": "response.create",
        "response": {
            "conversation": "none",
            "output_modalities": ["text"],
            "metadata": {"purpose": "summary"},
            "input": [
                {"type": "item_reference", "id": "item_1"},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Summarize."}],
                },
            ],
        },
    },
    {"type": "response.cancel"},
]

INVALID_CLIENT = [
    (
        {"type": "session.update", "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}},
        "unknown_parameter",
        "session.input_audio_format",
    ),
    ({"type": "session.update", "session": {"voice": "alloy"}}, "missing_required_parameter", "session.type"),
    (
        {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"format": "g711_ulaw"}}},
        },
        "invalid_value",
        "session.audio.input.format",
    ),
    (
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}},
            },
        },
        "invalid_value",
        "session.audio.input.format.rate",
    ),
    (
        {"type": "response.create", "response": {"modalities": ["audio"]}},
        "unknown_parameter",
        "response.modalities",
    ),
    ({"type": "response.audio.delta", "delta": "AA=="}, "invalid_value", "type"),
    (
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}]},
        },
        "invalid_value",
        "item.content[0].type",
    ),
    (
        {"type": "response.create", "response": {"input": [{"type": "item_reference"}]}},
        "missing_required_parameter",
        "response.input[0].id",
    ),
    (
        {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0},
        "missing_required_parameter",
        "audio_end_ms",
    ),
    ({"audio": "AAAA"}, "missing_required_parameter", "type"),
]


@pytest.mark.parametrize("event", VALID_CLIENT, ids=lambda e: str(e["type"]))
def test_valid_client_events(event: dict[str, Any]) -> None:
    validate_client_event(event)


@pytest.mark.parametrize(("event", "code", "param"), INVALID_CLIENT)
def test_invalid_client_events(event: dict[str, Any], code: str, param: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        validate_client_event(event)
    assert (info.value.code, info.value.param) == (code, param)
    assert param in str(info.value)


def test_server_event_validation() -> None:
    validate_server_event(
        {
            "type": "response.done",
            "event_id": "e",
            "response": {
                "id": "resp_1",
                "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "turn_detected"},
                "conversation_id": None,
                "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
            },
        }
    )
    validate_server_event({"type": "output_audio_buffer.started", "event_id": "e", "response_id": "r"})
    validate_server_event(
        {
            "type": "conversation.item.retrieved",
            "event_id": "e",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_audio", "audio": "AA=="}],
            },
        }
    )
    bad: list[dict[str, Any]] = [
        {"type": "response.audio.delta", "event_id": "e", "delta": "AA=="},  # beta name
        {"type": "response.done", "event_id": "e", "response": {"status_details": {"reason": "barge_in"}}},
        {"type": "session.created", "event_id": "e", "session": {"type": "realtime", "voice": "alloy"}},
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 1, "item_id": "i"},  # no event_id
        {
            "type": "conversation.item.added",
            "event_id": "e",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "audio", "transcript": "x"}],
            },
        },
    ]
    for event in bad:
        with pytest.raises(ProtocolViolation):
            validate_server_event(event)


def test_ulaw_codec_matches_reference() -> None:
    samples = np.arange(-32768, 32768, dtype=np.int16)
    decoded = ulaw_decode(ulaw_encode(samples))
    assert np.max(np.abs(decoded.astype(np.int32) - samples)) <= 1024  # within one mu-law step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    assert ulaw_encode(samples) == audioop.lin2ulaw(samples.tobytes(), 2)
    assert np.array_equal(
        ulaw_decode(bytes(range(256))), np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), "<i2")
    )


# ----------------------------------------------------------------------------- session


async def test_session_created_then_updated_echoes_formats() -> None:
    async with FakeRealtimeServer() as server:
        client = AsyncOpenAI(api_key="fake", base_url=server.base_url)
        async with client.realtime.connect(model=MODEL) as conn:
            created = await recv(conn)
            assert created.type == "session.created"
            assert created.session.type == "realtime"
            assert created.session.model == MODEL
            assert created.session.audio.input.format.type == "audio/pcm"
            assert created.session.audio.input.format.rate == 24000
            assert created.session.audio.input.turn_detection.type == "server_vad"
            assert created.session.audio.input.turn_detection.silence_duration_ms == 500
            updated = await configure(conn, "audio/pcmu")
            assert updated.session.audio.input.format.type == "audio/pcmu"
            assert updated.session.audio.output.format.type == "audio/pcmu"
            assert updated.session.audio.output.voice == "marin"
            assert updated.session.audio.input.transcription.model == "gpt-4o-transcribe"
            td = updated.session.audio.input.turn_detection
            assert (td.threshold, td.prefix_padding_ms, td.create_response, td.interrupt_response) == (
                0.5,
                300,
                True,
                True,
            )
            assert updated.session.instructions == INSTRUCTIONS
        session = server.sessions[0]
        assert session.model == MODEL
        assert session.config["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert [e["type"] for e in session.received] == ["session.update"]
        assert [e["type"] for e in session.sent] == ["session.created", "session.updated"]
        assert server.violations == []


@pytest.mark.parametrize("fmt", ["audio/pcm", "audio/pcmu"])
async def test_greeting_response(fmt: str) -> None:
    script = Script(greeting="Hello, Acme Dental, how can I help?", realtime_factor=0)
    async with realtime(script) as (server, conn):
        await configure(conn, fmt)
        await conn.send({"type": "response.create", "response": {"instructions": "Greet the caller."}})
        events = await collect(conn, "response.done")
        assert kinds(events) == RESPONSE_OPEN + RESPONSE_CLOSE
        audio = audio_of(events)
        af = FORMATS[fmt]
        assert af.ms(len(audio)) == duration_ms_for_text(script.greeting)
        pcm = af.decode(audio)
        assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300  # it is audible speech, not silence
        transcript = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
        assert (
            transcript == script.greeting == first(events, "response.output_audio_transcript.done").transcript
        )
        done = events[-1].response
        assert done.status == "completed" and done.conversation_id is not None
        assert done.audio.output.format.type == fmt
        assert done.output[0].content[0].transcript == script.greeting
        usage = done.usage
        assert usage.input_tokens == text_tokens("Greet the caller.")
        assert usage.output_token_details.audio_tokens == math.ceil(
            duration_ms_for_text(script.greeting) / 50
        )
        assert usage.output_token_details.text_tokens == text_tokens(script.greeting)
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
        assert server.sessions[0].items[0]["status"] == "completed"
        assert server.violations == []


@pytest.mark.parametrize("fmt", ["audio/pcm", "audio/pcmu"])
async def test_vad_turn_with_transcription_and_reply(fmt: str) -> None:
    script = Script(
        user_transcripts=["Can I move my cleaning?"], replies=["Sure, to which day?"], realtime_factor=0
    )
    af = FORMATS[fmt]
    async with realtime(script) as (server, conn):
        await configure(conn, fmt)
        await append(conn, utterance(af, lead_ms=500), af)
        events = await collect(conn, "response.done")
        expected = [
            *USER_TURN,
            "conversation.item.input_audio_transcription.completed",
            *RESPONSE_OPEN,
            *RESPONSE_CLOSE,
        ]
        assert kinds(events) == expected
        started, stopped = (
            first(events, "input_audio_buffer.speech_started"),
            first(events, "input_audio_buffer.speech_stopped"),
        )
        assert 100 <= started.audio_start_ms <= 500  # onset at 500 ms minus 300 ms prefix padding
        assert 1500 <= stopped.audio_end_ms <= 1800
        committed = first(events, "input_audio_buffer.committed")
        assert started.item_id == stopped.item_id == committed.item_id
        assert committed.previous_item_id is None
        user = first(events, "conversation.item.added").item
        assert (user.id, user.role, user.content[0].type, user.content[0].transcript) == (
            committed.item_id,
            "user",
            "input_audio",
            None,
        )
        completed = first(events, "conversation.item.input_audio_transcription.completed")
        assert completed.transcript == "Can I move my cleaning?" and completed.item_id == user.id
        assert completed.usage.type == "tokens"
        deltas = [e.delta for e in events if e.type == "conversation.item.input_audio_transcription.delta"]
        assert "".join(deltas) == completed.transcript
        done = events[-1].response
        assert done.output[0].content[0].transcript == "Sure, to which day?"
        user_ms = stopped.audio_end_ms - started.audio_start_ms
        assert done.usage.input_token_details.audio_tokens == math.ceil(user_ms / 100)
        assert done.usage.input_token_details.text_tokens == text_tokens(INSTRUCTIONS)
        items = server.sessions[0].items
        assert [(i["role"], i["status"]) for i in items] == [
            ("user", "completed"),
            ("assistant", "completed"),
        ]
        assert items[0]["content"][0]["transcript"] == "Can I move my cleaning?"
        assert server.violations == []


async def test_benchmark_mode_skips_recording_hot_events() -> None:
    async with realtime(Script(realtime_factor=0), validate=False, record_audio=False) as (server, conn):
        await configure(conn, transcription=False)
        await append(conn, utterance(PCMU), PCMU)
        events = await collect(conn, "response.done")
        assert kinds(events) == USER_TURN + RESPONSE_OPEN + RESPONSE_CLOSE
        session = server.sessions[0]
        assert [e["type"] for e in session.received] == ["session.update"]
        assert not [e for e in session.sent if e["type"] == "response.output_audio.delta"]
        assert session.sent[-1]["type"] == "response.done"
        assert server.violations == []


async def test_transcript_after_response_and_failure() -> None:
    script = Script(transcript_after_response=True, fail_transcription_for={1}, realtime_factor=0)
    async with realtime(script) as (server, conn):
        await configure(conn)
        await append(conn, utterance(PCMU), PCMU)
        events = await collect(conn, "conversation.item.input_audio_transcription.completed")
        assert kinds(events)[-2:] == [
            "response.done",
            "conversation.item.input_audio_transcription.completed",
        ]
        assert events[-1].transcript == script.user_transcripts[0]
        assert events[-1].item_id == first(events, "input_audio_buffer.committed").item_id
        # The second utterance's transcription fails, still after its response.
        await append(conn, utterance(PCMU), PCMU)
        events = await collect(conn, "conversation.item.input_audio_transcription.failed")
        assert kinds(events)[-2:] == ["response.done", "conversation.item.input_audio_transcription.failed"]
        assert events[-1].error.code == "transcription_failed"
        assert "conversation.item.input_audio_transcription.completed" not in kinds(events)
        assert server.violations == []


async def test_barge_in_cancels_response_then_truncate() -> None:
    greeting = "Thank you for calling Acme Dental. " * 6  # ~15 s of audio, ~3.8 s at 4x
    async with realtime(Script(greeting=greeting, realtime_factor=4)) as (server, conn):
        await configure(conn, transcription=False)
        await conn.send({"type": "response.create", "response": {"instructions": "Greet."}})
        before = await collect(conn, "response.output_audio.delta", count=3)
        greeting_id = first(before, "response.created").response.id
        item_id = first(before, "response.output_item.added").item.id
        await append(conn, utterance(PCMU), PCMU)
        after = await collect(conn, "response.done", count=2, timeout=15)
        events = before + after
        kinds_ = kinds(events)
        started_at = kinds_.index("input_audio_buffer.speech_started")
        assert kinds_[started_at + 1 : started_at + 7] == RESPONSE_CLOSE
        cancelled = first(events, "response.done").response
        assert (cancelled.id, cancelled.status) == (greeting_id, "cancelled")
        assert cancelled.status_details.reason == "turn_detected"
        assert cancelled.output[0].status == "incomplete"
        # No audio of the greeting after speech_started.
        raw_started = next(i for i, e in enumerate(events) if e.type == "input_audio_buffer.speech_started")
        assert not [
            e for e in events[raw_started:] if e.type.endswith(".delta") and e.response_id == greeting_id
        ]
        heard_ms = PCMU.ms(len(audio_of(events, greeting_id)))
        assert 0 < heard_ms < duration_ms_for_text(greeting)
        assert cancelled.usage.output_token_details.audio_tokens == math.ceil(heard_ms / 50)
        partial = "".join(
            e.delta
            for e in events
            if e.type == "response.output_audio_transcript.delta" and e.response_id == greeting_id
        )
        assert cancelled.output[0].content[0].transcript == partial
        # The caller's turn then gets its own, complete reply.
        assert events[-1].response.status == "completed"
        assert kinds_[started_at + 7 : started_at + 11] == USER_TURN[1:]
        # Truncate the interrupted item to what was "played"; longer than generated is an error.
        await conn.send(
            {
                "type": "conversation.item.truncate",
                "event_id": "t1",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 5000,
            }
        )
        err = await recv(conn)
        assert err.type == "error" and err.error.event_id == "t1"
        assert err.error.message == f"Audio content of {int(heard_ms)}ms is already shorter than 5000ms"
        await conn.send(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 100,
            }
        )
        truncated = await recv(conn)
        assert (truncated.type, truncated.item_id, truncated.audio_end_ms) == (
            "conversation.item.truncated",
            item_id,
            100,
        )
        assert server.sessions[0].items[0]["content"][0]["transcript"] is None
        await conn.send({"type": "conversation.item.retrieve", "item_id": item_id})
        retrieved = await recv(conn)
        assert PCMU.ms(len(base64.b64decode(retrieved.item.content[0].audio))) == 100
        assert server.violations == []


async def test_response_cancel_and_conflicts() -> None:
    async with realtime(Script(realtime_factor=0, first_delta_delay_ms=300)) as (server, conn):
        await configure(conn, turn_detection=None)
        await conn.send({"type": "response.create", "event_id": "r1"})
        await conn.send({"type": "response.create", "event_id": "r2"})
        events = await collect(conn, "error")
        assert events[-1].error.code == "conversation_already_has_active_response"
        assert events[-1].error.event_id == "r2"
        await conn.send({"type": "response.cancel"})
        events = await collect(conn, "response.done")
        assert events[-1].response.status == "cancelled"
        assert events[-1].response.status_details.reason == "client_cancelled"
        await conn.send({"type": "response.cancel", "event_id": "c2"})
        err = await recv(conn)
        assert (err.type, err.error.code, err.error.event_id) == ("error", "response_cancel_not_active", "c2")
        assert server.violations == []


async def test_out_of_band_response_runs_alongside() -> None:
    async with realtime(Script(realtime_factor=0, first_delta_delay_ms=200)) as (server, conn):
        await configure(conn, turn_detection=None)
        await conn.send({"type": "response.create", "response": {"instructions": "Greet."}})
        greeting = await collect(conn, "response.done")
        greeting_item = greeting[-1].response.output[0].id
        items_before = list(server.sessions[0].items)
        await conn.send({"type": "response.create"})  # in-band, active for 200 ms
        await conn.send(
            {
                "type": "response.create",
                "response": {
                    "conversation": "none",
                    "output_modalities": ["text"],
                    "metadata": {"purpose": "summary"},
                    "instructions": "Summarize.",
                    "input": [{"type": "item_reference", "id": greeting_item}],
                },
            }
        )
        events = await collect(conn, "response.done", count=2)
        assert "error" not in kinds(events)
        oob = next(
            e.response for e in events if e.type == "response.done" and e.response.conversation_id is None
        )
        assert oob.metadata == {"purpose": "summary"} and oob.output_modalities == ["text"]
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text.startswith("Summary: Hello!") and oob.output[0].content[0].text == text
        oob_item = oob.output[0].id
        assert not [e for e in events if e.type.startswith("conversation.item.") and e.item.id == oob_item]
        greeting_tokens = greeting[-1].response.usage.output_tokens
        assert oob.usage.input_tokens == text_tokens("Summarize.") + greeting_tokens
        session = server.sessions[0]
        assert [i["id"] for i in session.items][: len(items_before)] == [i["id"] for i in items_before]
        assert oob_item not in [i["id"] for i in session.items]
        assert server.violations == []


# ----------------------------------------------------------------------------- items and tokens


def text_item(role: str, text: str, item_id: str | None = None) -> dict[str, Any]:
    part = "output_text" if role == "assistant" else "input_text"
    item: dict[str, Any] = {"type": "message", "role": role, "content": [{"type": part, "text": text}]}
    if item_id:
        item["id"] = item_id
    return item


async def test_item_create_positions_delete_retrieve() -> None:
    async with realtime() as (server, conn):
        await configure(conn, turn_detection=None)
        await conn.send({"type": "conversation.item.create", "item": text_item("user", "Hi there.", "u1")})
        await conn.send({"type": "conversation.item.create", "item": text_item("assistant", "Hello!", "a1")})
        await conn.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "root",
                "item": text_item("system", "Summary.", "s1"),
            }
        )
        await conn.send(
            {"type": "conversation.item.create", "previous_item_id": "u1", "item": text_item("user", "More.")}
        )
        events = await collect(conn, "conversation.item.done", count=4)
        assert kinds(events) == ["conversation.item.added", "conversation.item.done"] * 4
        placed = [(e.item.id, e.previous_item_id) for e in events if e.type == "conversation.item.done"]
        generated = placed[3][0]
        assert placed == [("u1", None), ("a1", "u1"), ("s1", None), (generated, "u1")]
        assert [i["id"] for i in server.sessions[0].items] == ["s1", "u1", generated, "a1"]
        # Unknown previous_item_id: error and nothing added.
        await conn.send(
            {
                "type": "conversation.item.create",
                "event_id": "bad",
                "previous_item_id": "nope",
                "item": text_item("user", "x"),
            }
        )
        err = await recv(conn)
        assert err.type == "error" and err.error.event_id == "bad" and "nope" in err.error.message
        assert len(server.sessions[0].items) == 4
        # Assistant audio cannot be inserted.
        audio_item = {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": "x"}],
        }
        await conn.send({"type": "conversation.item.create", "item": audio_item})
        assert (await recv(conn)).type == "error"
        # Delete, delete again, retrieve.
        await conn.send({"type": "conversation.item.delete", "item_id": "u1"})
        assert (await recv(conn)).type == "conversation.item.deleted"
        await conn.send({"type": "conversation.item.delete", "item_id": "u1"})
        assert (await recv(conn)).type == "error"
        await conn.send({"type": "conversation.item.retrieve", "item_id": "a1"})
        retrieved = await recv(conn)
        assert retrieved.type == "conversation.item.retrieved" and retrieved.item.content[0].text == "Hello!"
        await conn.send({"type": "conversation.item.retrieve", "item_id": "u1"})
        assert (await recv(conn)).type == "error"
        # Truncating a text item is an error.
        await conn.send(
            {"type": "conversation.item.truncate", "item_id": "a1", "content_index": 0, "audio_end_ms": 0}
        )
        assert (await recv(conn)).type == "error"
        assert [i["id"] for i in server.sessions[0].items] == ["s1", generated, "a1"]
        assert server.violations == []


async def test_input_tokens_follow_kept_items() -> None:
    instructions = "Be brief."
    async with realtime() as (server, conn):
        await configure(conn, turn_detection=None, instructions=instructions)
        texts = {
            "s1": "Summary: caller wants Friday.",
            "u1": "Can I move my appointment?",
            "a1": "Yes, which day?",
        }
        await conn.send(
            {
                "type": "conversation.item.create",
                "previous_item_id": "root",
                "item": text_item("system", texts["s1"], "s1"),
            }
        )
        await conn.send({"type": "conversation.item.create", "item": text_item("user", texts["u1"], "u1")})
        await conn.send(
            {"type": "conversation.item.create", "item": text_item("assistant", texts["a1"], "a1")}
        )
        await collect(conn, "conversation.item.done", count=3)

        await conn.send({"type": "response.create"})
        first_done = (await collect(conn, "response.done"))[-1].response
        assert first_done.usage.input_tokens == text_tokens(instructions) + sum(
            text_tokens(t) for t in texts.values()
        )
        reply = first_done.output[0].content[0].transcript
        assert reply == "You said: Can I move my appointment?"
        reply_tokens = math.ceil(duration_ms_for_text(reply) / 50) + text_tokens(reply)

        for item_id in ("u1", "a1"):
            await conn.send({"type": "conversation.item.delete", "item_id": item_id})
        await collect(conn, "conversation.item.deleted", count=2)
        await conn.send({"type": "response.create"})
        second = (await collect(conn, "response.done"))[-1].response
        assert (
            second.usage.input_tokens == text_tokens(instructions) + text_tokens(texts["s1"]) + reply_tokens
        )

        await conn.send({"type": "conversation.item.delete", "item_id": first_done.output[0].id})
        await conn.send({"type": "conversation.item.delete", "item_id": second.output[0].id})
        await collect(conn, "conversation.item.deleted", count=2)
        await conn.send({"type": "response.create"})
        third = (await collect(conn, "response.done"))[-1].response
        assert third.usage.input_tokens == text_tokens(instructions) + text_tokens(texts["s1"])
        assert (
            third.usage.input_tokens
            < second.usage.input_tokens
            < first_done.usage.input_tokens + reply_tokens
        )
        assert server.violations == []


# ----------------------------------------------------------------------------- input buffer without VAD


async def test_manual_commit_and_clear_without_vad() -> None:
    async with realtime() as (server, conn):
        await configure(conn, "audio/pcm", transcription=False, turn_detection=None)
        await conn.send({"type": "input_audio_buffer.commit", "event_id": "c0"})
        err = await recv(conn)
        assert (err.type, err.error.code, err.error.event_id) == (
            "error",
            "input_audio_buffer_commit_empty",
            "c0",
        )
        await append(conn, utterance(PCM24K, speech_ms=600, silence_ms=0), PCM24K)
        await conn.send({"type": "input_audio_buffer.commit"})
        events = await collect(conn, "conversation.item.done")
        assert kinds(events) == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        await append(conn, utterance(PCM24K, speech_ms=300, silence_ms=0), PCM24K)
        await conn.send({"type": "input_audio_buffer.clear"})
        assert (await recv(conn)).type == "input_audio_buffer.cleared"
        await conn.send({"type": "response.create"})
        done = (await collect(conn, "response.done"))[-1].response
        assert (
            done.usage.input_token_details.audio_tokens == 6
        )  # 600 ms of caller audio; the cleared 300 ms is gone
        await conn.send({"type": "conversation.item.retrieve", "item_id": events[0].item_id})
        retrieved = await recv(conn)
        assert PCM24K.ms(len(base64.b64decode(retrieved.item.content[0].audio))) == 600
        assert server.violations == []


# ----------------------------------------------------------------------------- violations


async def test_invalid_client_event_is_recorded_and_answered() -> None:
    async with realtime() as (server, conn):
        beta = {
            "type": "session.update",
            "event_id": "beta1",
            "session": {"type": "realtime", "input_audio_format": "g711_ulaw"},
        }
        await conn.send(beta)
        err = await recv(conn)
        assert err.type == "error"
        assert (err.error.type, err.error.code, err.error.param, err.error.event_id) == (
            "invalid_request_error",
            "unknown_parameter",
            "session.input_audio_format",
            "beta1",
        )
        await conn.send({"type": "response.audio.delta", "delta": "AA=="})
        err2 = await recv(conn)
        assert err2.type == "error" and err2.error.param == "type"
        session = server.sessions[0]
        assert session.config["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert len(server.violations) == 2
        assert "input_audio_format" in server.violations[0] and "response.audio.delta" in server.violations[1]
        assert session.received[0] == beta


# ----------------------------------------------------------------------------- connection handling and faults


async def test_auth_and_path_are_checked() -> None:
    async with FakeRealtimeServer() as server:
        url = f"ws://127.0.0.1:{server.port}/v1/realtime?model={MODEL}"
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(url):
                pass
        assert info.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(
                url.replace("/realtime", "/other"), additional_headers={"Authorization": "Bearer x"}
            ):
                pass
        assert info.value.response.status_code == 404
        server.refuse_connections = True
        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(url, additional_headers={"Authorization": "Bearer x"}):
                pass
        assert info.value.response.status_code == 503
        server.refuse_connections = False
        async with ws_connect(url, additional_headers={"Authorization": "Bearer x"}) as ws:
            assert b"session.created" in (await ws.recv(decode=False))
        assert server.sessions[0].model == MODEL


async def test_drop_and_expire() -> None:
    async with realtime() as (server, conn):
        await server.drop_now()
        with pytest.raises(ConnectionClosed) as info:
            await recv(conn)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011

    async with realtime() as (server, conn):
        server.expire_session()
        err = await recv(conn)
        assert (err.type, err.error.code) == ("error", "session_expired")
        with pytest.raises(ConnectionClosed) as info:
            await recv(conn)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001

    async with realtime() as (server, conn):
        server.drop_after_events(2)
        await conn.send({"type": "input_audio_buffer.clear"})
        await conn.send({"type": "input_audio_buffer.clear"})
        await conn.send({"type": "input_audio_buffer.clear"})
        assert (await recv(conn)).type == "input_audio_buffer.cleared"
        assert (await recv(conn)).type == "input_audio_buffer.cleared"
        with pytest.raises(ConnectionClosed) as info:
            await recv(conn)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011


async def test_runs_as_a_separate_process() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "callbot.testing.fake_realtime",
        "--port",
        "0",
        "--fast",
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=root,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        base_url = line.strip().split("base_url=")[1]
        client = AsyncOpenAI(api_key="fake", base_url=base_url)
        async with client.realtime.connect(model=MODEL) as conn:
            assert (await recv(conn)).type == "session.created"
    finally:
        proc.terminate()
        await proc.wait()


# ----------------------------------------------------------------------------- remote MCP tools

SEARCH_TOOL = {"name": "search_docs", "input_schema": {"type": "object"}, "description": "Search."}
DELETE_TOOL = {"name": "delete_doc", "input_schema": {"type": "object"}}
DOCS_SERVER = {
    "type": "mcp",
    "server_label": "docs",
    "server_url": "https://mcp.example.test/mcp",
    "allowed_tools": ["search_docs"],
    "require_approval": "never",
}
LISTING = ["mcp_list_tools.in_progress", "conversation.item.added", "conversation.item.done"]
TEXT_RESPONSE_OPEN = [k for k in RESPONSE_OPEN if k != "rate_limits.updated"]


def mcp_script(**kwargs: Any) -> Script:
    return Script(realtime_factor=0, mcp_tools={"docs": [SEARCH_TOOL, DELETE_TOOL]}, **kwargs)


async def declare(conn: Any, *servers: dict[str, Any]) -> None:
    session = {"type": "realtime", "output_modalities": ["text"], "tools": list(servers)}
    await conn.send({"type": "session.update", "session": session})


async def ask(conn: Any, text: str) -> list[Any]:
    """A caller line as text, then a response: every event up to its `response.done`."""
    await conn.send({"type": "conversation.item.create", "item": text_item("user", text)})
    await conn.send({"type": "response.create"})
    return await collect(conn, "response.done")


async def test_a_declared_mcp_server_is_listed_once_with_only_its_allowed_tools() -> None:
    crm = {"type": "mcp", "server_label": "crm", "server_url": "https://crm.example.test/mcp"}
    async with realtime(mcp_script(mcp_list_fails={"crm"})) as (server, conn):
        await declare(conn, DOCS_SERVER, crm)
        events = await collect(conn, "mcp_list_tools.failed")
        assert kinds(events) == [
            "session.updated",
            *LISTING,
            "mcp_list_tools.completed",
            *LISTING,
            "mcp_list_tools.failed",
        ]
        docs_item, crm_item = (e.item for e in events if e.type == "conversation.item.done")
        assert (docs_item.type, docs_item.server_label) == ("mcp_list_tools", "docs")
        assert [t.name for t in docs_item.tools] == ["search_docs"]  # allowed_tools filters the list
        assert events[-1].item_id == crm_item.id and crm_item.tools == []
        # the same declaration again: docs keeps its listing, the failed crm is tried again
        await declare(conn, DOCS_SERVER, crm)
        again = await collect(conn, "mcp_list_tools.failed")
        assert kinds(again) == ["session.updated", *LISTING, "mcp_list_tools.failed"]
        assert {e.item.server_label for e in again if e.type == "conversation.item.done"} == {"crm"}
        assert [i["type"] for i in server.sessions[0].items] == ["mcp_list_tools"] * 3
        assert server.violations == []


async def test_a_scripted_mcp_call_comes_first_in_its_response_and_the_speech_reads_its_answer() -> None:
    calls = {
        0: ScriptedMcpCall("docs", "search_docs", {"query": "refunds"}, output="Refunds take 5 days."),
        1: ScriptedMcpCall(
            "docs",
            "search_docs",
            {"query": "x"},
            error={"type": "tool_execution_error", "message": "index down"},
        ),
    }
    async with realtime(mcp_script(mcp_calls=calls)) as (server, conn):
        await declare(conn, DOCS_SERVER)
        await collect(conn, "mcp_list_tools.completed")
        events = await ask(conn, "How long do refunds take?")
        mcp_events = [
            "response.output_item.added",
            "conversation.item.added",
            "response.mcp_call_arguments.delta",
            "response.mcp_call_arguments.done",
            "response.mcp_call.in_progress",
        ]
        mcp_done = ["response.output_item.done", "conversation.item.done"]
        text_close = ["response.output_text.done", "response.content_part.done", *mcp_done, "response.done"]
        assert kinds(events)[2:] == [
            "response.created",
            "rate_limits.updated",
            *mcp_events,
            "response.mcp_call.completed",
            *mcp_done,
            *TEXT_RESPONSE_OPEN[1:],
            *text_close,
        ]
        done = events[-1].response
        call, message = done.output
        assert (call.type, call.server_label, call.name) == ("mcp_call", "docs", "search_docs")
        assert json.loads(call.arguments) == {"query": "refunds"}
        assert call.output == "Refunds take 5 days." and call.error is None
        assert message.content[0].text == "Here is what I found: Refunds take 5 days."
        indexes = {(e.type, e.output_index) for e in events if getattr(e, "output_index", None) is not None}
        assert ("response.mcp_call.completed", 0) in indexes and ("response.output_text.delta", 1) in indexes
        assert [i["type"] for i in server.sessions[0].items][-3:] == ["message", "mcp_call", "message"]
        # a failed call: the error item, `.failed`, and an apology
        failed = await ask(conn, "And exchanges?")
        assert "response.mcp_call.failed" in kinds(failed)
        assert "response.mcp_call.completed" not in kinds(failed)
        call, message = failed[-1].response.output
        assert call.error is not None and (call.error.type, call.error.message) == (
            "tool_execution_error",
            "index down",
        )
        assert call.output is None
        assert message.content[0].text == "Sorry, that did not work: index down"
        assert server.violations == []


async def test_the_fake_calls_no_mcp_tool_the_session_does_not_have() -> None:
    calls = {
        0: ScriptedMcpCall("docs", "delete_doc", output="deleted"),  # listed by docs, but not allowed
        1: ScriptedMcpCall("billing", "refund", output="refunded"),  # no such server declared
        2: ScriptedMcpCall("docs", "search_docs", output="found"),  # its listing deleted below
        3: ScriptedMcpCall("docs", "search_docs", output="found it"),
    }
    async with realtime(mcp_script(mcp_calls=calls)) as (server, conn):
        await declare(conn, DOCS_SERVER)
        listing = await collect(conn, "mcp_list_tools.completed")
        for line in ("Delete it.", "Refund me."):
            events = await ask(conn, line)
            assert not [k for k in kinds(events) if "mcp" in k]
            assert [o.type for o in events[-1].response.output] == ["message"]
            assert events[-1].response.output[0].content[0].text == "Sorry, I have no tool for that."
        await conn.send({"type": "conversation.item.delete", "item_id": listing[-1].item_id})
        assert (await recv(conn)).type == "conversation.item.deleted"
        events = await ask(conn, "Search for it.")
        assert events[-1].response.output[0].content[0].text == "Sorry, I have no tool for that."
        await declare(conn, DOCS_SERVER)  # the deleted listing is listed again
        await collect(conn, "mcp_list_tools.completed")
        events = await ask(conn, "Search for it now.")
        assert [o.type for o in events[-1].response.output] == ["mcp_call", "message"]
        assert server.violations == []


def test_mcp_shapes_the_sdk_models_refuse() -> None:
    """What the fake must not send: an `mcp_call` item has no `status`, the `response.mcp_call.*`
    events have no `response_id`, and an MCP error has one of three `type`s."""
    item = {"id": "item_1", "type": "mcp_call", "server_label": "docs", "name": "s", "arguments": "{}"}
    added = {"type": "response.output_item.added", "event_id": "e", "response_id": "r", "output_index": 0}
    validate_server_event({**added, "item": item})
    bad: list[dict[str, Any]] = [
        {**added, "item": {**item, "status": "completed"}},
        {**added, "item": {**item, "error": {"type": "timeout", "message": "slow"}}},
        {
            "type": "response.mcp_call.completed",
            "event_id": "e",
            "item_id": "i",
            "output_index": 0,
            "response_id": "r",
        },
        {"type": "mcp_list_tools.completed", "event_id": "e"},
    ]
    for event in bad:
        with pytest.raises(ProtocolViolation):
            validate_server_event(event)
