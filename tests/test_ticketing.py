"""The ticket service end to end: real SQLite store, real OpenAI SDK, fake OpenAI HTTP server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from callbot.adapters.spool import Spool
from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.adapters.ticket_summariser_openai import OpenAITicketSummariser
from callbot.adapters.webhook import TicketWebhook
from callbot.core.record import CallInfo, CallRecord, Role, SummaryEvent, TranscriptEntry, UsageTotals
from callbot.core.ticket import (
    CARD_MARKER,
    DEFAULT_TICKET_PROMPT,
    TICKET_SCHEMA,
    TicketStatus,
    load_schema,
    schema_errors,
    validate_summary,
)
from callbot.core.ticket_views import TicketFilters
from callbot.testing.fake_openai_http import FakeOpenAIControl, serve_app, serve_fake_openai
from callbot.ticketing import TicketService

START = datetime(2024, 5, 3, 14, 0, tzinfo=UTC)
DOWN_URL = "postgresql+asyncpg://postgres@127.0.0.1:1/test"  # nothing listens on port 1

LINES: list[tuple[Role, str]] = [
    ("assistant", "Hello, this is the support line. How can I help?"),
    ("user", "Hi, my name is Anna Müller. My invoice 4711 from 2024-04-28 was charged twice."),
    ("assistant", "I am sorry to hear that. Let me check invoice 4711"),
    ("user", "Please refund the second payment of 59.90 euros."),
    ("assistant", "I will ask our billing team to refund it and call you back by 2024-05-10."),
    ("user", "Thank you, goodbye."),
]


def call(
    sid: str = "CA100", turns: int = len(LINES), ended: bool = True, extra: tuple[str, ...] = ()
) -> CallRecord:
    transcript = [
        TranscriptEntry(
            f"item{i}", role, text, at_ms=i * 4000, interrupted=(i == 2), heard_ms=900 if i == 2 else None
        )
        for i, (role, text) in enumerate(LINES[:turns])
    ]
    transcript += [
        TranscriptEntry(f"extra{i}", "user", text, at_ms=30_000 + i) for i, text in enumerate(extra)
    ]
    return CallRecord(
        info=CallInfo(sid, "MZ" + sid, "AC1", "+15550100", "+15550199"),
        started_at=START,
        ended_at=START + timedelta(seconds=30) if ended else None,
        transcript=tuple(transcript),
        summaries=(
            SummaryEvent("s1", 13_000, "Anna Müller: invoice 4711 charged twice.", 800, 3, ("item0",)),
        )
        if turns > 3
        else (),
        usage=UsageTotals(responses=3, input_tokens=900, output_tokens=300),
        realtime_model="gpt-realtime",
        summary_model="gpt-mini",
        end_reason="caller hung up" if ended else "",
    )


@dataclass
class Env:
    control: FakeOpenAIControl
    client: openai.AsyncOpenAI
    database_url: str
    spool: Spool

    def summariser(self, timeout_s: float = 5.0) -> OpenAITicketSummariser:
        return OpenAITicketSummariser(
            self.client, "gpt-test-mini", TICKET_SCHEMA, DEFAULT_TICKET_PROMPT, timeout_s
        )

    async def store(self, url: str | None = None) -> SqlTicketStore:
        return await SqlTicketStore.open(url or self.database_url, connect_timeout_s=2)

    def service(self, store: SqlTicketStore, **kwargs: Any) -> TicketService:
        kwargs.setdefault("timeout_s", 5.0)
        summariser = kwargs.pop("summariser", None) or self.summariser()
        return TicketService(store, summariser, self.spool, **kwargs)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'tickets.db'}"
    await upgrade_database(url)
    control = FakeOpenAIControl()
    async with serve_fake_openai(control) as base_url:
        client = openai.AsyncOpenAI(api_key="test-key", base_url=base_url, max_retries=0)
        yield Env(control, client, url, Spool(tmp_path / "spool"))
        await client.close()


async def all_tickets(store: SqlTicketStore) -> list[Any]:
    return (await store.list(TicketFilters(), 1, 100)).items


# ----- the normal call -----


async def test_a_call_becomes_one_complete_ticket_with_every_turn(env: Env) -> None:
    store = await env.store()
    service = env.service(store)
    await service.call_started(call(turns=0, ended=False))
    for turns in range(1, len(LINES)):
        await service.call_progress(call(turns=turns, ended=False))
    ticket_id = await service.call_ended(call())
    await service.drain()

    assert ticket_id is not None
    assert [t.id for t in await all_tickets(store)] == [ticket_id]
    view = await store.get(ticket_id)
    assert view is not None and view.status == "complete"
    assert [e.text for e in view.transcript] == [text for _, text in LINES]
    assert view.transcript[2].interrupted and view.summaries[0].text.startswith("Anna Müller")
    summary = validate_summary(view.item.summary, TICKET_SCHEMA)
    assert summary.category == "billing" and view.item.category == "billing"
    facts = {f.value for f in summary.facts}
    assert {"Anna Müller", "4711", "2024-04-28", "59.90", "2024-05-10"} <= facts
    assert summary.follow_up_needed and summary.action_items[0].due == "2024-05-10"
    assert "Fake summary" in summary.summary
    assert view.item.summary_attempts == 1 and view.item.last_error is None

    [request] = env.control.requests
    assert request["model"] == "gpt-test-mini"
    spec = request["response_format"]
    assert spec["type"] == "json_schema" and spec["json_schema"]["name"] == "support_ticket"
    assert spec["json_schema"]["strict"] is True and spec["json_schema"]["schema"] == TICKET_SCHEMA
    user_text = request["messages"][1]["content"]
    assert (
        "<transcript>" in user_text
        and "Caller: Please refund the second payment of 59.90 euros." in user_text
    )
    assert "Assistant (interrupted by the caller, heard 0.9 s)" in user_text
    await store.close()


async def test_transcript_and_summary_are_redacted_before_storing_and_summarising(env: Env) -> None:
    store = await env.store()
    service = env.service(store, redact_patterns=[r"(?i)pin \d{4}"])
    record = call(extra=("My card is 4111 1111 1111 1111 and my PIN 1234.",))
    ticket_id = await service.call_ended(record)
    view = await store.get(ticket_id or 0)
    assert view is not None and view.status == "complete"
    assert view.transcript[-1].text == f"My card is {CARD_MARKER} and my [REDACTED]."
    stored = json.dumps(view.to_json())
    sent = json.dumps(env.control.requests)
    for secret in ("4111 1111 1111 1111", "4111111111111111", "PIN 1234"):
        assert secret not in stored and secret not in sent
    await store.close()


# ----- summary failures -----


@pytest.mark.parametrize(
    ("breakage", "error"),
    [("http500", "HTTP 500"), ("invalid_json", "not valid JSON"), ("slow", "timed out after 0.3 s")],
)
async def test_failed_summary_stays_pending_and_retry_completes_it(
    env: Env, breakage: str, error: str
) -> None:
    store = await env.store()
    service = env.service(store, timeout_s=0.3)
    if breakage == "http500":
        env.control.fail(1)
    elif breakage == "invalid_json":
        env.control.invalid_json_next = 1
    else:
        env.control.delay_s = 1.0
    ticket_id = await service.call_ended(call())
    assert ticket_id is not None
    view = await store.get(ticket_id)
    assert view is not None and view.status == "pending_summary"
    assert view.item.summary_attempts == 1 and error in (view.item.last_error or "")
    assert len(view.transcript) == len(LINES)  # the transcript is safe while the summary waits

    env.control.delay_s = 0.0
    assert await service.retry_pending() == 1
    view = await store.get(ticket_id)
    assert view is not None and view.status == "complete" and view.item.summary_attempts == 2
    assert view.item.last_error is None and view.item.title
    assert await service.retry_pending() == 0
    await service.drain()
    await store.close()


# ----- the database is down at hang-up -----


async def test_database_down_at_hang_up_spools_then_flush_writes_the_complete_ticket(env: Env) -> None:
    down = await env.store(DOWN_URL)
    service = env.service(down)
    await service.call_started(call(turns=1, ended=False))  # logs, does not raise
    await service.call_progress(call(turns=3, ended=False))
    assert await service.call_ended(call()) is None
    await service.drain()
    await down.close()

    [item] = env.spool.items()
    assert item.call_sid == "CA100" and len(item.record.transcript) == len(LINES)
    assert item.summary is not None and item.summary["category"] == "billing"
    on_disk = json.loads(env.spool.path_for("CA100").read_text("utf-8"))
    assert on_disk["record"]["transcript"][1]["text"] == LINES[1][1]

    store = await env.store()
    service = env.service(store)
    assert await service.flush_spool() == 1
    assert env.spool.items() == []
    [ticket] = await all_tickets(store)
    assert ticket.status == "complete" and ticket.category == "billing"
    view = await store.get(ticket.id)
    assert view is not None and [e.text for e in view.transcript] == [t for _, t in LINES]
    assert await service.flush_spool() == 0
    await store.close()


async def test_spooled_ticket_without_summary_is_summarised_by_retry(env: Env) -> None:
    down = await env.store(DOWN_URL)
    env.control.fail(1)
    assert await env.service(down).call_ended(call()) is None
    await down.close()
    [item] = env.spool.items()
    assert item.summary is None

    store = await env.store()
    service = env.service(store)
    assert await service.flush_spool() == 1
    [ticket] = await all_tickets(store)
    assert ticket.status == "pending_summary"
    assert await service.retry_pending() == 1
    view = await store.get(ticket.id)
    assert view is not None and view.status == "complete"
    await store.close()


async def test_flush_stops_while_the_database_is_still_down(env: Env) -> None:
    env.spool.put(call("CA1"), None)
    env.spool.put(call("CA2"), None)
    down = await env.store(DOWN_URL)
    assert await env.service(down).flush_spool() == 0
    assert sorted(i.call_sid for i in env.spool.items()) == ["CA1", "CA2"]
    await down.close()


# ----- duplicates and crashes -----


async def test_duplicate_hang_up_events_make_exactly_one_ticket(env: Env) -> None:
    store = await env.store()
    service = env.service(store)
    env.control.delay_s = 0.2  # keep the first summary in flight while the duplicates arrive
    results = await asyncio.gather(
        service.call_ended(call()), service.call_ended(call()), service.call_ended(call())
    )
    assert len(set(results)) == 1 and results[0] is not None
    assert await service.call_ended(call()) == results[0]  # a late duplicate too
    assert len(await all_tickets(store)) == 1
    assert len(env.control.requests) == 1
    await store.close()


async def test_crash_mid_call_leaves_a_partial_in_progress_ticket(env: Env) -> None:
    store = await env.store()
    service = env.service(store)
    await service.call_started(call(turns=0, ended=False))
    [started] = await all_tickets(store)
    assert started.status == "in_progress"
    await service.call_progress(call(turns=2, ended=False))
    await service.call_progress(call(turns=4, ended=False))
    await service.drain()
    await store.close()  # the process dies here: no call_ended

    reopened = await env.store()
    [ticket] = await all_tickets(reopened)
    view = await reopened.get(ticket.id)
    assert view is not None and view.status == "in_progress" and view.item.ended_at is None
    assert [e.text for e in view.transcript] == [t for _, t in LINES[:4]]
    await reopened.close()


class GatedStore(SqlTicketStore):
    """A real store whose in-progress writes wait for a gate, like a slow database."""

    gate: asyncio.Event
    writes: list[int]

    async def upsert_call(self, record: CallRecord, status: TicketStatus | str) -> int:
        if status == TicketStatus.IN_PROGRESS:
            await self.gate.wait()
            self.writes.append(len(record.transcript))
        return await super().upsert_call(record, status)


async def test_progress_saves_never_block_the_call_and_keep_only_the_newest(env: Env) -> None:
    store = await GatedStore.open(env.database_url)
    assert isinstance(store, GatedStore)
    store.gate, store.writes = asyncio.Event(), []
    service = env.service(store, start_wait_s=0.05)
    began = time.monotonic()
    await service.call_started(call(turns=1, ended=False))  # gives up waiting after 50 ms
    for turns in range(2, 6):
        await service.call_progress(call(turns=turns, ended=False))
    assert time.monotonic() - began < 0.5
    store.gate.set()
    await service.drain()
    assert store.writes == [1, 5]  # the first write, then only the newest of the queued ones
    [ticket] = await all_tickets(store)
    view = await store.get(ticket.id)
    assert view is not None and len(view.transcript) == 5
    await store.close()


async def test_progress_after_hang_up_does_not_reopen_the_ticket(env: Env) -> None:
    store = await env.store()
    service = env.service(store)
    ticket_id = await service.call_ended(call())
    await service.call_progress(call(turns=2, ended=False))
    await service.drain()
    view = await store.get(ticket_id or 0)
    assert view is not None and view.status == "complete" and len(view.transcript) == len(LINES)
    await store.close()


async def test_background_loop_flushes_and_retries_until_cancelled(env: Env) -> None:
    store = await env.store()
    service = env.service(store)
    env.spool.put(call("CA-spooled"), None)
    await store.upsert_call(call("CA-pending"), TicketStatus.PENDING_SUMMARY)
    loop = asyncio.create_task(service.run_background(0.05))
    for _ in range(100):
        tickets = await all_tickets(store)
        if len(tickets) == 2 and all(t.status == "complete" for t in tickets):
            break
        await asyncio.sleep(0.05)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert sorted((t.call_sid, t.status) for t in await all_tickets(store)) == [
        ("CA-pending", "complete"),
        ("CA-spooled", "complete"),
    ]
    assert env.spool.items() == []
    await store.close()


# ----- webhook -----


class Receiver:
    """A local webhook endpoint that fails its first `failures` requests with 503."""

    def __init__(self, failures: int, status: int = 503) -> None:
        self.failures, self.status = failures, status
        self.bodies: list[dict[str, Any]] = []
        self.app = FastAPI()
        self.app.add_api_route("/hook", self.hook, methods=["POST"])

    async def hook(self, request: Request) -> JSONResponse:
        self.bodies.append(await request.json())
        if len(self.bodies) <= self.failures:
            return JSONResponse({"error": "try later"}, status_code=self.status)
        return JSONResponse({"ok": True})


async def test_webhook_delivers_the_finished_ticket_after_retries(env: Env) -> None:
    receiver = Receiver(failures=2)
    async with serve_app(receiver.app) as url:
        webhook = TicketWebhook(url + "/hook", attempts=4, backoff_s=0.01)
        store = await env.store()
        service = env.service(store, webhook=webhook)
        ticket_id = await service.call_ended(call())
        await service.aclose()
    assert len(receiver.bodies) == 3
    body = receiver.bodies[-1]
    assert body["id"] == ticket_id and body["status"] == "complete" and body["call_sid"] == "CA100"
    assert body["summary"]["category"] == "billing" and body["transcript"][1]["text"] == LINES[1][1]
    await store.close()


async def test_webhook_gives_up_without_disturbing_the_ticket(env: Env) -> None:
    rejecting = Receiver(failures=99, status=400)
    async with serve_app(rejecting.app) as url:
        assert await TicketWebhook(url + "/hook", attempts=4, backoff_s=0.01).deliver({"id": 1}) is False
    assert len(rejecting.bodies) == 1  # a 4xx is not retried

    unreachable = TicketWebhook("http://127.0.0.1:1/hook", attempts=2, backoff_s=0.01)
    store = await env.store()
    service = env.service(store, webhook=unreachable)
    ticket_id = await service.call_ended(replace(call(), end_reason="caller hung up"))
    await service.aclose()
    view = await store.get(ticket_id or 0)
    assert view is not None and view.status == "complete"
    await store.close()


# ----- a custom schema -----


async def test_a_custom_schema_file_is_requested_validated_and_stored(env: Env) -> None:
    schema = load_schema(
        json.dumps(
            {
                "name": "my_ticket",
                "schema": {
                    **TICKET_SCHEMA,
                    "required": [*TICKET_SCHEMA["required"], "contract_id"],
                    "properties": {
                        **TICKET_SCHEMA["properties"],
                        "contract_id": {"type": ["string", "null"]},
                    },
                },
            }
        )
    )
    store = await env.store()
    summariser = OpenAITicketSummariser(env.client, "gpt-test-mini", schema, "Summarise.", 5.0)
    ticket_id = await env.service(store, summariser=summariser).call_ended(call())
    view = await store.get(ticket_id or 0)
    assert view is not None and view.status == "complete"
    assert view.item.summary is not None and "contract_id" in view.item.summary
    assert env.control.requests[0]["messages"][0] == {"role": "system", "content": "Summarise."}
    await store.close()


# ----- the fake OpenAI server itself, through the real SDK -----


async def test_fake_plain_text_summary_restates_facts_verbatim(env: Env) -> None:
    transcript = "\n".join(
        f"[00:0{i}] {'Caller' if r == 'user' else 'Assistant'}: {t}" for i, (r, t) in enumerate(LINES)
    )
    completion = await env.client.chat.completions.create(
        model="gpt-mini",
        messages=[{"role": "system", "content": "Summarise."}, {"role": "user", "content": transcript}],
    )
    text = completion.choices[0].message.content or ""
    assert text.startswith("FAKE SUMMARY (offline simulator, not a language model).")
    for fact in ("Anna Müller", "4711", "2024-04-28", "59.90", "2024-05-10"):
        assert fact in text
    assert f"- Caller: {LINES[3][1]}" in text
    assert completion.usage is not None and completion.usage.prompt_tokens > 50


async def test_fake_answers_any_schema_with_a_valid_instance(env: Env) -> None:
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind", "score", "tags", "note", "nested"],
        "properties": {
            "kind": {"type": "string", "enum": ["a", "b"]},
            "score": {"type": "number"},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "note": {"type": ["string", "null"]},
            "nested": {"$ref": "#/$defs/inner"},
        },
        "$defs": {
            "inner": {
                "type": "object",
                "additionalProperties": False,
                "required": ["ok"],
                "properties": {"ok": {"type": "boolean"}},
            }
        },
    }
    completion = await env.client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "anything"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "other", "schema": schema, "strict": True},
        },
    )
    value = json.loads(completion.choices[0].message.content or "")
    assert schema_errors(value, schema, schema) == []
    assert value == {"kind": "a", "score": 0, "tags": ["fake"], "note": None, "nested": {"ok": False}}


async def test_fake_requires_an_api_key_like_the_real_one(env: Env) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            str(env.client.base_url) + "chat/completions", json={"model": "m", "messages": []}
        )
    assert response.status_code == 401 and "API key" in response.json()["error"]["message"]


# ----- the spool -----


def test_spool_writes_atomically_and_overwrites_per_call(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put(call("CA1", turns=2), None)
    spool.put(call("CA1", turns=4), {"title": "t"})
    spool.put(call("CA/../../etc", turns=1), None)  # hostile sids cannot escape the directory
    names = sorted(p.name for p in (tmp_path / "spool").iterdir())
    assert len(names) == 2 and "CA1.json" in names and all(not n.startswith(".") for n in names)
    items = {i.call_sid: i for i in spool.items()}
    assert len(items["CA1"].record.transcript) == 4 and items["CA1"].summary == {"title": "t"}
    assert items["CA/../../etc"].path.parent == tmp_path / "spool"
    spool.remove("CA1")
    assert [i.call_sid for i in spool.items()] == ["CA/../../etc"]


def test_spool_sets_damaged_files_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    spool.put(call("CA1"), None)
    (tmp_path / "CA2.json").write_text('{"record": {"info": 5}}', "utf-8")
    assert [i.call_sid for i in spool.items()] == ["CA1"]
    assert (tmp_path / "CA2.bad").exists() and "unreadable" in caplog.text
