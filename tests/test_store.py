"""The SQL ticket store on SQLite and on the real PostgreSQL server, through its migrations."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from callbot.adapters.store_engine import create_engine
from callbot.adapters.store_migrate import current_revision, head_revision, upgrade_database
from callbot.adapters.store_models import metadata, tickets
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.cost import DEFAULT_PRICE_TABLE, price_table
from callbot.core.record import (
    CallInfo,
    CallRecord,
    ResponseUsage,
    SummaryEvent,
    ToolCallEvent,
    TranscriptEntry,
    UsageTotals,
)
from callbot.core.stats import compute_stats
from callbot.core.ticket import TicketStatus
from callbot.core.ticket_views import TicketFilters
from callbot.errors import StoreUnavailable, TicketNotFound

PG_URL = os.environ.get("CALLBOT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
BASE = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


async def _pg_admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(PG_URL.replace("+asyncpg", ""), timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CALLBOT_SKIP_POSTGRES") == "1":
            pytest.skip(f"PostgreSQL unreachable and CALLBOT_SKIP_POSTGRES=1: {exc}")
        pytest.fail(
            f"PostgreSQL at {PG_URL} is unreachable ({exc}). Start it, point "
            "CALLBOT_TEST_POSTGRES_URL at one, or set CALLBOT_SKIP_POSTGRES=1 to skip these tests.",
            pytrace=False,
        )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database (no schema yet): a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'tickets.db'}"
        return
    admin = await _pg_admin()
    name = f"callbot_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlTicketStore]:
    await upgrade_database(database_url)
    store = await SqlTicketStore.open(database_url)
    yield store
    await store.close()


def make_record(
    sid: str,
    *,
    started: datetime = BASE,
    lines: tuple[str, ...] = ("Hello",),
    from_number: str = "+15550100",
    ended: bool = True,
) -> CallRecord:
    transcript = tuple(
        TranscriptEntry(f"{sid}-{i}", "user" if i % 2 == 0 else "assistant", text, at_ms=i * 1000)
        for i, text in enumerate(lines)
    )
    return CallRecord(
        info=CallInfo(sid, "MZ" + sid, "AC1", from_number, "+15550199"),
        started_at=started,
        ended_at=started + timedelta(seconds=42) if ended else None,
        transcript=transcript,
        usage=UsageTotals(responses=2, input_tokens=300, output_tokens=120, cached_tokens=10),
        realtime_model="gpt-realtime",
        summary_model="gpt-mini",
        end_reason="caller hung up" if ended else "",
    )


def summary(
    title: str, category: str = "other", priority: str = "normal", **extra: object
) -> dict[str, object]:
    return {
        "title": title,
        "summary": f"Summary of {title}.",
        "caller_request": "r",
        "outcome": "o",
        "category": category,
        "priority": priority,
        "sentiment": "neutral",
        "action_items": [],
        "facts": [],
        "follow_up_needed": False,
        "language": "en",
        **extra,
    }


# ----- migrations -----


async def test_migrations_create_the_schema_the_models_describe(database_url: str) -> None:
    assert await current_revision(database_url) is None
    assert await upgrade_database(database_url) == head_revision() == "0006"
    assert await upgrade_database(database_url) == "0006"  # idempotent

    engine = create_engine(database_url)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_store_never_creates_tables_itself(database_url: str) -> None:
    store = await SqlTicketStore.open(database_url)
    try:
        with pytest.raises(StoreUnavailable, match="callbot db upgrade"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.upsert_call(make_record("CA1"), TicketStatus.IN_PROGRESS)
    finally:
        await store.close()


# ----- writes -----


async def test_upsert_is_idempotent_and_updates_the_transcript(store: SqlTicketStore) -> None:
    running = make_record("CA1", lines=("Hello",), ended=False)
    first = await store.upsert_call(running, TicketStatus.IN_PROGRESS)
    assert await store.upsert_call(running, TicketStatus.IN_PROGRESS) == first
    longer = make_record("CA1", lines=("Hello", "Hi, how can I help?", "My router is broken"), ended=False)
    assert await store.upsert_call(longer, TicketStatus.IN_PROGRESS) == first

    view = await store.get(first)
    assert view is not None and view.status == "in_progress"
    assert [e.text for e in view.transcript] == ["Hello", "Hi, how can I help?", "My router is broken"]
    assert view.item.ended_at is None and view.item.duration_s is None
    assert (await store.list(TicketFilters(), 1, 50)).total == 1


async def test_status_only_moves_forward(store: SqlTicketStore) -> None:
    ticket_id = await store.upsert_call(
        make_record("CA1", lines=("a",), ended=False), TicketStatus.IN_PROGRESS
    )
    final = make_record("CA1", lines=("a", "b", "c"))
    assert await store.upsert_call(final, TicketStatus.PENDING_SUMMARY) == ticket_id
    # A progress save arriving after hang-up must not reopen the ticket nor shorten its transcript.
    late = make_record("CA1", lines=("a", "b"), ended=False)
    assert await store.upsert_call(late, TicketStatus.IN_PROGRESS) == ticket_id
    view = await store.get_by_call_sid("CA1")
    assert view is not None and view.status == "pending_summary" and len(view.transcript) == 3

    assert await store.complete("CA1", summary("Router broken", "technical", "high")) == ticket_id
    assert await store.upsert_call(final, TicketStatus.PENDING_SUMMARY) == ticket_id
    assert await store.complete("CA1", summary("Second summary")) == ticket_id  # first one wins
    view = await store.get(ticket_id)
    assert view is not None and view.status == "complete"
    assert (
        view.item.title == "Router broken"
        and view.item.category == "technical"
        and view.item.priority == "high"
    )
    assert view.item.summary is not None and view.item.summary["summary"] == "Summary of Router broken."
    assert view.item.summary_attempts == 1
    with pytest.raises(ValueError, match="complete"):
        await store.upsert_call(final, TicketStatus.COMPLETE)


async def test_failed_summaries_are_counted_with_their_reason(store: SqlTicketStore) -> None:
    ticket_id = await store.upsert_call(make_record("CA1"), TicketStatus.PENDING_SUMMARY)
    assert await store.mark_summary_failed("CA1", "timed out") == ticket_id
    await store.mark_summary_failed("CA1", "HTTP 500 " + "x" * 5000)
    view = await store.get(ticket_id)
    assert view is not None and view.status == "pending_summary" and view.item.summary_attempts == 2
    assert (
        view.item.last_error is not None
        and view.item.last_error.startswith("HTTP 500")
        and len(view.item.last_error) == 2000
    )

    await store.complete("CA1", summary("Done"))
    view = await store.get(ticket_id)
    assert view is not None and view.item.summary_attempts == 3 and view.item.last_error is None
    with pytest.raises(TicketNotFound):
        await store.complete("CA-unknown", summary("x"))
    with pytest.raises(TicketNotFound):
        await store.mark_summary_failed("CA-unknown", "x")


async def test_concurrent_upserts_of_one_call_make_one_ticket(store: SqlTicketStore) -> None:
    records = [make_record("CA1", lines=tuple(f"line {j}" for j in range(i + 1))) for i in range(8)]
    ids = await asyncio.gather(*(store.upsert_call(r, TicketStatus.PENDING_SUMMARY) for r in records))
    assert len(set(ids)) == 1
    assert (await store.list(TicketFilters(), 1, 50)).total == 1


async def test_view_round_trips_the_record(store: SqlTicketStore) -> None:
    rec = make_record("CA1", lines=("Grüße aus Köln", "Hallo!"))
    rec = CallRecord(
        info=rec.info,
        started_at=rec.started_at,
        ended_at=rec.ended_at,
        transcript=(
            *rec.transcript,
            TranscriptEntry(
                "x", "assistant", "Let me", interrupted=True, heard_ms=800, at_ms=5000, summary_id="s1"
            ),
        ),
        summaries=(SummaryEvent("s1", 6000, "Caller greets.", 900, 3, ("CA1-0", "CA1-1", "x"), 200),),
        usage=rec.usage,
        realtime_model=rec.realtime_model,
        summary_model=rec.summary_model,
        end_reason=rec.end_reason,
    )
    ticket_id = await store.upsert_call(rec, TicketStatus.PENDING_SUMMARY)
    view = await store.get(ticket_id)
    assert view is not None
    assert view.to_record() == rec
    assert view.item.started_at.tzinfo is not None and view.item.started_at == BASE
    assert view.item.duration_s == 42.0
    assert view.usage.total_tokens == 420
    data = view.to_json()
    assert data["usage"]["total_tokens"] == 420 and data["transcript"][2]["interrupted"] is True
    assert data["in_call_summaries"][0]["text"] == "Caller greets."
    assert await store.get(ticket_id + 100) is None
    assert await store.get_by_call_sid("nope") is None


# ----- reads -----


async def seed(store: SqlTicketStore) -> None:
    day = timedelta(days=1)
    calls = [
        (
            "CA1",
            BASE,
            ("My invoice 4711 is wrong",),
            "+15550101",
            summary("Invoice dispute", "billing", "high"),
        ),
        (
            "CA2",
            BASE + day,
            ("Router shows error 651",),
            "+15550102",
            summary("Router error", "technical", "urgent"),
        ),
        (
            "CA3",
            BASE + 2 * day,
            ("Frau Müller hier, Passwort vergessen",),
            "+4930123",
            summary("Passwort", "account"),
        ),
        ("CA4", BASE + 3 * day, ("I want 100% refund_now",), "+15550104", None),
        (
            "CA5",
            BASE + 4 * day,
            ("Opening hours?",),
            "+15550105",
            summary("Opening hours", "information", "low"),
        ),
    ]
    for sid, started, lines, number, result in calls:
        await store.upsert_call(
            make_record(sid, started=started, lines=lines, from_number=number), "pending_summary"
        )
        if result is not None:
            await store.complete(sid, result)
    await store.upsert_call(make_record("CA6", started=BASE + 5 * day, ended=False), TicketStatus.IN_PROGRESS)


async def sids(store: SqlTicketStore, filters: TicketFilters, page: int = 1, size: int = 50) -> list[str]:
    return [t.call_sid for t in (await store.list(filters, page, size)).items]


async def test_filters_and_search(store: SqlTicketStore) -> None:
    await seed(store)
    assert await sids(store, TicketFilters()) == ["CA6", "CA5", "CA4", "CA3", "CA2", "CA1"]
    assert await sids(store, TicketFilters(search="4711")) == ["CA1"]  # transcript
    assert await sids(store, TicketFilters(search="ROUTER error")) == ["CA2"]  # case-insensitive, all words
    assert await sids(store, TicketFilters(search="router invoice")) == []
    assert await sids(store, TicketFilters(search="müller")) == ["CA3"]  # non-ASCII
    assert await sids(store, TicketFilters(search="+4930")) == ["CA3"]  # from number
    assert await sids(store, TicketFilters(search="dispute")) == ["CA1"]  # title
    assert await sids(store, TicketFilters(search="Summary of Opening")) == ["CA5"]  # summary text
    assert await sids(store, TicketFilters(search="100%")) == ["CA4"]  # LIKE wildcards are literal
    assert await sids(store, TicketFilters(search="d_now")) == ["CA4"]
    assert await sids(store, TicketFilters(search="%")) == ["CA4"]
    assert await sids(store, TicketFilters(status="pending_summary")) == ["CA4"]
    assert await sids(store, TicketFilters(status="in_progress")) == ["CA6"]
    assert await sids(store, TicketFilters(category="technical")) == ["CA2"]
    assert await sids(store, TicketFilters(priority="low")) == ["CA5"]
    assert await sids(store, TicketFilters(status="complete", category="billing", priority="high")) == ["CA1"]


async def test_date_filters_include_whole_days(store: SqlTicketStore) -> None:
    await seed(store)
    filters = TicketFilters.from_strings(since="2024-05-02", until="2024-05-03")
    assert await sids(store, filters) == ["CA3", "CA2"]
    assert await sids(store, TicketFilters.from_strings(until="2024-05-01")) == ["CA1"]
    assert await sids(store, TicketFilters.from_strings(since="2024-05-05T12:00:00+00:00")) == ["CA6"]


async def test_paging_newest_first(store: SqlTicketStore) -> None:
    await seed(store)
    first = await store.list(TicketFilters(), 1, 4)
    assert (first.total, first.pages, [t.call_sid for t in first.items]) == (
        6,
        2,
        ["CA6", "CA5", "CA4", "CA3"],
    )
    second = await store.list(TicketFilters(), 2, 4)
    assert [t.call_sid for t in second.items] == ["CA2", "CA1"]
    assert (await store.list(TicketFilters(), 3, 4)).items == []
    assert second.to_json()["pages"] == 2 and second.to_json()["items"][0]["title"] == "Router error"


async def test_pending_summaries_oldest_attempt_first(store: SqlTicketStore) -> None:
    for sid in ("CA1", "CA2", "CA3"):
        await store.upsert_call(make_record(sid, lines=(f"I am {sid}",)), TicketStatus.PENDING_SUMMARY)
        await asyncio.sleep(0.01)
    await store.upsert_call(make_record("CA4", ended=False), TicketStatus.IN_PROGRESS)
    await store.complete("CA2", summary("done"))
    await store.mark_summary_failed("CA1", "boom")  # tried just now: goes to the back
    pending = await store.pending_summaries(10)
    assert [v.call_sid for v in pending] == ["CA3", "CA1"]
    assert pending[0].transcript[0].text == "I am CA3"
    assert [v.call_sid for v in await store.pending_summaries(1)] == ["CA3"]


async def test_calls_abandoned_by_a_crash_are_summarised_as_they_stand(store: SqlTicketStore) -> None:
    await store.upsert_call(
        make_record("CA8", ended=False, lines=("My order is 771",)), TicketStatus.IN_PROGRESS
    )
    await store.upsert_call(make_record("CA9", ended=False), TicketStatus.IN_PROGRESS)
    # CA8's process died: its last progress save is three hours old. CA9 is a live call.
    old = datetime.now(UTC) - timedelta(hours=3)
    await store._run(
        lambda conn: conn.execute(tickets.update().where(tickets.c.call_sid == "CA8").values(updated_at=old))
    )
    pending = await store.pending_summaries(10)
    assert [v.call_sid for v in pending] == ["CA8"]
    assert pending[0].transcript[0].text == "My order is 771"
    assert await store.pending_summaries(10, abandoned_after_s=None) == []
    await store.complete("CA8", summary("recovered"))
    ticket = await store.get_by_call_sid("CA8")
    assert ticket is not None and ticket.status == TicketStatus.COMPLETE.value


# ----- failures -----


async def test_unreachable_database_is_store_unavailable_quickly() -> None:
    store = await SqlTicketStore.open("postgresql+asyncpg://postgres@127.0.0.1:1/test", connect_timeout_s=2)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match="Connect"):
            await store.upsert_call(make_record("CA1"), TicketStatus.PENDING_SUMMARY)
    finally:
        await store.close()
    assert time.monotonic() - started < 5


async def test_closed_store_is_unavailable(store: SqlTicketStore) -> None:
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get(1)


def test_unsupported_database_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        create_engine("mysql+aiomysql://u:secret@h/db")


async def test_concurrent_upgrades_from_several_processes_agree(database_url: str) -> None:
    # As when several server workers start at once: one migrates, the others find it done.
    results = await asyncio.gather(
        *(upgrade_database(database_url) for _ in range(3)), return_exceptions=True
    )
    assert results == ["0006", "0006", "0006"]
    assert await current_revision(database_url) == "0006"


async def test_a_record_with_nul_and_lone_surrogates_in_its_text_is_saved(store: SqlTicketStore) -> None:
    """A model's function call arguments (or a transcript) may hold NUL, which PostgreSQL keeps in
    no text or JSON, or a lone surrogate, which has no UTF-8: the ticket is saved with U+FFFD in
    their place instead of failing as "database unavailable" forever (found by the tool fuzzer)."""
    calls = (
        ToolCallEvent(
            call_id="call_\x00",
            item_id="item_1",
            name="lookup_order",
            arguments='{"order_number": "44\x0017 \ud800"}',
            output=None,
            error="lookup_order answered HTTP 500: \x00",
            outcome="error",
            started_ms=4200,
            ended_ms=4650,
        ),
    )
    record = replace(
        make_record("CANUL", lines=("Hello \x00 there", "\udfff")),
        tool_calls=calls,
        end_reason="caller hung up \x00",
    )
    ticket_id = await store.upsert_call(record, TicketStatus.PENDING_SUMMARY)
    view = await store.get(ticket_id)
    assert view is not None
    (call,) = view.tool_calls
    assert call.arguments == '{"order_number": "44\ufffd17 \ufffd"}'
    assert call.error == "lookup_order answered HTTP 500: \ufffd" and call.call_id == "call_\ufffd"
    assert [e.text for e in view.transcript] == ["Hello \ufffd there", "\ufffd"]
    assert view.end_reason == "caller hung up \ufffd"


async def test_tool_calls_round_trip_and_a_transferred_call_ends_transferred(store: SqlTicketStore) -> None:
    calls = (
        ToolCallEvent(
            call_id="call_1",
            item_id="item_1",
            name="lookup_order",
            arguments='{"order_number": "4417"}',
            output='{"status": "shipped"}',
            started_ms=4200,
            ended_ms=4650,
        ),
        ToolCallEvent(
            call_id="call_2",
            item_id="item_2",
            name="transfer_to_human",
            arguments='{"reason": "wants a person"}',
            output="transferred to +15557654321",
            started_ms=9000,
            ended_ms=9400,
            kind="builtin",
        ),
    )
    record = replace(
        make_record("CA9"),
        tool_calls=calls,
        end_reason="transferred to a human (+15557654321): wants a person",
    )
    ticket_id = await store.upsert_call(record, TicketStatus.PENDING_SUMMARY)
    view = await store.get(ticket_id)
    assert view is not None and view.tool_calls == calls and view.to_record().tool_calls == calls
    assert view.to_json()["tool_calls"][0]["output"] == '{"status": "shipped"}'
    assert await store.complete("CA9", summary("Transferred about order 4417")) == ticket_id
    view = await store.get(ticket_id)
    assert view is not None and view.status == "transferred"
    assert await store.complete("CA9", summary("Second")) == ticket_id  # final: the first one wins
    assert (await store.get(ticket_id)).item.title == "Transferred about order 4417"  # type: ignore[union-attr]
    other = await store.upsert_call(make_record("CA10"), TicketStatus.PENDING_SUMMARY)
    await store.complete("CA10", summary("Plain"))
    assert (await store.get(other)).status == "complete"  # type: ignore[union-attr]
    page = await store.list(TicketFilters(status="transferred"))
    assert [item.call_sid for item in page.items] == ["CA9"]


# ----- per-response usage and the dashboard's rows (issue #18) -----


async def test_response_usage_round_trips_and_old_rows_read_as_none(store: SqlTicketStore) -> None:
    usages = (
        ResponseUsage(1200, 800, 0, 500, 300, 20, 150),
        ResponseUsage(5400, 2400, 1024, 900, 1500, 30, 200, cached_text_tokens=600, cached_audio_tokens=424),
    )
    rec = replace(make_record("CA1"), response_usage=usages)
    ticket_id = await store.upsert_call(rec, TicketStatus.PENDING_SUMMARY)
    view = await store.get(ticket_id)
    assert view is not None and view.response_usage == usages
    assert view.to_record() == rec
    assert view.to_json()["response_usage"][1]["cached_audio_tokens"] == 424
    # a row written before migration 0005 has no per-response usage: NULL reads back as none
    async with store._engine.begin() as conn:
        await conn.execute(sa.update(tickets).values(response_usage=None))
    view = await store.get(ticket_id)
    assert view is not None and view.response_usage == ()


async def test_calls_gives_whole_tickets_in_a_date_range_oldest_first(store: SqlTicketStore) -> None:
    await seed(store)
    views = await store.calls(TicketFilters.from_strings(since="2024-05-02", until="2024-05-04"))
    assert [v.call_sid for v in views] == ["CA2", "CA3", "CA4"]
    assert all(v.transcript for v in views)  # whole tickets, not list rows
    assert [v.call_sid for v in await store.calls(TicketFilters(), limit=2)] == ["CA5", "CA6"]  # the newest
    stats = compute_stats(
        await store.calls(TicketFilters()), price_table(DEFAULT_PRICE_TABLE), since=None, until=None
    )
    assert stats.calls == 6
    assert stats.calls_per_day[0] == ("2024-05-01", 1) and len(stats.calls_per_day) == 6
    assert stats.status_mix == {"complete": 4, "pending_summary": 1, "in_progress": 1}
    assert stats.category_mix["billing"] == 1 and stats.open_follow_ups == 0
