"""Fault soak: two `callbot serve` replicas on one PostgreSQL, many short calls, faults piled up.

    python bench/fault_soak.py                        # 1,000 calls, every fault (~10 min on 2 cores)
    python bench/fault_soak.py --calls 40 --concurrency 8 --db-cut-s 6   # the short version (a test)
    python bench/fault_soak.py --json soak.json       # the figures as JSON as well

What runs: a fresh PostgreSQL database (created here, dropped at the end), two real
`callbot serve` processes (replicas "a" and "b") reaching it through a TCP proxy this script
controls, the fake Realtime server and the fake OpenAI HTTP API (in this process, with their
fault switches), a ticket webhook receiver, and simulated Twilio callers. Calls are spread over
both replicas; every third call posts its webhook to one replica and opens its media stream on
the other, as a load balancer may do. Alongside, the replicas' six surfaces are fuzzed (voice
webhook, media websocket, status and AMD callbacks, `POST /api/calls` against a fake Twilio REST
API, tools against a misbehaving tool server): 12,100 cases by default (--fuzz-* flags).

Faults, each while calls are in flight, at fixed fractions of the calls placed:
  10 %  every open Realtime session dropped (code 1011): the calls reconnect and go on
  20 %  Realtime upgrades refused (HTTP 503) for --refuse-s seconds
  30 %  the ticket model fails (HTTP 500) for the next --model-failures requests
  40 %  the ticket model slow (--model-delay-s per request) for --slow-s seconds
  50 %  the database connection cut for --db-cut-s seconds (every connection reset, new ones refused)
  60 %  the ticket webhook answers 503 for --webhook-fail-s seconds
  75 %  replica "a" SIGKILLed mid-burst, restarted (as a new replica) --restart-after-s later

At the end it waits until every ticket is final (`complete`) and prints: calls placed, tickets
written, tickets complete, duplicates, tickets lost, calls that went on after a Realtime fault,
the webhook's deliveries (ticket ids sent twice are counted: delivery is at least once) and
the time from the last fault to the moment every ticket was final. Exit code 0 when no ticket
was lost or duplicated, every ticket became final and reached the webhook within
--final-timeout-s, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
import types
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from callbot.caller.result import CallResult
from callbot.caller.simulator import HangUp, Say, Silence, TwilioCaller, WaitForAssistant
from callbot.testing.fake_openai_http import FakeOpenAIControl, create_fake_openai_app, serve_app
from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from callbot.testing.fake_twilio_rest import FakeTwilioRest
from callbot.testing.speech import synth_speech

ROOT = Path(__file__).resolve().parents[1]
# The fuzz cases come from the test suite's strategies (tests/test_fuzz_server.py), which sign
# with the e2e helpers' token and public URL: the replicas use the same two.
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC_URL = "https://bot.example.test"
ACCOUNT = "AC" + "7" * 32
FUZZ_ADMIN = ("admin", "fuzz-secret")  # tests/fuzz_callbacks.py's ADMIN
PG_ADMIN = os.environ.get("CALLBOT_SOAK_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----- the database link the soak can cut -----


class TcpProxy:
    """A TCP relay in front of PostgreSQL; `cut()` resets every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = _free_port()
        self.down = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._reset_all()

    def cut(self) -> None:
        self.down = True
        self._reset_all()

    def restore(self) -> None:
        self.down = False

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            transport = writer.transport
            if isinstance(transport, asyncio.Transport):
                transport.abort()
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                self._writers.discard(dst)
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


# ----- the ticket webhook receiver -----


@dataclass
class WebhookSink:
    failing: bool = False
    delivered: Counter[str] = field(default_factory=Counter)
    seen: dict[str, list[str]] = field(default_factory=dict)
    refused: int = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> JSONResponse:
            body = await request.json()
            if self.failing:
                self.refused += 1
                return JSONResponse({"error": "injected"}, status_code=503)
            sid = str(body.get("call_sid"))
            self.delivered[sid] += 1
            turns = len(body.get("transcript") or [])
            self.seen.setdefault(sid, []).append(
                f"id={body.get('id')} reason={body.get('end_reason')!r} turns={turns}"
            )
            return JSONResponse({"ok": True})

        return app


# ----- the replicas -----


class Replica:
    def __init__(self, name: str, env: dict[str, str], spool: Path, logs: Path) -> None:
        self.name = name
        self.port = _free_port()
        self.env = env
        self.spool = spool
        self.logs = logs
        self.proc: asyncio.subprocess.Process | None = None
        self.generation = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.generation += 1
        rid = self.name if self.generation == 1 else f"{self.name}{self.generation}"
        env = {**self.env, "CALLBOT_SPOOL_DIR": str(self.spool), "CALLBOT_REPLICA_ID": rid}
        out = open(self.logs / f"{rid}.log", "ab")  # noqa: SIM115 - handed to the child, closed with it
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callbot", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
        out.close()
        async with httpx.AsyncClient(base_url=self.base_url, trust_env=False) as http:
            for _ in range(300):
                if self.proc.returncode is not None:
                    raise RuntimeError(f"replica {rid} exited during start-up (see {self.logs})")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/healthz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"replica {rid} did not become healthy")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                await self.kill()


