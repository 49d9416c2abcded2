"""`callbot phone` in file mode against the real server (fake OpenAI behind it), plus its call plans.

The server is the production app with its real ticket service on SQLite and the review API
switched on, so the softphone's live transcript reads the same JSON API a person would use.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI

from callbot import phone
from callbot.adapters.realtime_openai import OpenAIRealtimeConnector
from callbot.adapters.store_sql import SqlTicketStore
from callbot.caller.simulator import (
    Dtmf,
    HangUp,
    Say,
    SayDuringAssistant,
    Silence,
    WaitForAssistant,
    speech_intervals,
)
from callbot.caller.wavio import resample_to, write_wav
from callbot.phone import PhoneOptions, run_phone
from callbot.phone.script import ScriptError, input_steps, parse_script, split_utterances
from callbot.testing.fake_openai_http import serve_fake_openai
from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from callbot.testing.serving import serve_app
from callbot.testing.speech import synth_speech
from callbot.web.app import create_app
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL, make_settings

ADMIN_PASSWORD = "phone-test-admin"


@dataclass
class PhoneRig:
    base_url: str
    database_url: str
    fake: FakeRealtimeServer

    def options(self, **overrides: Any) -> PhoneOptions:
        values: dict[str, Any] = {
            "url": self.base_url,
            "auth_token": AUTH_TOKEN,
            "public_url": PUBLIC_URL,
            "admin_password": ADMIN_PASSWORD,
            "ticket_wait_s": 15.0,
        }
        values.update(overrides)
        return PhoneOptions(**values)


@contextlib.asynccontextmanager
async def phone_rig(tmp_path: Path, script: Script, **setting_overrides: Any) -> AsyncIterator[PhoneRig]:
    """The real app with its own ticket store (SQLite in tmp_path) and the admin API on."""
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'tickets.db'}"
    async with FakeRealtimeServer(script) as fake, serve_fake_openai() as openai_url:
        settings = make_settings(
            openai_base_url=openai_url,
            database_url=database_url,
            spool_dir=tmp_path / "spool",
            admin_password=ADMIN_PASSWORD,
            **setting_overrides,
        )
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="fake", base_url=fake.base_url), settings.model
        )
        app = create_app(settings, connector=connector)  # no observer: the real ticket service
        async with serve_app(app) as base_url:
            yield PhoneRig(base_url, database_url, fake)


def read_stereo(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)


def transcript_lines(output: str) -> list[str]:
    """The 'caller: ...' / 'assistant: ...' lines, without their timestamps."""
    lines = []
    for line in output.splitlines():
        match = re.match(r"\[\s*[\d.]+s\] ((?:caller|assistant): .*)$", line)
        if match:
            lines.append(match.group(1))
    return lines


async def stored_ticket(database_url: str, ticket_id: int) -> Any:
    store = await SqlTicketStore.open(database_url)
    try:
        return await store.get(ticket_id)
    finally:
        await store.close()


# ----- against the real server -----


async def test_script_barge_in_recording_transcript_and_ticket(tmp_path: Path) -> None:
    # The caller's recordings come as a 44.1 kHz stereo file and a 16 kHz mono one.
    stop = synth_speech(1200, 8000, seed=3)
    router = synth_speech(1500, 8000, seed=4)
    write_wav(tmp_path / "stop.wav", [resample_to(stop, 8000, 44100)] * 2, 44100)
    write_wav(tmp_path / "router.wav", [resample_to(router, 8000, 16000)], 16000)
    call = tmp_path / "call.txt"
    call.write_text(
        "# talk over the long greeting 1.5 s into it\n"
        "barge 1500 stop.wav\n"
        "wait 10\n"
        "say router.wav   # then a normal turn\n"
        "wait 10\n"
        "hangup\n"
    )
    script = Script(
        greeting="Welcome to Acme support. " * 8,  # about 14 s: long enough to interrupt
        user_transcripts=["Sorry, I need to stop you there.", "My router is blinking red."],
        replies=["Of course, go ahead.", "Let me book a technician."],
        realtime_factor=3.0,
    )
    out = io.StringIO()
    async with phone_rig(tmp_path, script) as rig:
        code = await run_phone(rig.options(script=call, output=tmp_path / "call.wav"), out=out)
        assert rig.fake.violations == []
    text = out.getvalue()
    assert code == 0, text

    # The recording: caller left, assistant right, 8 kHz stereo.
    audio = read_stereo(tmp_path / "call.wav")
    caller = speech_intervals(audio[:, 0], min_gap_ms=300)
    assistant = speech_intervals(audio[:, 1], min_gap_ms=300)
    assert len(caller) == 2, caller
    assert len(assistant) >= 3, assistant  # greeting (cut), the two replies
    greeting_start, greeting_end = assistant[0]
    barge_start = caller[0][0]
    # The caller started talking ~1.5 s into the greeting, which went quiet soon after:
    # the server's VAD noticed, sent `clear`, and the phone dropped what was buffered.
    assert 1200 <= barge_start - greeting_start <= 1900, (assistant, caller)
    assert barge_start < greeting_end <= barge_start + 700, (assistant, caller)
    # ... although the greeting had ~12 s to go; the replies came after each utterance.
    assert any(start >= caller[0][1] for start, _ in assistant[1:])
    assert assistant[-1][0] >= caller[1][1]

    # The live transcript, in order, as the ticket API served it during the call.
    lines = transcript_lines(text)
    assert lines[0].startswith("assistant: Welcome to Acme support.")
    assert "[interrupted after" in lines[0]
    assert lines[1:] == [
        "caller: Sorry, I need to stop you there.",
        "assistant: Of course, go ahead.",
        "caller: My router is blinking red.",
        "assistant: Let me book a technician.",
    ]
    assert "barge-in: the server cleared the assistant's audio" in text
    assert "you say: router.wav" in text
    assert "call ended after" in text and "(you hung up)" in text

    # The ticket id printed at hang-up is the call's ticket in the database.
    ids = re.findall(r"ticket #(\d+) \((\w+)\)", text)
    assert ids and ids[-1][1] == "complete", text
    ticket = await stored_ticket(rig.database_url, int(ids[-1][0]))
    assert ticket is not None and ticket.status == "complete"
    assert [e.text for e in ticket.transcript][1:] == [line.split(": ", 1)[1] for line in lines[1:]]


async def test_input_wav_split_into_turns_with_summary(tmp_path: Path) -> None:
    # One 22.05 kHz stereo recording with four utterances separated by a second of silence.
    gap = np.zeros(8000, dtype=np.int16)
    pieces = []
    for n in range(4):
        pieces += [synth_speech(900, 8000, seed=20 + n), gap]
    recording = resample_to(np.concatenate(pieces), 8000, 22050)
    write_wav(tmp_path / "caller.wav", [recording, recording], 22050)
    said = [
        "Hi, my internet is down since Monday.",
        "My customer number is 4471-2290.",
        "The router lights blink red.",
        "Thanks, that's all.",
    ]
    replies = ["Sorry to hear that.", "Thanks, found you.", "That's a line fault.", "Bye!"]
    script = Script(
        greeting="Hello, how can I help?", user_transcripts=said, replies=replies, realtime_factor=4.0
    )
    out = io.StringIO()
    async with phone_rig(
        tmp_path, script, summary_enabled=True, summary_trigger_tokens=120, keep_last_turns=2
    ) as rig:
        options = rig.options(input=tmp_path / "caller.wav", output=tmp_path / "call.wav", speed=2.0)
        code = await run_phone(options, out=out)
    text = out.getvalue()
    assert code == 0, text
    for n in range(1, 5):
        assert f"you say: caller.wav ({n}/4)" in text
    expected = ["assistant: Hello, how can I help?"]
    for line, reply in zip(said, replies, strict=True):
        expected += [f"caller: {line}", f"assistant: {reply}"]
    assert transcript_lines(text) == expected
    assert re.search(r"summary inserted at [\d.]+s of the call: folded \d+ turns", text), text
    # Each utterance was answered: assistant audio follows every caller utterance in the recording.
    audio = read_stereo(tmp_path / "call.wav")
    caller = speech_intervals(audio[:, 0], min_gap_ms=300)
    assistant = speech_intervals(audio[:, 1], min_gap_ms=300)
    assert len(caller) == 4, caller
    for _, end in caller:
        assert any(start >= end for start, _ in assistant)
    ticket_id = int(re.findall(r"ticket #(\d+) \(complete\)", text)[-1])
    ticket = await stored_ticket(rig.database_url, ticket_id)
    assert ticket is not None and len(ticket.summaries) >= 1


async def test_wrong_auth_token_is_explained(tmp_path: Path) -> None:
    write_wav(tmp_path / "hi.wav", [synth_speech(500, 8000, seed=1)], 8000)
    out = io.StringIO()
    async with phone_rig(tmp_path, Script()) as rig:
        code = await run_phone(rig.options(input=tmp_path / "hi.wav", auth_token="not-the-token"), out=out)
    assert code == 1
    assert "HTTP 403" in out.getvalue() and "--auth-token" in out.getvalue()


async def test_unreachable_server_and_no_credentials(tmp_path: Path) -> None:
    write_wav(tmp_path / "hi.wav", [synth_speech(500, 8000, seed=1)], 8000)
    out = io.StringIO()
    options = PhoneOptions(url="http://127.0.0.1:9", input=tmp_path / "hi.wav", auth_token=None)
    code = await run_phone(options, out=out)
    text = out.getvalue()
    assert code == 1
    assert "live transcript is off" in text
    assert "no --auth-token" in text
    assert "call failed: cannot reach http://127.0.0.1:9" in text
    assert "ticket id needs the admin login" not in text  # no call, no ticket to speak of


# ----- call plans -----


def test_script_file_commands(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", [np.full(800, 1000, dtype=np.int16)] * 2, 16000)
    steps = parse_script(
        "# a comment\n\nwait\nsay a.wav\npause 250\nbarge 800 a.wav  # talk over it\n"
        "wait 5.5\ndtmf 1#\nhangup\nsay ignored.wav\n",
        tmp_path,
    )
    kinds = [type(s) for s in steps]
    assert kinds == [WaitForAssistant, Say, Silence, SayDuringAssistant, WaitForAssistant, Dtmf, Dtmf, HangUp]
    say = steps[1]
    assert isinstance(say, Say) and say.label == "a.wav" and len(say.pcm8k) == 400  # 16 kHz -> 8 kHz
    barge = steps[3]
    assert isinstance(barge, SayDuringAssistant) and barge.after_ms == 800
    assert steps[2] == Silence(250) and steps[4] == WaitForAssistant(timeout_s=5.5)
    assert parse_script("say a.wav", tmp_path)[-1] == HangUp()  # the end hangs up


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("shout a.wav", "line 1: unknown command 'shout'"),
        ("say", "say needs a WAV file"),
        ("say missing.wav", "cannot read"),
        ("pause soon", "pause must be a whole number"),
        ("pause -5", "must not be negative"),
        ("barge 100", "barge needs MS and a WAV file"),
        ("wait forever", "wait takes seconds"),
        ("dtmf 12x", "not a DTMF digit"),
    ],
)
def test_script_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ScriptError, match=re.escape(message)):
        parse_script(line, tmp_path)


def test_split_utterances_at_silences_relative_to_the_loudest() -> None:
    quiet_speech = (synth_speech(600, 8000, seed=5) // 20).astype(np.int16)  # about -42 dBFS
    short_gap, long_gap = np.zeros(2400, np.int16), np.zeros(8000, np.int16)  # 300 ms, 1 s
    pcm = np.concatenate([long_gap, quiet_speech, short_gap, quiet_speech, long_gap, quiet_speech, long_gap])
    pieces = split_utterances(pcm)
    assert len(pieces) == 2  # the 300 ms gap does not split
    assert 1400 <= len(pieces[0]) / 8 <= 1900 and 500 <= len(pieces[1]) / 8 <= 1000
    assert len(split_utterances(np.zeros(8000, np.int16))) == 1  # no speech: the file as it is


def test_input_plans_wait_or_pause() -> None:
    pcm = np.concatenate([synth_speech(500, 8000, seed=1), np.zeros(8000, np.int16), synth_speech(500, 8000)])
    waiting = input_steps(pcm, "in.wav", None)
    assert [type(s) for s in waiting] == [
        WaitForAssistant,
        Say,
        WaitForAssistant,
        Say,
        WaitForAssistant,
        HangUp,
    ]
    assert [s.label for s in waiting if isinstance(s, Say)] == ["in.wav (1/2)", "in.wav (2/2)"]
    pausing = input_steps(pcm, "in.wav", 400)
    assert [type(s) for s in pausing] == [Silence, Say, Silence, Say, WaitForAssistant, HangUp]
    assert pausing[0] == Silence(400)


def test_parser_flags_and_environment_defaults(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="callbot")
    phone.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["phone", "--input", "in.wav", "--pause-ms", "300", "--from", "+1555", "--output-device", "3"]
    )
    assert args.func is phone.cmd_phone
    env = {
        "TWILIO_AUTH_TOKEN": "tok",
        "CALLBOT_PUBLIC_URL": "https://pub.example",
        "CALLBOT_ADMIN_USER": "boss",
        "CALLBOT_ADMIN_PASSWORD": "pw",
    }
    options = PhoneOptions.from_args(args, env)
    assert options.url == "http://127.0.0.1:8080" and options.file_mode
    assert (options.auth_token, options.public_url) == ("tok", "https://pub.example")
    assert (options.admin_user, options.admin_password) == ("boss", "pw")
    assert options.pause_ms == 300 and options.from_number == "+1555" and options.output_device == 3
    args = parser.parse_args(
        [
            "phone",
            "https://bot.example/",
            "--auth-token",
            "x",
            "--admin-password",
            "p",
            "--input-device",
            "USB",
        ]
    )
    options = PhoneOptions.from_args(args, {})
    assert options.url == "https://bot.example" and not options.file_mode
    assert options.input_device == "USB" and options.admin_user == "admin" and options.public_url is None


async def test_conflicting_file_mode_flags(tmp_path: Path) -> None:
    err = io.StringIO()
    assert await run_phone(PhoneOptions(input=Path("a.wav"), script=Path("b.txt")), err=err) == 2
    assert await run_phone(PhoneOptions(script=Path("b.txt"), pause_ms=100), err=err) == 2
    assert await run_phone(PhoneOptions(input=tmp_path / "missing.wav"), err=err) == 2
    lines = err.getvalue().splitlines()
    assert lines[0] == "callbot phone: use either --input or --script, not both"
    assert lines[1] == "callbot phone: --pause-ms goes with --input"
    assert lines[2].startswith("callbot phone: cannot read ")
