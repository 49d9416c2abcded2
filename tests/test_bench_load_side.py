"""The load benchmark's lean load side (bench/lean_ws.py, bench/lean_caller.py, bench/load_fake.py).

The benchmark's callers and fake Realtime server do not use the simulator's websockets stack:
these tests check that the lean versions still speak the protocols (against the `websockets`
library, the OpenAI SDK and the real app), behave like the simulator's classes step by step,
and produce the fields bench/load_bench.py reads.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from openai import AsyncOpenAI
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from callbot.adapters.realtime_openai import OpenAIRealtimeConnector
from callbot.caller.codec import mulaw_encode, silence_frame
from callbot.caller.playback import PlaybackQueue
from callbot.caller.result import CallResult
from callbot.caller.script import ScriptCursor
from callbot.caller.simulator import HangUp, Say, SayDuringAssistant, Silence, WaitForAssistant
from callbot.settings import Settings
from callbot.testing.fake_realtime_audio import PCM24K, PCMU, EnergyVad
from callbot.testing.fake_realtime_state import Script
from callbot.testing.protocol_check import validate_server_event
from callbot.testing.serving import serve_app
from callbot.testing.speech import synth_speech
from callbot.web.app import create_app
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL, RecordingObserver, make_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import lean_caller
import lean_ws
import load_callers
import load_fake
import load_server

# --------------------------------------------------------------------------- load_server


def test_the_bench_server_takes_the_prebuffer_and_keeps_end_call_off() -> None:
    args = argparse.Namespace(fake_url="http://127.0.0.1:9/v1", mode="pcm24k", log_level="INFO")
    args.prebuffer_ms = 340
    settings = load_server.build_settings(args)
    assert (settings.playback_prebuffer_ms, settings.end_call_tool) == (340, False)
    args.prebuffer_ms = None
    assert load_server.build_settings(args).playback_prebuffer_ms == 0  # the serving default


# --------------------------------------------------------------------------- lean_ws


class _EchoServer(lean_ws.WsServer):
    def on_text(self, text: str, now_ns: int) -> None:
        if text == "close please":
            self.close(1000, "bye")
        else:
            self.send_text("echo:" + text)


class _Collector(lean_ws.WsClient):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        self.got = asyncio.Event()

    def on_text(self, text: str, now_ns: int) -> None:
        self.messages.append(text)
        self.got.set()


async def test_lean_ws_server_talks_to_the_websockets_client() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ws_connect(f"ws://127.0.0.1:{port}/x", compression=None, max_size=None) as ws:
            for size in (5, 125, 126, 300, 65535, 70_000):  # all three length encodings
                text = "é" * (size // 2) + "x" * (size % 2)
                await ws.send(text)
                assert await ws.recv() == "echo:" + text
            await ws.send(["frag", "mented"])  # continuation frames
            assert await ws.recv() == "echo:fragmented"
            await asyncio.wait_for(await ws.ping(b"p"), 2)  # answered with a pong
            await ws.send("close please")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1000
    finally:
        server.close()


async def test_lean_ws_client_talks_to_the_websockets_server() -> None:
    received: list[str] = []

    async def handler(ws: Any) -> None:
        async for message in ws:
            received.append(message)
            await ws.send("echo:" + message)
            await ws.ping()

    async with ws_serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client: _Collector = await lean_ws.connect(_Collector, f"ws://127.0.0.1:{port}/y", {"X-A": "1"})
        for text in ("a", "b" * 300, "c" * 70_000):
            client.got.clear()
            client.send_text(text)
            await asyncio.wait_for(client.got.wait(), 2)
        client.close(1000)
        await asyncio.wait_for(client.wait_closed(), 3)
    assert received == ["a", "b" * 300, "c" * 70_000]
    assert client.messages == ["echo:a", "echo:" + "b" * 300, "echo:" + "c" * 70_000]
    assert client.close_code == 1000


async def test_lean_ws_fails_bad_frames_and_refuses_bad_upgrades() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # A client frame without a mask: the server must fail the connection with 1002.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(b"0123456789abcdef").decode()
        writer.write(
            f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and lean_ws.accept_key(key).encode() in head
        writer.write(lean_ws.encode_frame(lean_ws.OP_TEXT, b"hi", mask=False))
        close = await reader.read(100)
        assert close[0] == 0x88 and int.from_bytes(close[2:4], "big") == 1002
        writer.close()
        # Invalid UTF-8 in a text frame: 1007.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await reader.readuntil(b"\r\n\r\n")
        writer.write(lean_ws.encode_frame(lean_ws.OP_TEXT, b"\xff\xfe", mask=True))
        close = await reader.read(100)
        assert close[0] == 0x88 and int.from_bytes(close[2:4], "big") == 1007
        writer.close()
        # Not an upgrade at all: an HTTP error.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 426")
        writer.close()
    finally:
        server.close()


# --------------------------------------------------------------------------- caller pieces


def _payload(frame: np.ndarray) -> bytes:
    return base64.b64encode(mulaw_encode(frame) if frame.any() else silence_frame())


@pytest.mark.parametrize("seed", range(6))
def test_lean_cursor_makes_the_same_frames_and_timeouts_as_script_cursor(seed: int) -> None:
    rng = random.Random(seed)
    steps = load_callers.build_script(seed, barge=seed % 2 == 1, seconds=20)
    steps.insert(1, SayDuringAssistant(synth_speech(300, 8000, seed=9), after_ms=100, timeout_s=0.5))
    reference, lean = ScriptCursor(steps), lean_caller.LeanCursor(steps)
    playing = False
    for tick in range(2000):
        if rng.random() < 0.05:
            playing = not playing
        empty = not playing and rng.random() < 0.7
        plan = reference.advance(tick, playing, empty)
        got = lean.advance(tick, playing, empty)
        if plan.frame is None:
            assert got is None, tick
            break
        assert got == _payload(plan.frame), tick
    assert lean.timeouts == reference.timeouts


@pytest.mark.parametrize("seed", range(4))
def test_lean_playback_follows_twilio_buffer_rules_like_playback_queue(seed: int) -> None:
    rng = random.Random(seed)
    reference, lean = PlaybackQueue(), lean_caller.LeanPlayback()
    for step in range(3000):
        op = rng.random()
        if op < 0.35:
            size = rng.choice([160, 160, 80, 320, 1])
            reference.enqueue_audio(b"\x00" * size)
            lean.enqueue_audio(size)
        elif op < 0.45:
            name = f"m{step}"
            assert reference.enqueue_mark(name) == lean.enqueue_mark(name)
        elif op < 0.47:
            assert reference.clear() == lean.clear()
        else:
            frame, echoes = reference.tick()
            played, lean_echoes = lean.tick()
            assert (frame is not None, echoes) == (played, lean_echoes), step
            assert reference.playing == lean.playing
        assert reference.queued_bytes == lean.queued_bytes
        assert reference.empty == lean.empty


# --------------------------------------------------------------------------- network jitter


def test_jitter_schedule_is_seeded_bounded_and_never_overlaps() -> None:
    schedule = lean_caller.jitter_schedule(7, 600.0, 5.0, 100, 300)
    assert schedule == lean_caller.jitter_schedule(7, 600.0, 5.0, 100, 300)  # same seed, same moments
    assert schedule != lean_caller.jitter_schedule(8, 600.0, 5.0, 100, 300)
    # one stall per 5 s + its ~0.2 s on average over 599 s: 115 over seeds 0-199 (90-143); seed 7: 95
    assert len(schedule) == 95
    assert all(100 <= ms <= 300 for _, ms in schedule)
    assert len({ms for _, ms in schedule}) > 50  # spread over the range, not one value
    for (tick, ms), (nxt, _) in itertools.pairwise(schedule):
        assert nxt * 20 >= (tick + 1) * 20 + ms  # the next stall starts after this one ended
    assert schedule[-1][0] < (600 - 1.0) * 1000 / 20  # none in the last second of the call
    gaps = {b[0] - a[0] for a, b in itertools.pairwise(schedule)}
    assert len(gaps) > 50  # random moments, no shared rhythm


def test_jitter_schedule_off_and_short_calls() -> None:
    assert lean_caller.jitter_schedule(1, 60.0, 0.0, 100, 300) == []
    assert lean_caller.jitter_schedule(1, 0.5, 5.0, 100, 300) == []  # shorter than the quiet end
    one_tick = lean_caller.jitter_schedule(3, 30.0, 0.001, 20, 20)
    ticks = [t for t, _ in one_tick]
    assert ticks == sorted(set(ticks)) and all(ms == 20 for _, ms in one_tick)
    assert len(one_tick) <= 29 * 50 // 2  # a 20 ms stall and at least one tick after it
    with pytest.raises(ValueError, match="not a range of positive ms"):
        lean_caller.jitter_schedule(1, 60.0, 5.0, 300, 100)


class _Transport:
    """Enough of an asyncio transport for a LeanCall that never touches the network."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.paused = False
        self.pauses = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        pass


