"""`callbot demo`: a whole phone call, offline, through the real server.

Only the OpenAI side is simulated: a fake Realtime server (scripted transcripts and replies,
real GA events; its voice and the caller's speak words through eSpeak NG when the `speech` extra
is installed, synthetic buzzes otherwise) and a fake text model for summaries and the ticket. The
callbot server, its bridge, summariser, ticket service and SQLite store are the production
code, and the caller speaks Twilio's Media Streams protocol over a loopback websocket.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from openai import AsyncOpenAI
from pydantic import SecretStr

from callbot.adapters.realtime_openai import OpenAIRealtimeConnector
from callbot.adapters.store_sql import SqlTicketStore
from callbot.caller.simulator import (
    HangUp,
    Say,
    SayDuringAssistant,
    Silence,
    Step,
    TwilioCaller,
    WaitForAssistant,
)
from callbot.core.cost import DEFAULT_PRICE_TABLE, call_cost, price_table
from callbot.core.transcript_text import context_change_text
from callbot.settings import Settings
from callbot.testing.fake_openai import FakeOpenAI
from callbot.testing.fake_realtime import Script
from callbot.testing.fake_twilio_dialer import Answer, DialedCall, FakeTwilioDialer
from callbot.testing.fake_twilio_rest import FakeTwilioRest
from callbot.testing.serving import serve_app
from callbot.testing.speech import duration_ms_for_text, synth_speech
from callbot.testing.tts import CALLER_VOICE, available, speak
from callbot.web.app import Services, create_app

DEMO_TOKEN = "offline-demo-auth-token"
PUBLIC_URL = "https://callbot-demo.invalid"

CALLER_LINES = [
    "Hi, this is Maria Chen. My internet has been down since Monday.",
    "My customer number is 4471-2290.",
    "Yes, the router lights are blinking red.",
    "I already restarted it twice.",
    "Tomorrow between 9 and 12 works for me.",
    "Can you also send me a text message confirmation to +1 555 0100?",
    "No, that's everything. Thank you!",
]
REPLIES = [
    "I'm sorry to hear that, Maria. Can you give me your customer number?",
    "Thank you. I can see your line. Are the lights on your router blinking red?",
    "That points to a line fault. Have you tried restarting the router?",
    "Thanks. I'll book a technician visit. When are you available?",
    "Booked: a technician visits tomorrow between 9 and 12.",
    "Done, a confirmation text goes to plus one five five five zero one hundred.",
    "You're welcome, Maria. Have a good day!",
]


def demo_script() -> Script:
    return Script(
        greeting="Hello, you're through to Acme Broadband support. How can I help you today?",
        user_transcripts=CALLER_LINES,
        replies=REPLIES,
        realtime_factor=3.0,
        speak_words=True,
    )


def caller_audio(line: str, n: int) -> np.ndarray:
    """The caller saying `line` at 8 kHz: in words through eSpeak NG where the `speech` extra is
    installed (callbot/testing/tts.py), else the synthetic buzz of the same turn."""
    spoken = speak(line, 8000, voice=CALLER_VOICE)
    if spoken is not None:
        return spoken
    return synth_speech(min(duration_ms_for_text(line), 2500), 8000, seed=100 + n)


def caller_steps() -> list[Step]:
    barge_in_turn = 2  # the caller talks over the assistant's second reply
    steps: list[Step] = [WaitForAssistant(timeout_s=15)]
    for n, line in enumerate(CALLER_LINES):
        audio = caller_audio(line, n)
        if n == barge_in_turn:
            steps.append(SayDuringAssistant(audio, after_ms=1200, timeout_s=15, label=line))
        else:
            steps.append(Say(audio, label=line))
        steps.append(Silence(150))
        if n + 1 != barge_in_turn:
            steps.append(WaitForAssistant(timeout_s=15))
    steps.append(HangUp())
    return steps


class _Printer:
    def __init__(self, out: Any) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def line(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)

    def restart_clock(self) -> None:
        """From here on, times are call time: what the ticket's timestamps count from."""
        self.t0 = time.monotonic()

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "step" and data.get("label") and data.get("step") != "SayDuringAssistant":
            self.line(f"caller speaks: {data['label']}")
        elif kind == "barge_in" and data.get("label"):
            self.line(f"caller speaks over the assistant: {data['label']}")
        elif kind == "assistant_audio_start":
            self.line("assistant is speaking ...")
        elif kind == "clear":
            self.line("barge-in: the server cleared the assistant's audio")
        elif kind == "hangup":
            self.line("caller hangs up")


