"""Property-based abuse of the real server while a legitimate call runs alongside.

The real app (its own ticket service on SQLite, the fake Realtime server, the fake OpenAI HTTP
API) runs in a background thread with its own event loop, for the whole module. Hypothesis
drives synchronous clients against it from the test thread: malformed and adversarial Media
Streams sessions on `/twilio/media`, and malformed webhook requests on `/twilio/voice`. Legitimate
calls are placed one after another from the server's loop for as long as the fuzzing lasts.

What must hold: no 5xx answer, no ERROR log record from the server's loggers, no call left
hanging once its socket is gone, every fuzzed stream that began as a real call (valid token)
still gets its final ticket, nothing invalid reaches the Realtime server, every legitimate call
completes with its whole transcript in its ticket, and `/healthz` still answers.

The number of cases run is printed when the module's server stops (`pytest -s` shows it).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI
from twilio.request_validator import RequestValidator
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from callbot.adapters.realtime_openai import OpenAIRealtimeConnector
from callbot.adapters.store_sql import SqlTicketStore
from callbot.caller.simulator import CallResult, HangUp, Say, Silence, Step, TwilioCaller, WaitForAssistant
from callbot.core import stream_token
from callbot.core.ticket import TicketStatus
from callbot.settings import Settings
from callbot.testing.fake_openai_http import serve_fake_openai
from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from callbot.testing.serving import serve_app
from callbot.web.app import Services, create_app
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL, make_settings, speech
from tests.fuzz_counts import CASES, KINDS, report

T = TypeVar("T")
# Huge generated strings are the point here; hypothesis only warns that printing them is costly.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

MAX_MESSAGE_BYTES = 16_384  # small, so "oversized" frames stay cheap to generate
MEDIA_EXAMPLES = int(os.environ.get("CALLBOT_FUZZ_MEDIA_EXAMPLES", "200"))
WEBHOOK_EXAMPLES = int(os.environ.get("CALLBOT_FUZZ_WEBHOOK_EXAMPLES", "400"))
LEGIT_TEXTS = ["Hello there.", "Fine, thanks.", "Glad to hear it."]
# The server under test logs through these; `websockets` is left out because only the fake
# Realtime server uses that library's server (it logs a handshake the bridge abandoned when a
# call ended while its Realtime connection was still opening: the fake's noise, not the app's).
WATCHED_LOGGERS = ("callbot", "uvicorn", "starlette", "fastapi", "asyncio", "sqlalchemy", "openai", "httpx")


# ----------------------------------------------------------------------------- the server


class ErrorLog(logging.Handler):
    """Every ERROR (or worse) record from the server's loggers, tagged with the case running then."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[tuple[str, logging.LogRecord]] = []
        self.current = "-"

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in WATCHED_LOGGERS:
            self.records.append((self.current, record))

    def describe(self) -> str:
        lines = []
        for case, record in self.records[:10]:
            lines.append(f"[{record.name}] {record.getMessage()[:300]} (during: {case[:300]})")
            if record.exc_text or record.exc_info:
                formatter = logging.Formatter()
                lines.append(
                    formatter.formatException(record.exc_info) if record.exc_info else record.exc_text or ""
                )
        return "\n".join(lines)


