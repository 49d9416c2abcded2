"""The load benchmark's caller process: many concurrent simulated Twilio callers at real-time pace.

    python bench/load_callers.py --spec spec.json --out callers.json --cpu 1

`spec.json` (written by bench/load_bench.py): {"base_url", "seconds", "record", "impl",
"calls": [{"sid", "start_ns", "seed", "barge"}]}, and optionally "webhook_path" (default
`/twilio/voice`; a peer server's, e.g. `/incoming-call`), "opening_ms" (open the call with this
much silence instead of waiting for a greeting: for a server that does not speak first) and
"jitter" ({"every_s", "min_ms", "max_ms"}: network jitter, lean callers only; see
`lean_caller.jitter_schedule`). Each call starts at its `start_ns`
(CLOCK_MONOTONIC, shared by all processes) and places a call for `seconds` of call time with a
scripted conversation (see `build_script`): signed webhook, signed Media Streams socket, one
20 ms media frame every tick, Twilio's playback buffer with marks and clears.

Two implementations, same behaviour and the same JSON out:

* `"impl": "lean"` (default): `lean_caller.LeanTwilioCaller` (bench/lean_caller.py): the
  simulator's webhook and TwiML handling, then a lean websocket, one process-wide 20 ms clock
  and pre-built media messages. About 4x cheaper per call than the simulator.
* `"impl": "simulator"`: the caller simulator itself (`callbot.caller.simulator.TwilioCaller`),
  with the timestamps added through its public hooks (`TwilioCaller.new_stream_session`,
  `StreamSession.encode_frame` / `decode_frame`; no monkeypatching). By default
  it does not keep its recording (the mu-law encode of the caller's audio is cached and the
  decode of both tracks for the WAV is skipped); `"record": true` runs it unchanged.

Both record `time.monotonic_ns()` of every media frame sent, every media and clear message
received, and how late each frame left against its 20 ms tick. Prints a JSON status line every
0.5 s (active, done, errors, its own loop lag) and writes every call's result and timestamps to
`--out` when all calls are over.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import sys
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import lean_caller
import load_common as lc
import numpy as np
import orjson
from websockets.asyncio.client import ClientConnection

from callbot.caller.codec import mulaw_encode
from callbot.caller.script import ScriptCursor
from callbot.caller.simulator import (
    CallResult,
    HangUp,
    Say,
    SayDuringAssistant,
    Silence,
    Step,
    TwilioCaller,
    WaitForAssistant,
)
from callbot.caller.stream import SessionConfig, StreamSession
from callbot.testing.speech import synth_speech

MEDIA_IN = '{"event":"media"'
CLEAR_IN = '{"event":"clear"'
TURN_CLIPS = [synth_speech(1500, 8000, seed=500 + k) for k in range(8)]
BARGE_CLIPS = [synth_speech(1200, 8000, seed=600 + k) for k in range(4)]

EXTRA: dict[str, dict[str, Any]] = {}
"""Per-call timestamps collected by BenchStreamSession, keyed by CallSid."""


def build_script(seed: int, barge: bool, seconds: float, opening_ms: int | None = None) -> list[Step]:
    """A caller who speaks ~1.5 s every ~6 s; a barge-in caller talks over every second reply
    (the first, third, ...).

    The greeting is awaited first (or, with `opening_ms`, that much silence is sent instead: the
    same script for a server that does not speak first). A normal turn is 1.5 s of speech then
    4-5 s of silence (the fake answers after its 500 ms end-of-turn silence with 2-3 s of
    audio). A barge-in turn is 1.5 s of speech, then 1.2 s of speech started 0.6-1.0 s into the
    reply (the server must clear Twilio's buffer), then 3-4 s of silence while the reply to that
    plays.
    """
    rng = random.Random(seed)
    opening: Step = (
        WaitForAssistant(timeout_s=10, quiet_ms=300) if opening_ms is None else Silence(opening_ms)
    )
    steps: list[Step] = [opening]
    planned = 5.0
    turn = 0
    while planned < seconds + 12:
        steps.append(Say(TURN_CLIPS[rng.randrange(len(TURN_CLIPS))], label=f"turn {turn}"))
        if barge and turn % 2 == 0:
            after = rng.choice([600, 800, 1000])
            clip = BARGE_CLIPS[rng.randrange(len(BARGE_CLIPS))]
            steps.append(SayDuringAssistant(clip, after_ms=after, timeout_s=5, label=f"barge-in {turn}"))
            silence = 3000 + rng.randrange(1000)
            steps.append(Silence(silence))
            planned += 1.5 + 0.6 + after / 1000 + 1.2 + silence / 1000
        else:
            silence = 4000 + rng.randrange(1000)
            steps.append(Silence(silence))
            planned += 1.5 + silence / 1000
        turn += 1
    steps.append(HangUp())
    return steps


_ENCODE_CACHE: dict[bytes, bytes] = {}
_EMPTY = np.zeros(0, dtype=np.int16)


class BenchStreamSession(StreamSession):
    """The simulator's stream session plus send/receive timestamps (CLOCK_MONOTONIC ns).

    `lean`: the simulator's recording is skipped (no decode) and its caller-audio encode cached."""

    def __init__(
        self,
        cfg: SessionConfig,
        ws: ClientConnection,
        cursor: ScriptCursor,
        result: CallResult,
        *,
        lean: bool,
    ) -> None:
        super().__init__(cfg, ws, cursor, result)
        self.lean = lean
        self.t0_ns = time.monotonic_ns()
        self.send_ns = array("q")
        self.send_late_us = array("q")
        self.media_in_ns = array("q")
        self.clear_ns = array("q")
        self.period_ns = int(20e6 / self.cfg.speed)

    def encode_frame(self, pcm: np.ndarray) -> bytes:
        if not self.lean:
            return super().encode_frame(pcm)
        key = pcm.tobytes()
        out = _ENCODE_CACHE.get(key)
        if out is None:
            out = _ENCODE_CACHE[key] = mulaw_encode(pcm)
        return out

    def decode_frame(self, payload: bytes) -> np.ndarray:
        return _EMPTY if self.lean else super().decode_frame(payload)

    async def send(self, message: dict[str, Any], numbered: bool = True) -> bool:
        if message.get("event") == "media" and not (self.stopped or self.closed):
            now = time.monotonic_ns()
            self.send_ns.append(now)
            self.send_late_us.append((now - self.t0_ns - self.tick * self.period_ns) // 1000)
        return await super().send(message, numbered)

    async def handle(self, raw: str | bytes) -> None:
        if isinstance(raw, str) and not self.stopped:
            if raw.startswith(MEDIA_IN):
                self.media_in_ns.append(time.monotonic_ns())
            elif raw.startswith(CLEAR_IN):
                self.clear_ns.append(time.monotonic_ns())
        await super().handle(raw)

    def finish(self) -> None:
        super().finish()
        EXTRA[self.cfg.call_sid] = {
            "t0_ns": self.t0_ns,
            "send_ns": list(self.send_ns),
            "send_late_us": list(self.send_late_us),
            "media_in_ns": list(self.media_in_ns),
            "clear_ns": list(self.clear_ns),
        }


class BenchTwilioCaller(TwilioCaller):
    """The simulator itself, its streams run by `BenchStreamSession`."""

    def __init__(self, base_url: str, *, lean: bool, **kw: Any) -> None:
        super().__init__(base_url, **kw)
        self.lean = lean

    def new_stream_session(
        self, config: SessionConfig, ws: ClientConnection, cursor: ScriptCursor, result: CallResult
    ) -> StreamSession:
        return BenchStreamSession(config, ws, cursor, result, lean=self.lean)


def summarise(result: CallResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    if extra is None:
        extra = EXTRA.pop(result.call_sid, {})
    return {
        "sid": result.call_sid,
        "outcome": result.outcome,
        "error": result.error,
        "violations": result.violations[:5],
        "violation_count": len(result.violations),
        "duration_s": result.duration_s,
        "wall_s": result.wall_s,
        "frames_sent": result.frames_sent,
        "frames_received": result.frames_received,
        "media_messages_received": result.media_messages_received,
        "frames_played": result.frames_played,
        "late_frames": result.late_frames,
        "late_at_ms": result.late_at_ms[:100],
        "frame_lateness_max_ms": max(result.frame_lateness_ms, default=0),
        "bursts": len(result.bursts),
        "clears": len(result.clears),
        "marks_received": len(result.marks_received),
        "marks_echoed": len(result.marks_echoed),
        "script_timeouts": result.script_timeouts,
        "messages_after_stop": result.messages_after_stop,
        "closed_by": result.closed_by,
        "close_code": result.close_code,
        **extra,
    }


async def run(spec: dict[str, Any], out: Path) -> None:
    impl = "simulator" if spec.get("record") else spec.get("impl", "lean")
    if impl not in ("simulator", "lean"):
        raise SystemExit(f"unknown caller impl {impl!r}")
    ticker = lean_caller.Ticker()
    seconds = float(spec["seconds"])
    opening_ms = spec.get("opening_ms")
    scripts = {c["sid"]: build_script(c["seed"], c["barge"], seconds, opening_ms) for c in spec["calls"]}
    jitter = spec.get("jitter")
    if jitter and impl != "lean":
        raise SystemExit("network jitter needs the lean callers (--caller-impl lean)")
    stalls = {
        c["sid"]: lean_caller.jitter_schedule(
            c["seed"], seconds, float(jitter["every_s"]), int(jitter["min_ms"]), int(jitter["max_ms"])
        )
        if jitter
        else []
        for c in spec["calls"]
    }
    for clip in TURN_CLIPS + BARGE_CLIPS:  # mu-law + base64 of every clip frame, before any call starts
        lean_caller.clip_payloads(clip)
    gc.collect()
    gc.freeze()  # no ~50 ms full collections of the start-up objects in the load generator
    monitor = lc.LagMonitor(0.010)
    monitor.start()
    results: list[dict[str, Any]] = []
    state = {"active": 0, "done": 0, "errors": 0}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=30.0, trust_env=False, limits=limits) as http:

        async def one(call: dict[str, Any]) -> None:
            delay = (call["start_ns"] - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            common: dict[str, Any] = {
                "auth_token": lc.AUTH_TOKEN,
                "public_base_url": lc.PUBLIC_URL,
                "call_sid": call["sid"],
                "http_client": http,
                "max_call_s": seconds,
                "webhook_path": spec.get("webhook_path") or "/twilio/voice",
            }
            extra: dict[str, Any] | None = None

            def keep(lean: lean_caller.LeanCall) -> None:
                nonlocal extra
                extra = lean.extra()

            caller: TwilioCaller
            if impl == "lean":
                caller = lean_caller.LeanTwilioCaller(
                    spec["base_url"], ticker=ticker, on_call=keep, stalls=stalls.pop(call["sid"]), **common
                )
            else:
                caller = BenchTwilioCaller(spec["base_url"], lean=not spec.get("record"), **common)
            state["active"] += 1
            try:
                result = await caller.run(scripts.pop(call["sid"]))
                entry = summarise(result, extra if impl == "lean" else None)
            except Exception as exc:  # noqa: BLE001 - a bug in the load generator must not hide the others
                entry = {"sid": call["sid"], "outcome": "error", "error": f"load generator: {exc!r}"}
            entry["start_ns"] = call["start_ns"]
            entry["end_ns"] = time.monotonic_ns()
            results.append(entry)
            state["active"] -= 1
            state["done"] += 1
            if entry["outcome"] != "completed" or entry.get("violation_count"):
                state["errors"] += 1

        async def status() -> None:
            last = 0
            while True:
                await asyncio.sleep(0.5)
                lags = monitor.lag_us[last:]
                last = len(monitor.lag_us)
                p99 = lc.pct(list(lags), 99)
                line = {**state, "lag_p99_ms": None if p99 is None else p99 / 1000, "pid": os.getpid()}
                print(orjson.dumps(line).decode(), flush=True)

        reporter = asyncio.create_task(status())
        await asyncio.gather(*(one(call) for call in spec["calls"]))
        reporter.cancel()
    monitor.stop()
    out.write_bytes(
        orjson.dumps({"calls": results, "lag": monitor.export(), "pid": os.getpid(), "impl": impl})
    )
    print(orjson.dumps({"finished": True, **state}).decode(), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu", default="1")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    lc.pin(lc.parse_cpus(args.cpu))
    spec = orjson.loads(args.spec.read_bytes())
    lc.run_loop(run(spec, args.out), use_uvloop=not args.no_uvloop)


if __name__ == "__main__":
    main()
