"""What in-call summarisation saves: one long scripted call replayed with summaries off and on.

Run: python bench/summary_bench.py [--thresholds 2000,4000] [--turns 40] [--json out.json]

The call is replayed once per configuration (summaries OFF, then ON at each threshold) through
the real code path, without wall-clock pacing:

* `callbot.core.call.CallSession` (the production per-call state machine) is driven by a lean
  driver in this file, with a virtual clock: it feeds the caller's audio as Twilio `media`
  frames, runs the 20 ms ticks that pace the bot's audio out to "Twilio", and echoes the marks
  the way Twilio does once the audio has played, so the caller only speaks after the bot has
  finished (no barge-in; every reply is heard in full).
* The Realtime side is the real `openai` SDK (`client.realtime.connect`, through
  `callbot.adapters.realtime_openai`) talking to the fake GA server `FakeRealtimeServer`
  (`realtime_factor=0`). The fake's energy VAD commits each caller utterance, it transcribes
  and answers from the script, and it bills every response from the items it really holds, so
  deletions and the summary item show up in its `response.done` usage.
* Summaries come from `callbot.adapters.summariser_openai.OpenAISummariser` calling the fake
  OpenAI HTTP server (`callbot.testing.fake_openai_http`) through the real SDK; its token usage is
  read from the HTTP responses.

Every token figure printed comes from the fake server's `response.done.usage` (or the fake
summariser's `usage`); nothing is estimated here. Costs use the gpt-realtime-1.5 prices of
docs/protocols.md §11.4 (text in $4/M, audio in $32/M, cached in $0.40/M, text out $16/M, audio out
$64/M). The fake reports no cached tokens, so the real bill would be lower in every
configuration, and more so without summaries (deleting items busts the prompt cache from the
point of change). Caller transcription (billed separately, identical in every configuration)
is not included. The summary model's price is an assumption: $0.75/M in, $4.50/M out (flags).

The fake summariser restates every fact line verbatim, so only the caller's first line carries
facts (a name and an account number); the rest of the call is fact-free small talk about an
internet fault, a bill and a plan change, so the rolled-up summary stays a realistic size.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if importlib.util.find_spec("callbot") is None:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
from openai import AsyncOpenAI, DefaultAsyncHttpxClient

from callbot.adapters.realtime_openai import OpenAIRealtimeConnector, OpenAIRealtimeLink
from callbot.adapters.summariser_openai import OpenAISummariser
from callbot.core import realtime_events as rte
from callbot.core import twilio as tw
from callbot.core.actions import (
    Action,
    Checkpoint,
    ConnectRealtime,
    EndCall,
    RequestSummary,
    SendRealtime,
    SendTwilio,
)
from callbot.core.call import CallConfig, CallSession
from callbot.core.realtime import AgentConfig
from callbot.core.summary import SummaryPolicy
from callbot.errors import SummaryUnavailable
from callbot.testing.fake_openai_http import serve_fake_openai
from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from callbot.testing.fake_realtime_audio import PCMU
from callbot.testing.speech import duration_ms_for_text

MODEL = "gpt-realtime-1.5"
SUMMARY_MODEL = "gpt-5.4-mini"
# USD per 1M tokens, docs/protocols.md §11.4 (gpt-realtime-1.5)
PRICE = {"text_in": 4.0, "audio_in": 32.0, "cached_in": 0.40, "text_out": 16.0, "audio_out": 64.0}

INSTRUCTIONS = (
    "You are the phone assistant of Acme, an internet and TV provider. Speak in short, friendly "
    "sentences, one question at a time, and never read out more than the caller needs. Before you "
    "discuss a bill, make sure you know the caller's name and account number. For connection "
    "faults, walk the caller through the basic checks first: restart the router, check the cable "
    "from the wall socket, look at the status light, and ask whether all devices are affected. "
    "If the checks point to the line, offer a line test, and if the line test shows a fault, book "
    "a technician visit in the next free slot that suits the caller. Technician visits for faults "
    "on our network are free. You may refund one movie rental per year as a goodwill gesture. You "
    "may describe the current plans and send written offers by email, but never switch a plan "
    "during the call. Earlier parts of this call may appear as a system message that summarises "
    "them: treat it as what was said, and do not mention that it is a summary. If you cannot help, "
    "offer a call back from a human colleague within one working day."
)
GREETING = "Hello, thanks for calling Acme support. How can I help you today?"

# (caller line, assistant reply); only the first caller line carries facts.
# ruff: noqa: E501  (one dialogue line per source line reads better than wrapped strings)
DIALOGUE: list[tuple[str, str]] = [
    ("Hi, this is Maria Jensen, my account number is 558213. My internet keeps dropping.",
     "Thanks, Maria. I'm sorry your connection keeps dropping. Let me pull up your account. Since when has this been happening?"),
    ("It started on the weekend. It drops every hour or so, for a few minutes.",
     "Thank you. Have you already tried restarting the router, by unplugging it for about thirty seconds?"),
    ("Yes, I already restarted the router twice, it did not help.",
     "Okay, thanks for trying that. When it drops, what colour is the light on the front of the router?"),
    ("The light on the front is blinking orange when it drops.",
     "Blinking orange means the router lost the signal from our network, so the problem is likely on the line, not your devices."),
    ("It is the white box the installer left, I think it is a few years old.",
     "That's fine, that model is still supported. Do all your devices lose the connection at the same time, or only some?"),
    ("Both, the laptop and the phones lose the connection at the same time.",
     "Understood, that points to the line again. Could you check that the grey cable from the wall socket is firmly plugged into the router?"),
    ("Sure, give me a second to find the cable. Okay, it is plugged in tight.",
     "Thank you. Has anything changed recently, like new equipment, a new splitter, or building work nearby?"),
    ("No, nobody else in the house changed anything.",
     "Alright. I understand this is frustrating, especially when you rely on the connection for work."),
    ("I work from home, so this is really a problem for my video calls.",
     "I completely understand. Let me look into it properly so we can fix it for good, not just for today."),
    ("Can you see anything on your side, like an outage in my area?",
     "I don't see a reported outage in your area right now. I can run a line test from here to check the signal quality."),
    ("Okay. How long would a line test take?",
     "It takes about two minutes. Your connection may drop briefly while it runs. Shall I start it now?"),
    ("Yes please, run it now, I will stay on the line.",
     "Starting the test now, please bear with me for a moment. The test has finished, and it shows noise on the line."),
    ("What does that mean, noise on the line?",
     "Noise means interference on the copper cable, which makes the modem lose sync. It often comes from a damaged cable or a loose connection."),
    ("So is it the cable outside or something in my flat?",
     "It could be either, and we can't tell remotely. A technician can measure at the socket and at the street cabinet and fix whichever it is."),
    ("Can you send a technician then?",
     "Yes, I can book a visit for you. Do you prefer mornings or afternoons?"),
    ("Mornings are better for me, before noon if possible.",
     "The earliest morning slot I have is Thursday between eight and twelve. Would that suit you?"),
    ("Thursday morning works. Will I need to be at home?",
     "Yes, someone over eighteen needs to be at home to let the technician in and show where the router is."),
    ("Okay, I can arrange that. Will the visit cost anything?",
     "No, the visit is free because the fault is on our network side. You would only pay if the damage was inside your home."),
    ("Good. While I have you, I also have a question about my bill.",
     "Of course, happy to help with your bill as well. What would you like to know?"),
    ("Last month it was higher than usual, about ten euros more.",
     "Let me look at the itemised bill. I can see an extra charge for a movie rental on the TV box last month."),
    ("I did not order any new service, as far as I know.",
     "The rental was made on the TV box in the living room, on a Saturday evening."),
    ("Oh, the movie rental. That might have been my son.",
     "That happens quite often. I can refund it once as a goodwill gesture, and it will show on your next bill."),
    ("Can I block rentals on the TV box so this does not happen again?",
     "Yes, you can protect rentals with a PIN. I can set it for you now, and you can change it later in the TV menu."),
    ("Yes, please set a PIN for rentals.",
     "Done. Rentals now need a PIN. I will send it to you by text message in a moment."),
    ("Can you also check if there is a cheaper plan for me? I mostly stream and work.",
     "Sure. Based on your usage, the basic fibre plan would save you a few euros a month, and the faster plan costs a bit more."),
    ("What is the difference in speed between the two plans?",
     "The basic plan gives up to one hundred megabits, the faster one up to five hundred. For streaming and video calls the basic one is plenty."),
    ("Would the faster plan fix the dropouts as well?",
     "No, the dropouts come from the line noise, so a faster plan would not fix them. The technician visit should."),
    ("Then I will wait for the technician first and decide about the plan later.",
     "That sounds like a good plan. Your current plan stays as it is until you decide."),
    ("Is there a contract period if I switch later?",
     "If you switch to the faster plan there is a twelve month minimum term. Switching to the basic plan has no minimum term."),
    ("Okay, good to know. Can you send me the offer by email?",
     "Of course. I will send both offers to the email address on your account. Is that address still correct?"),
    ("The email address on my account is still correct, yes.",
     "Great, the offers are on their way and should arrive within a few minutes."),
    ("One more thing: my parents want to get internet too. Do you cover their village?",
     "I would be glad to check. We cover most villages in the region, but I need their street and house number to confirm."),
    ("I do not know the exact address by heart, can they call you themselves?",
     "Yes, they can call this number or check availability on our website with their address."),
    ("Great. Is there some discount if they join through me?",
     "Yes, with our referral programme both of you get one month free once their line is active."),
    ("How would they mention that I referred them?",
     "They just need to give your account number or your name when they order, and the credit is applied automatically."),
    ("Okay. So to recap, the technician comes Thursday morning, right?",
     "Yes, the technician visit is booked for Thursday morning between eight and twelve."),
    ("And the rental PIN is active from today?",
     "Yes, the PIN is active from now, and the refund for the rental will appear on your next bill."),
    ("Will I get a text message before the technician arrives?",
     "Yes, you will get a text message on the morning of the visit with a one hour arrival window."),
    ("Perfect. I think that is everything for today.",
     "Great. Is there anything else I can help you with today?"),
    ("Thank you, you were very helpful. Bye.",
     "You're welcome. Thanks for calling, and I hope the technician fixes it quickly. Goodbye."),
]  # fmt: skip

FRAME_MS = 20
FRAME_BYTES = 160
PAUSE_BEFORE_SPEAKING_MS = 400  # the caller's reaction time after the bot stops
SILENCE_AFTER_SPEAKING_MS = 900  # > the 500 ms VAD silence, so the fake commits the turn
STREAM_SID = "MZ" + "5" * 32
TURN_TIMEOUT_S = 30.0


def progress(msg: str, *, end: str = "\n") -> None:
    print(f"\r[summary_bench] {msg:<100}", end=end, file=sys.stderr, flush=True)


# ----- the lean driver ---------------------------------------------------------------------------


class TwilioLine:
    """Twilio's side of the media stream: plays frames in order, echoes marks once played."""

    def __init__(self) -> None:
        self.play_end_ms = 0
        self.pending: list[tuple[int, str]] = []
        self.frames = 0

    def receive(self, text: str, now: int) -> list[str]:
        msg = orjson.loads(text)
        if msg["event"] == "media":
            self.frames += 1
            self.play_end_ms = (
                max(self.play_end_ms, now) + len(base64.b64decode(msg["media"]["payload"])) // 8
            )
        elif msg["event"] == "mark":
            self.pending.append((max(self.play_end_ms, now), msg["mark"]["name"]))
        elif msg["event"] == "clear":
            echoed = [name for _, name in self.pending]
            self.pending, self.play_end_ms = [], now
            return echoed
        return []

    def due(self, now: int) -> list[str]:
        names = [name for at, name in self.pending if at <= now]
        self.pending = [(at, name) for at, name in self.pending if at > now]
        return names


