"""Upstream faults during real calls: drops, refused reconnects, session expiry, drop during a summary."""

from __future__ import annotations

import asyncio
import itertools

from openai import AsyncOpenAI

from callbot.adapters.summariser_openai import OpenAISummariser
from callbot.caller.simulator import HangUp, Say, Silence, WaitForAssistant
from callbot.testing.fake_openai_http import serve_fake_openai
from callbot.testing.fake_realtime import Script
from tests.e2e_helpers import running_rig, speech

SCRIPT = Script(
    greeting="Hello, Acme support.",
    user_transcripts=["My order 55120 is late.", "Thanks, that helps."],
    replies=["I see order 55120, it ships tomorrow.", "You're welcome."],
    realtime_factor=0.0,
)


async def _wait_for_sessions(rig: object, n: int) -> None:
    fake = rig.fake  # type: ignore[attr-defined]
    while len(fake.sessions) < n:
        await asyncio.sleep(0.02)


async def test_a_drop_mid_call_reconnects_restores_the_context_and_the_call_goes_on() -> None:
    async with running_rig(SCRIPT) as rig:
        caller = asyncio.create_task(
            rig.caller().run(
                [
                    WaitForAssistant(timeout_s=10),
                    Say(speech(1000, seed=1)),
                    Silence(100),
                    WaitForAssistant(timeout_s=10),
                    Silence(1500),  # the drop happens here
                    Say(speech(900, seed=2)),
                    Silence(100),
                    WaitForAssistant(timeout_s=10),
                    HangUp(),
                ]
            )
        )
        while not any(e.role == "assistant" and e.text for e in _turns(rig)[1:]):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        await rig.fake.drop_now()
        result = await caller
        assert rig.fake.violations == []
        first, second = rig.fake.sessions[0], rig.fake.sessions[1]
    assert result.outcome == "completed" and result.closed_by == "caller"
    # The new session was configured again and given the conversation so far as text.
    received = [e["type"] for e in second.received]
    assert received[0] == "session.update"
    restored = [e["item"] for e in second.received if e["type"] == "conversation.item.create"]
    texts = [(i["role"], i["content"][0]["text"]) for i in restored]
    assert texts == [
        ("assistant", "Hello, Acme support."),
        ("user", "My order 55120 is late."),
        ("assistant", "I see order 55120, it ships tomorrow."),
    ]
    assert [i["id"] for i in restored] == [i["id"] for i in first.items][:3]
    assert "response.create" not in received  # no second greeting
    record = rig.observer.ended[0]
    assert [e.text for e in record.transcript][-2:] == ["Thanks, that helps.", "You're welcome."]
    assert record.end_reason == "caller hung up"


def _turns(rig: object) -> list:  # type: ignore[type-arg]
    progress = rig.observer.progress  # type: ignore[attr-defined]
    return list(progress[-1].transcript) if progress else []


async def test_when_reconnects_are_refused_the_call_ends_with_an_apology_and_a_record() -> None:
    async with running_rig(SCRIPT, max_reconnects=2) as rig:
        caller = asyncio.create_task(rig.caller().run([Silence(8000), HangUp()]))
        await _wait_for_sessions(rig, 1)
        await asyncio.sleep(0.8)
        rig.fake.refuse_connections = True
        await rig.fake.drop_now()
        result = await caller
    assert result.closed_by == "server"  # callbot ended it instead of leaving dead air ...
    assert "<Say>We're sorry, this call has to end now." in result.twiml  # ... and Twilio says why
    assert result.twiml.index("<Say>") > result.twiml.index("</Connect>")
    record = rig.observer.ended[0]
    assert "2 reconnects failed" in record.end_reason


async def test_session_expiry_rolls_over_to_a_new_session() -> None:
    async with running_rig(SCRIPT) as rig:
        caller = asyncio.create_task(
            rig.caller().run(
                [
                    WaitForAssistant(timeout_s=10),
                    Silence(1500),
                    Say(speech(1000, seed=3)),
                    Silence(100),
                    WaitForAssistant(timeout_s=10),
                    HangUp(),
                ]
            )
        )
        await _wait_for_sessions(rig, 1)
        while not rig.observer.progress:
            await asyncio.sleep(0.05)
        rig.fake.expire_session(minutes=60)
        result = await caller
        assert rig.fake.violations == []
    assert result.outcome == "completed" and result.closed_by == "caller"
    assert len(rig.fake.sessions) == 2
    record = rig.observer.ended[0]
    assert [e.text for e in record.transcript][-2:] == [
        "My order 55120 is late.",
        "I see order 55120, it ships tomorrow.",
    ]


async def test_a_proactive_rollover_happens_at_a_quiet_moment() -> None:
    async with running_rig(SCRIPT, session_max_age_s=2.0) as rig:
        result = await rig.caller().run(
            [
                WaitForAssistant(timeout_s=10),
                Silence(2500),  # quiet: the session ages past its limit here
                Say(speech(1000, seed=4)),
                Silence(100),
                WaitForAssistant(timeout_s=10),
                HangUp(),
            ]
        )
        sessions = list(rig.fake.sessions)
    assert result.outcome == "completed"
    assert len(sessions) >= 2
    restored = [
        e["item"]["content"][0]["text"]
        for e in sessions[1].received
        if e["type"] == "conversation.item.create"
    ]
    assert restored[0] == "Hello, Acme support."
    assert rig.observer.ended[0].transcript[-1].text == "I see order 55120, it ships tomorrow."


