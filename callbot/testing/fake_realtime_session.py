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
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson
from websockets.exceptions import ConnectionClosed

from callbot.testing.fake_realtime_audio import AudioFormat, EnergyVad, audio_format
from callbot.testing.fake_realtime_input import InputAudio
from callbot.testing.fake_realtime_items import ItemEvents
from callbot.testing.fake_realtime_responses import Responder
from callbot.testing.fake_realtime_state import (
    SessionContext,
    SessionCore,
    merge_session,
)
from callbot.testing.protocol_check import ProtocolViolation, validate_client_event, validate_server_event

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

HOT_CLIENT = frozenset({"input_audio_buffer.append"})
HOT_SERVER = frozenset(
    {"response.output_audio.delta", "response.output_audio_transcript.delta", "response.output_text.delta"}
)
"""High-volume events whose validation/recording the load benchmark may switch off."""


@dataclass(frozen=True, slots=True)
class Close:
    """Queued after the last event to send: close the socket with this code and reason."""

    code: int
    reason: str


class Outbox(Protocol):
    """Where a session puts its encoded server events (an `asyncio.Queue` its writer drains)."""

    def put_nowait(self, item: bytes | Close, /) -> None: ...


class FakeSession:
    """Server-side state of one Realtime WebSocket session.

    Public, read-only for tests: `id`, `model`, `config` (effective session config), `received`
    (every client event, in order), `sent` (every server event, in order), `items` (the
    server-side conversation as GA item dicts, without audio), `conversation_id`, `closed`.
    `sent` is filled when an event is queued, so after a fault-injected close it may end with
    events the client never received.

    The state its parts share lives in `core` (a `SessionCore`); `input_audio`, `item_events`
    and `responder` handle the input buffer, item and response events.

    Hooks for another transport (the load benchmark's lean fake): pass `outbox` (and `ws=None`)
    to take the encoded events yourself, feed client frames to `handle` (or parsed events to
    `dispatch`), call `open` and `connection_closed`; `on_send` sees each frame the writer is
    about to send, `validates_server_event` and `new_vad` may be overridden, and
    `responder_class` paces responses.
    """

    responder_class: ClassVar[type[Responder]] = Responder

    def __init__(
        self,
        ctx: SessionContext,
        ws: ServerConnection | None,
        model: str,
        *,
        drop_after: int | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.core = SessionCore(ctx, model, self.emit)
        self.item_events = ItemEvents(self.core)
        self.responder = self.responder_class(self.core, self.item_events)
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.drop_after = drop_after
        self._queue: asyncio.Queue[bytes | Close] | None = None
        if outbox is None:
            self._queue = asyncio.Queue()
            outbox = self._queue
        self._out: Outbox = outbox
        self.input_audio = InputAudio(self.core, self.item_events, self.responder, self.new_vad)
        self.input_audio.configure()
        items, responder, audio = self.item_events, self.responder, self.input_audio
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": audio.on_append,
            "input_audio_buffer.commit": audio.on_commit,
            "input_audio_buffer.clear": audio.on_clear,
            "conversation.item.create": items.on_create,
            "conversation.item.delete": items.on_delete,
            "conversation.item.truncate": items.on_truncate,
            "conversation.item.retrieve": items.on_retrieve,
            "response.create": responder.on_create,
            "response.cancel": responder.on_cancel,
            "output_audio_buffer.clear": self._on_output_clear,
        }

    # ------------------------------------------------------------------ read-only views

    @property
    def id(self) -> str:
        return self.core.id

    @property
    def model(self) -> str:
        return self.core.model

    @property
    def ctx(self) -> SessionContext:
        return self.core.ctx

    @property
    def config(self) -> dict[str, Any]:
        return self.core.config

    @property
    def conversation_id(self) -> str:
        return self.core.conversation_id

    @property
    def closed(self) -> bool:
        return self.core.closed

    @property
    def items(self) -> list[dict[str, Any]]:
        """The conversation as the server holds it (live dicts; do not mutate)."""
        return [item.data for item in self.core.conversation.items]

    # ------------------------------------------------------------------ plumbing

    def violation(self, message: str) -> None:
        self.core.violation(message)

    def validates_server_event(self, event_type: str) -> bool:
        """Whether this server event is checked against the SDK's models before it is sent."""
        return self.core.ctx.validate or event_type not in HOT_SERVER

    def emit(self, event: dict[str, Any]) -> None:
        """Validate, record and queue one server event (no-op once the session is closing)."""
        core = self.core
        if core.closed:
            return
        event["event_id"] = core.next_event_id()
        hot = event["type"] in HOT_SERVER
        if self.validates_server_event(event["type"]):
            try:
                validate_server_event(event)
            except ProtocolViolation as exc:
                core.violation(f"server sent invalid event: {exc}")
        if core.ctx.record_audio or not hot:
            self.sent.append(event)
        self._out.put_nowait(orjson.dumps(event))

    def on_send(self, frame: bytes) -> None:
        """Called with each encoded event just before the writer sends it (a hook; no-op here)."""

    def open(self) -> None:
        """Greet the client with `session.created` (the first thing a session sends)."""
        self.emit({"type": "session.created", "session": copy.deepcopy(self.core.config)})

    def connection_closed(self) -> None:
        """The connection is gone: emit nothing more and stop streaming responses."""
        self.core.closed = True
        self.responder.cancel_all()

    def append_audio(self, data: bytes) -> None:
        """Appended audio, already decoded from base64 (the load bench's lean path)."""
        self.input_audio.append(data)

    def drop_buffered_audio(self) -> None:
        """Forget the input audio buffer (a finished session kept only for its records)."""
        self.input_audio.drop()

    async def run(self) -> None:
        """Serve the connection until it closes."""
        assert self.ws is not None, "run() serves a websocket; without one, feed handle()"
        writer = asyncio.create_task(self._write_loop())
        self.open()
        try:
            async for message in self.ws:
                self.handle(message)
        except ConnectionClosed:
            pass
        finally:
            self.connection_closed()
            if not writer.done():
                writer.cancel()

    async def _write_loop(self) -> None:
        assert self.ws is not None and self._queue is not None
        try:
            while True:
                frame = await self._queue.get()
                if isinstance(frame, Close):
                    await self.ws.close(frame.code, frame.reason)
                    return
                self.on_send(frame)
                await self.ws.send(frame, text=True)
                if self.drop_after is not None:
                    self.drop_after -= 1
                    if self.drop_after <= 0:
                        self.core.closed = True
                        await self.ws.close(1011, "fake: connection dropped")
                        return
        except ConnectionClosed:
            self.core.closed = True

    def close_after_pending(self, code: int, reason: str) -> None:
        """Close once everything already emitted has been written; later events are dropped."""
        if not self.core.closed:
            self._out.put_nowait(Close(code, reason))
            self.core.closed = True

    async def abort(self, code: int = 1011, reason: str = "fake: connection dropped") -> None:
        """Close right now, discarding queued events."""
        self.connection_closed()
        if self.ws is not None:
            await self.ws.close(code, reason)

    def expire(self, minutes: int = 60, code: int = 1001) -> None:
        """Send the real `session_expired` error, then close."""
        self.core.error(
            f"Your session hit the maximum duration of {minutes} minutes.", code="session_expired"
        )
        self.close_after_pending(code, "session expired")

    # ------------------------------------------------------------------ dispatch

    def handle(self, message: str | bytes) -> None:
        """Process one client frame."""
        core = self.core
        if isinstance(message, bytes):
            core.violation("client sent a binary frame")
            core.error("Binary frames are not supported; send JSON text frames.", code="invalid_json")
            return
        try:
            obj = orjson.loads(message)
        except orjson.JSONDecodeError:
            core.violation(f"client sent invalid JSON: {message[:80]!r}")
            core.error("We could not parse the JSON body of your request.", code="invalid_json")
            return
        etype = obj.get("type") if isinstance(obj, dict) else None
        hot = etype in HOT_CLIENT
        if core.ctx.record_audio or not hot:
            self.received.append(obj)
        if core.ctx.validate or not hot:
            try:
                validate_client_event(obj)
            except ProtocolViolation as exc:
                core.violation(f"client sent invalid event: {exc}")
                event_id = obj.get("event_id") if isinstance(obj, dict) else None
                core.error(exc.message, code=exc.code, param=exc.param, event_id=event_id)
                return
        self.dispatch(obj)

    def dispatch(self, obj: dict[str, Any]) -> None:
        """Apply one parsed client event (already recorded and validated, or deliberately not)."""
        etype = obj.get("type")
        handler = self._handlers.get(str(etype))
        if handler is None:
            self.core.error(f"Invalid value: '{etype}'.", code="invalid_value", param="type")
            return
        try:
            handler(obj)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # only reachable with validate=False
            self.core.violation(f"client event {etype} could not be handled: {exc!r}")
            self.core.error(
                f"Invalid '{etype}' event: {exc}", code="invalid_value", event_id=obj.get("event_id")
            )

    # ------------------------------------------------------------------ session

    def new_vad(
        self,
        fmt: AudioFormat,
        *,
        threshold: float,
        prefix_padding_ms: int,
        silence_duration_ms: int,
        base_ms: float,
    ) -> EnergyVad:
        """The server VAD for input audio in `fmt` (a hook: the load bench measures loudness in C)."""
        return EnergyVad(
            fmt.rate,
            threshold=threshold,
            prefix_padding_ms=prefix_padding_ms,
            silence_duration_ms=silence_duration_ms,
            base_ms=base_ms,
        )

    def _on_session_update(self, obj: dict[str, Any]) -> None:
        update = obj["session"]
        eid = obj.get("event_id")
        if update.get("type") != "realtime":
            self.core.error(
                "The fake server only supports session.type 'realtime'.",
                code="invalid_value",
                param="session.type",
                event_id=eid,
            )
            return
        merged = merge_session(self.core.config, update)
        for direction in ("input", "output"):
            if audio_format(merged["audio"][direction]["format"]) is None:
                self.core.error(
                    f"The fake server does not implement {merged['audio'][direction]['format']['type']}.",
                    code="invalid_value",
                    param=f"session.audio.{direction}.format",
                    event_id=eid,
                )
                return
        voice = self.core.config["audio"]["output"].get("voice")
        if self.responder.voice_locked and merged["audio"]["output"].get("voice") != voice:
            self.core.error(
                "Cannot update a conversation's voice if assistant audio is present.",
                code="cannot_update_voice",
                param="session.audio.output.voice",
                event_id=eid,
            )
            return
        self.core.config = merged
        self.input_audio.configure()
        self.core.emit({"type": "session.updated", "session": copy.deepcopy(self.core.config)})
        self.responder.mcp.session_updated()  # a newly declared MCP server's tools are listed

    def _on_output_clear(self, obj: dict[str, Any]) -> None:
        self.core.error(
            "output_audio_buffer.clear is only supported for WebRTC and SIP connections.",
            code="invalid_value",
            event_id=obj.get("event_id"),
        )
