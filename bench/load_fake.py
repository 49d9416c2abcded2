"""The load benchmark's fake OpenAI Realtime process, with timestamps for the latency joins.

    python bench/load_fake.py --out fake.json --cpu 1 [--realtime-factor 4 --delta-ms 100]

It is `callbot.testing.fake_realtime.FakeRealtimeServer` in benchmark mode (`validate=False`,
`record_audio=False`) with a session subclass that records, with `time.monotonic_ns()`
(CLOCK_MONOTONIC, one clock for every process on the machine), through the fake's public
hooks (`create_session` / `session_closed` on the server; `handle`, `emit`, `on_send`,
`validates_server_event`, `new_vad`, an `outbox` and `responder_class` on the session):

* the arrival of every `input_audio_buffer.append` (taken when the session handles the frame);
* the moment each `input_audio_buffer.speech_started` is written to the socket;
* the moment the first `response.output_audio.delta` of each response is written;

and counts every event type each way (appends as their timestamps) and the `error` events it
sent, so the benchmark can compare message counts between servers.

Sessions are keyed by the `bench_call` query parameter the bench connector adds (the Twilio
CallSid); a peer server's sessions (load_bench `--peer`) have no such parameter and are
joined to their calls by the orchestrator. Closed sessions keep only these timestamps (their
audio buffer is dropped), so a long leak check does not grow this process. On SIGINT/SIGTERM
it writes everything, plus its own event-loop lag, to `--out` as JSON and exits. Prints
`{"ready": true, "port": ...}` first.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import gc
import os
import signal
import sys
import time
import warnings
import zlib
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

with warnings.catch_warnings():  # deprecated in 3.11-3.12 (PEP 594); the audioop-lts package from 3.13
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lean_ws
import load_common as lc
import orjson
from websockets.asyncio.server import ServerConnection

from callbot.testing.fake_realtime import FakeRealtimeServer
from callbot.testing.fake_realtime_audio import PCM24K, PCMU, AudioFormat, EnergyVad
from callbot.testing.fake_realtime_responses import ActiveResponse, Responder
from callbot.testing.fake_realtime_session import HOT_SERVER, Close, FakeSession, Outbox
from callbot.testing.fake_realtime_state import Script, SessionContext
from callbot.testing.speech import duration_ms_for_text

APPEND_PREFIX = '{"type":"input_audio_buffer.append"'
APPEND_HEAD = b'{"type":"input_audio_buffer.append","audio":"'
SPEECH_PREFIX = b'{"type":"input_audio_buffer.speech_started"'
DELTA_PREFIX = b'{"type":"response.output_audio.delta","response_id":"'

REPLIES = [
    "Sure, I can help you with that today.",
    "Let me check that for you right now.",
    "Okay, I have found your account here.",
    "Thanks. Could you confirm your postcode?",
    "Got it. Is there anything else at all?",
    "I see. That should be fixed by Friday.",
    "Alright, I've booked that in for you.",
    "No problem, one moment while I look.",
    "Yes, the technician arrives at ten.",
    "Understood. I'll send a text message.",
    "Right, your bill is thirty dollars.",
    "Perfect, that is all sorted for you.",
]
"""Replies of 2.1-2.9 s of audio each (the fake speaks 14 characters per second)."""


class BenchSession(FakeSession):
    def __init__(
        self,
        ctx: SessionContext,
        ws: ServerConnection | None,
        model: str,
        call: str,
        *,
        drop_after: int | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        super().__init__(ctx, ws, model, drop_after=drop_after, outbox=outbox)
        self.call = call
        self.opened_ns = time.monotonic_ns()
        self.append_ns = array("q")
        self.speech_started_ns = array("q")
        self.first_delta_ns = array("q")
        self.responses_with_audio: set[bytes] = set()
        self.client_events: dict[str, int] = {}
        """Client events by type, appends excepted (they are `append_ns`)."""
        self.server_events: dict[str, int] = {}
        self.errors: list[str] = []
        """The first error events this fake sent (code: message)."""

    def count_client(self, obj: Any) -> None:
        etype = str(obj.get("type")) if type(obj) is dict else "(not an object)"
        self.client_events[etype] = self.client_events.get(etype, 0) + 1

    def count_server(self, event: dict[str, Any]) -> None:
        etype = event["type"]
        self.server_events[etype] = self.server_events.get(etype, 0) + 1
        if etype == "error" and len(self.errors) < 20:
            err = event.get("error") or {}
            self.errors.append(f"{err.get('code')}: {str(err.get('message'))[:100]}")

    def handle(self, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith(APPEND_PREFIX):
            self.append_ns.append(time.monotonic_ns())
        else:  # rare (a few per call): the extra parse only counts the type
            try:
                self.count_client(orjson.loads(message))
            except orjson.JSONDecodeError:
                self.count_client(None)
        super().handle(message)

    def emit(self, event: dict[str, Any]) -> None:
        if not self.closed:
            self.count_server(event)
        super().emit(event)

    def on_send(self, frame: bytes) -> None:
        """Timestamp a frame about to be written if it is a speech_started or a response's first delta."""
        if frame.startswith(DELTA_PREFIX):
            start = len(DELTA_PREFIX)
            rid = frame[start : frame.index(b'"', start)]
            if rid not in self.responses_with_audio:
                self.responses_with_audio.add(rid)
                self.first_delta_ns.append(time.monotonic_ns())
        elif frame.startswith(SPEECH_PREFIX):
            self.speech_started_ns.append(time.monotonic_ns())

    def export(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "opened_ns": self.opened_ns,
            "closed_ns": time.monotonic_ns(),
            "append_ns": list(self.append_ns),
            "speech_started_ns": list(self.speech_started_ns),
            "first_delta_ns": list(self.first_delta_ns),
            "utterances": self.core.progress.utterances,
            "appends": len(self.append_ns),
            "client_events": self.client_events,
            "server_events": self.server_events,
            "errors": self.errors,
        }


