"""The load benchmark's fake OpenAI Realtime process, with timestamps for the latency joins.

    python bench/load_fake.py --out fake.json --cpu 1 [--realtime-factor 4 --delta-ms 100]

It is `callbot.sim.fake_realtime.FakeRealtimeServer` in benchmark mode (`validate=False`,
`record_audio=False`) with a session subclass that records, with `time.monotonic_ns()`
(CLOCK_MONOTONIC, one clock for every process on the machine):

* the arrival of every `input_audio_buffer.append` (taken when the session handles the frame);
* the moment each `input_audio_buffer.speech_started` is written to the socket;
* the moment the first `response.output_audio.delta` of each response is written.

Sessions are keyed by the `bench_call` query parameter the bench connector adds (the Twilio
CallSid). Closed sessions keep only these timestamps (their audio buffer is dropped), so a
long leak check does not grow this process. On SIGINT/SIGTERM it writes everything, plus its
own event-loop lag, to `--out` as JSON and exits. Prints `{"ready": true, "port": ...}` first.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import time
from array import array
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import load_common as lc
import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from callbot.sim.fake_realtime import FakeRealtimeServer
from callbot.sim.fake_realtime_session import FakeSession, SessionContext, _Close
from callbot.sim.fake_realtime_state import Script

APPEND_PREFIX = '{"type":"input_audio_buffer.append"'
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
    def __init__(self, ctx: SessionContext, ws: ServerConnection, model: str, call: str) -> None:
        super().__init__(ctx, ws, model)
        self.call = call
        self.opened_ns = time.monotonic_ns()
        self.append_ns = array("q")
        self.speech_started_ns = array("q")
        self.first_delta_ns = array("q")
        self.responses_with_audio: set[bytes] = set()

    def handle(self, message: str | bytes) -> None:
        if isinstance(message, str) and message.startswith(APPEND_PREFIX):
            self.append_ns.append(time.monotonic_ns())
        super().handle(message)

    async def _write_loop(self) -> None:
        """FakeSession._write_loop (no fault injection) with send timestamps for tagged events."""
        try:
            while True:
                frame = await self._out.get()
                if isinstance(frame, _Close):
                    await self.ws.close(frame.code, frame.reason)
                    return
                if frame.startswith(DELTA_PREFIX):
                    start = len(DELTA_PREFIX)
                    rid = frame[start : frame.index(b'"', start)]
                    if rid not in self.responses_with_audio:
                        self.responses_with_audio.add(rid)
                        self.first_delta_ns.append(time.monotonic_ns())
                elif frame.startswith(SPEECH_PREFIX):
                    self.speech_started_ns.append(time.monotonic_ns())
                await self.ws.send(frame, text=True)
        except ConnectionClosed:
            self.closed = True

    def export(self) -> dict[str, Any]:
        return {
            "call": self.call,
            "opened_ns": self.opened_ns,
            "closed_ns": time.monotonic_ns(),
            "append_ns": list(self.append_ns),
            "speech_started_ns": list(self.speech_started_ns),
            "first_delta_ns": list(self.first_delta_ns),
            "utterances": self._utterances,
        }


class BenchFakeServer(FakeRealtimeServer):
    def __init__(self, script: Script, **kwargs: Any) -> None:
        super().__init__(script, validate=False, record_audio=False, **kwargs)
        self.finished: list[dict[str, Any]] = []
        self.open: set[BenchSession] = set()

    async def _handle(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        model = (query.get("model") or ["gpt-realtime"])[0]
        call = (query.get(lc.CALL_QUERY) or [""])[0]
        session = BenchSession(self._ctx, ws, model, call)
        self.open.add(session)
        try:
            await session.run()
        finally:
            self.open.discard(session)
            self.finished.append(session.export())
            session._buf = bytearray()  # keep only the timestamps of closed sessions


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
    async with BenchFakeServer(script, host=args.host, port=args.port) as server:
        # Load-generator hygiene: without this, full collections of the ~150k objects imported at
        # start-up stall this loop for ~50 ms every few seconds and show up as inbound latency.
        gc.collect()
        gc.freeze()
        print(orjson.dumps({"ready": True, "port": server.port, "pid": os.getpid()}).decode(), flush=True)
        await stop.wait()
        sessions = server.finished + [s.export() for s in server.open]
        data = {
            "sessions": sessions,
            "violations": server.violations[:200],
            "violation_count": len(server.violations),
            "lag": monitor.export(),
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
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    lc.pin(lc.parse_cpus(args.cpu))
    lc.run_loop(serve(args), use_uvloop=not args.no_uvloop)


if __name__ == "__main__":
    main()