async def test_a_drop_while_a_summary_is_being_written_loses_nothing() -> None:
    script = Script(
        greeting="Hi.",
        user_transcripts=["My name is Ana Lopez, order 88314.", "do you sell bread?", "do you sell milk?"],
        replies=["Noted.", "yes, we sell bread.", "yes, we sell milk."],
        realtime_factor=0.0,
    )
    async with serve_fake_openai() as openai_url:
        summariser = OpenAISummariser(
            AsyncOpenAI(api_key="fake", base_url=openai_url),
            "gpt-5.4-mini",
            language="English",
            style="notes",
        )
        async with running_rig(
            script, summariser=summariser, summary_enabled=True, summary_trigger_tokens=100, keep_last_turns=2
        ) as rig:
            steps: list[object] = [WaitForAssistant(timeout_s=10)]
            for n in range(3):
                steps += [Say(speech(700, seed=10 + n)), Silence(100), WaitForAssistant(timeout_s=10)]
            steps.append(HangUp())
            caller = asyncio.create_task(rig.caller().run(steps))  # type: ignore[arg-type]
            # drop the upstream as soon as the first summary is requested
            while not any(
                e["type"] == "conversation.item.create" for s in rig.fake.sessions for e in s.received
            ):
                await asyncio.sleep(0.01)
            await rig.fake.drop_now()
            result = await caller
            assert rig.fake.violations == []
    assert result.outcome == "completed"
    record = rig.observer.ended[0]
    # Every caller utterance and every reply is on the record. (Which scripted line the fake
    # picks after a reconnect depends on what the summary folded; that is the fake's business.)
    roles = [e.role for e in record.transcript]
    assert roles.count("user") == 3 and roles.count("assistant") == 4
    assert all(e.text for e in record.transcript)
    assert record.transcript[1].text == "My name is Ana Lopez, order 88314."
    # Nothing said is lost: every turn is still verbatim on the final server or inside a summary there.
    final_items = rig.fake.sessions[-1].items
    final_text = " ".join(c.get("text") or "" for i in final_items for c in i.get("content", []))
    assert "88314" in final_text


async def test_a_drop_while_the_assistant_speaks_keeps_playing_what_was_queued_then_carries_on() -> None:
    script = Script(
        greeting="Welcome to Acme support, thanks for waiting, how can I help you today?",
        user_transcripts=["Where is my parcel?"],
        replies=["It arrives on Friday."],
        realtime_factor=0.0,
    )
    async with running_rig(script) as rig:
        caller = asyncio.create_task(
            rig.caller().run(
                [
                    WaitForAssistant(timeout_s=10),
                    Silence(800),
                    Say(speech(900, seed=5)),
                    Silence(100),
                    WaitForAssistant(timeout_s=10),
                    HangUp(),
                ]
            )
        )
        await _wait_for_sessions(rig, 1)
        while not any(e["type"] == "response.done" for e in rig.fake.sessions[0].sent):
            await asyncio.sleep(0.01)
        await rig.fake.drop_now()  # the greeting is generated but still playing to the caller
        result = await caller
        assert rig.fake.violations == []
        restored = [
            e["item"] for e in rig.fake.sessions[1].received if e["type"] == "conversation.item.create"
        ]
    assert result.outcome == "completed" and result.late_frames <= result.frames_played // 20
    # What the caller heard: the whole greeting (no gap while reconnecting), then the new reply.
    intervals = result.assistant_speech_intervals()
    caller_starts = result.caller_speech_intervals()[0][0]
    greeting = [(a, b) for a, b in intervals if a < caller_starts]
    assert greeting[-1][1] - greeting[0][0] > 4500  # ~5 s of greeting, all of it played
    assert all(b2 - a1 < 300 for (_, a1), (b2, _) in itertools.pairwise(greeting))  # no gap
    assert intervals[-1][0] > caller_starts  # and the reply after the caller's question
    assert [(i["role"], i["content"][0]["text"]) for i in restored] == [("assistant", script.greeting)]
    texts = [e.text for e in rig.observer.ended[0].transcript]
    assert texts == [script.greeting, "Where is my parcel?", "It arrives on Friday."]


async def test_callers_over_the_concurrency_cap_hear_a_busy_message() -> None:
    async with running_rig(SCRIPT, max_concurrent_calls=1) as rig:
        first = asyncio.create_task(
            rig.caller().run([WaitForAssistant(timeout_s=10), Silence(1500), HangUp()])
        )
        await _wait_for_sessions(rig, 1)
        second = await rig.caller().run([Silence(500), HangUp()])
        await first
    assert second.outcome == "no_stream"
    assert "All our lines are busy" in second.twiml and "<Connect>" not in second.twiml