# ----------------------------------------------------------------------------- the lean transport


class LeanVad(EnergyVad):
    """`EnergyVad`'s state machine, with each 10 ms window's loudness measured by `audioop.rms`.

    It still listens to the audio (RMS of every 10 ms window of what the client appended against
    the same threshold), but in C on the raw bytes: no numpy decode, float conversion and einsum
    per append, which were most of the fake's per-append cost. mu-law is expanded with
    `audioop.ulaw2lin` (standard G.711) first.
    """

    def __init__(self, fmt: AudioFormat, vad: EnergyVad) -> None:
        super().__init__(
            fmt.rate,
            threshold=0.5,
            prefix_padding_ms=vad.prefix_padding_ms,
            silence_duration_ms=vad.silence_duration_ms,
            base_ms=vad.base_ms,
        )
        self.level = vad.level
        self._ulaw = fmt.type == "audio/pcmu"
        self._wbytes = self.window * fmt.bytes_per_sample
        self._raw = b""

    def skip_residual(self) -> None:
        samples = len(self._raw) // (1 if self._ulaw else 2)
        self.base_ms += samples * 1000 / self.rate
        self._raw = b""

    def feed_bytes(self, data: bytes) -> Sequence[tuple[str, int]]:
        """Consume encoded audio; return ("start", audio_start_ms) / ("stop", audio_end_ms) events."""
        wb = self._wbytes
        if self._raw or len(data) % wb:  # a partial window is pending or left over
            data = self._raw + data
            whole = len(data) // wb
            self._raw = data[whole * wb :]
            if whole == 0:
                return ()
            data = data[: whole * wb]
        else:  # the usual 20 ms append: whole windows
            whole = len(data) // wb
        pcm = audioop.ulaw2lin(data, 2) if self._ulaw else data
        level = self.level
        if audioop.max(pcm, 2) < level:  # no sample reaches the RMS threshold: every window is quiet
            return self.advance([False] * whole)
        step = self.window * 2
        loud = [audioop.rms(pcm[k : k + step], 2) >= level for k in range(0, whole * step, step)]
        return self.advance(loud)  # EnergyVad's state machine on these loudness flags

    def feed_audio(self, fmt: AudioFormat, data: bytes) -> Sequence[tuple[str, int]]:
        """The VAD on the raw bytes (audioop), not on a decoded numpy array (`fmt` is this VAD's:
        the session builds a new one when the input format changes)."""
        return self.feed_bytes(data)