async def run_demo(workdir: Path, *, speed: float = 1.0, output: Path | None = None, out: Any = None) -> int:
    out = out or sys.stdout
    printer = _Printer(out)
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    database_url = f"sqlite+aiosqlite:///{workdir / 'demo.db'}"
    print("callbot offline demo: the real server on 127.0.0.1, the OpenAI side simulated", file=out)
    print("(fake Realtime server + fake text model; no API key, no network).", file=out)
    if available():
        print("Voices: eSpeak NG speaks the caller's and the assistant's words.", file=out)
    else:
        print(
            "Voices: synthetic buzzes (install the speech extra, pip install -e '.[speech]', for words).",
            file=out,
        )
    async with FakeOpenAI(demo_script()) as fake:  # what `callbot fake-openai` serves
        settings = Settings(
            public_url=PUBLIC_URL,
            twilio_auth_token=SecretStr(DEMO_TOKEN),
            openai_api_key=SecretStr("offline-demo"),
            openai_base_url=fake.base_url,
            database_url=database_url,
            spool_dir=workdir / "spool",
            summary_trigger_tokens=350,
            keep_last_turns=2,
            transcript_wait_ms=1000,
            log_level="WARNING",
        )
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="offline-demo", base_url=fake.base_url), settings.model
        )
        app = create_app(settings, connector=connector)
        async with serve_app(app) as base_url:
            printer.line(f"server listening on {base_url}; placing a call to +15559870000")
            printer.restart_clock()
            caller = TwilioCaller(
                base_url, auth_token=DEMO_TOKEN, public_base_url=PUBLIC_URL, speed=speed, on_event=printer
            )
            result = await caller.run(caller_steps())
            services: Services = app.state.services
            await services.active_calls.wait_empty()  # the ticket is written as the bridge finishes
            if output is not None:
                result.write_wav(output)
                printer.line(f"stereo recording written to {output} (caller left, assistant right)")
            if services.observer is not None:
                await services.observer.drain()  # type: ignore[attr-defined]
    if fake.realtime.violations:
        violations = fake.realtime.violations
        print("protocol violations seen by the fake Realtime server:", *violations, sep="\n  ", file=out)
        return 1
    return await _print_ticket(database_url, result.call_sid, out)