class ServerThread:
    """The real app and its fakes, served from a thread with its own event loop."""

    def __init__(
        self,
        workdir: Path,
        *,
        script: Script | None = None,
        fakes: Callable[[contextlib.AsyncExitStack], Awaitable[dict[str, Any]]] | None = None,
        **overrides: Any,
    ) -> None:
        """`fakes` starts more fakes on the server's loop (a fake Twilio REST API, a tool server)
        and returns the settings that point the app at them; `overrides` are more settings."""
        self.workdir = workdir
        self.script = script or Script(
            greeting=LEGIT_TEXTS[0], user_transcripts=[LEGIT_TEXTS[1]], replies=[LEGIT_TEXTS[2]]
        )
        self.fakes = fakes
        self.overrides = overrides
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._thread_main, name="fuzz-server", daemon=True)
        self.loop: asyncio.AbstractEventLoop
        self.base_url = ""
        self.settings: Settings
        self.services: Services
        self.fake: FakeRealtimeServer
        self.store: SqlTicketStore
        self._stop: asyncio.Event

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("the server thread did not start")
        if self.failure is not None:
            raise RuntimeError("the server thread failed to start") from self.failure

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - kept for start(), which raises it in the test's thread
            self.failure = exc
            self.ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            fake = await stack.enter_async_context(FakeRealtimeServer(self.script))
            openai_url = await stack.enter_async_context(serve_fake_openai())
            extra = await self.fakes(stack) if self.fakes is not None else {}
            values: dict[str, Any] = {
                "openai_base_url": openai_url,
                "database_url": f"sqlite+aiosqlite:///{self.workdir}/fuzz.db",
                "spool_dir": self.workdir / "spool",
                "max_message_bytes": MAX_MESSAGE_BYTES,
                "session_ready_timeout_s": 5,
                # the legitimate calls all come from one number and are checked word for word: a
                # returning caller's memory would change their greeting (tests/test_e2e_memory.py)
                "memory_enabled": False,
            }
            self.settings = make_settings(**{**values, **extra, **self.overrides})
            connector = OpenAIRealtimeConnector(
                AsyncOpenAI(api_key="fake", base_url=fake.base_url), self.settings.model
            )
            app = create_app(self.settings, connector=connector)  # the real ticket service
            async with serve_app(app) as base_url:
                self.base_url = base_url
                self.services = app.state.services
                self.fake = fake
                self.store = await SqlTicketStore.open(self.settings.database_url)  # for reading
                try:
                    self.ready.set()
                    await self._stop.wait()
                finally:
                    await self.store.close()

    def run(self, work: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout_s)

    def submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(30)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/twilio/media"