VALIDATE_FIRST = 20
_VALIDATED: dict[str, int] = {}
"""Per server event type: how many the lean fake has validated in this process."""


class _DirectOut:
    """FakeSession's outbox on a lean connection: each emitted frame is written at once."""

    __slots__ = ("conn", "session")

    def __init__(self, session: BenchSession, conn: lean_ws.WsServer) -> None:
        self.session = session
        self.conn = conn

    def put_nowait(self, frame: bytes | Close, /) -> None:
        if isinstance(frame, Close):
            self.conn.close(frame.code, frame.reason)
            return
        self.session.on_send(frame)
        self.conn.send_text(frame)


class LeanResponder(Responder):
    """Responses paced by a chain of timer callbacks instead of a task asleep between deltas:
    the same events at the same times (t0 + i x interval), the same checks (`Responder.stream`)."""

    async def stream(self, resp: ActiveResponse) -> None:
        loop = asyncio.get_running_loop()
        core = self.core
        steps = resp.steps
        interval = self.delta_interval_s()
        if core.script.first_delta_delay_ms > 0:
            await asyncio.sleep(core.script.first_delta_delay_ms / 1000)
        t0 = loop.time()

        def step(i: int) -> None:
            if resp.finished or core.closed:
                return
            if i >= steps:
                self.finish(resp, "completed")
                return
            self.send_delta(resp, i)
            if i + 1 >= steps:
                self.finish(resp, "completed")
            elif interval:
                loop.call_at(t0 + (i + 1) * interval, step, i + 1)
            else:
                loop.call_soon(step, i + 1)

        step(0)


class LeanBenchSession(BenchSession):
    """BenchSession on a `lean_ws` connection: client frames are handled as they are read and
    server events are written as they are emitted (no reader loop, queue or writer task), the
    VAD is `LeanVad` and responses are paced by `LeanResponder`. Appends are timestamped when
    the bytes carrying them were read."""

    responder_class = LeanResponder

    def __init__(self, ctx: SessionContext, conn: lean_ws.WsServer, model: str, call: str) -> None:
        super().__init__(ctx, None, model, call, outbox=_DirectOut(self, conn))
        self.lean_appends = not (ctx.validate or ctx.record_audio)
        """Appends may skip the generic handler: they are neither validated nor recorded."""

    def receive(self, text: str, now_ns: int) -> None:
        """One client text frame: `FakeSession.handle`, with a direct path for appends.

        For an append the generic handler would only parse it and dispatch it (appends are
        neither recorded nor validated in benchmark mode), so this does just that.
        Appends in the bridge's exact JSON shape do not even get here (`FakeConn.on_text_bytes`).
        """
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is dict and obj.get("type") == "input_audio_buffer.append":
            self.append_ns.append(now_ns)
            if self.lean_appends:
                self.dispatch(obj)
                return
        else:
            self.count_client(obj)
        FakeSession.handle(self, text)

    def validates_server_event(self, event_type: str) -> bool:
        """As FakeSession's, except that in benchmark mode the fake's own non-audio events are
        validated against the SDK models only the first `VALIDATE_FIRST` times per event type in
        this process (they are built by the same code every time; a pydantic validation of each
        costs ~100 µs). Client events (what the server under test sends) are still validated
        every time."""
        ctx = self.ctx
        if ctx.validate or ctx.record_audio or event_type in HOT_SERVER:
            return super().validates_server_event(event_type)  # not benchmark mode, or audio
        seen = _VALIDATED.get(event_type, 0)
        if seen >= VALIDATE_FIRST:
            return False
        _VALIDATED[event_type] = seen + 1
        return True

    def new_vad(
        self,
        fmt: AudioFormat,
        *,
        threshold: float,
        prefix_padding_ms: int,
        silence_duration_ms: int,
        base_ms: float,
    ) -> EnergyVad:
        vad = super().new_vad(
            fmt,
            threshold=threshold,
            prefix_padding_ms=prefix_padding_ms,
            silence_duration_ms=silence_duration_ms,
            base_ms=base_ms,
        )
        return LeanVad(fmt, vad)


