"""The Twilio caller simulator against a tiny stand-in bot, plus its WAV and playback helpers.

The stand-in bot lives here (not in callbot) so the simulator is checked against an independent
implementation of the Twilio-facing protocol: signed webhook, <Connect><Stream> with a Parameter,
signed WebSocket upgrade, an echo of each caller utterance followed by a mark, and `clear` on DTMF.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from callbot.caller.playback import PlaybackQueue, playback_stats
from callbot.caller.simulator import (
    CallerScript,
    Dtmf,
    HangUp,
    Say,
    SayDuringAssistant,
    Silence,
    TwilioCaller,
    WaitForAssistant,
    mulaw_decode,
    mulaw_encode,
)
from callbot.caller.wavio import read_wav, resample_to, write_wav

TOKEN = "12345678901234567890123456789012"
SPEED = 4.0
BUSY_NUMBER = "+15550000000"
MODES_BY_NUMBER = {"+15550000001": "misbehave", "+15550000002": "nowhere", "+15550000003": "public"}
PUBLIC_BASE = "https://bot.example.com"


def tone(ms: int, freq: float = 440.0, amplitude: float = 8000.0, rate: int = 8000) -> np.ndarray:
    """A steady tone: unlike speech, its energy starts and stops on exact frame boundaries."""
    t = np.arange(rate * ms // 1000) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@dataclass
class BotState:
    """What the stand-in bot saw, for assertions."""

    voice_posts: list[tuple[dict[str, str], str | None]] = field(default_factory=list)
    ws_signed_url: str | None = None
    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


class EchoBot:
    """Per-connection echo logic: replay each utterance as 20 ms frames + a mark; clear on DTMF."""

    def __init__(self, ws: WebSocket, state: BotState) -> None:
        self.ws = ws
        self.state = state
        self.sid = ""
        self.buffer = bytearray()
        self.quiet = 0
        self.replies = 0
        self.media_seen = 0
        self.mode = "echo"

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(message))

    async def on_start(self, message: dict[str, Any]) -> None:
        self.sid = message["streamSid"]
        self.mode = message["start"]["customParameters"].get("mode", "echo")
        if self.mode == "echo":
            await self.send({"event": "mark", "streamSid": self.sid, "mark": {"name": "hello"}})
        if self.mode == "misbehave":
            payload = base64.b64encode(b"\xff" * 160).decode()
            await self.send({"event": "media", "streamSid": "MZwrong", "media": {"payload": payload}})
            await self.send({"event": "play", "streamSid": self.sid})
            await self.send({"event": "media", "streamSid": self.sid, "media": {"payload": "not base64!"}})
            await self.send({"event": "mark", "streamSid": self.sid, "mark": {}})
            await self.ws.send_bytes(b"\x00\x01")

    async def on_media(self, message: dict[str, Any]) -> bool:
        """Returns False when the bot decides to hang up."""
        self.media_seen += 1
        if self.mode == "misbehave" and self.media_seen >= 10:
            return False
        data = base64.b64decode(message["media"]["payload"])
        if any(b not in (0xFF, 0x7F) for b in data):
            self.buffer += data
            self.quiet = 0
        elif self.buffer:
            self.quiet += 1
            if self.quiet >= 5:
                for i in range(0, len(self.buffer), 160):
                    chunk = base64.b64encode(bytes(self.buffer[i : i + 160])).decode()
                    await self.send({"event": "media", "streamSid": self.sid, "media": {"payload": chunk}})
                mark = f"echo-{self.replies}"
                await self.send({"event": "mark", "streamSid": self.sid, "mark": {"name": mark}})
                self.replies += 1
                self.buffer.clear()
        return True

    async def serve(self) -> None:
        while True:
            try:
                message = json.loads(await self.ws.receive_text())
            except WebSocketDisconnect:
                return
            self.state.messages.append((time.monotonic(), message))
            event = message["event"]
            if event == "start":
                await self.on_start(message)
            elif event == "media" and not await self.on_media(message):
                await self.ws.close(code=1000)
                return
            elif event == "dtmf":
                await self.send({"event": "clear", "streamSid": self.sid})
            elif event == "stop":
                return


def signed_url(signature: str, params: dict[str, str], *candidates: str) -> str | None:
    """Which candidate URL the signature is valid for (a bot behind a tunnel checks the public one)."""
    validator = RequestValidator(TOKEN)
    return next((url for url in candidates if validator.validate(url, params, signature)), None)


def build_app(state: BotState) -> FastAPI:
    app = FastAPI()

    @app.post("/twilio/voice")
    async def voice(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        signature = request.headers.get("X-Twilio-Signature", "")
        url = signed_url(signature, form, str(request.url), PUBLIC_BASE + "/twilio/voice")
        state.voice_posts.append((form, url))
        if url is None:
            return Response(status_code=403)
        reply = VoiceResponse()
        if form["From"] == BUSY_NUMBER:
            reply.say("All lines are busy.")
            reply.hangup()
            return Response(str(reply), media_type="text/xml")
        mode = MODES_BY_NUMBER.get(form["From"], "echo")
        path = "/twilio/nowhere" if mode == "nowhere" else "/twilio/media"
        origin = "wss://bot.example.com" if mode == "public" else f"ws://{request.url.netloc}"
        stream = reply.connect().stream(url=origin + path)
        stream.parameter(name="token", value="abc")
        stream.parameter(name="mode", value=mode)
        return Response(str(reply), media_type="text/xml")

    @app.websocket("/twilio/media")
    async def media(ws: WebSocket) -> None:
        signature = ws.headers.get("x-twilio-signature", "")
        local = f"ws://{ws.url.netloc}/twilio/media"
        state.ws_signed_url = signed_url(signature, {}, local, "wss://bot.example.com/twilio/media")
        if state.ws_signed_url is None:
            await ws.close(code=1008)
            return
        await ws.accept()
        await EchoBot(ws, state).serve()

    return app


@dataclass
class Bot:
    base_url: str
    state: BotState


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    state = BotState()
    config = uvicorn.Config(build_app(state), host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Bot(f"http://127.0.0.1:{port}", state)
    server.should_exit = True
    await asyncio.wait_for(task, 5)


def caller_for(bot: Bot, **kwargs: Any) -> TwilioCaller:
    kwargs.setdefault("auth_token", TOKEN)
    return TwilioCaller(bot.base_url, speed=SPEED, max_call_s=20, **kwargs)


async def test_echo_call_protocol_framing_marks_and_recording(bot: Bot, tmp_path: Path) -> None:
    speech = tone(800)
    events: list[str] = []
    caller = caller_for(bot, on_event=lambda kind, data: events.append(kind))
    script = CallerScript.of(Silence(200), Say(speech), WaitForAssistant(timeout_s=5, quiet_ms=300), HangUp())
    result = await caller.run(script)

    assert result.outcome == "completed", result.error
    assert result.violations == []
    assert (result.closed_by, result.close_code) == ("caller", 1000)
    assert bot.state.voice_posts[0][1] == caller.webhook_url
    local_stream_url = bot.base_url.replace("http", "ws") + "/twilio/media"
    assert bot.state.ws_signed_url == result.stream_url == local_stream_url
    form = bot.state.voice_posts[0][0]
    assert form["CallStatus"] == "ringing" and form["Direction"] == "inbound"
    assert form["CallSid"] == result.call_sid and re.fullmatch(r"CA[0-9a-f]{32}", result.call_sid)

    messages = [m for _, m in bot.state.messages]
    assert messages[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = messages[1]
    assert start["event"] == "start" and re.fullmatch(r"MZ[0-9a-f]{32}", start["streamSid"])
    assert start["start"]["customParameters"] == {"token": "abc", "mode": "echo"}
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["start"]["tracks"] == ["inbound"] and start["start"]["callSid"] == result.call_sid
    assert result.custom_parameters == {"token": "abc", "mode": "echo"}
    assert [int(m["sequenceNumber"]) for m in messages[1:]] == list(range(1, len(messages)))
    assert all(m["streamSid"] == start["streamSid"] for m in messages[1:])
    assert messages[-1]["event"] == "stop" and messages[-1]["stop"]["callSid"] == result.call_sid

    media = [(at, m["media"]) for at, m in bot.state.messages if m["event"] == "media"]
    assert all(len(base64.b64decode(m["payload"])) == 160 and m["track"] == "inbound" for _, m in media)
    assert [int(m["chunk"]) for _, m in media] == list(range(1, len(media) + 1))
    assert [int(m["timestamp"]) for _, m in media] == [20 * i for i in range(len(media))]
    per_second = (len(media) - 1) / (media[-1][0] - media[0][0]) / SPEED
    assert 40 <= per_second <= 60
    assert result.frames_sent == len(media)

    # The greeting mark arrived with nothing buffered: echoed at once. The echo's mark only after playback.
    assert [(name, status) for name, _, status in result.marks_echoed] == [
        ("hello", "played"),
        ("echo-0", "played"),
    ]
    assert result.marks_echoed[0][1] < 200
    intervals = result.assistant_speech_intervals()
    assert len(intervals) == 1 and intervals[0][1] - intervals[0][0] == 800
    echo_ms = result.marks_echoed[1][1]
    assert intervals[0][1] <= echo_ms <= intervals[0][1] + 20
    assert result.marks_received[1][1] < intervals[0][0] + 100  # queued long before it was echoed
    assert result.frames_received == 40 and result.frames_played == 40 and result.late_frames == 0
    assert result.frame_lateness_ms == [0] * 40
    assert result.caller_speech_intervals() == [(200, 1000)]
    start_sample = intervals[0][0] * 8
    heard = result.assistant_audio[start_sample : start_sample + len(speech)]
    assert np.array_equal(heard, mulaw_decode(mulaw_encode(speech)))
    echoes = [m for m in messages if m["event"] == "mark"]
    assert [m["mark"]["name"] for m in echoes] == ["hello", "echo-0"]
    assert {"start", "twiml", "assistant_audio_start", "mark_echo", "hangup"} <= set(events)

    path = result.write_wav(tmp_path / "call.wav")
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        stereo = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(stereo, result.stereo())
    mono, rate = read_wav(path)
    assert rate == 8000 and len(mono) == len(stereo)


async def test_clear_drops_queued_audio_and_echoes_pending_marks(bot: Bot) -> None:
    caller = caller_for(bot)
    script = CallerScript.of(Say(tone(1000)), Silence(300), Dtmf("5"), Silence(400))
    result = await caller.run(script)

    assert result.outcome == "completed" and result.violations == []
    assert result.dtmf_sent == [("5", 1300.0)]
    dtmf = [m for _, m in bot.state.messages if m["event"] == "dtmf"]
    assert dtmf[0]["dtmf"] == {"track": "inbound_track", "digit": "5"}
    assert len(result.clears) == 1
    clear_ms = result.clears[0]
    name, echoed_ms, status = result.marks_echoed[-1]
    assert (name, status) == ("echo-0", "cleared") and echoed_ms == clear_ms
    intervals = result.assistant_speech_intervals()
    assert len(intervals) == 1
    played_ms = intervals[0][1] - intervals[0][0]
    assert 100 <= played_ms <= 400, intervals
    assert not result.assistant_audio[int(clear_ms + 20) * 8 :].any()
    assert result.late_frames == 0
    echoed = [m for _, m in bot.state.messages if m["event"] == "mark"]
    assert [m["mark"]["name"] for m in echoed] == ["hello", "echo-0"]


async def test_say_during_assistant_barges_in_after_offset(bot: Bot) -> None:
    caller = caller_for(bot)
    script = CallerScript.of(
        Say(tone(600)), SayDuringAssistant(tone(300, 880), after_ms=200, timeout_s=5), Silence(100)
    )
    result = await caller.run(script)

    assert result.outcome == "completed" and result.script_timeouts == 0
    assistant = result.assistant_speech_intervals()
    caller_intervals = result.caller_speech_intervals()
    assert len(caller_intervals) == 2
    assert caller_intervals[1][0] - assistant[0][0] == 200
    assert caller_intervals[1][1] - caller_intervals[1][0] == 300


async def test_wrong_or_missing_signature_is_rejected(bot: Bot) -> None:
    for token in ("wrong-token", None):
        result = await caller_for(bot, auth_token=token).run([Silence(100)])
        assert result.outcome == "webhook_error" and result.http_status == 403
        assert not result.connected and result.stream_url is None
    assert [url for _, url in bot.state.voice_posts] == [None, None]
    assert bot.state.ws_signed_url is None


async def test_twiml_without_stream_and_refused_upgrade(bot: Bot) -> None:
    busy = await caller_for(bot, from_number=BUSY_NUMBER).run([Silence(100)])
    assert busy.outcome == "no_stream" and "<Hangup" in busy.twiml and "Say" in (busy.error or "")
    refused = await caller_for(bot, from_number="+15550000002").run([Silence(100)])
    assert refused.outcome == "ws_rejected" and refused.upgrade_status in (403, 404)
    assert refused.stream_url is not None and refused.stream_url.endswith("/twilio/nowhere")


async def test_public_base_url_signs_like_twilio_behind_a_tunnel(bot: Bot) -> None:
    caller = caller_for(bot, from_number="+15550000003", public_base_url=PUBLIC_BASE)
    result = await caller.run([Silence(100)])
    assert result.outcome == "completed" and result.violations == []
    assert bot.state.voice_posts[0][1] == PUBLIC_BASE + "/twilio/voice"
    assert result.stream_url == bot.state.ws_signed_url == "wss://bot.example.com/twilio/media"


async def test_protocol_violations_and_server_hangup(bot: Bot) -> None:
    result = await caller_for(bot, from_number="+15550000001").run([Silence(2000)])
    text = "\n".join(result.violations)
    expected = ("streamSid 'MZwrong'", "unexpected event 'play'", "not valid base64", "mark.name", "binary")
    assert all(needle in text for needle in expected), text
    assert len(result.violations) == 5
    assert (result.closed_by, result.close_code) == ("server", 1000)
    assert result.duration_s < 1.0 and result.frames_received == 0


def test_playback_queue_marks_partial_frames_and_clear() -> None:
    queue = PlaybackQueue()
    assert queue.enqueue_mark("idle") is True
    queue.enqueue_audio(b"\x00" * 100)
    queue.enqueue_audio(b"\x01" * 100)
    assert queue.enqueue_mark("a") is False
    queue.enqueue_audio(b"\x02" * 30)
    assert queue.enqueue_mark("b") is False
    frame, echoes = queue.tick()
    assert frame == b"\x00" * 100 + b"\x01" * 60 and echoes == []
    frame, echoes = queue.tick()  # 40 + 30 bytes: "a" is passed mid-frame, partial frame padded
    assert frame == b"\x01" * 40 + b"\x02" * 30 + b"\xff" * 90 and echoes == []
    frame, echoes = queue.tick()
    assert frame is None and echoes == ["a", "b"]
    queue.enqueue_audio(b"\x03" * 400)
    queue.enqueue_mark("c")
    queue.tick()
    assert queue.clear() == ["c"] and queue.empty
    assert queue.tick()[0] is None


def test_playback_stats_underruns_and_clears() -> None:
    played = np.array([1, 1, 0, 0, 1, 1] + [0] * 6 + [1, 1], dtype=bool)
    stats = playback_stats(played, clear_ticks=[])
    assert stats.frames_played == 6 and stats.late_frames == 2
    assert stats.bursts == [(0, 120), (240, 280)]
    assert stats.frame_lateness_ms == [0, 0, 40, 40, 0, 0]
    assert stats.late_at_ms == [40, 60]  # the two empty ticks, 40 and 60 ms into their burst
    assert playback_stats(played, clear_ticks=[2]).late_frames == 0
    assert playback_stats(played, clear_ticks=[2]).late_at_ms == []
    later = np.array([0, 1, 1, 1, 0, 1] + [0] * 6 + [1, 0, 1], dtype=bool)  # a second burst's dropout too
    assert playback_stats(later, clear_ticks=[]).late_at_ms == [60, 20]


def test_mulaw_codec_reference_points() -> None:
    assert mulaw_encode(np.zeros(4, dtype=np.int16)) == b"\xff" * 4
    assert list(mulaw_decode(bytes([0xFF, 0x7F, 0x00, 0x80]))) == [0, 0, -32124, 32124]
    ramp = np.linspace(-30000, 30000, 2001).astype(np.int16)
    error = np.abs(mulaw_decode(mulaw_encode(ramp)).astype(int) - ramp)
    assert np.all(error <= np.maximum(8, np.abs(ramp) // 16))


def dominant_frequency(pcm: np.ndarray, rate: int) -> float:
    """Peak of a zero-padded, windowed spectrum: resolution well under 1 % at 1 kHz."""
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)), n=16 * len(pcm)))
    return float(np.argmax(spectrum) * rate / (16 * len(pcm)))


def test_read_wav_and_resample_44k1_stereo(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    left = 10000 * np.sin(2 * np.pi * 1000 * t)
    right = 10000 * np.sin(2 * np.pi * 1000 * t + 0.3)
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.stack([left, right], axis=1).astype("<i2").tobytes())
    mono, rate = read_wav(path)
    assert rate == 44100 and mono.dtype == np.int16 and len(mono) == 44100
    pcm8k = resample_to(mono, rate, 8000)
    assert pcm8k.dtype == np.int16 and len(pcm8k) == 8000
    assert abs(dominant_frequency(pcm8k[1000:-1000], 8000) - 1000) < 10
    expected_amplitude = 10000 * np.cos(0.15)
    assert abs(np.sqrt(2 * np.mean(pcm8k[1000:-1000].astype(float) ** 2)) - expected_amplitude) < 200
    aliased = resample_to(tone(1000, 6000, rate=44100), 44100, 8000)  # above 4 kHz: must vanish
    assert np.sqrt(np.mean(aliased[200:-200].astype(float) ** 2)) < 50


def write_float_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    path.write_bytes(b"RIFF" + struct.pack("<I", len(riff) + len(data)) + riff + data)


def test_read_wav_other_sample_formats_and_write_padding(tmp_path: Path) -> None:
    float_path = tmp_path / "float.wav"
    write_float_wav(float_path, np.array([0.0, 0.5, -0.5, 1.0]), 16000)
    pcm, rate = read_wav(float_path)
    assert rate == 16000 and list(pcm) == [0, 16384, -16384, 32767]
    for width, raw in ((1, bytes([128, 192, 64])), (4, struct.pack("<3i", 0, 1 << 30, -(1 << 30)))):
        path = tmp_path / f"w{width}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(width)
            w.setframerate(8000)
            w.writeframes(raw)
        assert list(read_wav(path)[0]) == [0, 16384, -16384]
    out = tmp_path / "pair.wav"
    write_wav(out, [np.array([1000, 1000], dtype=np.int16), np.array([3000], dtype=np.int16)], 8000)
    with wave.open(str(out)) as w:
        frames = np.frombuffer(w.readframes(2), dtype="<i2").reshape(-1, 2)
    assert frames.tolist() == [[1000, 3000], [1000, 0]]
    assert list(read_wav(out)[0]) == [2000, 500]
