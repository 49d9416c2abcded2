"""The ticket, end to end: the real server builds its own ticket service from Settings.

Nothing is injected but the Realtime connector (pointed at the fake Realtime server): the app
opens the SQL store named by `database_url`, summarises through `openai_base_url` (the fake
OpenAI HTTP API, whose failures the tests switch on), and spools to `spool_dir`. The evidence
is read back from the database the way an operator would, with `SqlTicketStore`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from openai import AsyncOpenAI
from websockets.asyncio.client import ClientConnection

import callbot.caller.simulator as caller_module
from callbot.adapters.realtime_openai import OpenAIRealtimeConnector
from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.caller.simulator import CallResult, HangUp, Say, Silence, Step, TwilioCaller, WaitForAssistant
from callbot.caller.stream import StreamSession
from callbot.cli_tickets import cmd_retry
from callbot.core.ticket import TICKET_SCHEMA, TicketStatus, schema_errors, summary_from_dict
from callbot.core.ticket_views import TicketFilters, TicketView
from callbot.errors import StoreUnavailable
from callbot.settings import Settings
from callbot.testing.fake_openai_http import FakeOpenAIControl, serve_fake_openai
from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from callbot.testing.serving import serve_app
from callbot.web.app import Services, create_app
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL, speech

GREETING = "Acme, hello."
CALLER_LINES = [
    "My order 4417 has not arrived.",
    "It was due on Monday.",
    "Yes, please send a new one.",
]
REPLIES = [  # short: the fake speaks them at a conversational pace, and tests wait for them
    "When was it due?",
    "Shall I resend it?",
    "Done, it ships today.",
]


def script(turns: int = 3) -> Script:
    return Script(
        greeting=GREETING,
        user_transcripts=CALLER_LINES[:turns],
        replies=REPLIES[:turns],
        realtime_factor=4.0,
    )


def expected_transcript(turns: int) -> list[tuple[str, str]]:
    expected = [("assistant", GREETING)]
    for line, reply in zip(CALLER_LINES[:turns], REPLIES[:turns], strict=True):
        expected += [("user", line), ("assistant", reply)]
    return expected


def steps(turns: int, *, linger_ms: int = 0) -> list[Step]:
    plan: list[Step] = [WaitForAssistant(timeout_s=10)]
    for n in range(turns):
        plan += [Say(speech(700, seed=40 + n)), Silence(100), WaitForAssistant(timeout_s=10)]
    if linger_ms:
        plan.append(Silence(linger_ms))
    plan.append(HangUp())
    return plan


def roles_and_text(view: TicketView) -> list[tuple[str, str | None]]:
    return [(e.role, e.text) for e in view.transcript]


def ticket_requests(control: FakeOpenAIControl) -> list[dict[str, Any]]:
    """The structured-summary requests the fake OpenAI API received (failed ones included)."""
    return [
        body
        for body in control.requests
        if isinstance(body.get("response_format"), dict)
        and body["response_format"].get("json_schema", {}).get("name") == "support_ticket"
    ]


@dataclass
class TicketRig:
    fake: FakeRealtimeServer
    control: FakeOpenAIControl
    openai_url: str
    base_url: str
    app: FastAPI
    settings: Settings

    @property
    def services(self) -> Services:
        return self.app.state.services

    def caller(self, **kwargs: Any) -> TwilioCaller:
        return TwilioCaller(self.base_url, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_URL, **kwargs)

    async def settle(self, timeout_s: float = 30.0) -> None:
        """Wait until every call has ended and the ticket service has nothing in flight."""
        deadline = time.monotonic() + timeout_s
        assert await self.services.active_calls.wait_empty(timeout_s), "a call never ended"
        await asyncio.wait_for(self.services.observer.drain(), timeout=deadline - time.monotonic())  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def ticket_rig(tmp_path: Path, the_script: Script, **overrides: Any) -> AsyncIterator[TicketRig]:
    control = FakeOpenAIControl()
    async with FakeRealtimeServer(the_script) as fake, serve_fake_openai(control) as openai_url:
        values: dict[str, Any] = {
            "public_url": PUBLIC_URL,
            "twilio_auth_token": AUTH_TOKEN,
            "openai_api_key": "fake",
            "openai_base_url": openai_url,
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/t.db",
            "spool_dir": tmp_path / "spool",
            "vad_silence_duration_ms": 400,
            "ticket_timeout_s": 20,
            "log_json": False,
        }
        values.update(overrides)
        settings = Settings(**values)
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="fake", base_url=fake.base_url), settings.model
        )
        app = create_app(settings, connector=connector)  # no observer: the real ticket service
        async with serve_app(app) as base_url:
            yield TicketRig(fake, control, openai_url, base_url, app, settings)


async def read_ticket(database_url: str, call_sid: str) -> TicketView | None:
    store = await SqlTicketStore.open(database_url)
    try:
        return await store.get_by_call_sid(call_sid)
    finally:
        await store.close()


async def count_tickets(database_url: str) -> int:
    store = await SqlTicketStore.open(database_url)
    try:
        return (await store.list(TicketFilters(), page_size=100)).total
    finally:
        await store.close()


def assert_complete_summary(view: TicketView) -> None:
    assert view.status == TicketStatus.COMPLETE
    summary = view.item.summary
    assert summary is not None
    assert schema_errors(summary, TICKET_SCHEMA, TICKET_SCHEMA) == []
    assert summary_from_dict(summary).title == view.item.title
    assert view.item.category in TICKET_SCHEMA["properties"]["category"]["enum"]
    assert view.item.last_error is None


# ----- (a) the happy path -----


async def test_multi_turn_call_leaves_one_complete_ticket_with_every_turn(tmp_path: Path) -> None:
    async with ticket_rig(tmp_path, script(3), summary_enabled=True) as rig:
        result = await rig.caller().run(steps(3))
        await rig.settle()
        assert rig.fake.violations == []
        database_url = rig.settings.database_url
        view = await read_ticket(database_url, result.call_sid)
        total = await count_tickets(database_url)
        requests = ticket_requests(rig.control)
    assert result.outcome == "completed", result.summary()
    assert total == 1
    assert view is not None
    assert roles_and_text(view) == expected_transcript(3)
    assert all(e.status == "complete" and not e.interrupted for e in view.transcript)
    assert [e.at_ms for e in view.transcript] == sorted(e.at_ms for e in view.transcript)
    assert_complete_summary(view)
    assert view.item.summary_attempts == 1
    # The summary restates the caller's facts verbatim (the fake copies them from the transcript).
    assert "4417" in json.dumps(view.item.summary)
    assert view.usage.responses == 4
    assert view.usage.input_tokens > 0 and view.usage.output_tokens > 0 and view.usage.total_tokens > 0
    # each response's own usage, in call time order, adding up to the totals (issue #18)
    per_response = view.response_usage
    assert len(per_response) == 4
    assert [u.at_ms for u in per_response] == sorted(u.at_ms for u in per_response)
    assert sum(u.input_tokens for u in per_response) == view.usage.input_tokens
    assert sum(u.output_tokens for u in per_response) == view.usage.output_tokens
    assert view.realtime_model == rig.settings.model
    assert view.summary_model == rig.settings.summary_model
    assert view.item.from_number == "+15551230000" and view.item.to_number == "+15559870000"
    assert view.end_reason == "caller hung up"
    assert view.item.ended_at is not None and view.item.duration_s and view.item.duration_s > 0
    assert view.stream_sid == result.stream_sid
    # One structured-summary request, carrying the whole conversation as data.
    assert len(requests) == 1
    user_message = requests[0]["messages"][-1]["content"]
    for _, text in expected_transcript(3):
        assert text in user_message
    assert requests[0]["model"] == rig.settings.ticket_model
    assert requests[0]["response_format"]["json_schema"]["strict"] is True


# ----- (b) the summary model fails at hang-up -----


@pytest.mark.parametrize("retry_with", ["cli", "service"])
async def test_failed_summary_leaves_pending_ticket_that_retry_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retry_with: str
) -> None:
    async with ticket_rig(tmp_path, script(2)) as rig:
        rig.control.fail(1000)  # every request fails (the SDK's own retries included)
        result = await rig.caller().run(steps(2))
        await rig.settle()
        database_url = rig.settings.database_url
        pending = await read_ticket(database_url, result.call_sid)
        failed_attempts = len(ticket_requests(rig.control))
        rig.control.fail(0)  # the model is back
        if retry_with == "cli":
            monkeypatch.setenv("CALLBOT_DATABASE_URL", database_url)
            monkeypatch.setenv("CALLBOT_SPOOL_DIR", str(tmp_path / "spool"))
            monkeypatch.setenv("OPENAI_API_KEY", "fake")
            monkeypatch.setenv("OPENAI_BASE_URL", rig.openai_url)
            out = io.StringIO()
            args = argparse.Namespace(limit=500)
            # The CLI runs its own event loop; the fake OpenAI server keeps serving from this one.
            code = await asyncio.to_thread(cmd_retry, args, out)
            cli_output = out.getvalue()
        else:
            completed = await rig.services.observer.retry_pending()  # type: ignore[union-attr]
        done = await read_ticket(database_url, result.call_sid)
        total = await count_tickets(database_url)
    assert result.outcome == "completed", result.summary()
    assert pending is not None
    assert pending.status == TicketStatus.PENDING_SUMMARY
    assert roles_and_text(pending) == expected_transcript(2)  # the full transcript was kept
    assert pending.item.summary is None and pending.item.title is None
    assert pending.item.summary_attempts == 1
    assert pending.item.last_error and "500" in pending.item.last_error
    assert pending.usage.total_tokens > 0 and pending.realtime_model == rig.settings.model
    assert failed_attempts >= 1
    if retry_with == "cli":
        assert code == 0, cli_output
        assert f"ticket {pending.id} ({result.call_sid}): complete" in cli_output
    else:
        assert completed == 1
    assert done is not None and done.id == pending.id
    assert_complete_summary(done)
    assert done.item.summary_attempts == 2
    assert roles_and_text(done) == expected_transcript(2)
    assert total == 1


# ----- (c) the database is unreachable at hang-up -----


async def test_ticket_is_spooled_while_sqlite_is_unreachable_and_the_server_flushes_it_later(
    tmp_path: Path,
) -> None:
    db_dir = tmp_path / "db-not-there-yet"
    database_url = f"sqlite+aiosqlite:///{db_dir}/t.db"
    spool_dir = tmp_path / "spool"
    async with ticket_rig(
        tmp_path,
        script(2),
        database_url=database_url,
        migrate_on_start=False,
        ticket_retry_interval_s=0.3,
    ) as rig:
        result = await rig.caller().run(steps(2))
        await rig.settle()
        spooled = sorted(spool_dir.glob("*.json"))
        assert [p.name for p in spooled] == [f"{result.call_sid}.json"]
        payload = json.loads(spooled[0].read_text("utf-8"))
        # The database comes back (directory and schema); the server's own maintenance loop
        # writes the spooled ticket without anyone asking.
        db_dir.mkdir()
        await upgrade_database(database_url)
        deadline = time.monotonic() + 15
        view = None
        while time.monotonic() < deadline:
            view = await read_ticket(database_url, result.call_sid)
            if (
                view is not None
                and view.status == TicketStatus.COMPLETE
                and not list(spool_dir.glob("*.json"))
            ):
                break
            await asyncio.sleep(0.1)
        total = await count_tickets(database_url)
    assert result.outcome == "completed", result.summary()
    spooled_texts = [(e["role"], e["text"]) for e in payload["record"]["transcript"]]
    assert spooled_texts == expected_transcript(2)
    assert payload["summary"] is not None  # summarised while spooled, kept beside the record
    assert view is not None, "the spooled ticket never reached the database"
    assert roles_and_text(view) == expected_transcript(2)
    assert_complete_summary(view)
    assert view.usage.total_tokens > 0
    assert list(spool_dir.glob("*.json")) == []
    assert total == 1


async def test_ticket_is_spooled_while_postgres_is_down_and_cli_retry_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = "postgresql+asyncpg://callbot@127.0.0.1:1/callbot"  # nothing listens on port 1
    spool_dir = tmp_path / "spool"
    async with ticket_rig(tmp_path, script(2), database_url=down, migrate_on_start=False) as rig:
        result = await rig.caller().run(steps(2))
        await rig.settle()
        with pytest.raises(StoreUnavailable):
            await read_ticket(down, result.call_sid)
        spooled = sorted(spool_dir.glob("*.json"))
        # A working database (here SQLite) takes the spool: `callbot tickets retry`.
        working = f"sqlite+aiosqlite:///{tmp_path}/recovered.db"
        await upgrade_database(working)
        monkeypatch.setenv("CALLBOT_DATABASE_URL", working)
        monkeypatch.setenv("CALLBOT_SPOOL_DIR", str(spool_dir))
        monkeypatch.setenv("OPENAI_API_KEY", "fake")
        monkeypatch.setenv("OPENAI_BASE_URL", rig.openai_url)
        out = io.StringIO()
        code = await asyncio.to_thread(cmd_retry, argparse.Namespace(limit=500), out)
        view = await read_ticket(working, result.call_sid)
        total = await count_tickets(working)
    assert result.outcome == "completed", result.summary()
    assert [p.name for p in spooled] == [f"{result.call_sid}.json"]
    assert code == 0, out.getvalue()
    assert "wrote 1 spooled ticket(s)" in out.getvalue()
    assert view is not None
    assert roles_and_text(view) == expected_transcript(2)
    assert_complete_summary(view)
    assert list(spool_dir.glob("*.json")) == []
    assert total == 1


# ----- (d) a crash mid-call leaves the transcript so far -----


async def test_transcript_so_far_is_an_in_progress_ticket_while_the_call_runs(tmp_path: Path) -> None:
    async with ticket_rig(tmp_path, script(2)) as rig:
        database_url = rig.settings.database_url
        call = rig.caller()
        running = asyncio.create_task(call.run(steps(2, linger_ms=2500)))
        # What the database holds mid-call is what a crash at that moment would leave behind.
        first_turn = expected_transcript(1)
        snapshot: TicketView | None = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not running.done():
            view = await read_ticket(database_url, call.call_sid)
            if view is not None and len(view.transcript) >= len(first_turn):
                snapshot = view
                if roles_and_text(view)[: len(first_turn)] == first_turn:
                    break
            await asyncio.sleep(0.05)
        call_was_running = not running.done()
        mid_call = None
        while not running.done():  # after the second turn, before the hang-up
            view = await read_ticket(database_url, call.call_sid)
            if view is not None and roles_and_text(view) == expected_transcript(2):
                mid_call = view
                break
            await asyncio.sleep(0.05)
        result = await running
        await rig.settle()
        final = await read_ticket(database_url, call.call_sid)
        total = await count_tickets(database_url)
    assert call_was_running
    assert snapshot is not None, "no in-progress ticket appeared during the call"
    assert snapshot.status == TicketStatus.IN_PROGRESS
    assert roles_and_text(snapshot)[: len(first_turn)] == first_turn
    assert snapshot.item.ended_at is None and snapshot.item.summary is None
    assert snapshot.item.from_number == "+15551230000"
    assert snapshot.realtime_model == rig.settings.model
    assert mid_call is not None, "the second turn was not saved before the hang-up"
    assert mid_call.status == TicketStatus.IN_PROGRESS
    assert result.outcome == "completed", result.summary()
    assert final is not None and final.id == snapshot.id
    assert roles_and_text(final) == expected_transcript(2)
    assert_complete_summary(final)
    assert total == 1


# ----- (e) duplicate stop / close after stop -----


class _DuplicateStopSession(StreamSession):
    """Twilio's side, hanging up badly: `stop` more than once, frames after it, or no close frame."""

    mode = "stop-twice"

    async def hang_up(self) -> None:
        if self.closed:
            return
        stop = {
            "event": "stop",
            "streamSid": self.stream_sid,
            "stop": {"accountSid": self.cfg.account_sid, "callSid": self.cfg.call_sid},
        }
        await self.send(stop)
        if self.mode == "stop-media-stop":
            media = {"event": "media", "streamSid": self.stream_sid, "media": {"payload": "////" * 40}}
            await self.send(media)
            await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": "nope"}})
        await self.send(stop)
        if self.mode != "stop-then-drop":
            await self.send(stop)
        self.stopped = True
        self.stop_ms = self.now_ms()
        self.stop_wall = self.loop.time()
        self.result.closed_by = self.result.closed_by or "caller"
        ws: ClientConnection = self.ws
        if self.mode == "stop-then-drop":
            ws.transport.abort()  # the TCP connection just goes away, no close frame
        else:
            await ws.close(1000)