class FakeConn(lean_ws.WsServer):
    """One Realtime websocket on the lean fake: the upgrade checks of FakeRealtimeServer, then a
    LeanBenchSession fed synchronously from `data_received`."""

    timestamps = True
    max_size = 16 * 2**20

    def __init__(self, server: LeanFakeServer) -> None:
        super().__init__()
        self.server = server
        self.session: LeanBenchSession | None = None

    def accept_request(self, path: str, headers: dict[str, str]) -> tuple[int, str, str] | None:
        if not urlsplit(path).path.rstrip("/").endswith("/realtime"):
            return 404, "Not Found", "Not found: the fake serves .../realtime"
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return 401, "Unauthorized", "Missing bearer authentication in header"
        return None

    def on_open(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        model = (query.get("model") or ["gpt-realtime"])[0]
        call = (query.get(lc.CALL_QUERY) or [""])[0]
        session = self.session = LeanBenchSession(self.server.context, self, model, call)
        self.server.open.add(session)
        self.server.conns.add(self)
        session.open()

    def data_received(self, data: bytes) -> None:
        # What nearly every read carries: one masked, unfinished-by-nothing text frame of 126-65535
        # bytes holding one append. Its header is checked here directly (FIN + text, no reserved
        # bits, masked, 16-bit length, nothing else in the read) to save the generic frame loop.
        if (
            len(data) > 8
            and data[0] == 0x81
            and data[1] == 0xFE
            and len(data) == 8 + ((data[2] << 8) | data[3])
            and self.state == lean_ws.OPEN
            and self._plain
            and not self._buf
        ):
            self.on_text_bytes(lean_ws.apply_mask(data[8:], data[4:8]), time.monotonic_ns())
            return
        super().data_received(data)

    def on_text_bytes(self, data: bytes, now_ns: int) -> None:
        session = self.session
        assert session is not None
        # Appends as the bridge sends them, `{"type":"input_audio_buffer.append","audio":"<base64>"}`,
        # are taken apart without a JSON parse: base64 has no quote, backslash or non-ASCII byte,
        # so when the strict decode accepts the middle, the frame was exactly that JSON object.
        if data.startswith(APPEND_HEAD) and data.endswith(b'"}') and session.lean_appends:
            try:
                audio = binascii.a2b_base64(data[len(APPEND_HEAD) : -2], strict_mode=True)
            except (binascii.Error, ValueError):
                pass  # not that exact shape: the generic path decides (and answers errors)
            else:
                session.append_ns.append(now_ns)
                try:
                    session.append_audio(audio)
                except Exception as exc:  # noqa: BLE001 - a fake bug shows up as a violation (as below)
                    session.violation(f"fake failed handling an append: {exc!r}")
                return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.invalid_utf8()
            return
        try:
            session.receive(text, now_ns)
        except Exception as exc:  # noqa: BLE001 - a fake bug must show up as a violation, not kill the connection
            session.violation(f"fake failed handling {text[:60]!r}: {exc!r}")

    def on_binary(self, data: bytes) -> None:
        if self.session is not None:
            self.session.handle(data)  # a violation + an error event, as FakeSession does

    def on_closed(self) -> None:
        self.server.conns.discard(self)
        session = self.session
        if session is None:
            return
        session.connection_closed()
        self.server.open.discard(session)
        self.server.finished.append(session.export())
        session.drop_buffered_audio()  # keep only the timestamps of closed sessions


class LeanFakeServer:
    """The benchmark's fake Realtime server on `lean_ws` (same sessions, same JSON, less CPU).

    Like `FakeRealtimeServer(script, validate=False, record_audio=False)`: every non-audio event
    is still validated against the SDK's models in both directions; appends and deltas are not.
    """

    def __init__(
        self,
        script: Script,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        validate: bool = False,
        record_audio: bool = False,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._ctx = SessionContext(script, validate=validate, record_audio=record_audio)
        self.finished: list[dict[str, Any]] = []
        self.open: set[LeanBenchSession] = set()
        self.conns: set[FakeConn] = set()
        self._server: asyncio.Server | None = None

    @property
    def violations(self) -> list[str]:
        return self._ctx.violations

    @property
    def context(self) -> SessionContext:
        return self._ctx

    @property
    def port(self) -> int:
        assert self._server is not None, "LeanFakeServer is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: FakeConn(self), self.host, self._requested_port)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.conns):
            conn.close(1001, "fake: server shutting down")
        waiters = [conn.closed_waiter for conn in list(self.conns)]
        if waiters:
            await asyncio.wait(waiters, timeout=2.0)
        for conn in list(self.conns):
            conn.abort()
        await self._server.wait_closed()

    async def __aenter__(self) -> LeanFakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# ----------------------------------------------------------------------------- websockets transport


class BenchFakeServer(FakeRealtimeServer):
    def __init__(self, script: Script, **kwargs: Any) -> None:
        super().__init__(script, validate=False, record_audio=False, **kwargs)
        self.finished: list[dict[str, Any]] = []
        self.open: set[BenchSession] = set()

    def create_session(self, ws: ServerConnection, model: str, *, drop_after: int | None) -> FakeSession:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        call = (query.get(lc.CALL_QUERY) or [""])[0]
        session = BenchSession(self.context, ws, model, call, drop_after=drop_after)
        self.open.add(session)
        return session

    def session_closed(self, session: FakeSession) -> None:
        assert isinstance(session, BenchSession)
        self.sessions.remove(session)  # a closed session lives on only as its timestamps
        self.open.discard(session)
        self.finished.append(session.export())
        session.drop_buffered_audio()


def prewarm_synth(ctx: SessionContext) -> None:
    """Synthesise (and cache) every line the fake will say, in both formats, before any call:
    otherwise the first reply of each text costs ~20 ms of CPU in the middle of a level."""
    delta_ms = max(10, int(ctx.script.delta_ms))
    for text in dict.fromkeys([ctx.script.greeting, *ctx.script.replies]):
        seed = zlib.crc32(text.encode()) & 0xFFFF
        for fmt in (PCM24K, PCMU):
            ctx.synth_chunks(fmt, duration_ms_for_text(text), seed, delta_ms)


async def serve(args: argparse.Namespace) -> None:
    script = Script(
        replies=REPLIES * 20,
        realtime_factor=args.realtime_factor,
        delta_ms=args.delta_ms,
        first_delta_delay_ms=args.first_delta_delay_ms,
    )
    monitor = lc.LagMonitor(0.010)
    monitor.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server_cls: Any = LeanFakeServer if args.impl == "lean" else BenchFakeServer
    async with server_cls(script, host=args.host, port=args.port) as server:
        prewarm_synth(server.context)
        # Load-generator hygiene: without this, full collections of the ~150k objects imported at
        # start-up stall this loop for ~50 ms every few seconds and show up as inbound latency.
        gc.collect()
        gc.freeze()
        ready = {"ready": True, "port": server.port, "pid": os.getpid(), "impl": args.impl}
        print(orjson.dumps(ready).decode(), flush=True)
        await stop.wait()
        sessions = server.finished + [s.export() for s in server.open]
        data = {
            "sessions": sessions,
            "violations": server.violations[:200],
            "violation_count": len(server.violations),
            "lag": monitor.export(),
            "impl": args.impl,
        }
        args.out.write_bytes(orjson.dumps(data))
        monitor.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu", default="1")
    parser.add_argument("--realtime-factor", type=float, default=4.0)
    parser.add_argument("--delta-ms", type=int, default=100)
    parser.add_argument("--first-delta-delay-ms", type=float, default=0.0)
    parser.add_argument(
        "--impl",
        choices=["lean", "websockets"],
        default="lean",
        help="transport: lean_ws (default) or the websockets server FakeRealtimeServer uses",
    )
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    lc.pin(lc.parse_cpus(args.cpu))
    lc.run_loop(serve(args), use_uvloop=not args.no_uvloop)


if __name__ == "__main__":
    main()
