"""One connection to the fake Realtime server: the GA protocol state machine.

Design note (why everything here is synchronous): every server event goes through `emit`, which
validates it, records it in `sent` and puts the encoded frame on a queue drained by one writer
task. Handlers therefore never await, events leave in exactly the order they were recorded, and
a response's streaming task can be cancelled at its pacing sleep (its only await) without ever
leaving a half-sent event behind. Barge-in and `response.cancel` simply finalise the response
synchronously.
"""

from __future__ import annotations

import asyncio
import binascii
import copy
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from websockets.exceptions import ConnectionClosed

from callbot.testing.fake_realtime_audio import PCM24K, AudioFormat, EnergyVad, audio_format
from callbot.testing.fake_realtime_items import ItemsMixin
from callbot.testing.fake_realtime_responses import ResponseMixin
from callbot.testing.fake_realtime_state import (
    Conversation,
    ConvItem,
    SessionContext,
    default_session,
    merge_session,
    split_words,
    text_tokens,
)
from callbot.testing.protocol_check import ProtocolViolation, validate_client_event, validate_server_event

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

HOT_CLIENT = frozenset({"input_audio_buffer.append"})
HOT_SERVER = frozenset(
    {"response.output_audio.delta", "response.output_audio_transcript.delta", "response.output_text.delta"}
)
"""High-volume events whose validation/recording the load benchmark may switch off."""

SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 800, "auto": 800, "high": 400}
BUFFER_KEEP_MS = 30_000
"""With VAD on and nobody speaking, older buffered audio is dropped to bound memory."""


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class FakeSession(ItemsMixin, ResponseMixin):
    """Server-side state of one Realtime WebSocket session.

    Public, read-only for tests: `id`, `model`, `config` (effective session config), `received`
    (every client event, in order), `sent` (every server event, in order), `items` (the
    server-side conversation as GA item dicts, without audio), `conversation_id`, `closed`.
    `sent` is filled when an event is queued, so after a fault-injected close it may end with
    events the client never received.
    """

    def __init__(
        self, ctx: SessionContext, ws: ServerConnection, model: str, *, drop_after: int | None = None
    ) -> None:
        self.ctx = ctx
        self.ws = ws
        self.model = model
        self.script = ctx.script
        self._tag = secrets.token_hex(3)
        self.id = f"sess_{self._tag}"
        self.conversation_id = f"conv_{self._tag}"
        self.config: dict[str, Any] = default_session(model)
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.conversation = Conversation()
        self.closed = False
        self.drop_after = drop_after
        self._out: asyncio.Queue[bytes | _Close] = asyncio.Queue()
        self._counter = 0
        # input audio buffer, on the session timeline (ms of all audio ever appended)
        self._in_fmt: AudioFormat = PCM24K
        self._buf = bytearray()
        self._buf_start_ms = 0.0
        self._vad: EnergyVad | None = None
        self._vad_key: tuple[Any, ...] | None = None
        self._speech_item: str | None = None
        self._speech_start_ms = 0.0
        self._utterances = 0
        self._init_responses()
        self._configure_audio()
        self._handlers = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.truncate": self._on_item_truncate,
            "conversation.item.retrieve": self._on_item_retrieve,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "output_audio_buffer.clear": self._on_output_clear,
        }

    # ------------------------------------------------------------------ plumbing

    @property
    def items(self) -> list[dict[str, Any]]:
        """The conversation as the server holds it (live dicts; do not mutate)."""
        return [item.data for item in self.conversation.items]

    def new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._tag}{self._counter:05d}"

    def violation(self, message: str) -> None:
        self.ctx.violations.append(f"{self.id}: {message}")

    def emit(self, event: dict[str, Any]) -> None:
        """Validate, record and queue one server event (no-op once the session is closing)."""
        if self.closed:
            return
        self._counter += 1
        event["event_id"] = f"event_{self._tag}{self._counter:06d}"
        hot = event["type"] in HOT_SERVER
        if self.ctx.validate or not hot:
            try:
                validate_server_event(event)
            except ProtocolViolation as exc:
                self.violation(f"server sent invalid event: {exc}")
        if self.ctx.record_audio or not hot:
            self.sent.append(event)
        self._out.put_nowait(orjson.dumps(event))

    def error(
        self, message: str, *, code: str | None, param: str | None = None, event_id: str | None = None
    ) -> None:
        """Send an `error` event shaped like the real server's `invalid_request_error`s."""
        err = {"type": "invalid_request_error", "code": code, "message": message, "param": param}
        self.emit({"type": "error", "error": {**err, "event_id": event_id}})

    async def run(self) -> None:
        """Serve the connection until it closes."""
        writer = asyncio.create_task(self._write_loop())
        self.emit({"type": "session.created", "session": copy.deepcopy(self.config)})
        try:
            async for message in self.ws:
                self.handle(message)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.cancel_all_responses()
            if not writer.done():
                writer.cancel()

    async def _write_loop(self) -> None:
        try:
            while True:
                frame = await self._out.get()
                if isinstance(frame, _Close):
                    await self.ws.close(frame.code, frame.reason)
                    return
                await self.ws.send(frame, text=True)
                if self.drop_after is not None:
                    self.drop_after -= 1
                    if self.drop_after <= 0:
                        self.closed = True
                        await self.ws.close(1011, "fake: connection dropped")
                        return
        except ConnectionClosed:
            self.closed = True

    def close_after_pending(self, code: int, reason: str) -> None:
        """Close once everything already emitted has been written; later events are dropped."""
        if not self.closed:
            self._out.put_nowait(_Close(code, reason))
            self.closed = True

    async def abort(self, code: int = 1011, reason: str = "fake: connection dropped") -> None:
        """Close right now, discarding queued events."""
        self.closed = True
        self.cancel_all_responses()
        await self.ws.close(code, reason)

    def expire(self, minutes: int = 60, code: int = 1001) -> None:
        """Send the real `session_expired` error, then close."""
        self.error(f"Your session hit the maximum duration of {minutes} minutes.", code="session_expired")
        self.close_after_pending(code, "session expired")

    # ------------------------------------------------------------------ dispatch

    def handle(self, message: str | bytes) -> None:
        """Process one client frame."""
        if isinstance(message, bytes):
            self.violation("client sent a binary frame")
            self.error("Binary frames are not supported; send JSON text frames.", code="invalid_json")
            return
        try:
            obj = orjson.loads(message)
        except orjson.JSONDecodeError:
            self.violation(f"client sent invalid JSON: {message[:80]!r}")
            self.error("We could not parse the JSON body of your request.", code="invalid_json")
            return
        etype = obj.get("type") if isinstance(obj, dict) else None
        hot = etype in HOT_CLIENT
        if self.ctx.record_audio or not hot:
            self.received.append(obj)
        if self.ctx.validate or not hot:
            try:
                validate_client_event(obj)
            except ProtocolViolation as exc:
                self.violation(f"client sent invalid event: {exc}")
                event_id = obj.get("event_id") if isinstance(obj, dict) else None
                self.error(exc.message, code=exc.code, param=exc.param, event_id=event_id)
                return
        handler = self._handlers.get(str(etype))
        if handler is None:
            self.error(f"Invalid value: '{etype}'.", code="invalid_value", param="type")
            return
        try:
            handler(obj)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # only reachable with validate=False
            self.violation(f"client event {etype} could not be handled: {exc!r}")
            self.error(f"Invalid '{etype}' event: {exc}", code="invalid_value", event_id=obj.get("event_id"))

    # ------------------------------------------------------------------ session

    def _turn_detection(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = self.config["audio"]["input"].get("turn_detection")
        return td

    def _configure_audio(self) -> None:
        """(Re)build the input format and VAD when their settings changed.

        A format change empties the input buffer (its bytes would be misread otherwise);
        changed VAD settings restart detection, so an utterance in progress is forgotten.
        """
        fmt = audio_format(self.config["audio"]["input"].get("format")) or PCM24K
        if fmt != self._in_fmt:
            self._reset_buffer()
            self._in_fmt = fmt
        td = self._turn_detection()
        key: tuple[Any, ...] | None = None
        if td is not None:
            silence = td.get("silence_duration_ms") or 500
            if td.get("type") == "semantic_vad":
                silence = SEMANTIC_SILENCE_MS.get(str(td.get("eagerness")), 800)
            key = (fmt.type, td.get("threshold") or 0.5, td.get("prefix_padding_ms") or 0, silence)
        if key == self._vad_key:
            return
        self._vad_key = key
        self._speech_item = None
        self._vad = None
        if key is not None:
            self._vad = EnergyVad(
                fmt.rate,
                threshold=key[1],
                prefix_padding_ms=key[2],
                silence_duration_ms=key[3],
                base_ms=self._timeline_ms,
            )

    @property
    def _timeline_ms(self) -> float:
        return self._buf_start_ms + self._in_fmt.ms(len(self._buf))

    def _on_session_update(self, obj: dict[str, Any]) -> None:
        update = obj["session"]
        eid = obj.get("event_id")
        if update.get("type") != "realtime":
            self.error(
                "The fake server only supports session.type 'realtime'.",
                code="invalid_value",
                param="session.type",
                event_id=eid,
            )
            return
        merged = merge_session(self.config, update)
        for direction in ("input", "output"):
            if audio_format(merged["audio"][direction]["format"]) is None:
                self.error(
                    f"The fake server does not implement {merged['audio'][direction]['format']['type']}.",
                    code="invalid_value",
                    param=f"session.audio.{direction}.format",
                    event_id=eid,
                )
                return
        if self.voice_locked and merged["audio"]["output"].get("voice") != self.config["audio"]["output"].get(
            "voice"
        ):
            self.error(
                "Cannot update a conversation's voice if assistant audio is present.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
                event_id=eid,
            )
            return
        self.config = merged
        self._configure_audio()
        self.emit({"type": "session.updated", "session": copy.deepcopy(self.config)})

    # ------------------------------------------------------------------ input audio

    def _on_append(self, obj: dict[str, Any]) -> None:
        try:
            data = binascii.a2b_base64(obj["audio"], strict_mode=True)
        except (binascii.Error, ValueError, TypeError):
            self.error(
                "Invalid 'audio': not valid base64.",
                code="invalid_value",
                param="audio",
                event_id=obj.get("event_id"),
            )
            return
        self.append_audio(data)

    def append_audio(self, data: bytes) -> None:
        """The appended audio, decoded: buffer it and run the server VAD over it."""
        self._buf += data
        vad = self._vad
        if vad is None:
            return
        for kind, ms in self._vad_events(vad, data):
            if kind == "start":
                self._speech_started(ms)
            else:
                self._speech_stopped(ms)
        if not vad.speaking and self._in_fmt.ms(len(self._buf)) > BUFFER_KEEP_MS:
            self._drop_buffer_until(self._timeline_ms - BUFFER_KEEP_MS / 3)

    def _vad_events(self, vad: EnergyVad, data: bytes) -> Sequence[tuple[str, int]]:
        return vad.feed(self._in_fmt.decode(data))

    def _drop_buffer_until(self, ms: float) -> None:
        n = max(0, min(len(self._buf), self._in_fmt.nbytes(ms - self._buf_start_ms)))
        del self._buf[:n]
        self._buf_start_ms += self._in_fmt.ms(n)

    def _buffer_slice(self, start_ms: float, end_ms: float) -> bytes:
        fmt = self._in_fmt
        a = max(0, min(len(self._buf), fmt.nbytes(start_ms - self._buf_start_ms)))
        b = max(a, min(len(self._buf), fmt.nbytes(end_ms - self._buf_start_ms)))
        return bytes(self._buf[a:b])

    def _speech_started(self, start_ms: int) -> None:
        self._speech_item = self.new_id("item")
        self._speech_start_ms = max(float(start_ms), self._buf_start_ms)
        self.emit(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": int(self._speech_start_ms),
                "item_id": self._speech_item,
            }
        )
        td = self._turn_detection() or {}
        if td.get("interrupt_response", True) and self.active_inband is not None:
            self.finish_response(self.active_inband, "cancelled", "turn_detected")

    def _speech_stopped(self, end_ms: int) -> None:
        item_id = self._speech_item or self.new_id("item")
        self._speech_item = None
        self.emit({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": item_id})
        audio = self._buffer_slice(self._speech_start_ms, end_ms)
        self._drop_buffer_until(end_ms)
        td = self._turn_detection() or {}
        self._commit(item_id, audio, auto_response=bool(td.get("create_response", True)))

    def _on_commit(self, obj: dict[str, Any]) -> None:
        ms = self._in_fmt.ms(len(self._buf))
        if ms < 100:
            self.error(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
                event_id=obj.get("event_id"),
            )
            return
        item_id = self._speech_item or self.new_id("item")
        audio = bytes(self._buf)
        self._reset_buffer()
        self._commit(item_id, audio, auto_response=False)

    def _on_clear(self, obj: dict[str, Any]) -> None:
        self._reset_buffer()
        self.emit({"type": "input_audio_buffer.cleared"})

    def _reset_buffer(self) -> None:
        self._buf_start_ms = self._timeline_ms
        self._buf.clear()
        self._speech_item = None
        if self._vad is not None:
            self._vad.skip_residual()
            self._vad.reset()

    def _commit(self, item_id: str, audio: bytes, *, auto_response: bool) -> None:
        """Turn audio into a user item: committed, item added/done, transcription, maybe a response."""
        self.emit(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": self.conversation.last_id(),
            }
        )
        n = self._utterances
        self._utterances += 1
        item = ConvItem(
            data={
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}],
            },
            audio_ms=self._in_fmt.ms(len(audio)),
            audio_format=self._in_fmt,
            audio_bytes=audio if self.ctx.record_audio else None,
            heard_text=self.script.transcript_for(n),
        )
        self.add_item(item, None)
        transcribe = self.config["audio"]["input"].get("transcription") is not None
        respond = auto_response and self.active_inband is None
        delay = transcribe and respond and self.script.transcript_after_response
        if transcribe and not delay:
            self.transcribe(item, n)
        if respond:
            resp = self.start_response({}, event_id=None)
            if resp is not None and delay:
                resp.pending_transcriptions.append((item, n))
            elif delay:
                self.transcribe(item, n)

    def transcribe(self, item: ConvItem, n: int) -> None:
        """Emit the scripted input transcription of the n-th utterance (or its failure)."""
        if n in self.script.fail_transcription_for:
            self.emit(
                {
                    "type": "conversation.item.input_audio_transcription.failed",
                    "item_id": item.id,
                    "content_index": 0,
                    "error": {
                        "type": "transcription_error",
                        "code": "transcription_failed",
                        "message": f"Fake transcription failure for utterance {n}.",
                        "param": None,
                    },
                }
            )
            return
        text = item.heard_text
        for piece in split_words(text, max(1, math.ceil(len(text.split()) / 3))):
            if piece:
                self.emit(
                    {
                        "type": "conversation.item.input_audio_transcription.delta",
                        "item_id": item.id,
                        "content_index": 0,
                        "delta": piece,
                    }
                )
        audio_tokens = item.tokens()[1]
        out = text_tokens(text)
        self.emit(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item.id,
                "content_index": 0,
                "transcript": text,
                "usage": {
                    "type": "tokens",
                    "input_tokens": audio_tokens,
                    "output_tokens": out,
                    "total_tokens": audio_tokens + out,
                    "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0},
                },
            }
        )
        if self.conversation.get(item.id) is item:
            item.data["content"][0]["transcript"] = text

    def _on_output_clear(self, obj: dict[str, Any]) -> None:
        self.error(
            "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
            code="invalid_value",
            event_id=obj.get("event_id"),
        )
