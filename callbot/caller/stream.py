"""The Media Streams half of a simulated call: Twilio's side of the WebSocket, tick by tick.

One 20 ms clock drives both directions, as on a real phone leg: each tick plays one frame from
the outbound buffer (echoing marks whose audio finished) and then sends one caller frame chosen
by the script. A concurrent receiver validates and queues whatever the bot sends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from callbot.caller.audio import AudioSink
from callbot.caller.codec import FRAME_BYTES, FRAME_MS, mulaw_decode, mulaw_encode, silence_frame
from callbot.caller.playback import BURST_GAP_TICKS, PlaybackQueue, playback_stats
from callbot.caller.result import CallResult, MarkStatus
from callbot.caller.script import ScriptCursor

LATE_AFTER_STOP_S = 0.25
"""Server messages arriving this long (wall clock) after our `stop` were not in flight: a violation."""

_OUTBOUND_EVENTS = frozenset({"media", "mark", "clear"})


@dataclass(frozen=True)
class SessionConfig:
    """The call identity and clock settings a stream session needs from its caller."""

    account_sid: str
    call_sid: str
    stream_sid: str
    speed: float
    max_call_s: float
    emit: Callable[[str, dict[str, Any]], None]
    sink: AudioSink | None = None
    """Gets every tick's playback as it happens (a softphone's speaker); None records only."""


class StreamSession:
    """One Media Streams connection: the 20 ms tick loop (send + playback) and the receiver.

    `encode_frame` and `decode_frame` are the codec hooks (the load bench caches the encode and
    skips the decode, which only feeds the recording)."""

    def __init__(self, cfg: SessionConfig, ws: ClientConnection, cursor: ScriptCursor, result: CallResult):
        self.cfg = cfg
        self.ws = ws
        self.cursor = cursor
        self.result = result
        self.playback = PlaybackQueue()
        self.stream_sid = cfg.stream_sid
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.seq = 0
        self.send_lock = asyncio.Lock()
        self.started = False
        self.stopped = False
        self.ended_by_twilio: str | None = None
        """Set by `twilio_ends`: Twilio itself ended the stream (a REST hang-up or new TwiML)."""
        self.stop_ms = 0.0
        self.stop_wall = 0.0
        self.closed = False
        self.tick = 0
        self.caller_frames: list[np.ndarray] = []
        self.assistant_frames: list[np.ndarray] = []
        self.played: list[bool] = []
        self.clear_ticks: list[int] = []
        self.in_burst = False
        self.quiet_ticks = 0

    def now_ms(self) -> float:
        """Call-timeline milliseconds since the socket opened (wall time x speed)."""
        return (self.loop.time() - self.t0) * self.cfg.speed * 1000.0

    def violation(self, text: str) -> None:
        """Record a protocol mistake by the bot, with its call time."""
        message = f"{self.now_ms():.0f}ms: {text}"
        self.result.violations.append(message)
        self.cfg.emit("violation", {"text": message})

    async def send(self, message: dict[str, Any], numbered: bool = True) -> bool:
        """Send one JSON text frame; sequence numbers are assigned under the lock so they stay ordered."""
        async with self.send_lock:
            if self.stopped or self.closed:
                return False
            if numbered:
                self.seq += 1
                message["sequenceNumber"] = str(self.seq)
            try:
                await self.ws.send(orjson.dumps(message).decode())
            except ConnectionClosed:
                self.closed = True
                return False
            return True

    async def run(self) -> None:
        """Handshake messages, then tick until the script ends, the caller hangs up or the bot closes."""
        receiver = asyncio.create_task(self.receive())
        try:
            await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"}, numbered=False)
            start = {
                "accountSid": self.cfg.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.cfg.call_sid,
                "tracks": ["inbound"],
                "customParameters": dict(self.result.custom_parameters),
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            }
            self.started = True
            self.result.stream_sid = self.stream_sid
            await self.send({"event": "start", "start": start, "streamSid": self.stream_sid})
            self.cfg.emit("start", {"stream_sid": self.stream_sid, "stream_url": self.result.stream_url})
            await self.tick_loop()
            await self.hang_up()
            await asyncio.wait({receiver}, timeout=5.0)
            failure = receiver.exception() if receiver.done() and not receiver.cancelled() else None
            if failure is not None:
                raise failure
        finally:
            if not receiver.done():
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
            if self.ws.close_code is None:
                await self.ws.close()
            self.finish()

    async def tick_loop(self) -> None:
        """One 20 ms tick: play a frame, echo finished marks, let the script decide, send a frame."""
        period = FRAME_MS / 1000.0 / self.cfg.speed
        max_ticks = int(self.cfg.max_call_s * 1000 / FRAME_MS)
        while not self.closed and self.ended_by_twilio is None:
            delay = self.t0 + self.tick * period - self.loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.closed:
                return
            tick_ms = float(self.tick * FRAME_MS)
            frame, finished = self.playback.tick()
            for name in finished:
                await self.echo_mark(name, tick_ms, "played")
            self.record_playback(frame, tick_ms)
            plan = self.cursor.advance(self.tick, self.playback.playing, self.playback.empty)
            for kind, data in plan.notes:
                self.cfg.emit(kind, data)
            for digit in plan.dtmf:
                dtmf = {
                    "event": "dtmf",
                    "streamSid": self.stream_sid,
                    "dtmf": {"track": "inbound_track", "digit": digit},
                }
                if await self.send(dtmf):
                    self.result.dtmf_sent.append((digit, tick_ms))
                    self.cfg.emit("dtmf", {"digit": digit, "ms": tick_ms})
            if plan.frame is None:
                return
            payload = self.encode_frame(plan.frame) if plan.frame.any() else silence_frame()
            self.caller_frames.append(self.decode_frame(payload))
            media = {
                "track": "inbound",
                "chunk": str(self.tick + 1),
                "timestamp": str(self.tick * FRAME_MS),
                "payload": base64.b64encode(payload).decode("ascii"),
            }
            if not await self.send({"event": "media", "media": media, "streamSid": self.stream_sid}):
                return
            self.result.frames_sent += 1
            self.tick += 1
            if self.tick >= max_ticks:
                self.cfg.emit("max_call_reached", {"ms": tick_ms})
                return

    def encode_frame(self, pcm: np.ndarray) -> bytes:
        """One caller frame as mu-law."""
        return mulaw_encode(pcm)

    def decode_frame(self, payload: bytes) -> np.ndarray:
        """One mu-law frame as PCM, for the recording (and the sink)."""
        return mulaw_decode(payload)

    def record_playback(self, frame: bytes | None, tick_ms: float) -> None:
        """Append what the caller heard this tick and announce assistant bursts to the observer."""
        if frame is None:
            quiet = np.zeros(FRAME_BYTES, dtype=np.int16)
            self.assistant_frames.append(quiet)
            self.played.append(False)
            if self.cfg.sink is not None:
                self.cfg.sink.play_frame(quiet)
            self.quiet_ticks += 1
            if self.in_burst and self.quiet_ticks >= BURST_GAP_TICKS:
                self.in_burst = False
                self.cfg.emit("assistant_audio_end", {"ms": tick_ms - self.quiet_ticks * FRAME_MS + FRAME_MS})
            return
        pcm = self.decode_frame(frame)
        self.assistant_frames.append(pcm)
        self.played.append(True)
        if self.cfg.sink is not None:
            self.cfg.sink.play_frame(pcm)
        self.quiet_ticks = 0
        if not self.in_burst:
            self.in_burst = True
            self.cfg.emit("assistant_audio_start", {"ms": tick_ms})

    async def echo_mark(self, name: str, ms: float, status: MarkStatus) -> None:
        """Echo a mark back to the bot the way Twilio does, and note whether its audio was heard."""
        message = {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
        if await self.send(message):
            self.result.marks_echoed.append((name, ms, status))
            self.cfg.emit("mark_echo", {"name": name, "ms": ms, "status": status})

    async def hang_up(self) -> None:
        """Send `stop` and close, unless the bot already closed the socket."""
        if self.closed:
            return
        stop = {
            "event": "stop",
            "streamSid": self.stream_sid,
            "stop": {"accountSid": self.cfg.account_sid, "callSid": self.cfg.call_sid},
        }
        await self.send(stop)
        self.stopped = True
        self.stop_ms = self.now_ms()
        self.stop_wall = self.loop.time()
        if self.result.closed_by is None:
            self.result.closed_by = "twilio" if self.ended_by_twilio else "caller"
        self.result.twilio_ended = self.ended_by_twilio
        self.cfg.emit("hangup", {"ms": self.stop_ms, "by_twilio": self.ended_by_twilio is not None})
        await self.ws.close(1000)

    def twilio_ends(self, why: str) -> None:
        """Twilio ends the stream as it does after a REST update (`completed`, or new TwiML such as
        a `<Dial>`): the script stops at the next tick and the bot gets `stop`."""
        self.ended_by_twilio = why
        self.cfg.emit("twilio_ended", {"why": why, "ms": self.now_ms()})

    async def receive(self) -> None:
        """Read everything the bot sends until the socket closes; who closed it is recorded."""
        try:
            while True:
                raw = await self.ws.recv()
                await self.handle(raw)
        except ConnectionClosed:
            pass
        if not self.stopped and self.result.closed_by is None:
            self.result.closed_by = "server"
            self.cfg.emit("server_closed", {"ms": self.now_ms(), "code": self.ws.close_code})
        self.closed = True

    async def handle(self, raw: str | bytes) -> None:
        """Validate one message from the bot and apply it to the playback buffer."""
        ms = self.now_ms()
        if self.stopped:
            self.result.messages_after_stop += 1
            if self.loop.time() - self.stop_wall > LATE_AFTER_STOP_S:
                self.violation("message received well after stop")
            return
        if isinstance(raw, bytes):
            self.violation("binary WebSocket frame (Twilio expects JSON text)")
            return
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.violation(f"not JSON: {raw[:60]!r}")
            return
        if not isinstance(message, dict):
            self.violation("JSON message is not an object")
            return
        event = message.get("event")
        if not self.started:
            self.violation(f"{event!r} sent before start")
            return
        if event not in _OUTBOUND_EVENTS:
            self.violation(f"unexpected event {event!r} (only media/mark/clear may be sent)")
            return
        if message.get("streamSid") != self.stream_sid:
            self.violation(f"{event} with streamSid {message.get('streamSid')!r}, expected {self.stream_sid}")
            return
        if event == "media":
            self.handle_media(message, ms)
        elif event == "mark":
            await self.handle_mark(message, ms)
        else:
            pending = self.playback.clear()
            self.result.clears.append(ms)
            self.clear_ticks.append(int(ms // FRAME_MS))
            self.cfg.emit("clear", {"ms": ms, "pending_marks": pending})
            for name in pending:
                await self.echo_mark(name, ms, "cleared")

    def handle_media(self, message: dict[str, Any], ms: float) -> None:
        """Queue outbound audio after checking it is base64 of raw mu-law."""
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            self.violation("media without a string media.payload")
            return
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self.violation("media payload is not valid base64")
            return
        if not data:
            self.violation("empty media payload")
            return
        if data[:4] in (b"RIFF", b".snd"):
            self.violation("media payload has a WAV/AU file header (Twilio would play it as noise)")
        self.playback.enqueue_audio(data)
        buffered_ms = self.playback.queued_bytes / 8.0
        self.result.max_buffered_ms = max(self.result.max_buffered_ms, buffered_ms)
        self.result.frames_received += -(-len(data) // FRAME_BYTES)  # several frames a message
        self.result.media_messages_received += 1
        self.result.bytes_received += len(data)
        self.result.media_arrivals_ms.append(ms)

    async def handle_mark(self, message: dict[str, Any], ms: float) -> None:
        """Queue a mark behind the audio so far, or echo it at once when nothing is buffered."""
        mark = message.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str) or not name:
            self.violation("mark without a mark.name")
            return
        self.result.marks_received.append((name, ms))
        self.cfg.emit("mark", {"name": name, "ms": ms})
        if self.playback.enqueue_mark(name):
            await self.echo_mark(name, ms, "played")

    def finish(self) -> None:
        """Assemble both tracks and the playback statistics into the result."""
        result = self.result
        empty = np.zeros(0, dtype=np.int16)
        result.caller_audio = np.concatenate(self.caller_frames) if self.caller_frames else empty
        result.assistant_audio = np.concatenate(self.assistant_frames) if self.assistant_frames else empty
        stats = playback_stats(np.asarray(self.played, dtype=bool), self.clear_ticks)
        result.frames_played = stats.frames_played
        result.late_frames = stats.late_frames
        result.frame_lateness_ms = stats.frame_lateness_ms
        result.late_at_ms = stats.late_at_ms
        result.bursts = stats.bursts
        result.script_timeouts = self.cursor.timeouts
        result.close_code = self.ws.close_code
        result.duration_s = max(len(self.played), self.tick) * FRAME_MS / 1000.0
        self.cfg.emit("closed", {"summary": result.summary()})