@dataclass
class LegitCalls:
    """Places real calls back to back from the server's loop until told to stop."""

    server: ServerThread
    results: list[CallResult] = field(default_factory=list)
    sids: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _future: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        self._future = self.server.submit(self._loop())

    async def _loop(self) -> None:
        steps: list[Step] = [
            WaitForAssistant(timeout_s=10),
            Say(speech(800, seed=11)),
            Silence(100),
            WaitForAssistant(timeout_s=10),
            HangUp(),
        ]
        while not self._stop.is_set():
            caller = TwilioCaller(self.server.base_url, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_URL)
            self.sids.add(caller.call_sid)
            self.results.append(await caller.run(steps))

    def finish(self) -> list[CallResult]:
        """Let the call in progress end, place no more; the results of every call placed."""
        self._stop.set()
        assert self._future is not None
        self._future.result(60)
        return self.results

    def abandon(self) -> None:
        """Stop placing calls (after a failure), without judging them."""
        self._stop.set()
        if self._future is not None:
            concurrent.futures.wait([self._future], timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    srv = ServerThread(tmp_path_factory.mktemp("fuzz"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        report(("media", "webhook"))


@pytest.fixture
def legit(server: ServerThread) -> Iterator[LegitCalls]:
    """Legitimate calls placed back to back for as long as the test runs."""
    calls = LegitCalls(server)
    calls.start()
    try:
        yield calls
    finally:
        calls.abandon()


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def settle_and_check(
    server: ServerThread, legit: LegitCalls, error_log: ErrorLog, answered: list[str] | None = None
) -> None:
    """After a fuzzing run: nothing hangs, the legitimate calls are intact, the server is healthy.

    `answered` are the call sids of fuzzed streams that began as real calls (valid token): each
    must have a finished ticket, whatever junk followed its start.
    """
    results = legit.finish()
    deadline = time.monotonic() + 20
    while server.services.active_calls and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.services.active_calls, f"{len(server.services.active_calls)} call(s) never ended"
    server.run(server.services.observer.drain())  # type: ignore[union-attr]

    async def tickets(call_sids: list[str]) -> list[Any]:
        return [await server.store.get_by_call_sid(sid) for sid in call_sids]

    assert results, "no legitimate call was placed"
    views = server.run(tickets([r.call_sid for r in results]))
    for result, view in zip(results, views, strict=True):
        assert result.outcome == "completed", result.summary()
        assert result.violations == [], result.violations
        assert view is not None, f"no ticket for legitimate call {result.call_sid}"
        assert [e.text for e in view.transcript] == LEGIT_TEXTS
        assert [e.role for e in view.transcript] == ["assistant", "user", "assistant"]
        assert view.status == TicketStatus.COMPLETE
    answered = answered or []
    fuzzed = server.run(tickets(answered))
    unfinished = [
        (sid, view.status if view else None)
        for sid, view in zip(answered, fuzzed, strict=True)
        if view is None or view.status == TicketStatus.IN_PROGRESS
    ]
    assert unfinished == [], (
        f"{len(unfinished)} of {len(answered)} answered fuzz calls lost their final ticket"
    )
    assert server.fake.violations == [], server.fake.violations[:5]  # nothing invalid reached Realtime
    health = httpx.get(server.base_url + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert server.thread.is_alive()
    assert error_log.records == [], error_log.describe()
    print(f"legitimate calls completed alongside the fuzzing: {len(results)}")


# ----------------------------------------------------------------------------- strategies

SURROGATE_JSON = ['"\\ud800"', '"\\udfff tail"', '"\\ud83d"']

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=10,
)
weird_text = (
    st.text(max_size=40)
    | st.sampled_from(["", " ", "\x00", "null", "<![CDATA[x]]>", "' OR 1=1 --", "../../etc/passwd", "é" * 50])
    | st.integers(min_value=1000, max_value=MAX_MESSAGE_BYTES).map(lambda n: "Z" * n)
)


def sometimes_wrong(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right type, sometimes any JSON value at all."""
    return st.one_of(valid, valid, valid, json_values)


digit_strings = st.integers(min_value=0, max_value=10**6).map(str) | st.sampled_from(
    ["-1", "1e3", "٣", "9" * 40]
)
sids = st.sampled_from(["MZfuzz0001", ""]) | weird_text
good_base64 = st.binary(min_size=0, max_size=640).map(lambda b: base64.b64encode(b).decode())
payloads = (
    good_base64
    | st.sampled_from(["***not base64***", "abc", "====", "//8=\n", "AAAA AAAA", "é", "\\u0000"])
    | st.integers(min_value=1000, max_value=12_000).map(lambda n: base64.b64encode(b"\xff" * n).decode())
)
media_messages = st.fixed_dictionaries(
    {"event": st.just("media")},
    optional={
        "streamSid": sometimes_wrong(sids),
        "sequenceNumber": sometimes_wrong(digit_strings),
        "media": sometimes_wrong(
            st.fixed_dictionaries(
                {"payload": sometimes_wrong(payloads)},
                optional={
                    "track": sometimes_wrong(st.sampled_from(["inbound", "outbound", ""])),
                    "chunk": sometimes_wrong(digit_strings),
                    "timestamp": sometimes_wrong(digit_strings),
                },
            )
        ),
    },
)


def minted(call_sid: str, *, age_s: int = 0) -> str:
    return stream_token.mint(AUTH_TOKEN.encode(), call_sid, int(time.time()) - age_s, 120)


call_sids = st.sampled_from(["CAfuzz" + "0" * 26]) | weird_text
tokens = (
    st.text(max_size=80)
    | st.sampled_from(["", "1.abc", "0.", ".deadbeef", "99999999999.zz", "١٢٣.abc", "\x00.\x00"])
    | st.builds(minted, call_sids)  # valid: the call is accepted, whatever its sid looks like
    | st.builds(lambda sid: minted(sid, age_s=10_000), call_sids)  # expired
    | st.builds(lambda sid: minted(sid + "x"), call_sids)  # for another call
    | st.builds(lambda sid: "9" * 40 + "." + minted(sid).split(".")[1], call_sids)  # tampered expiry
)
start_bodies = st.fixed_dictionaries(
    {
        "callSid": sometimes_wrong(call_sids),
        "customParameters": sometimes_wrong(
            st.fixed_dictionaries(
                {"token": sometimes_wrong(tokens)},
                optional={"from": sometimes_wrong(weird_text), "to": sometimes_wrong(weird_text)},
            )
        ),
    },
    optional={
        "streamSid": sometimes_wrong(sids),
        "accountSid": sometimes_wrong(weird_text),
        "tracks": sometimes_wrong(st.just(["inbound"])),
        "mediaFormat": sometimes_wrong(
            st.fixed_dictionaries(
                {},
                optional={
                    "encoding": sometimes_wrong(st.sampled_from(["audio/x-mulaw", "audio/l16", ""])),
                    "sampleRate": sometimes_wrong(st.sampled_from([8000, 16000, 0, -1, "8000", "x"])),
                    "channels": sometimes_wrong(st.sampled_from([1, 2, 0, "1"])),
                },
            )
        ),
    },
)
start_messages = st.fixed_dictionaries(
    {"event": st.just("start"), "start": sometimes_wrong(start_bodies)},
    optional={"streamSid": sometimes_wrong(sids), "sequenceNumber": sometimes_wrong(digit_strings)},
)
other_messages = (
    st.fixed_dictionaries(
        {"event": st.just("mark")},
        optional={"streamSid": sids, "mark": sometimes_wrong(st.fixed_dictionaries({"name": weird_text}))},
    )
    | st.fixed_dictionaries(
        {"event": st.just("dtmf")},
        optional={
            "streamSid": sids,
            "dtmf": sometimes_wrong(
                st.fixed_dictionaries(
                    {"digit": sometimes_wrong(st.sampled_from([*"0123456789*#A", "", "12"]))}
                )
            ),
        },
    )
    | st.fixed_dictionaries({"event": st.just("stop")}, optional={"streamSid": sids, "stop": json_values})
    | st.fixed_dictionaries(
        {"event": st.just("connected")}, optional={"protocol": json_values, "version": json_values}
    )
    | st.fixed_dictionaries({"event": sometimes_wrong(weird_text)}, optional={"streamSid": sids})
    | json_values.map(lambda v: {"event": v} if not isinstance(v, str) else {"event": "x" + v})
)


def _deep(n: int, kind: str) -> str:
    if kind == "list":
        return "[" * n + "]" * n
    return '{"a":' * n + "1" + "}" * n


raw_frames = (
    st.text(max_size=200)  # usually not JSON
    | st.binary(max_size=300)  # binary frames, invalid UTF-8 included
    | json_values.map(json.dumps)  # JSON that is not an object
    | st.sampled_from(SURROGATE_JSON).map(lambda s: '{"event":"start","start":{"callSid":' + s + "}}")
    | st.sampled_from(SURROGATE_JSON).map(lambda s: '{"event":' + s + "}")
    | st.builds(_deep, st.sampled_from([5, 1000, 1100, 5000]), st.sampled_from(["list", "dict"]))
    | st.integers(min_value=MAX_MESSAGE_BYTES - 10, max_value=MAX_MESSAGE_BYTES + 4000).map(
        lambda n: '{"event":"media","media":{"payload":"' + "A" * n + '"}}'
    )
    | st.integers(min_value=MAX_MESSAGE_BYTES + 1, max_value=3 * MAX_MESSAGE_BYTES).map(lambda n: b"\x80" * n)
)
PAUSE = "<pause>"
frames = st.one_of(
    media_messages.map(json.dumps),
    start_messages.map(json.dumps),
    other_messages.map(json.dumps),
    raw_frames,
    st.just(PAUSE),
)


@dataclass(frozen=True)
class MediaCase:
    opening: str  # "none": junk from the first frame; "forged": a start with a bad token;
    # "answered": a real call (webhook, valid token) that then gets the junk; "restart": the
    # same, with a second start (bad token) right after the first
    ws_signature: str  # "none" | "good" | "bad": the X-Twilio-Signature on the upgrade
    frames: tuple[str | bytes, ...]

    def label(self) -> str:
        shown = [f[:80] if isinstance(f, str) else f[:40] for f in self.frames]
        return f"MediaCase(opening={self.opening}, ws_signature={self.ws_signature}, frames={shown})"


media_cases = st.builds(
    MediaCase,
    opening=st.sampled_from(["none", "forged", "answered", "answered", "restart"]),
    ws_signature=st.sampled_from(["none", "good", "good", "bad"]),
    frames=st.lists(frames, max_size=7).map(tuple),
)


# ----------------------------------------------------------------------------- the media fuzzer


def answered_call(server: ServerThread, http: httpx.Client, call_sid: str) -> dict[str, str]:
    """Twilio's part of answering: the signed webhook, then the <Stream> parameters it returned."""
    params = {"CallSid": call_sid, "AccountSid": "ACfuzz", "From": "+15550001111", "To": "+15550002222"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(server.settings.voice_webhook_url, params)
    response = http.post("/twilio/voice", data=params, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 200, response.text
    stream = ET.fromstring(response.text).find("./Connect/Stream")
    assert stream is not None
    return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


def settle_fuzz_calls(server: ServerThread, legit: LegitCalls, timeout_s: float = 15.0) -> None:
    """Wait until every call but the legitimate ones has ended and its ticket work is done."""

    async def fuzz_calls() -> int:
        return sum(
            1
            for bridge in server.services.active_calls
            if bridge.session.info is None or bridge.session.info.call_sid not in legit.sids
        )

    deadline = time.monotonic() + timeout_s
    while server.run(fuzz_calls()):
        if time.monotonic() > deadline:
            pytest.fail("a fuzzed call never ended after its websocket closed")
        time.sleep(0.02)
    server.run(server.services.observer.drain())  # type: ignore[union-attr]


def check_final_ticket(server: ServerThread, call_sid: str) -> None:
    """An answered call's ticket must have left `in_progress` once its stream is gone (no record lost)."""
    view = server.run(server.store.get_by_call_sid(call_sid))
    status = view.status if view is not None else "no ticket at all"
    assert status != TicketStatus.IN_PROGRESS and view is not None, (
        f"answered call {call_sid} has no final ticket after its stream closed: {status}"
    )


def run_media_case(server: ServerThread, http: httpx.Client, case: MediaCase, n: int) -> str | None:
    """Play one case; the call sid if the stream began as a real call (valid token)."""
    headers = {}
    if case.ws_signature == "good":
        headers["x-twilio-signature"] = RequestValidator(AUTH_TOKEN).compute_signature(
            server.settings.media_ws_url, {}
        )
    elif case.ws_signature == "bad":
        headers["x-twilio-signature"] = "bm9wZQ=="
    opening: list[str | bytes] = []
    stream_sid = f"MZfuzz{n:026d}"
    if case.opening != "none":
        call_sid = f"CAfuzz{n:026d}"
        real = case.opening in ("answered", "restart")
        params = answered_call(server, http, call_sid) if real else {"token": "1.forged"}
        start = {
            "accountSid": "ACfuzz",
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "customParameters": params,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        opening = [
            json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
            json.dumps({"event": "start", "sequenceNumber": "1", "start": start, "streamSid": stream_sid}),
        ]
        if case.opening == "restart":
            again = {**start, "customParameters": {**params, "token": "1.forged"}}
            opening.append(json.dumps({"event": "start", "start": again, "streamSid": stream_sid}))
    try:
        with connect(
            server.ws_url, additional_headers=headers, max_size=None, open_timeout=10, close_timeout=2
        ) as ws:
            for frame in [*opening, *case.frames]:
                if frame == PAUSE:
                    time.sleep(0.15)
                    continue
                try:
                    ws.send(frame)
                except ConnectionClosed:
                    break
            # Read whatever the server says for a moment (audio, marks, or its close).
            deadline = time.monotonic() + 0.1
            try:
                while time.monotonic() < deadline:
                    ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            except (TimeoutError, ConnectionClosed):
                pass
        if case.ws_signature == "bad":
            pytest.fail("a media websocket with a bad signature was accepted")
    except InvalidStatus as refused:
        status = refused.response.status_code
        assert status < 500, f"upgrade answered HTTP {status}"
        assert case.ws_signature == "bad" and status == 403, f"upgrade refused with HTTP {status}"
        return None
    return f"CAfuzz{n:026d}" if case.opening in ("answered", "restart") else None


def test_media_websocket_survives_malformed_and_adversarial_streams(
    server: ServerThread, legit: LegitCalls, error_log: ErrorLog
) -> None:
    counter = iter(range(1, 10**9))
    answered: list[str] = []
    with httpx.Client(base_url=server.base_url, timeout=10) as http:

        @settings(
            max_examples=MEDIA_EXAMPLES,
            deadline=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
            ],
        )
        @given(case=media_cases)
        def fuzz(case: MediaCase) -> None:
            CASES["media"] += 1
            error_log.current = case.label()
            call_sid = run_media_case(server, http, case, next(counter))
            settle_fuzz_calls(server, legit)
            if call_sid is not None:
                answered.append(call_sid)
                check_final_ticket(server, call_sid)
            KINDS[f"media opening={case.opening} ws-signature={case.ws_signature}"] += 1
            assert http.get("/healthz").status_code == 200

        fuzz()
    error_log.current = "after the media fuzzing"
    settle_and_check(server, legit, error_log, answered)
    print(f"media websocket cases run: {CASES['media']}")


# ----------------------------------------------------------------------------- the webhook fuzzer


@dataclass(frozen=True)
class WebhookCase:
    method: str
    body: str  # "form" | "multipart" | "json" | "raw" | "none"
    params: dict[str, str]
    raw: bytes
    content_type: str | None
    signature: str  # "none" | "good" | "bad" | "garbage" | "other-url"
    query: str

    def label(self) -> str:
        shown = {k[:20]: v[:40] for k, v in list(self.params.items())[:6]}
        return (
            f"WebhookCase({self.method} body={self.body} ct={self.content_type!r} sig={self.signature} "
            f"query={self.query[:40]!r} params={shown} raw={self.raw[:40]!r})"
        )


twilio_fields = st.sampled_from(
    ["CallSid", "AccountSid", "From", "To", "CallStatus", "Direction", "ApiVersion", "Caller", "Digits"]
)
field_values = (
    st.sampled_from(["CA" + "a" * 32, "+15551230000", "anonymous", "client:alice", "sip:x@y", ""])
    | st.text(max_size=60)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
    | st.integers(min_value=600, max_value=200_000).map(lambda n: "9" * n)
    | st.sampled_from(['"><Hangup/><Say>pwned</Say>', "]]>", "&amp;&lt;", "\r\n\r\n", "\x00\x01\x1f", "%00"])
)
form_params = st.dictionaries(twilio_fields | st.text(min_size=1, max_size=20), field_values, max_size=8)
content_types = st.sampled_from(
    [
        None,
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-16",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=zzz",
        "application/json",
        "text/plain",
        "text/xml",
        "application/octet-stream",
        "é/ü; charset=ß",
    ]
)
raw_bodies = (
    st.binary(max_size=400)
    | st.sampled_from(
        [b"CallSid=%ZZ&From=%", b"a=1&a=2&a=3", b"=&=&&==", b"%FF%FE=%C0%AF", b'{"CallSid": 1}']
    )
    | st.integers(min_value=1001, max_value=3000).map(
        lambda n: "&".join(f"f{i}=v" for i in range(n)).encode()
    )
    | st.integers(min_value=10_000, max_value=300_000).map(lambda n: b"CallSid=" + b"A" * n)
)
queries = st.sampled_from(["", "", "a=1", "bodySHA256=abc", "%ZZ=1", "x=" + "y" * 3000, "CallSid=CAquery"])
webhook_cases = st.builds(
    WebhookCase,
    method=st.sampled_from(["POST", "POST", "POST", "POST", "GET", "PUT"]),
    body=st.sampled_from(["form", "form", "form", "multipart", "json", "raw", "none"]),
    params=form_params,
    raw=raw_bodies,
    content_type=content_types,
    signature=st.sampled_from(["none", "good", "good", "good", "bad", "garbage", "other-url"]),
    query=queries,
)

_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def send_webhook(http: httpx.Client, case: WebhookCase) -> httpx.Response:
    url = "/twilio/voice" + (f"?{case.query}" if case.query else "")
    signed_params = case.params if case.body in ("form", "multipart") else {}
    signed_url = PUBLIC_URL + url
    headers: dict[str, str] = {}
    if case.signature == "good":
        headers["X-Twilio-Signature"] = RequestValidator(AUTH_TOKEN).compute_signature(
            signed_url, signed_params
        )
    elif case.signature == "other-url":
        headers["X-Twilio-Signature"] = RequestValidator(AUTH_TOKEN).compute_signature(
            "https://evil.example/twilio/voice", signed_params
        )
    elif case.signature == "bad":
        headers["X-Twilio-Signature"] = "bm9wZQ=="
    elif case.signature == "garbage":
        headers["X-Twilio-Signature"] = "é not base64 at all;" * 10
    kwargs: dict[str, Any] = {}
    if case.body == "form":
        kwargs["data"] = case.params
    elif case.body == "multipart":
        kwargs["data"] = case.params
        kwargs["files"] = {"upload": ("x.bin", b"\x00\x01" * 10, "application/octet-stream")}
    elif case.body == "json":
        kwargs["content"] = json.dumps(case.params).encode()
    elif case.body == "raw":
        kwargs["content"] = case.raw
    if case.content_type is not None and case.body in ("json", "raw", "none"):
        headers["Content-Type"] = case.content_type
    # Header values must be latin-1 for httpx; non-ASCII ones are sent as their UTF-8 bytes.
    encoded = {k.encode(): v.encode("utf-8") for k, v in headers.items()}
    return http.request(case.method, url, headers=encoded, **kwargs)


def check_webhook_answer(case: WebhookCase, response: httpx.Response) -> None:
    assert response.status_code < 500, f"HTTP {response.status_code}: {response.text[:300]}"
    if case.method != "POST":
        assert response.status_code == 405
        return
    signed_ok = case.signature == "good" and case.body == "form"
    if not signed_ok and case.signature != "good":
        assert response.status_code in (400, 403), response.status_code
        return
    if signed_ok:
        assert response.status_code == 200, response.text[:300]
        assert response.headers["content-type"].startswith("text/xml")
        if not any(_XML_UNSAFE.search(v) for v in case.params.values()):
            root = ET.fromstring(response.text)  # TwiML stays well-formed XML, whatever the fields
            assert root.tag == "Response"
            stream = root.find("./Connect/Stream")
            assert stream is not None
            names = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
            assert names.get("from") == case.params.get("From", "")
            assert names.get("to") == case.params.get("To", "")
            token = names.get("token") or ""
            call_sid = case.params.get("CallSid", "")
            assert stream_token.check(AUTH_TOKEN.encode(), call_sid, token, int(time.time())) is None


def test_voice_webhook_survives_malformed_and_adversarial_requests(
    server: ServerThread, legit: LegitCalls, error_log: ErrorLog
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:

        @settings(
            max_examples=WEBHOOK_EXAMPLES,
            deadline=None,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.large_base_example,
            ],
        )
        @given(case=webhook_cases)
        def fuzz(case: WebhookCase) -> None:
            CASES["webhook"] += 1
            error_log.current = case.label()
            response = send_webhook(http, case)
            KINDS[f"webhook {case.method} sig={case.signature} -> HTTP {response.status_code}"] += 1
            check_webhook_answer(case, response)

        fuzz()
        # Keep the legitimate call company until at least one has finished.
        deadline = time.monotonic() + 30
        while not legit.results and time.monotonic() < deadline:
            time.sleep(0.1)
    error_log.current = "after the webhook fuzzing"
    settle_and_check(server, legit, error_log)
    print(f"voice webhook cases run: {CASES['webhook']}")
