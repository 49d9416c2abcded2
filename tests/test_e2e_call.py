"""Whole calls through the real server over loopback sockets: Twilio caller -> callbot -> fake Realtime."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from callbot.caller.simulator import HangUp, Say, SayDuringAssistant, Silence, WaitForAssistant
from callbot.testing.fake_realtime import Script
from tests.e2e_helpers import running_rig, speech

TWO_TURNS = Script(
    greeting="Hello, thanks for calling Acme support.",
    user_transcripts=["My order 4417 has not arrived.", "Yes, please send a new one."],
    replies=["Sorry to hear that. Shall I send a replacement?", "Done, a new one ships today."],
)


@pytest.mark.parametrize("audio_mode", ["pcm24k", "pcmu"])
async def test_two_turn_call_has_greeting_and_transcripts_on_both_sides(audio_mode: str) -> None:
    async with running_rig(TWO_TURNS, audio_mode=audio_mode) as rig:
        result = await rig.caller().run(
            [
                WaitForAssistant(timeout_s=10),
                Say(speech(1200, seed=1)),
                Silence(100),
                WaitForAssistant(timeout_s=10),
                Say(speech(1000, seed=2)),
                Silence(100),
                WaitForAssistant(timeout_s=10),
                HangUp(),
            ]
        )
        assert rig.fake.violations == []
    assert result.outcome == "completed", result.summary()
    assert result.violations == []
    # The greeting, then one reply per caller turn, reached the caller's ear.
    intervals = result.assistant_speech_intervals()
    assert len(intervals) >= 3
    first_caller_speech = result.caller_speech_intervals()[0][0]
    assert intervals[0][0] < first_caller_speech
    # Pacing is measured properly by bench/ in separate processes; here, with caller, server and
    # fake all sharing one event loop on a shared machine, only gross underruns would fail.
    assert result.late_frames <= result.frames_played // 20
    # The ticket sink got exactly one final record with every turn, in order.
    assert len(rig.observer.ended) == 1
    record = rig.observer.ended[0]
    roles_and_text = [(e.role, e.text) for e in record.transcript]
    assert roles_and_text == [
        ("assistant", "Hello, thanks for calling Acme support."),
        ("user", "My order 4417 has not arrived."),
        ("assistant", "Sorry to hear that. Shall I send a replacement?"),
        ("user", "Yes, please send a new one."),
        ("assistant", "Done, a new one ships today."),
    ]
    assert record.end_reason == "caller hung up"
    assert record.usage.responses == 3
    assert record.info.from_number == "+15551230000"


async def test_session_is_configured_before_audio_is_relayed() -> None:
    async with running_rig(TWO_TURNS) as rig:
        await rig.caller().run([WaitForAssistant(timeout_s=10), HangUp()])
        received = rig.fake.sessions[0].received
    types = [e["type"] for e in received]
    assert types[0] == "session.update"
    session = received[0]["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert session["audio"]["output"]["voice"] == "marin"
    assert "response.create" in types  # the assistant speaks first
    assert types.index("response.create") > 0


@pytest.mark.parametrize("server_ws", [None, "websockets-sansio"], ids=["text-channel", "plain-asgi"])
async def test_barge_in_clears_twilio_cancels_and_truncates_at_heard_audio(
    server_ws: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callbot.web")
    script = Script(
        greeting="Welcome to Acme support. " * 8,  # about 14 s of speech: long enough to interrupt
        user_transcripts=["Sorry, I need to stop you there."],
        replies=["Of course, go ahead."],
        realtime_factor=2.0,  # still generating when the caller talks over it
    )
    async with running_rig(script, server_ws=server_ws) as rig:
        result = await rig.caller().run(
            [
                SayDuringAssistant(speech(1200, seed=3), after_ms=1500, timeout_s=10),
                Silence(100),
                WaitForAssistant(timeout_s=10),
                HangUp(),
            ]
        )
        received = rig.fake.sessions[0].received
        assert rig.fake.violations == []
    transport = "direct text channel" if server_ws is None else "ASGI messages"
    assert f"media websocket accepted ({transport})" in caplog.messages  # the path under test was taken
    assert len(result.clears) >= 1
    cancels = [e for e in received if e["type"] == "response.cancel"]
    truncates = [e for e in received if e["type"] == "conversation.item.truncate"]
    assert len(cancels) == 1 and len(truncates) == 1
    heard_ms = truncates[0]["audio_end_ms"]
    # The caller heard ~1.5 s before talking; VAD needs ~100-300 ms more to notice. Marks every 60 ms.
    assert 1200 <= heard_ms <= 2400, heard_ms
    record = rig.observer.ended[0]
    greeting = record.transcript[0]
    assert greeting.role == "assistant" and greeting.interrupted
    assert greeting.heard_ms == heard_ms
    assert greeting.text and len(greeting.text) < len(script.greeting)
    # After the clear, the assistant's audio stopped quickly and the reply played later.
    clear_ms = result.clears[0]
    intervals = result.assistant_speech_intervals()
    assert any(start > clear_ms for start, _ in intervals)
    assert record.transcript[-1].text == "Of course, go ahead."


async def test_metrics_count_the_call_and_its_outcome() -> None:
    async with running_rig(TWO_TURNS) as rig:
        steps = [WaitForAssistant(timeout_s=10), Say(speech(900, seed=5)), Silence(100)]
        await rig.caller().run([*steps, WaitForAssistant(timeout_s=10), HangUp()])
        while rig.observer.ended == []:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=rig.base_url) as http:
            text = (await http.get("/metrics")).text
    assert 'callbot_calls_total{outcome="caller_hung_up"} 1.0' in text
    assert "callbot_active_calls 0.0" in text
    assert 'callbot_tokens_total{direction="input"}' in text
    assert "callbot_bridge_inbound_latency_seconds_count" in text
    assert "callbot_call_duration_seconds_count 1.0" in text


async def test_freed_memory_goes_back_to_the_os_once_the_last_call_has_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trimming the heap runs when the server becomes idle, not while another call is live."""
    trims: list[int] = []  # how many calls had ended (and reached the ticket sink) at each trim

    async with running_rig(TWO_TURNS) as rig:
        monkeypatch.setattr(
            "callbot.web.twilio_routes.release_free_memory", lambda: trims.append(len(rig.observer.ended))
        )
        short = rig.caller().run([Silence(300), HangUp()])
        long = rig.caller().run([Silence(1500), HangUp()])
        results = await asyncio.gather(short, long)
        for _ in range(100):
            if trims:
                break
            await asyncio.sleep(0.02)
    assert [r.outcome for r in results] == ["completed", "completed"]
    assert trims == [2]


def test_releasing_free_memory_uses_glibc_malloc_trim_where_there_is_one() -> None:
    import platform

    from callbot.adapters import heap

    if platform.libc_ver()[0] == "glibc":
        assert heap._MALLOC_TRIM is not None
    assert heap.release_free_memory() is (heap._MALLOC_TRIM is not None)