@dataclass
class SummaryUsage:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class RunResult:
    name: str
    enabled: bool
    trigger: int | None
    responses: list[dict[str, Any]] = field(default_factory=list)  # in-band response.done usage, in order
    summaries: list[dict[str, Any]] = field(default_factory=list)
    summary_requests: int = 0
    summary_failures: int = 0
    summariser: SummaryUsage = field(default_factory=SummaryUsage)
    wall_s: float = 0.0
    barge_ins: int = 0
    violations: list[str] = field(default_factory=list)
    final_context: list[str] = field(default_factory=list)


class LeanCall:
    """Drives one CallSession against the fake Realtime server on a virtual clock."""

    def __init__(
        self,
        session: CallSession,
        connector: OpenAIRealtimeConnector,
        summariser: OpenAISummariser | None,
        result: RunResult,
    ) -> None:
        self.session = session
        self.connector = connector
        self.summariser = summariser
        self.result = result
        self.now = 0
        self.link: OpenAIRealtimeLink | None = None
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.twilio = TwilioLine()
        self.tasks: set[asyncio.Task[None]] = set()
        self.summarising = 0
        self.pending_creates: set[str] = set()
        self.pending_deletes: set[str] = set()
        self.ended = False

    # --- actions ---
    async def perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendTwilio):
                for name in self.twilio.receive(action.text, self.now):  # marks flushed by a clear
                    await self.perform(self.session.receive_twilio(tw.Mark(STREAM_SID, name), self.now))
            elif isinstance(action, SendRealtime):
                event = action.event
                if event["type"] == "conversation.item.create":
                    self.pending_creates.add(event["item"]["id"])
                elif event["type"] == "conversation.item.delete":
                    self.pending_deletes.add(event["item_id"])
                assert self.link is not None
                await self.link.send(event)
            elif isinstance(action, ConnectRealtime):
                self.link = await self.connector.connect()
                self._spawn(self._reader(self.link))
                await self.perform(self.session.realtime_connected(self.now))
            elif isinstance(action, RequestSummary):
                self.result.summary_requests += 1
                self.summarising += 1
                self._spawn(self._summarise(action))
            elif isinstance(action, EndCall):
                self.ended = True
            else:
                assert isinstance(action, Checkpoint)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _reader(self, link: OpenAIRealtimeLink) -> None:
        with contextlib.suppress(Exception):
            while True:
                await self.queue.put(("rt", await link.recv()))

    async def _summarise(self, action: RequestSummary) -> None:
        request = action.request
        try:
            assert self.summariser is not None
            text = await self.summariser.summarise(request)
        except SummaryUnavailable as exc:
            await self.queue.put(("summary_failed", (request.summary_id, str(exc))))
        else:
            await self.queue.put(("summary", (request.summary_id, text)))

    # --- events ---
    async def handle(self, kind: str, payload: Any) -> None:
        s = self.session
        if kind == "rt":
            event: dict[str, Any] = payload
            etype = event.get("type")
            if etype == "response.done":
                response = event.get("response") or {}
                if not (response.get("metadata") or {}).get("purpose") and response.get("usage"):
                    self.result.responses.append(response["usage"])
            elif etype in ("conversation.item.added", "conversation.item.done"):
                self.pending_creates.discard(str((event.get("item") or {}).get("id")))
            elif etype == "conversation.item.deleted":
                self.pending_deletes.discard(str(event.get("item_id")))
            elif etype == "error":
                err = event.get("error") or {}
                failed = str(err.get("event_id") or "")
                self.pending_creates.discard(failed.removeprefix("evt_create_"))
                self.pending_deletes.discard(failed.removeprefix("evt_delete_"))
                progress(f"Realtime error: {err.get('code')} {err.get('message')}")
            await self.perform(s.receive_realtime(rte.parse(event), self.now))
        elif kind == "summary":
            self.summarising -= 1
            await self.perform(s.receive_summary(payload[0], payload[1], self.now))
        else:
            self.summarising -= 1
            self.result.summary_failures += 1
            await self.perform(s.summary_failed(payload[0], payload[1], self.now))

    async def drain(self) -> None:
        while not self.queue.empty():
            await self.handle(*self.queue.get_nowait())

    async def pump_until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TURN_TIMEOUT_S
        await self.drain()
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            try:
                kind, payload = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                raise TimeoutError(f"timed out waiting for {what}") from None
            await self.handle(kind, payload)

    async def step(self) -> None:
        """20 ms of virtual time: the pacer's tick, then the marks Twilio echoes by now."""
        self.now += FRAME_MS
        await self.perform(self.session.tick(self.now))
        for name in self.twilio.due(self.now):
            await self.perform(self.session.receive_twilio(tw.Mark(STREAM_SID, name), self.now))

    # --- the call ---
    async def start(self) -> None:
        start = tw.Start(stream_sid=STREAM_SID, call_sid="CA" + "5" * 32, account_sid="AC" + "5" * 32)
        await self.perform(self.session.receive_twilio(start, self.now))
        await self.pump_until(lambda: self.session.phase == "active", "session.updated")

    def settled(self, responses: int) -> bool:
        conv = self.session.conversation
        return (
            len(self.result.responses) >= responses
            and self.summarising == 0
            and not self.pending_creates
            and not self.pending_deletes
            and not any(t.transcript_status == "pending" for t in conv.turns() if t.role == "user")
        )

    async def listen(self) -> None:
        """Let the bot's reply play out (virtual time), then the caller's reaction time."""
        while self.session.playback.is_playing(self.now):
            await self.step()
            await self.drain()
        for _ in range(PAUSE_BEFORE_SPEAKING_MS // FRAME_MS):
            await self.step()
            await self.drain()

    async def say(self, text: str, seed: int) -> None:
        """The caller's utterance and the silence after it, as 20 ms Twilio media frames."""
        audio = PCMU.synth(duration_ms_for_text(text), seed) + b"\xff" * (SILENCE_AFTER_SPEAKING_MS * 8)
        for i in range(0, len(audio) - FRAME_BYTES + 1, FRAME_BYTES):
            frame = audio[i : i + FRAME_BYTES]
            payload = base64.b64encode(frame).decode("ascii")
            media = tw.Media(STREAM_SID, payload, frame, self.now)
            await self.perform(self.session.receive_twilio(media, self.now))
            await self.step()
            await self.drain()

    async def hang_up(self) -> None:
        await self.perform(self.session.receive_twilio(tw.Stop(STREAM_SID), self.now))
        if self.link is not None:
            await self.link.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def run_config(name: str, trigger: int | None, turns: int, keep_last: int, label: str) -> RunResult:
    result = RunResult(name=name, enabled=trigger is not None, trigger=trigger)
    t0 = time.monotonic()
    dialogue = DIALOGUE[:turns]
    script = Script(
        greeting=GREETING,
        user_transcripts=[line for line, _ in dialogue],
        replies=[reply for _, reply in dialogue],
        realtime_factor=0.0,
    )
    usage = result.summariser

    async def count_usage(response: Any) -> None:  # the SDK's httpx Response
        if response.request.url.path.endswith("/chat/completions") and response.status_code == 200:
            await response.aread()
            body = response.json().get("usage") or {}
            usage.calls += 1
            usage.prompt_tokens += int(body.get("prompt_tokens") or 0)
            usage.completion_tokens += int(body.get("completion_tokens") or 0)

    async with (
        FakeRealtimeServer(script) as fake,
        serve_fake_openai() as openai_url,
        DefaultAsyncHttpxClient(event_hooks={"response": [count_usage]}, timeout=30) as http,
    ):
        summariser = OpenAISummariser(
            AsyncOpenAI(api_key="fake", base_url=openai_url, http_client=http),
            SUMMARY_MODEL,
            language="English",
            style="concise bullet points",
            timeout_s=20,
        )
        policy = SummaryPolicy(
            enabled=trigger is not None,
            trigger_tokens=trigger if trigger is not None else 10**9,
            keep_last_turns=keep_last,
        )
        agent = AgentConfig(model=MODEL, audio_mode="pcmu", instructions=INSTRUCTIONS, greeting=GREETING)
        session = CallSession(CallConfig(agent=agent, summary=policy))
        connector = OpenAIRealtimeConnector(AsyncOpenAI(api_key="fake", base_url=fake.base_url), MODEL)
        call = LeanCall(session, connector, summariser if trigger is not None else None, result)
        await call.start()
        await call.pump_until(lambda: call.settled(1), "the greeting")
        for n, (line, _) in enumerate(dialogue, start=1):
            await call.listen()
            await call.say(line, seed=n)
            await call.pump_until(lambda n=n: call.settled(1 + n), f"turn {n}")  # type: ignore[misc]
            ctx = result.responses[-1]["input_tokens"]
            progress(
                f"{label} {name:<13} turn {n:>2}/{turns}  input {ctx:>6,} tok  "
                f"summaries {len(session.conversation.summaries)}  {time.monotonic() - t0:5.1f} s",
                end="",
            )
        await call.listen()
        await call.hang_up()
        result.violations = list(fake.violations)
        result.final_context = [item["id"] for item in fake.sessions[0].items]
    conv = session.conversation
    result.summaries = [
        {
            "summary_id": s.summary_id,
            "at_ms": s.at_ms,
            "tokens_before": s.tokens_before,
            "tokens_after": s.tokens_after,
            "turns_folded": s.turns_folded,
            "chars": len(s.text),
        }
        for s in conv.summaries
    ]
    result.barge_ins = session.stats.barge_ins
    problems = conv.invariant_violations()
    if problems:
        result.violations += [f"invariant: {p}" for p in problems]
    result.wall_s = time.monotonic() - t0
    return result


# ----- reporting ---------------------------------------------------------------------------------


def totals(result: RunResult) -> dict[str, int]:
    keys = ("input", "input_text", "input_audio", "cached", "cached_text", "cached_audio")
    t = dict.fromkeys((*keys, "output", "output_text", "output_audio"), 0)
    for u in result.responses:
        inp, out = u.get("input_token_details") or {}, u.get("output_token_details") or {}
        cached = inp.get("cached_tokens_details") or {}
        t["input"] += int(u.get("input_tokens") or 0)
        t["input_text"] += int(inp.get("text_tokens") or 0)
        t["input_audio"] += int(inp.get("audio_tokens") or 0)
        t["cached"] += int(inp.get("cached_tokens") or 0)
        t["cached_text"] += int(cached.get("text_tokens") or 0)
        t["cached_audio"] += int(cached.get("audio_tokens") or 0)
        t["output"] += int(u.get("output_tokens") or 0)
        t["output_text"] += int(out.get("text_tokens") or 0)
        t["output_audio"] += int(out.get("audio_tokens") or 0)
    return t


def costs(result: RunResult, price_in: float, price_out: float) -> dict[str, float]:
    t = totals(result)
    realtime = (
        (t["input_text"] - t["cached_text"]) * PRICE["text_in"]
        + (t["input_audio"] - t["cached_audio"]) * PRICE["audio_in"]
        + t["cached"] * PRICE["cached_in"]
        + t["output_text"] * PRICE["text_out"]
        + t["output_audio"] * PRICE["audio_out"]
    ) / 1e6
    s = result.summariser
    summariser = (s.prompt_tokens * price_in + s.completion_tokens * price_out) / 1e6
    return {"realtime_usd": realtime, "summariser_usd": summariser, "total_usd": realtime + summariser}


BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(values: list[int], top: int) -> str:
    return "".join(BLOCKS[max(1 if v > 0 else 0, min(8, round(v / top * 8)))] if top else " " for v in values)


def report(results: list[RunResult], price_in: float, price_out: float) -> str:
    lines: list[str] = []
    head = (
        f"{'config':<14}{'summaries':>10}{'responses':>10}{'input tok':>11}{'(text':>8}{'audio)':>9}"
        f"{'output tok':>11}{'realtime $':>11}{'sum. tok in/out':>17}{'sum. $':>8}{'total $':>9}{'saved':>7}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    base = None
    for r in results:
        t, c = totals(r), costs(r, price_in, price_out)
        base = base if base is not None else c["total_usd"]
        saved = f"{(1 - c['total_usd'] / base) * 100:5.1f}%" if base else "-"
        s = r.summariser
        lines.append(
            f"{r.name:<14}{len(r.summaries):>10}{len(r.responses):>10}{t['input']:>11,}{t['input_text']:>8,}"
            f"{t['input_audio']:>9,}{t['output']:>11,}{c['realtime_usd']:>11.4f}"
            f"{f'{s.prompt_tokens:,}/{s.completion_tokens:,}':>17}{c['summariser_usd']:>8.4f}"
            f"{c['total_usd']:>9.4f}{saved:>7}"
        )
    lines.append("")
    n = max(len(r.responses) for r in results)
    marks = list(range(0, n, 5)) + ([n - 1] if (n - 1) % 5 else [])
    lines.append("input tokens of the response to caller turn N (turn 0 = the greeting):")
    lines.append(f"{'turn':<14}" + "".join(f"{m:>7}" for m in marks) + f"{'max':>8}")
    for r in results:
        values = [int(u["input_tokens"]) for u in r.responses]
        row = "".join(f"{values[m]:>7,}" if m < len(values) else f"{'':>7}" for m in marks)
        lines.append(f"{r.name:<14}{row}{max(values):>8,}")
    top = max(int(u["input_tokens"]) for r in results for u in r.responses)
    lines.append("")
    lines.append(f"every response, scaled to {top:,} tokens:")
    for r in results:
        lines.append(f"{r.name:<14}|{sparkline([int(u['input_tokens']) for u in r.responses], top)}|")
    lines.append("")
    for r in results:
        if not r.summaries:
            continue
        folded = ",".join(str(s["turns_folded"]) for s in r.summaries)
        after = [s["tokens_after"] for s in r.summaries]
        lines.append(
            f"{r.name}: {r.summary_requests} summary requests ({r.summary_failures} failed), "
            f"items folded per summary [{folded}], tokens before->after "
            + " ".join(
                f"{s['tokens_before']:,}->{a if a is None else format(a, ',')}"
                for s, a in zip(r.summaries, after, strict=True)
            )
            + f"; last summary {r.summaries[-1]['chars']:,} chars"
        )
    lines.append("")
    lines.append(
        "prices: gpt-realtime-1.5 text in $4/M, audio in $32/M, cached in $0.40/M, text out $16/M, "
        f"audio out $64/M (docs/protocols.md §11.4); summariser {SUMMARY_MODEL} assumed ${price_in:g}/M in, "
        f"${price_out:g}/M out."
    )
    lines.append(
        "The fake Realtime server reports no cached tokens, so every input token is billed at the full "
        "rate here; caller transcription is not included."
    )
    return "\n".join(lines)


def to_json(results: list[RunResult], args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": MODEL,
        "summary_model": SUMMARY_MODEL,
        "turns": args.turns,
        "keep_last_turns": args.keep_last,
        "prices_usd_per_million": {
            **PRICE,
            "summary_in": args.summary_price_in,
            "summary_out": args.summary_price_out,
        },
        "cached_tokens_reported_by_fake": False,
        "configs": [
            {
                "name": r.name,
                "summaries_enabled": r.enabled,
                "trigger_tokens": r.trigger,
                "responses": r.responses,
                "input_tokens_per_response": [int(u["input_tokens"]) for u in r.responses],
                "totals": totals(r),
                "costs": costs(r, args.summary_price_in, args.summary_price_out),
                "summaries": r.summaries,
                "summary_requests": r.summary_requests,
                "summary_failures": r.summary_failures,
                "summariser_usage": {
                    "calls": r.summariser.calls,
                    "prompt_tokens": r.summariser.prompt_tokens,
                    "completion_tokens": r.summariser.completion_tokens,
                },
                "barge_ins": r.barge_ins,
                "violations": r.violations,
                "server_items_at_hang_up": len(r.final_context),
                "wall_s": round(r.wall_s, 2),
            }
            for r in results
        ],
    }


async def amain(args: argparse.Namespace) -> list[RunResult]:
    configs: list[tuple[str, int | None]] = [("OFF", None)] + [(f"ON @{t:,}", t) for t in args.thresholds]
    results = []
    for i, (name, trigger) in enumerate(configs, start=1):
        results.append(await run_config(name, trigger, args.turns, args.keep_last, f"[{i}/{len(configs)}]"))
    progress("done", end="\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--thresholds",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        default=[2_000, 4_000],
        help="comma-separated summary triggers in tokens (default 2000,4000)",
    )
    parser.add_argument(
        "--turns", type=int, default=len(DIALOGUE), help=f"caller turns, at most {len(DIALOGUE)}"
    )
    parser.add_argument("--keep-last", type=int, default=2, help="turns kept verbatim (keep_last_turns)")
    parser.add_argument(
        "--summary-price-in", type=float, default=0.75, help="USD per 1M summariser input tokens"
    )
    parser.add_argument(
        "--summary-price-out", type=float, default=4.5, help="USD per 1M summariser output tokens"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.turns = max(1, min(args.turns, len(DIALOGUE)))
    logging.basicConfig(level=logging.ERROR)
    results = asyncio.run(amain(args))
    print(report(results, args.summary_price_in, args.summary_price_out))
    bad = [(r.name, v) for r in results for v in r.violations]
    barge = [r.name for r in results if r.barge_ins]
    if bad:
        print(f"\nPROTOCOL/INVARIANT VIOLATIONS: {bad[:5]}")
    if barge:
        print(f"\nunexpected barge-ins in {barge}: replies were cut, the numbers are off")
    if args.json:
        args.json.write_text(json.dumps(to_json(results, args), indent=2))
        print(f"\nwrote {args.json}")
    if bad or barge:
        sys.exit(1)


if __name__ == "__main__":
    main()