@pytest.mark.parametrize("mode", ["stop-twice", "stop-media-stop", "stop-then-drop"])
async def test_duplicate_stop_and_close_after_stop_make_exactly_one_ticket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    session_class = type("Session", (_DuplicateStopSession,), {"mode": mode})
    monkeypatch.setattr(caller_module, "StreamSession", session_class)
    async with ticket_rig(tmp_path, script(1)) as rig:
        result: CallResult = await rig.caller().run(steps(1))
        await rig.settle()
        database_url = rig.settings.database_url
        view = await read_ticket(database_url, result.call_sid)
        total = await count_tickets(database_url)
        requests = ticket_requests(rig.control)
        sessions = len(rig.fake.sessions)
    assert result.frames_sent > 0 and result.error is None, result.summary()
    assert total == 1
    assert view is not None
    assert roles_and_text(view) == expected_transcript(1)
    assert_complete_summary(view)
    assert view.item.summary_attempts == 1
    assert view.end_reason == "caller hung up"
    assert len(requests) == 1  # the ticket was summarised once
    assert sessions == 1


class _SecondStartSession(StreamSession):
    """Before hanging up, Twilio's side sends a second `start` for the call, with a bad token."""

    async def hang_up(self) -> None:
        start = {
            "accountSid": self.cfg.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.cfg.call_sid,
            "tracks": ["inbound"],
            "customParameters": {**self.result.custom_parameters, "token": "1.forged"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        await self.send({"event": "start", "start": start, "streamSid": self.stream_sid})
        await asyncio.sleep(0.3)
        await super().hang_up()


async def test_a_second_start_with_a_bad_token_does_not_lose_the_accepted_calls_ticket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(caller_module, "StreamSession", _SecondStartSession)
    async with ticket_rig(tmp_path, script(1)) as rig:
        result = await rig.caller().run(steps(1))
        await rig.settle()
        view = await read_ticket(rig.settings.database_url, result.call_sid)
    # The stream was accepted at its first start: a later start is ignored (the core says so),
    # it must not turn the call into a refused stream and drop its record.
    assert view is not None
    assert view.status != TicketStatus.IN_PROGRESS, "the accepted call's ticket never got its final save"
    assert roles_and_text(view) == expected_transcript(1)
    assert_complete_summary(view)
    assert result.closed_by == "caller", "the server hung up on the caller because of the second start"