class SplitCaller(TwilioCaller):
    """Posts the webhook to one replica and opens the media stream on another."""

    def __init__(self, *args: Any, stream_base_url: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stream_base_url = stream_base_url

    def stream_connection(self, stream_url: str) -> tuple[str, dict[str, str]]:
        connect_url, headers = super().stream_connection(stream_url)
        path = connect_url.split("/", 3)[3]
        return self.stream_base_url.replace("http", "ws", 1) + "/" + path, headers


# ----- fuzzing the replicas alongside the calls -----


class Fuzzer:
    """Hypothesis-generated cases against the replicas, one thread per surface: the voice
    webhook, the media websocket, the status and AMD callbacks, the call API and tools.

    The strategies and the per-case checks are the test suite's (tests/test_fuzz_server.py,
    tests/fuzz_callbacks.py, tests/fuzz_tools.py): no 5xx, a signed webhook always gets
    well-formed TwiML, a bad signature is refused, a signed callback is refused exactly when it
    is unusable, a call is placed (on the fake Twilio REST API) exactly when the request is valid,
    and a fuzzed tool's every output reaches the model and the call goes on.
    Runs on threads (sync clients) while the soak's calls go on; each failed check is recorded
    (not raised), so the soak reports them all. Fuzzed streams that began as real calls must end
    with a final ticket like any other call (the soak's verdict includes them).
    """

    def __init__(
        self,
        replicas: list[Replica],
        targets: dict[str, int],
        fake: FakeRealtimeServer | None = None,
        tool_server: Any = None,
    ) -> None:
        sys.path.insert(0, str(ROOT))
        self.mod: Any = importlib.import_module("tests.test_fuzz_server")
        self.cb: Any = importlib.import_module("tests.fuzz_callbacks")
        self.ft: Any = importlib.import_module("tests.fuzz_tools")
        self.replicas = replicas
        self.targets = targets
        self.webhook_target = targets.get("webhook", 0)
        self.media_target = targets.get("media", 0)
        self.fake = fake
        self.tool_server = tool_server
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.answered: list[str] = []
        self.stop = threading.Event()
        self._sessions_seen: set[int] = set()

    def runners(self) -> list[Any]:
        """One function per surface, each to run on its own thread."""
        return [
            self.run_webhooks,
            self.run_media,
            self.run_status,
            self.run_amd,
            self.run_calls,
            self.run_tools,
        ]

    @property
    def cases(self) -> int:
        return sum(self.counts[s] for s in SURFACES)

    def _base(self, n: int) -> str:
        live = [r for r in self.replicas if r.alive] or self.replicas
        return live[n % len(live)].base_url

    def run_webhooks(self) -> None:
        from hypothesis import HealthCheck, given, settings

        mod = self.mod
        n = iter(range(10**9))

        @settings(max_examples=self.webhook_target, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=mod.webhook_cases)
        def fuzz(case: Any) -> None:
            if self.stop.is_set():
                return
            with httpx.Client(base_url=self._base(next(n)), timeout=30, trust_env=False) as http:
                try:
                    response = mod.send_webhook(http, case)
                    mod.check_webhook_answer(case, response)
                except httpx.TransportError:
                    self.counts["webhook transport errors (replica restarting)"] += 1
                except AssertionError as exc:
                    self.failures.append(f"webhook {case.label()[:300]}: {str(exc)[:300]}")
            self.counts["webhook"] += 1

        fuzz()

    def run_media(self) -> None:
        from hypothesis import HealthCheck, given, settings

        mod = self.mod
        counter = iter(range(1, 10**9))
        soak = self

        class Target:
            """What `run_media_case` reads from its server: the public URLs and where to connect."""

            def __init__(self, base_url: str) -> None:
                self.settings = types.SimpleNamespace(
                    voice_webhook_url=PUBLIC_URL + "/twilio/voice",
                    media_ws_url=PUBLIC_URL.replace("https://", "wss://") + "/twilio/media",
                )
                self.ws_url = base_url.replace("http://", "ws://") + "/twilio/media"

        @settings(max_examples=self.media_target, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=mod.media_cases)
        def fuzz(case: Any) -> None:
            if soak.stop.is_set():
                return
            k = next(counter)
            base = soak._base(k)
            replica = next(r for r in soak.replicas if r.base_url == base)
            generation = replica.generation
            with httpx.Client(base_url=base, timeout=30, trust_env=False) as http:
                try:
                    sid = mod.run_media_case(Target(base), http, case, 500_000 + k)
                    if sid is not None and (replica.generation != generation or not replica.alive):
                        # SIGKILLed during the case: its `start` may never have been read, so
                        # no process ever had the call (Twilio would see the stream fail).
                        soak.counts["media cases cut by the SIGKILL"] += 1
                    elif sid is not None:
                        soak.answered.append(sid)
                except (httpx.TransportError, OSError):
                    soak.counts["media transport errors (replica restarting)"] += 1
                except (AssertionError, pytest_failed()) as exc:
                    soak.failures.append(f"media {case.label()[:300]}: {str(exc)[:300]}")
            soak.counts["media"] += 1

        fuzz()

    def _run_http(self, surface: str, cases: Any, send: Any, check: Any, **client: Any) -> None:
        """A surface fuzzed with plain requests: status and AMD callbacks, the call API."""
        from hypothesis import HealthCheck, given, settings

        n = iter(range(10**9))

        @settings(max_examples=self.targets.get(surface, 0), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=cases)
        def fuzz(case: Any) -> None:
            if self.stop.is_set():
                return
            with httpx.Client(base_url=self._base(next(n)), timeout=30, trust_env=False, **client) as http:
                try:
                    # the database is cut for a while: a status callback is then a 202 (looked up
                    # later) and a placement a 503 (canceled), neither a 5xx of a legitimate request
                    check(case, send(http, case), db_up=False)
                except httpx.TransportError:
                    self.counts[f"{surface} transport errors (replica restarting)"] += 1
                except AssertionError as exc:
                    self.failures.append(f"{surface} {case.label()[:300]}: {str(exc)[:300]}")
            self.counts[surface] += 1

        if self.targets.get(surface, 0):
            fuzz()

    def run_status(self) -> None:
        self._run_http("status", self.cb.status_cases, self.cb.send_callback, self.cb.check_callback_answer)

    def run_amd(self) -> None:
        self._run_http("amd", self.cb.amd_cases, self.cb.send_callback, self.cb.check_callback_answer)

    def run_calls(self) -> None:
        self._run_http("calls", self.cb.calls_cases, self.cb.send_calls, self.cb.check_calls_answer)

    def run_tools(self) -> None:
        """Whole calls whose fake model calls the fuzzed tool with fuzzed arguments while the tool
        server answers a fuzzed way; each output must reach the model and the call go on."""
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import strategies as st

        ft = self.ft
        per_call = 2
        calls = -(-self.targets.get("tools", 0) // per_call)
        if not calls or self.fake is None or self.tool_server is None:
            return
        counter = iter(range(1, 10**9))

        @settings(max_examples=calls, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(arguments=st.lists(ft.argument_texts, min_size=per_call, max_size=per_call), answer=ft.answers)
        def fuzz(arguments: list[str], answer: Any) -> None:
            if self.stop.is_set():
                return
            assert self.fake is not None
            k = next(counter)
            base = self._base(k)
            replica = next(r for r in self.replicas if r.base_url == base)
            generation = replica.generation
            cases = [ft.ToolCase(a, answer) for a in arguments]
            self.tool_server.answer = answer
            ft.script_tool_cases(self.fake.script, cases)
            sid = f"CAfuzztool{k:022d}"
            caller = TwilioCaller(base, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_URL, call_sid=sid)
            label = " | ".join(c.label()[:150] for c in cases)
            try:
                result = asyncio.run(caller.run(ft.tool_call_steps(per_call)))
            finally:
                self.fake.script.function_calls.clear()
            outputs = ft.function_call_outputs(self.fake, self._sessions_seen)
            self.counts["tools"] += per_call
            if replica.generation != generation or not replica.alive:
                self.counts["tool calls cut by the SIGKILL"] += 1
                return
            if result.http_status is None or not result.stream_sid:
                self.counts["tool calls no replica answered"] += 1
                return
            self.answered.append(sid)  # its ticket must end final, as every call's
            errors = [o for o in outputs if o["output"].startswith('{"error"')]
            bad = [o for o in errors if not isinstance(json.loads(o["output"]).get("error"), str)]
            if result.outcome != "completed" or result.violations or bad:
                self.failures.append(f"tools {label}: {result.summary()[:200]} bad outputs {bad[:2]}")
            elif len(outputs) < per_call:
                # a Realtime fault (session dropped or refused) cut the call's model session short
                self.counts["tool calls that met a Realtime fault"] += 1

        fuzz()


SURFACES = ("webhook", "media", "status", "amd", "calls", "tools")


def pytest_failed() -> type[BaseException]:
    """`pytest.fail` raises this (the fuzz helpers use it for a check that failed)."""
    import _pytest.outcomes

    return _pytest.outcomes.Failed


# ----- the soak -----


@dataclass
class Options:
    calls: int = 1000
    concurrency: int = 40
    lease_s: float = 10.0
    refuse_s: float = 1.5
    model_failures: int = 30
    model_delay_s: float = 4.0
    slow_s: float = 10.0
    db_cut_s: float = 20.0
    webhook_fail_s: float = 10.0
    restart_after_s: float = 3.0
    final_timeout_s: float = 240.0
    seed: int = 19
    fuzz_webhook: int = 8000
    fuzz_media: int = 2000
    fuzz_status: int = 1000
    fuzz_amd: int = 500
    fuzz_calls: int = 500
    fuzz_tools: int = 100


@dataclass
class Figures:
    calls_placed: int = 0
    calls_refused: int = 0
    calls_with_stream: int = 0
    tickets_written: int = 0
    tickets_complete: int = 0
    duplicates: int = 0
    tickets_lost: int = 0
    replica_lost_tickets: int = 0
    continued_after_realtime_fault: int = 0
    in_flight_at_realtime_fault: int = 0
    split_calls: int = 0
    webhook_failovers: int = 0
    webhook_deliveries: int = 0
    webhook_duplicates: int = 0
    webhook_undelivered: int = 0
    webhook_refused: int = 0
    webhook_duplicate_samples: list[str] = field(default_factory=list)
    seconds_to_final_after_last_fault: float | None = None
    calls_in_final_measure: int = 0
    all_final: bool = False
    fuzz_cases: int = 0
    fuzz_failures: int = 0
    fuzz_answered_calls: int = 0
    fuzz_answered_unfinished: int = 0
    fuzz_unfinished_sids: list[str] = field(default_factory=list)
    fuzz_notes: dict[str, int] = field(default_factory=dict)
    fuzz_failure_samples: list[str] = field(default_factory=list)
    replicas_healthy_at_end: bool = False
    wall_s: float = 0.0
    faults: list[str] = field(default_factory=list)
    lost_sids: list[str] = field(default_factory=list)


class Soak:
    def __init__(self, opts: Options, workdir: Path) -> None:
        self.opts = opts
        self.workdir = workdir
        self.rng = random.Random(opts.seed)
        self.results: dict[str, CallResult] = {}
        self.in_flight: set[str] = set()
        self.figures = Figures()
        self.realtime_fault_sids: set[str] = set()
        self.last_fault_end = 0.0
        self._measuring: asyncio.Task[None] | None = None
        self.started: set[str] = set()
        self.db_name = ""
        self.fake = FakeRealtimeServer(
            Script(
                greeting="Hello, support.",
                user_transcripts=["My order 771 is late."],
                replies=["I will check order 771."],
                realtime_factor=4.0,
            ),
            validate=False,
            record_audio=False,
        )
        self.model = FakeOpenAIControl(keep_requests=10)
        self.sink = WebhookSink()
        self.speech = synth_speech(700, 8000, seed=3)
        self.tool_server: Any = None

    async def run(self) -> Figures:
        opts = self.opts
        db_name = self.db_name = f"soak_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(PG_ADMIN, timeout=5)
        await admin.execute(f'CREATE DATABASE "{db_name}"')
        log(f"database {db_name} created")
        host, port = "127.0.0.1", int(PG_ADMIN.rsplit(":", 1)[1].split("/", 1)[0])
        proxy = TcpProxy(host, port)
        await proxy.start()
        self.proxy = proxy
        started = time.monotonic()
        replicas: list[Replica] = []
        try:
            sys.path.insert(0, str(ROOT))
            ft: Any = importlib.import_module("tests.fuzz_tools")
            self.fake.script.after_tool = ft.AFTER_TOOL  # the tool fuzzer's calls; no soak call uses tools
            rest = FakeTwilioRest(account_sid=ACCOUNT, auth_token=AUTH_TOKEN)
            async with (
                self.fake,
                serve_app(create_fake_openai_app(self.model)) as openai_url,
                serve_app(self.sink.app()) as sink_url,
                serve_app(rest.app) as rest_url,
                ft.misbehaving_tool_server() as tool_server,
            ):
                self.tool_server = tool_server
                tools_file = self.workdir / "fuzz-tools.yaml"
                tools_file.write_text(ft.tools_yaml(tool_server.base_url))
                env = {
                    **os.environ,
                    "OPENAI_API_KEY": "fake",
                    "OPENAI_BASE_URL": openai_url + "/v1",
                    "CALLBOT_REALTIME_URL": self.fake.base_url,
                    "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                    "CALLBOT_PUBLIC_URL": PUBLIC_URL,
                    "CALLBOT_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{db_name}",
                    "CALLBOT_REPLICA_LEASE_S": str(opts.lease_s),
                    "CALLBOT_TICKET_RETRY_INTERVAL_S": "3",
                    # A call whose stream never reached a database is finished 30 s after this.
                    "CALLBOT_STREAM_TOKEN_TTL_S": "20",
                    "CALLBOT_TICKET_TIMEOUT_S": "10",
                    "CALLBOT_TICKET_WEBHOOK_URL": sink_url + "/hook",
                    "CALLBOT_TICKET_WEBHOOK_REDELIVER_S": "15",
                    "CALLBOT_SUMMARY_ENABLED": "false",
                    "CALLBOT_LOG_JSON": "false",
                    "CALLBOT_LOG_LEVEL": "WARNING",
                    "CALLBOT_MAX_CONCURRENT_CALLS": "500",
                    "CALLBOT_MAX_MESSAGE_BYTES": "16384",  # the fuzz strategies' oversize frames
                    # POST /api/calls (fuzzed) places its calls on the fake Twilio REST API, which
                    # the AMD callbacks' voicemail and hang-up updates reach too
                    "TWILIO_ACCOUNT_SID": ACCOUNT,
                    "CALLBOT_TWILIO_API_URL": rest_url,
                    "CALLBOT_OUTBOUND_FROM_NUMBER": "+15550001111",
                    "CALLBOT_VOICEMAIL_MESSAGE": "Hello, this is Acme calling. Please call us back.",
                    "CALLBOT_ADMIN_USER": FUZZ_ADMIN[0],
                    "CALLBOT_ADMIN_PASSWORD": FUZZ_ADMIN[1],
                    # the tool fuzzer's function calls go to its misbehaving tool server
                    "CALLBOT_TOOLS_FILE": str(tools_file),
                }
                replicas = [Replica(n, env, self.workdir / f"spool-{n}", self.workdir) for n in ("a", "b")]
                await asyncio.gather(*(r.start() for r in replicas))
                log(
                    f"replicas up: a on {replicas[0].port}, b on {replicas[1].port}; lease {opts.lease_s:g} s"
                )
                await self._drive(replicas)
                await self._wait_final(db_name, admin)
        finally:
            for r in replicas:
                await r.stop()
            await proxy.stop()
            await admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            await admin.close()
            log(f"database {db_name} dropped")
        self.figures.wall_s = round(time.monotonic() - started, 1)
        return self.figures

    # ----- calls -----

    def _script(self) -> list[Any]:
        return [
            WaitForAssistant(timeout_s=15),
            Silence(300),
            Say(self.speech),
            Silence(100),
            WaitForAssistant(timeout_s=15),
            Silence(200),
            HangUp(),
        ]

    async def _one_call(self, n: int, replicas: list[Replica]) -> None:
        sid = f"CA{n:06d}" + uuid.uuid4().hex[:26]
        live = [r for r in replicas if r.alive] or replicas
        first = live[n % len(live)]
        second = live[(n + 1) % len(live)]
        split = n % 3 == 0 and len(live) > 1
        kwargs: dict[str, Any] = {
            "auth_token": AUTH_TOKEN,
            "public_base_url": PUBLIC_URL,
            "call_sid": sid,
            "max_call_s": 60,
        }
        self.in_flight.add(sid)
        self.started.add(sid)
        try:
            for attempt in range(6):
                caller: TwilioCaller
                if split:
                    caller = SplitCaller(first.base_url, stream_base_url=second.base_url, **kwargs)
                else:
                    caller = TwilioCaller(first.base_url, **kwargs)
                result = await caller.run(self._script())
                self.results[sid] = result
                webhook_down = result.http_status is None
                stream_down = (
                    result.http_status == 200 and not result.stream_sid and result.outcome == "error"
                )
                if not (webhook_down or stream_down):
                    break
                # A replica did not answer (killed): the load balancer sends the request to the other.
                self.figures.webhook_failovers += 1
                first, second = second, first
                await asyncio.sleep(0.5 * (attempt + 1))
            if split:
                self.figures.split_calls += 1
        finally:
            self.in_flight.discard(sid)

    async def _drive(self, replicas: list[Replica]) -> None:
        opts = self.opts
        gate = asyncio.Semaphore(opts.concurrency)
        faults = {
            int(opts.calls * 0.10): self._drop_realtime,
            int(opts.calls * 0.20): self._refuse_realtime,
            int(opts.calls * 0.30): self._model_failing,
            int(opts.calls * 0.40): self._model_slow,
            int(opts.calls * 0.50): self._cut_database,
            int(opts.calls * 0.60): self._webhook_failing,
            int(opts.calls * 0.75): lambda: self._kill_replica(replicas[0]),
        }
        fault_tasks: list[asyncio.Task[None]] = []
        tasks: list[asyncio.Task[None]] = []
        last_report = time.monotonic()
        targets = {
            "webhook": opts.fuzz_webhook,
            "media": opts.fuzz_media,
            "status": opts.fuzz_status,
            "amd": opts.fuzz_amd,
            "calls": opts.fuzz_calls,
            "tools": opts.fuzz_tools,
        }
        self.fuzzer = Fuzzer(replicas, targets, fake=self.fake, tool_server=self.tool_server)
        fuzzing = [asyncio.create_task(asyncio.to_thread(run)) for run in self.fuzzer.runners()]

        async def guarded(n: int) -> None:
            try:
                await self._one_call(n, replicas)
            finally:
                gate.release()

        n = 0
        # At least --calls calls; more (without new faults) while the fuzzing still runs, so
        # every fuzz case meets real calls on the same replicas.
        while n < opts.calls or not all(f.done() for f in fuzzing):
            await gate.acquire()
            if n in faults:
                fault_tasks.append(asyncio.create_task(faults[n]()))
            tasks.append(asyncio.create_task(guarded(n)))
            self.figures.calls_placed += 1
            n += 1
            await asyncio.sleep(self.rng.uniform(0.0, 0.05))
            if time.monotonic() - last_report > 5:
                last_report = time.monotonic()
                done = len(self.results)
                log(
                    f"calls placed {n}/{opts.calls}, finished {done}, in flight {len(self.in_flight)}, "
                    f"replicas alive {sum(r.alive for r in replicas)}, fuzz cases {self._fuzz_progress()}"
                )
        await asyncio.gather(*fault_tasks)
        await asyncio.gather(*tasks)
        log(f"all {n} calls finished; fuzz cases {self._fuzz_progress()}")
        await asyncio.gather(*fuzzing)
        log(f"fuzzing done: {self._fuzz_progress()}, {len(self.fuzzer.failures)} failed checks")
        async with httpx.AsyncClient(trust_env=False) as http:
            answers = [await http.get(r.base_url + "/healthz") for r in replicas]
        self.figures.replicas_healthy_at_end = all(a.status_code == 200 for a in answers)

    def _fuzz_progress(self) -> str:
        c, t = self.fuzzer.counts, self.fuzzer.targets
        return ", ".join(f"{c[s]}/{t.get(s, 0)} {s}" for s in SURFACES)

    # ----- faults -----

    def _fault_ended(self) -> None:
        """Start (again) the clock of "every ticket final after the last fault": the calls begun
        by now must all end with a complete ticket; how long after this moment that holds."""
        self.last_fault_end = time.monotonic()
        if self._measuring is not None:
            self._measuring.cancel()
        self._measuring = asyncio.create_task(self._measure_final(self.last_fault_end, set(self.started)))

    async def _measure_final(self, since: float, sids: set[str]) -> None:
        dsn = PG_ADMIN.rsplit("/", 1)[0] + "/" + self.db_name
        while True:
            await asyncio.sleep(0.5)
            if any(sid not in self.results for sid in sids):
                continue  # some of those calls are still going on
            expected = {sid for sid in sids if self.results[sid].stream_sid}
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
                try:
                    rows = await conn.fetch("SELECT call_sid FROM tickets WHERE status = 'complete'")
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError):
                continue
            if expected <= {r["call_sid"] for r in rows}:
                self.figures.seconds_to_final_after_last_fault = round(time.monotonic() - since, 1)
                self.figures.calls_in_final_measure = len(expected)
                return

    def _fault(self, text: str) -> None:
        log("FAULT " + text)
        self.figures.faults.append(text)

    async def _drop_realtime(self) -> None:
        await asyncio.sleep(1.5)  # calls are mid-conversation
        self.realtime_fault_sids |= set(self.in_flight)
        self._fault(f"Realtime: {len(self.fake.open_sessions)} open sessions dropped (1011)")
        await self.fake.drop_now(1011)
        self._fault_ended()

    async def _refuse_realtime(self) -> None:
        self._fault(f"Realtime: upgrades refused (503) for {self.opts.refuse_s:g} s")
        self.realtime_fault_sids |= set(self.in_flight)
        self.fake.refuse_connections = True
        await self.fake.drop_now(1011)  # the calls in flight must reconnect into the refusal
        await asyncio.sleep(self.opts.refuse_s)
        self.fake.refuse_connections = False
        self._fault_ended()

    async def _model_failing(self) -> None:
        self._fault(f"ticket model: the next {self.opts.model_failures} requests fail with HTTP 500")
        self.model.fail(self.opts.model_failures)
        self._fault_ended()

    async def _model_slow(self) -> None:
        self._fault(f"ticket model: {self.opts.model_delay_s:g} s per request for {self.opts.slow_s:g} s")
        self.model.delay_s = self.opts.model_delay_s
        await asyncio.sleep(self.opts.slow_s)
        self.model.delay_s = 0.0
        self._fault_ended()

    async def _cut_database(self) -> None:
        self._fault(f"database: connection cut for {self.opts.db_cut_s:g} s")
        self.proxy.cut()
        await asyncio.sleep(self.opts.db_cut_s)
        self.proxy.restore()
        log("database link restored")
        self._fault_ended()

    async def _webhook_failing(self) -> None:
        self._fault(f"ticket webhook: HTTP 503 for {self.opts.webhook_fail_s:g} s")
        self.sink.failing = True
        await asyncio.sleep(self.opts.webhook_fail_s)
        self.sink.failing = False
        self._fault_ended()

    async def _kill_replica(self, replica: Replica) -> None:
        await asyncio.sleep(1.0)
        self._fault(f"replica {replica.name}: SIGKILL with {len(self.in_flight)} calls in flight overall")
        await replica.kill()
        await asyncio.sleep(self.opts.restart_after_s)
        await replica.start()
        log(f"replica {replica.name} restarted as generation {replica.generation}")
        self._fault_ended()

    # ----- the verdict -----

    async def _wait_final(self, db_name: str, admin: asyncpg.Connection) -> None:
        opts, fig = self.opts, self.figures
        results = self.results
        with_stream = {sid for sid, r in results.items() if r.stream_sid}
        fig.calls_with_stream = len(with_stream)
        fig.calls_refused = sum(1 for r in results.values() if not r.stream_sid)
        fig.in_flight_at_realtime_fault = len(self.realtime_fault_sids)
        fig.continued_after_realtime_fault = sum(
            1
            for sid in self.realtime_fault_sids
            if (r := results.get(sid)) is not None and r.closed_by == "caller" and r.outcome == "completed"
        )
        fuzz = self.fuzzer
        fig.fuzz_cases = fuzz.cases
        fig.fuzz_failures = len(fuzz.failures)
        fig.fuzz_failure_samples = fuzz.failures[:10]
        fig.fuzz_notes = dict(fuzz.counts)
        fuzz_sids = set(fuzz.answered)
        fig.fuzz_answered_calls = len(fuzz_sids)
        direct = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + "/" + db_name, timeout=5)
        try:
            deadline = time.monotonic() + opts.final_timeout_s
            last_log = 0.0
            while True:
                every = await direct.fetch("SELECT call_sid, status, end_reason FROM tickets")
                fuzz_rows = {r["call_sid"]: r["status"] for r in every if r["call_sid"] in fuzz_sids}
                fuzz_open = {sid for sid in fuzz_sids if fuzz_rows.get(sid) in (None, "in_progress")}
                rows = [r for r in every if r["call_sid"] in results]
                by_sid = Counter(r["call_sid"] for r in rows)
                complete = {r["call_sid"] for r in rows if r["status"] == "complete"}
                missing = with_stream - set(by_sid)
                unfinished = (with_stream & set(by_sid)) - complete
                fig.fuzz_answered_unfinished = len(fuzz_open)
                fig.fuzz_unfinished_sids = sorted(fuzz_open)[:20]
                measured = self._measuring is None or self._measuring.done()
                # At least once: every complete ticket reaches the receiver (the last ones'
                # deliveries may still be on their way when the tickets are all final).
                undelivered = complete - set(self.sink.delivered)
                fig.webhook_undelivered = len(undelivered)
                if not missing and not unfinished and not fuzz_open and measured:
                    fig.all_final = True
                    if not undelivered:
                        break
                if time.monotonic() > deadline:
                    break
                if time.monotonic() - last_log > 5:
                    last_log = time.monotonic()
                    log(
                        f"waiting for tickets: {len(missing)} missing, {len(unfinished)} not final yet, "
                        f"{len(fuzz_open)} fuzzed calls without a final ticket, "
                        f"{len(undelivered)} complete not yet delivered to the webhook"
                    )
                await asyncio.sleep(0.5)
            fig.tickets_written = len(by_sid)
            fig.tickets_complete = len(complete)
            fig.duplicates = sum(c - 1 for c in by_sid.values() if c > 1)
            fig.lost_sids = sorted(missing)
            fig.tickets_lost = len(missing)
            fig.replica_lost_tickets = sum(1 for r in rows if r["end_reason"] == "replica lost")
            fig.webhook_deliveries = sum(self.sink.delivered.values())
            fig.webhook_duplicates = sum(c - 1 for c in self.sink.delivered.values() if c > 1)
            fig.webhook_refused = self.sink.refused
            fig.webhook_duplicate_samples = [
                f"{sid}: {' | '.join(seen)}" for sid, seen in self.sink.seen.items() if len(seen) > 1
            ][:10]
        finally:
            await direct.close()


def table(fig: Figures) -> str:
    rows = [
        ("calls placed", fig.calls_placed),
        ("calls whose media stream started", fig.calls_with_stream),
        ("calls without a media stream (no replica answered)", fig.calls_refused),
        ("calls with webhook and stream on different replicas", fig.split_calls),
        ("requests retried on the other replica (first one down)", fig.webhook_failovers),
        ("tickets written", fig.tickets_written),
        ("tickets complete", fig.tickets_complete),
        ("duplicates", fig.duplicates),
        ("tickets lost", fig.tickets_lost),
        ("tickets finished as 'replica lost'", fig.replica_lost_tickets),
        (
            "calls that went on after a Realtime fault",
            f"{fig.continued_after_realtime_fault} of {fig.in_flight_at_realtime_fault} in flight",
        ),
        ("webhook deliveries (duplicates)", f"{fig.webhook_deliveries} ({fig.webhook_duplicates})"),
        ("complete tickets the webhook never delivered", str(fig.webhook_undelivered)),
        (
            "time until every ticket final, after the last fault",
            f"{fig.seconds_to_final_after_last_fault} s "
            f"(the {fig.calls_in_final_measure} calls begun by then)",
        ),
        ("every ticket final at the end", "yes" if fig.all_final else "NO"),
        (
            "fuzz cases (webhook, media websocket, status, AMD, call API, tools) / failed checks",
            f"{fig.fuzz_cases} / {fig.fuzz_failures}",
        ),
        (
            "fuzzed streams that began as real calls / without a final ticket",
            f"{fig.fuzz_answered_calls} / {fig.fuzz_answered_unfinished}",
        ),
        ("both replicas healthy at the end", "yes" if fig.replicas_healthy_at_end else "NO"),
        ("wall time", f"{fig.wall_s} s"),
    ]
    lines = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[Options, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = Options()
    p.add_argument("--calls", type=int, default=d.calls)
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="calls in flight at once")
    p.add_argument("--lease-s", type=float, default=d.lease_s, help="CALLBOT_REPLICA_LEASE_S of the replicas")
    p.add_argument("--refuse-s", type=float, default=d.refuse_s)
    p.add_argument("--model-failures", type=int, default=d.model_failures)
    p.add_argument("--model-delay-s", type=float, default=d.model_delay_s)
    p.add_argument("--slow-s", type=float, default=d.slow_s)
    p.add_argument("--db-cut-s", type=float, default=d.db_cut_s)
    p.add_argument("--webhook-fail-s", type=float, default=d.webhook_fail_s)
    p.add_argument("--restart-after-s", type=float, default=d.restart_after_s)
    p.add_argument("--final-timeout-s", type=float, default=d.final_timeout_s)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--fuzz-webhook", type=int, default=d.fuzz_webhook, help="webhook fuzz cases")
    p.add_argument("--fuzz-media", type=int, default=d.fuzz_media, help="media websocket fuzz cases")
    p.add_argument("--fuzz-status", type=int, default=d.fuzz_status, help="status callback fuzz cases")
    p.add_argument("--fuzz-amd", type=int, default=d.fuzz_amd, help="AMD callback fuzz cases")
    p.add_argument("--fuzz-calls", type=int, default=d.fuzz_calls, help="POST /api/calls fuzz cases")
    p.add_argument(
        "--fuzz-tools",
        type=int,
        default=d.fuzz_tools,
        help="tool fuzz cases (2 function calls per fuzzed call)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep-logs", type=Path, help="keep the replicas' logs in this directory")
    args = p.parse_args(argv)
    opts = Options(**{k: getattr(args, k) for k in asdict(d)})
    return opts, args


async def main_async(opts: Options, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="callbot-soak-") as tmp:
        workdir = args.keep_logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        fig = await Soak(opts, workdir).run()
    print(table(fig))
    if fig.lost_sids:
        print("lost:", " ".join(fig.lost_sids[:20]))
    for failure in fig.fuzz_failure_samples:
        print("fuzz check failed:", failure)
    if args.json:
        args.json.write_text(json.dumps(asdict(fig), indent=1))
    ok = (
        fig.tickets_lost == 0
        and fig.duplicates == 0
        and fig.seconds_to_final_after_last_fault is not None
        and fig.all_final
        and fig.fuzz_failures == 0
        and fig.webhook_undelivered == 0
        and fig.replicas_healthy_at_end
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    opts, args = parse_args(argv)
    # The fuzz cases' websocket clients log a server closing on them mid-frame: expected here.
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    return asyncio.run(main_async(opts, args))


if __name__ == "__main__":
    sys.exit(main())
