"""The far end of an outbound call, offline: a dialer on `FakeTwilioRest.on_create`.

When callbot places a call through the fake REST API, the dialer plays what Twilio and the
called party would do (docs/call-control.md §4, §5, §7):

- it posts the status callbacks the call asked for (`initiated`, `ringing`, `answered` as
  `in-progress`, the final one with `CallDuration`), numbered with `SequenceNumber` and signed
  with the auth token as Twilio signs them, to the URLs given at create;
- `busy`, `no-answer` and `failed` numbers never answer: the final callback says so;
- a `human` answers: the media stream opens to the TwiML's `<Stream url>` with the caller
  simulator (`callbot.caller`), the asynchronous AMD result `human` is posted, and the person
  listens, says something and hangs up;
- a `machine` answers with a greeting, then beeps: the AMD result (`machine_end_beep` with
  `DetectMessageEnd`, else `machine_start`) is posted after it; a REST update of the call then
  stops the stream, and a `<Say>` in the new TwiML is what the machine records.

It does not change how the fake treats updates: it listens on `on_update` and passes every update
on to a hook that was there before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection

from callbot.caller.result import CallResult
from callbot.caller.script import HangUp, Say, ScriptCursor, Silence, Step, WaitForAssistant
from callbot.caller.simulator import TwilioCaller
from callbot.caller.stream import SessionConfig, StreamSession
from callbot.core.call_control import CallUpdate
from callbot.testing.fake_twilio_rest import FakeCall, FakeTwilioRest
from callbot.testing.speech import synth_speech

Answer = Literal["human", "machine", "busy", "no-answer", "failed"]


def human_steps() -> list[Step]:
    """A person who listens to the greeting, answers once, hears the reply and hangs up."""
    return [
        WaitForAssistant(timeout_s=15),
        Say(synth_speech(700, 8000, seed=71)),
        Silence(100),
        WaitForAssistant(timeout_s=15),
        HangUp(),
    ]


def machine_steps(greeting_ms: int) -> list[Step]:
    """An answering machine: its greeting, then silence for a message (the update stops it)."""
    return [Say(synth_speech(greeting_ms, 8000, seed=83)), Silence(8000), HangUp()]


@dataclass
class DialedCall:
    """One call the dialer played: what happened, for tests to check."""

    call: FakeCall
    answer: Answer
    callbacks: list[tuple[str, dict[str, str], int]] = field(
        default_factory=list
    )  # path, fields, HTTP status
    result: CallResult | None = None
    voicemail: str | None = None
    hung_up_by_update: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    session: StreamSession | None = None


class _DialerCaller(TwilioCaller):
    """The simulator, keeping hold of the stream session so an update can stop it."""

    def __init__(self, dialed: DialedCall, base_url: str, **kwargs: Any) -> None:
        super().__init__(base_url, **kwargs)
        self._dialed = dialed

    def new_stream_session(
        self, config: SessionConfig, ws: ClientConnection, cursor: ScriptCursor, result: CallResult
    ) -> StreamSession:
        session = super().new_stream_session(config, ws, cursor, result)
        self._dialed.session = session
        return session


class FakeTwilioDialer:
    """Rings, answers and hangs up the fake's outbound calls against a callbot at `server_url`.

    `answers` maps a called number to how it answers (default `default_answer`); `public_url` is
    the origin callbot put into its callback and stream URLs (they are signed over it and sent to
    `server_url`, as a tunnel would)."""

    def __init__(
        self,
        rest: FakeTwilioRest,
        server_url: str,
        *,
        public_url: str,
        answers: Mapping[str, Answer] | None = None,
        default_answer: Answer = "human",
        human: Callable[[FakeCall], Iterable[Step]] = lambda _call: human_steps(),
        machine_greeting_ms: int = 1200,
        ring_s: float = 0.2,
        speed: float = 1.0,
        max_call_s: float = 60.0,
        on_event: Callable[[str, DialedCall, dict[str, object]], None] | None = None,
    ) -> None:
        self.rest = rest
        self.server_url = server_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.answers = dict(answers or {})
        self.default_answer: Answer = default_answer
        self.human = human
        self.machine_greeting_ms = machine_greeting_ms
        self.ring_s = ring_s
        self.speed = speed
        self.max_call_s = max_call_s
        self.on_event = on_event
        self.dialed: dict[str, DialedCall] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._previous_update = rest.on_update
        self._http = httpx.AsyncClient(timeout=15.0, trust_env=False)
        rest.on_create = self._on_create
        rest.on_update = self._on_update

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._http.aclose()

    async def wait_all(self, timeout_s: float = 60.0) -> None:
        """Until every call placed so far has had its final callback."""
        async with asyncio.timeout(timeout_s):
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ----- the hooks -----

    async def _on_create(self, call: FakeCall) -> None:
        answer = self.answers.get(call.to, self.default_answer)
        dialed = DialedCall(call, answer)
        self.dialed[call.sid] = dialed
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        # Twilio answers the create first and rings afterwards: so does the dialer.
        task = asyncio.get_running_loop().create_task(self._play(dialed), name=f"dial-{call.sid}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_update(self, call: FakeCall, update: CallUpdate) -> None:
        dialed = self.dialed.get(call.sid)
        if dialed is not None:
            if update.twiml is not None:
                dialed.voicemail = _said(update.twiml)
            dialed.hung_up_by_update = True
            if dialed.session is not None:
                await dialed.session.hang_up()  # new TwiML or a hang-up stops the stream
        if self._previous_update is not None:
            await self._previous_update(call, update)

    def _emit(self, kind: str, dialed: DialedCall, data: dict[str, object]) -> None:
        if self.on_event is not None:
            self.on_event(kind, dialed, data)

    # ----- one call -----

    async def _play(self, dialed: DialedCall) -> None:
        call = dialed.call
        sequence = 0
        answered_at: float | None = None
        try:
            for status in ("initiated", "ringing"):
                await self._status(dialed, status, sequence)
                sequence += 1
                call.status = "ringing"
                await asyncio.sleep(self.ring_s / 2)
            if dialed.answer in ("busy", "no-answer", "failed"):
                call.status, call.duration_s = dialed.answer, 0
                await self._status(dialed, dialed.answer, sequence, duration_s=0)
                return
            call.status = "in-progress"
            answered_at = time.monotonic()
            await self._status(dialed, "in-progress", sequence)
            sequence += 1
            await self._run_stream(dialed)
            if call.status not in ("completed", "canceled"):
                call.status = "completed"
            duration = round(time.monotonic() - answered_at)
            call.duration_s = duration
            await self._status(dialed, "completed", sequence, duration_s=duration)
        finally:
            self.in_flight -= 1
            dialed.done.set()

    async def _run_stream(self, dialed: DialedCall) -> None:
        call = dialed.call
        caller = _DialerCaller(
            dialed,
            self.server_url,
            auth_token=self.rest.auth_token,
            account_sid=self.rest.account_sid,
            call_sid=call.sid,
            from_number=call.from_,
            to_number=call.to,
            speed=self.speed,
            max_call_s=self.max_call_s,
            public_base_url=self.public_url,
            on_event=(lambda kind, data: self._emit(kind, dialed, data)) if self.on_event else None,
        )
        machine = dialed.answer == "machine"
        steps = machine_steps(self.machine_greeting_ms) if machine else list(self.human(call))
        amd = asyncio.get_running_loop().create_task(self._amd(dialed, machine))
        try:
            dialed.result = await caller.run_twiml(call.twiml or "", steps)
        finally:
            # A result already on its way is delivered (Twilio does not take it back at hang-up).
            await asyncio.wait({amd}, timeout=10)
            if not amd.done():
                amd.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await amd

    async def _amd(self, dialed: DialedCall, machine: bool) -> None:
        """The asynchronous AMD result: a person at once, a machine after its greeting's beep."""
        fields = dialed.call.create_fields
        mode = (fields.get("MachineDetection") or [""])[0]
        url = (fields.get("AsyncAmdStatusCallback") or [""])[0]
        if not mode or not url:
            return
        if machine:
            await asyncio.sleep(self.machine_greeting_ms / 1000 / self.speed + 0.3)
            answered_by = "machine_end_beep" if mode == "DetectMessageEnd" else "machine_start"
        else:
            await asyncio.sleep(0.3)
            answered_by = "human"
        params = {
            "CallSid": dialed.call.sid,
            "AccountSid": self.rest.account_sid,
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": str(self.machine_greeting_ms if machine else 300),
        }
        await self._post(dialed, url, params)

    async def _status(
        self, dialed: DialedCall, status: str, sequence: int, *, duration_s: int | None = None
    ) -> None:
        fields = dialed.call.create_fields
        url = (fields.get("StatusCallback") or [""])[0]
        events = fields.get("StatusCallbackEvent") or []
        event = "answered" if status == "in-progress" else status
        final = status in ("completed", "busy", "no-answer", "failed", "canceled")
        if not url or (not final and event not in events):
            return  # Twilio sends only what was asked for, and always the final status
        call = dialed.call
        params = {
            "CallSid": call.sid,
            "AccountSid": self.rest.account_sid,
            "From": call.from_,
            "To": call.to,
            "CallStatus": status,
            "Direction": "outbound-api",
            "ApiVersion": "2010-04-01",
            "SequenceNumber": str(sequence),
            "CallbackSource": "call-progress-events",
        }
        if duration_s is not None:
            params["CallDuration"] = str(duration_s)
        await self._post(dialed, url, params)

    async def _post(self, dialed: DialedCall, url: str, params: dict[str, str]) -> None:
        """Sign over the URL callbot gave (its public one) and deliver to the server we reach."""
        signature = RequestValidator(self.rest.auth_token).compute_signature(url, params)
        parts = urlsplit(url)
        target = self.server_url + parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            response = await self._http.post(target, data=params, headers={"X-Twilio-Signature": signature})
            code = response.status_code
        except httpx.HTTPError:
            code = 0
        dialed.callbacks.append((parts.path, params, code))
        status = params.get("CallStatus") or params.get("AnsweredBy", "")
        self._emit("callback", dialed, {"path": parts.path, "status": status, "http": code})


def _said(twiml: str) -> str | None:
    """The text of the first `<Say>` in TwiML, or None."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return None
    say = root.find(".//Say")
    return (say.text or "").strip() if say is not None else None