async def _print_ticket(database_url: str, call_sid: str, out: Any) -> int:
    store = await SqlTicketStore.open(database_url)
    try:
        ticket = await store.get_by_call_sid(call_sid)
    finally:
        await store.close()
    if ticket is None:
        print(f"no ticket was written for {call_sid}", file=out)
        return 1
    print("\n=== Transcript", file=out)
    for entry in ticket.transcript:
        who = {"user": "Caller", "assistant": "Assistant"}.get(entry.role, entry.role)
        flag = " [interrupted]" if entry.interrupted else ""
        when = f"{entry.spoken_at_ms / 1000:6.1f}s"
        if entry.started_ms is not None and entry.ended_ms is not None:
            when += f"-{entry.ended_ms / 1000:.1f}s"
        print(f"  {when:<14} {who}: {entry.text or '(no transcript)'}{flag}", file=out)
    print("\n=== Summaries inserted during the call", file=out)
    for summary in ticket.summaries:
        print(
            f"  at {summary.at_ms / 1000:.1f}s: folded {summary.turns_folded} turns, "
            f"{context_change_text(summary.tokens_before, summary.tokens_after)}",
            file=out,
        )
    if not ticket.summaries:
        print("  (none)", file=out)
    print(f"\n=== Ticket #{ticket.id} ({ticket.status})", file=out)
    fields = ticket.item.summary or {}
    for key in ("title", "category", "priority", "sentiment", "follow_up_needed", "summary"):
        print(f"  {key}: {fields.get(key)}", file=out)
    for fact in fields.get("facts", []):
        print(f"  fact: {fact.get('label')}: {fact.get('value')}", file=out)
    cost = call_cost(ticket.to_record(), price_table(DEFAULT_PRICE_TABLE))
    if cost.cost_usd is not None and cost.cost_without_summaries_usd is not None:
        print(
            f"\n=== Cost (estimated at {cost.model}'s list prices): ${cost.cost_usd:.4f}; "
            f"without the summaries ${cost.cost_without_summaries_usd:.4f} "
            f"({cost.tokens_saved} input tokens saved)",
            file=out,
        )
    print(f"\nReview it with: callbot tickets show {ticket.id}  (database {database_url})", file=out)
    return 0


# ----- `callbot demo --outbound`: a call-back, a voicemail and a busy line -----

OUTBOUND_CALLER_LINES = ["Oh hi. Yes, it's working again since this morning.", "No, that's all, thanks."]
OUTBOUND_REPLIES = ["Great to hear. Is there anything else I can help with?", "Thanks, Maria. Goodbye!"]
OUTBOUND_NUMBERS: dict[str, Answer] = {
    "+15550100001": "human",
    "+15550100002": "machine",
    "+15550100003": "busy",
}
DEMO_VOICEMAIL = "Hello, this is Acme Broadband about your repair. Please call us back on 555 0100."


def _outbound_person() -> list[Step]:
    steps: list[Step] = [WaitForAssistant(timeout_s=15)]
    for n, line in enumerate(OUTBOUND_CALLER_LINES):
        audio = synth_speech(min(duration_ms_for_text(line), 2500), 8000, seed=200 + n)
        steps += [Say(audio, label=line), Silence(150), WaitForAssistant(timeout_s=15)]
    return [*steps, HangUp()]