async def test_lean_call_stops_reading_at_its_stalls_and_keeps_sending() -> None:
    result = CallResult(call_sid="CA1", account_sid="AC1")
    call = lean_caller.LeanCall(
        ticker=lean_caller.Ticker(),
        account_sid="AC1",
        call_sid="CA1",
        stream_sid="MZ1",
        cursor=lean_caller.LeanCursor([Silence(2000), HangUp()]),
        result=result,
        max_call_s=10.0,
        stalls=[(3, 150), (10, 250)],
    )
    transport = _Transport()
    call.connection_made(transport)  # type: ignore[arg-type]
    call.state = lean_ws.OPEN
    call.started = True
    for _ in range(3):
        assert call.one_tick(0)
    assert transport.pauses == 0
    assert call.one_tick(0)  # tick 3: the first stall begins
    assert transport.paused and call.stalls_done == 1 and call.stalled_ms == 150
    frames_before = len(transport.writes)
    for _ in range(4):  # the 20 ms clock goes on: frames still go out while reading is paused
        assert call.one_tick(0)
    assert len(transport.writes) == frames_before + 4
    call.unstall()  # (the timer's job) the stall ends, what waited in the kernel is read
    assert not transport.paused
    while call.tick < 11:
        assert call.one_tick(0)
    assert transport.paused and call.stalls_done == 2 and call.stalled_ms == 400
    call.hang_up()  # hanging up reads again, for the server's answer and close frame
    assert not transport.paused
    assert call.extra()["stalls"] == 2 and call.extra()["stalled_ms"] == 400