async def run_outbound_demo(workdir: Path, *, out: Any = None) -> int:
    """Three calls placed through the real server's API and the fake Twilio: a person who talks,
    an answering machine that gets the voicemail, and a busy line; then their tickets."""
    out = out or sys.stdout
    printer = _Printer(out)
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    database_url = f"sqlite+aiosqlite:///{workdir / 'demo.db'}"
    print("callbot outbound demo: the real server places calls through a fake Twilio REST API,", file=out)
    print("whose dialer answers as a person, as an answering machine, or not at all.", file=out)
    script = Script(
        greeting="Hi Maria, this is Acme Broadband calling back about your outage. Is your line working?",
        user_transcripts=OUTBOUND_CALLER_LINES,
        replies=OUTBOUND_REPLIES,
        realtime_factor=3.0,
    )
    rest = FakeTwilioRest(auth_token=DEMO_TOKEN)
    async with FakeOpenAI(script) as fake, serve_app(rest.app) as rest_url:
        settings = Settings(
            public_url=PUBLIC_URL,
            twilio_auth_token=SecretStr(DEMO_TOKEN),
            twilio_account_sid=rest.account_sid,
            twilio_api_url=rest_url,
            outbound_from_number="+15550100000",
            voicemail_message=DEMO_VOICEMAIL,
            admin_password=SecretStr(DEMO_TOKEN),
            openai_api_key=SecretStr("offline-demo"),
            openai_base_url=fake.base_url,
            database_url=database_url,
            spool_dir=workdir / "spool",
            log_level="WARNING",
        )
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="offline-demo", base_url=fake.base_url), settings.model
        )
        app = create_app(settings, connector=connector)

        def show(kind: str, dialed: DialedCall, data: dict[str, Any]) -> None:
            who = f"{dialed.call.to} ({dialed.answer})"
            if kind == "callback":
                printer.line(f"{who}: Twilio posts {data['path']} {data['status']} -> HTTP {data['http']}")
            elif kind == "step" and data.get("label"):
                printer.line(f"{who} says: {data['label']}")
            elif kind == "assistant_audio_start":
                printer.line(f"{who}: the agent is speaking ...")
            elif kind == "hangup":
                printer.line(f"{who}: the line closes")

        async with serve_app(app) as base_url:
            dialer = FakeTwilioDialer(
                rest, base_url, public_url=PUBLIC_URL, answers=OUTBOUND_NUMBERS, ring_s=0.6,
                human=lambda _call: _outbound_person(), on_event=show,
            )  # fmt: skip
            placed: list[dict[str, Any]] = []
            auth = ("admin", DEMO_TOKEN)
            async with httpx.AsyncClient(base_url=base_url, auth=auth, trust_env=False, timeout=30) as http:
                for number in OUTBOUND_NUMBERS:
                    body = {
                        "to": number,
                        "instructions": "Check that Maria's line works again after Monday's outage.",
                        "context": {"customer": "Maria Chen", "case": "4471-2290"},
                    }
                    reply = await http.post("/api/calls", json=body)
                    reply.raise_for_status()
                    answer = reply.json()
                    placed.append(answer)
                    call, ticket = answer["call_sid"], answer["ticket_id"]
                    printer.line(f"POST /api/calls {number} -> call {call}, ticket #{ticket}")
            try:
                await dialer.wait_all(120)
                services: Services = app.state.services
                while services.active_calls:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                if services.observer is not None:
                    await services.observer.drain()  # type: ignore[attr-defined]
            finally:
                await dialer.aclose()
    store = await SqlTicketStore.open(database_url)
    try:
        tickets = [await store.get(p["ticket_id"]) for p in placed]
    finally:
        await store.close()
    print("\n=== Tickets", file=out)
    for ticket in tickets:
        if ticket is None:
            print("  a ticket is missing", file=out)
            return 1
        life = ticket.lifecycle
        print(
            f"  #{ticket.id} {ticket.item.to_number}: outcome {ticket.outcome}, Twilio {life.twilio_status}, "
            f"{life.duration_s} s, answered by {life.answered_by or '-'}, {len(ticket.transcript)} turns",
            file=out,
        )
    talked = next((t for t in tickets if t is not None and t.outcome == "talked"), None)
    if talked is not None:
        print(f"\n=== The call-back, ticket #{talked.id} (context {talked.context})", file=out)
        for entry in talked.transcript:
            who = {"user": "Callee", "assistant": "Agent"}.get(entry.role, entry.role)
            print(f"  {who}: {entry.text or '(no transcript)'}", file=out)
    print(f"\nReview them with: callbot tickets list  (database {database_url})", file=out)
    outcomes = [t.outcome for t in tickets if t is not None]
    return 0 if outcomes == ["talked", "voicemail_left", "busy"] else 1


def add_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run a whole simulated call offline (no API key, no network)")
    demo.add_argument(
        "--workdir", type=Path, default=None, help="where the demo database goes (default: a temp dir)"
    )
    demo.add_argument("--output", type=Path, default=None, help="write the call as a stereo WAV file")
    demo.add_argument("--speed", type=float, default=1.0, help=argparse.SUPPRESS)
    demo.add_argument(
        "--outbound",
        action="store_true",
        help="place calls instead: a call-back that talks, a voicemail and a busy line (fake Twilio)",
    )
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="callbot-demo-"))
    if args.outbound:
        return asyncio.run(run_outbound_demo(workdir))
    return asyncio.run(run_demo(workdir, speed=args.speed, output=args.output))