def test_build_script_opens_with_silence_for_a_server_that_does_not_speak_first() -> None:
    greeting = load_callers.build_script(5, barge=True, seconds=20)
    silent = load_callers.build_script(5, barge=True, seconds=20, opening_ms=1000)
    assert isinstance(greeting[0], WaitForAssistant)
    assert isinstance(silent[0], Silence) and silent[0].ms == 1000
    assert [type(s) for s in silent[1:]] == [type(s) for s in greeting[1:]]  # the same turns after it


# --------------------------------------------------------------------------- the fake's VAD


@pytest.mark.parametrize("fmt", [PCMU, PCM24K], ids=["pcmu", "pcm24k"])
def test_lean_vad_finds_the_same_speech_as_energy_vad(fmt: Any) -> None:
    kwargs = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500, "base_ms": 0.0}
    reference = EnergyVad(fmt.rate, **kwargs)
    lean = load_fake.LeanVad(fmt, EnergyVad(fmt.rate, **kwargs))
    pieces = [np.zeros(fmt.rate, dtype=np.int16)]
    for k in range(4):
        pieces += [synth_speech(900 + 300 * k, fmt.rate, seed=k), np.zeros(fmt.rate // 2 * (k + 1), np.int16)]
    audio = fmt.encode(np.concatenate(pieces))
    chunk = fmt.nbytes(20)
    events: tuple[list[Any], list[Any]] = ([], [])
    for i in range(0, len(audio), chunk):
        data = audio[i : i + chunk]
        events[0].extend(reference.feed(fmt.decode(data)))
        events[1].extend(lean.feed_bytes(data))
    assert [kind for kind, _ in events[0]] == ["start", "stop"] * 4
    assert events[1] == events[0]


# --------------------------------------------------------------------------- the lean fake


async def test_lean_fake_refuses_upgrades_like_the_fake_server() -> None:
    async with load_fake.LeanFakeServer(Script()) as fake:
        url = f"ws://127.0.0.1:{fake.port}"
        with pytest.raises(lean_ws.HandshakeError) as refused:
            await lean_ws.connect(_Collector, url + "/v1/other", {"Authorization": "Bearer x"})
        assert refused.value.status == 404
        with pytest.raises(lean_ws.HandshakeError) as refused:
            await lean_ws.connect(_Collector, url + "/v1/realtime")
        assert refused.value.status == 401


async def test_lean_fake_speaks_the_realtime_protocol_to_the_sdk() -> None:
    async with load_fake.LeanFakeServer(Script(replies=load_fake.REPLIES)) as fake:
        load_fake.prewarm_synth(fake._ctx)
        client = AsyncOpenAI(api_key="fake", base_url=fake.base_url)
        async with client.realtime.connect(
            model="gpt-realtime", extra_query={"bench_call": "CAtest"}
        ) as conn:
            created = await conn.recv()
            assert created.type == "session.created"
            update = {
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            }
            await conn.send({"type": "session.update", "session": update})
            raw = orjson.loads(await conn.recv_bytes())
            assert raw["type"] == "session.updated"
            validate_server_event(raw)  # strict: the SDK's model, no unknown fields
            assert raw["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            # 1.2 s of speech then silence, as 20 ms appends in the bridge's exact JSON shape.
            audio = PCMU.encode(np.concatenate([synth_speech(1200, 8000, seed=3), np.zeros(8000, np.int16)]))
            for i in range(0, len(audio), 160):
                await conn.send(
                    {
                        "type": "input_audio_buffer.append",
                        "audio": base64.b64encode(audio[i : i + 160]).decode(),
                    }
                )
            seen: list[str] = []
            while "response.output_audio.delta" not in seen:
                event = orjson.loads(await asyncio.wait_for(conn.recv_bytes(), 5))
                seen.append(event["type"])
            assert seen.index("input_audio_buffer.speech_started") < seen.index(
                "input_audio_buffer.speech_stopped"
            )
            assert "response.created" in seen
        await asyncio.sleep(0.1)
        assert fake.violations == []
        [session] = fake.finished
        assert session["call"] == "CAtest"
        assert len(session["append_ns"]) == len(audio) // 160
        assert len(session["speech_started_ns"]) == 1 and len(session["first_delta_ns"]) == 1
        assert session["append_ns"][0] < session["speech_started_ns"][0] < session["first_delta_ns"][0]


async def test_lean_fake_serves_a_peer_connecting_like_the_twilio_sample() -> None:
    """A peer's connection: `websockets` client on /v1/realtime?model=...&temperature=...&voice=...
    with a Bearer header (offering permessage-deflate, which the fake declines), a G.711
    session.update without transcription, the caller's mu-law relayed as appends. The fake
    answers in audio/pcmu deltas and counts every event each way."""
    script = Script(replies=load_fake.REPLIES, realtime_factor=0)  # deltas as fast as they go
    async with load_fake.LeanFakeServer(script) as fake:
        load_fake.prewarm_synth(fake._ctx)
        url = f"ws://127.0.0.1:{fake.port}/v1/realtime?model=gpt-realtime&temperature=0.8&voice=alloy"
        async with ws_connect(url, additional_headers={"Authorization": "Bearer sk-x"}) as ws:
            assert orjson.loads(await ws.recv())["type"] == "session.created"
            update = {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "model": "gpt-realtime",
                    "output_modalities": ["audio"],
                    "audio": {
                        "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                        "output": {"format": {"type": "audio/pcmu"}},
                    },
                    "instructions": "Be brief.",
                },
            }
            await ws.send(orjson.dumps(update).decode())
            updated = orjson.loads(await ws.recv())
            assert updated["type"] == "session.updated"
            assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
            audio = PCMU.encode(np.concatenate([synth_speech(1200, 8000, seed=4), np.zeros(8000, np.int16)]))
            for i in range(0, len(audio), 160):
                chunk = base64.b64encode(audio[i : i + 160]).decode()
                await ws.send(orjson.dumps({"type": "input_audio_buffer.append", "audio": chunk}).decode())
            deltas: list[bytes] = []
            while True:
                event = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                if event["type"] == "response.output_audio.delta":
                    deltas.append(base64.b64decode(event["delta"]))
                if event["type"] == "response.done":
                    break
        await asyncio.sleep(0.1)
        assert fake.violations == []
        [session] = fake.finished
    assert session["call"] == ""  # no bench_call: load_bench joins it to its call by open order
    assert session["appends"] == len(audio) // 160
    assert session["client_events"] == {"session.update": 1}
    assert session["server_events"]["response.output_audio.delta"] == len(deltas) > 10
    assert session["server_events"]["input_audio_buffer.speech_started"] == 1
    assert session["errors"] == []
    # G.711 at 8 kHz: each 100 ms delta is 800 mu-law bytes (the last one may be shorter)
    assert all(len(d) == 800 for d in deltas[:-1]) and 0 < len(deltas[-1]) <= 800


# --------------------------------------------------------------------------- lean callers, real app

# Fields of a caller's JSON entry that bench/load_bench.py reads.
BENCH_FIELDS = {
    "sid",
    "outcome",
    "error",
    "violations",
    "violation_count",
    "duration_s",
    "frames_sent",
    "frames_played",
    "late_frames",
    "frame_lateness_max_ms",
    "clears",
    "script_timeouts",
    "closed_by",
    "send_ns",
    "send_late_us",
    "media_in_ns",
    "clear_ns",
    # message counts and the join of a peer's sessions (load_bench --peer)
    "frames_received",
    "media_messages_received",
    "marks_received",
    "marks_echoed",
    "t0_ns",
    "stalls",
    "stalled_ms",
}


async def test_lean_callers_place_real_calls_with_playback_marks_and_barge_in() -> None:
    script = Script(greeting="Hello, how can I help?", replies=load_fake.REPLIES)
    settings = make_settings(audio_mode="pcmu")
    async with load_fake.LeanFakeServer(script) as fake:
        load_fake.prewarm_synth(fake._ctx)
        client = AsyncOpenAI(api_key="fake", base_url=fake.base_url)
        connector = OpenAIRealtimeConnector(client, settings.model)
        app = create_app(settings, connector=connector, observer=RecordingObserver())
        async with serve_app(app) as base_url:
            ticker = lean_caller.Ticker()
            finished: dict[str, lean_caller.LeanCall] = {}

            def keep(call: lean_caller.LeanCall) -> None:
                finished[call.call_sid] = call

            def caller() -> lean_caller.LeanTwilioCaller:
                return lean_caller.LeanTwilioCaller(
                    base_url,
                    ticker=ticker,
                    on_call=keep,
                    auth_token=AUTH_TOKEN,
                    public_base_url=PUBLIC_URL,
                    max_call_s=9.0,
                )

            talk = [WaitForAssistant(timeout_s=6, quiet_ms=300), Say(synth_speech(1000, 8000, seed=1))]
            normal = [*talk, Silence(3000), HangUp()]
            barge = [
                *talk,
                SayDuringAssistant(synth_speech(1000, 8000, seed=2), after_ms=400, timeout_s=4),
                Silence(1500),
                HangUp(),
            ]
            results: list[CallResult] = await asyncio.gather(
                caller().run(normal), caller().run(normal), caller().run(barge)
            )
        await asyncio.sleep(0.2)
        sessions = fake.finished + [s.export() for s in fake.open]
        assert fake.violations == []

    for result in results:
        assert result.outcome == "completed", result.summary()
        assert result.violations == [], result.violations
        assert result.closed_by == "caller" and result.close_code == 1000
        assert result.script_timeouts == 0
        # One frame per 20 ms of call time, from the first tick to the hang-up (the hang-up tick
        # plays but sends nothing, as in the simulator).
        assert result.frames_sent == round(result.duration_s * 50) - 1
        assert 5.0 < result.duration_s < 9.0
        # The greeting (and the reply) arrived and played; marks came back as the audio played.
        assert result.frames_received > 50 and result.frames_played > 50
        assert result.marks_echoed and all(
            status in ("played", "cleared") for _, _, status in result.marks_echoed
        )
        extra = finished[result.call_sid].extra()
        entry = load_callers.summarise(result, extra)
        assert entry.keys() >= BENCH_FIELDS
        assert len(entry["send_ns"]) == len(entry["send_late_us"]) == result.frames_sent
        assert entry["send_ns"] == sorted(entry["send_ns"])
        assert max(entry["send_late_us"]) < 500_000  # loose: everything shares one loop here
        assert len(entry["media_in_ns"]) == result.media_messages_received  # one arrival per message
        assert result.media_messages_received < result.frames_received  # several frames a message
    normal_results, barge_result = results[:2], results[2]
    assert [len(r.clears) for r in normal_results] == [0, 0]
    # The barge-in: the fake heard the caller talk over the reply, the bridge cleared Twilio's buffer.
    assert len(barge_result.clears) >= 1
    extra = finished[barge_result.call_sid].extra()
    assert len(extra["clear_ns"]) == len(barge_result.clears)
    assert any(status == "cleared" for _, _, status in barge_result.marks_echoed)
    # The fake timestamped every append, each speech start and each response's first delta.
    assert len(sessions) == 3
    speech_starts = sorted(len(s["speech_started_ns"]) for s in sessions)
    assert speech_starts == [1, 1, 2]
    batch = Settings().inbound_batch_frames  # caller frames per append, as the bench server runs
    for session in sessions:
        assert len(session["append_ns"]) > 200 // batch  # ~6 s of caller audio, one append a batch
        assert len(session["first_delta_ns"]) >= 2  # the greeting and a reply
        clear_after = [c for c in extra["clear_ns"] if c > min(session["speech_started_ns"])]
        if len(session["speech_started_ns"]) == 2:
            assert clear_after  # the clear followed the barge-in's speech_started
