"""The returning callers' side of the ticket store, on SQLite and PostgreSQL (migration 0004)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import sqlalchemy as sa
import test_store
from test_store import BASE, make_record, summary

from callbot.adapters.store_engine import create_engine, explain_plan
from callbot.adapters.store_models import tickets
from callbot.adapters.store_rows import earlier_calls_statement
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.ticket import TicketStatus
from callbot.core.ticket_views import TicketFilters

NUMBER = "+15550100"
database_url = test_store.database_url  # the fixtures: SQLite and a fresh PostgreSQL database
store = test_store.store


async def finished(
    store: SqlTicketStore, sid: str, days_ago: float, title: str, number: str = NUMBER, **extra: object
) -> int:
    record = make_record(sid, started=BASE - timedelta(days=days_ago), from_number=number)
    await store.upsert_call(record, TicketStatus.PENDING_SUMMARY)
    return await store.complete(sid, summary(title, **extra))


async def test_earlier_calls_are_the_numbers_complete_recent_tickets_newest_first(
    store: SqlTicketStore,
) -> None:
    old = await finished(store, "CA1", 40, "Too old")
    a = await finished(
        store, "CA2", 10, "Router broken", action_items=[{"description": "Visit", "owner": None}]
    )
    b = await finished(store, "CA3", 2, "Technician missed")
    await finished(store, "CA4", 1, "Someone else", number="+15550199")
    await store.upsert_call(
        make_record("CA5", started=BASE - timedelta(hours=1), from_number=NUMBER), "pending_summary"
    )
    calls = await store.earlier_calls(NUMBER, BASE - timedelta(days=30), 3)
    assert [c.ticket_id for c in calls] == [b, a]
    assert old not in [c.ticket_id for c in calls]
    assert calls[0].title == "Technician missed" and calls[0].started_at == BASE - timedelta(days=2)
    assert calls[1].action_items == ("Visit",) and calls[1].caller_request == "r" and calls[1].outcome == "o"
    assert [c.ticket_id for c in await store.earlier_calls(NUMBER, BASE - timedelta(days=30), 1)] == [b]


async def test_a_forgotten_ticket_no_longer_seeds_memory_but_stays_listed(store: SqlTicketStore) -> None:
    a = await finished(store, "CA1", 3, "First")
    b = await finished(store, "CA2", 2, "Second")
    assert await store.forget(a) is True
    assert await store.forget(999_999) is False
    calls = await store.earlier_calls(NUMBER, BASE - timedelta(days=30), 3)
    assert [c.ticket_id for c in calls] == [b]
    view = await store.get(a)
    assert view is not None and view.item.memory_excluded is True
    assert view.to_json()["memory_excluded"] is True
    assert (await store.list(TicketFilters())).total == 2


async def test_the_ticket_records_which_tickets_seeded_it(store: SqlTicketStore) -> None:
    seeded = replace(make_record("CA9"), memory_ticket_ids=(4, 7))
    ticket_id = await store.upsert_call(seeded, TicketStatus.IN_PROGRESS)
    view = await store.get(ticket_id)
    assert view is not None
    assert view.memory_ticket_ids == (4, 7)
    assert view.to_json()["memory_ticket_ids"] == [4, 7]
    assert view.to_record().memory_ticket_ids == (4, 7)
    plain = await store.get(await store.upsert_call(make_record("CA10"), TicketStatus.IN_PROGRESS))
    assert plain is not None and plain.memory_ticket_ids == ()


async def test_purge_deletes_only_that_numbers_tickets(store: SqlTicketStore) -> None:
    await finished(store, "CA1", 3, "First")
    await finished(store, "CA2", 2, "Second")
    other = await finished(store, "CA3", 1, "Other", number="+15550142")
    assert await store.count_number(NUMBER) == 2
    assert await store.purge_number(NUMBER) == 2
    assert await store.count_number(NUMBER) == 0
    assert await store.earlier_calls(NUMBER, BASE - timedelta(days=30), 3) == []
    page = await store.list(TicketFilters())
    assert [t.id for t in page.items] == [other]
    assert await store.purge_number(NUMBER) == 0


async def test_the_list_filters_by_number(store: SqlTicketStore) -> None:
    await finished(store, "CA1", 3, "First")
    await finished(store, "CA2", 1, "Other", number="+15550142")
    page = await store.list(TicketFilters.from_strings(number="+1 555-0142"))
    assert [t.call_sid for t in page.items] == ["CA2"]
    # the number called matches too (every make_record call goes to +15550199)
    assert (await store.list(TicketFilters.from_strings(number="+15550199"))).total == 2


async def test_calls_placed_to_the_number_and_transferred_calls_count_as_its_history(
    store: SqlTicketStore,
) -> None:
    inbound = await finished(store, "CA1", 3, "Router broken")
    placed = make_record("CA2", started=BASE - timedelta(days=2), from_number="+15559990000")
    placed = replace(placed, info=replace(placed.info, to_number=NUMBER, direction="outbound"))
    await store.upsert_call(placed, TicketStatus.PENDING_SUMMARY)
    callback = await store.complete("CA2", summary("Technician booked"))
    # a call *from* our number to someone else, and someone else's inbound call to our line
    other = make_record("CA3", started=BASE - timedelta(days=1), from_number=NUMBER)
    other = replace(other, info=replace(other.info, to_number="+15550142", direction="outbound"))
    await store.upsert_call(other, TicketStatus.PENDING_SUMMARY)
    await store.complete("CA3", summary("Not this caller's"))
    transferred = make_record("CA4", started=BASE - timedelta(hours=5))
    transferred = replace(transferred, end_reason="transferred to a human (+15557654321): wants a person")
    await store.upsert_call(transferred, TicketStatus.PENDING_SUMMARY)
    handed_over = await store.complete("CA4", summary("Handed to billing"))
    assert (await store.get(handed_over)).status == "transferred"  # type: ignore[union-attr]

    calls = await store.earlier_calls(NUMBER, BASE - timedelta(days=30), 5)
    assert [c.ticket_id for c in calls] == [handed_over, callback, inbound]
    assert await store.count_number(NUMBER) == 3
    assert await store.purge_number(NUMBER) == 3
    assert [t.call_sid for t in (await store.list(TicketFilters())).items] == ["CA3"]


async def test_the_lookup_walks_the_two_number_indexes_not_the_window(
    store: SqlTicketStore, database_url: str
) -> None:
    """The plan of the statement `earlier_calls` issues (the store's own builder): one range of
    each number index, never a scan of the table or of `ix_tickets_started_at` (the `OR` of both
    numbers made SQLite walk every ticket of the window: 147 ms at 300k tickets)."""
    # 2,000 recent tickets of 200 numbers, nearly all of them calls to our line (every 50th is
    # placed to the number), then the planner's statistics. With these, the `OR` statement's plan
    # was `SEARCH tickets USING INDEX ix_tickets_started_at (started_at>?)` on SQLite.
    rows = [
        {
            "call_sid": f"CA{i}",
            "direction": "outbound" if i % 50 == 0 else "inbound",
            "from_number": "+15559870000" if i % 50 == 0 else f"+1555{i % 200:07d}",
            "to_number": f"+1555{i % 200:07d}" if i % 50 == 0 else "+15559870000",
            "started_at": BASE - timedelta(minutes=i),
            "status": TicketStatus.COMPLETE.value,
            "transcript": [],
            "in_call_summaries": [],
            "created_at": BASE,
            "updated_at": BASE,
        }
        for i in range(2000)
    ]
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.insert(tickets), rows)
            await conn.exec_driver_sql("ANALYZE")
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                # a small table is cheaper to read whole; the point is which indexes fit
                await conn.exec_driver_sql("SET enable_seqscan = off")
            plan = await explain_plan(conn, earlier_calls_statement(NUMBER, BASE - timedelta(days=30), 3))
    finally:
        await engine.dispose()
    text = "\n".join(plan)
    assert "ix_tickets_from_number_started_at" in text and "ix_tickets_to_number_started_at" in text, text
    assert "ix_tickets_started_at " not in text + " ", text
    assert "ix_tickets_status" not in text, text
    if "sqlite" in database_url:
        searches = [line for line in plan if line.startswith(("SEARCH", "SCAN"))]
        assert sorted(searches) == [
            "SCAN made",
            "SCAN placed",
            "SEARCH tickets USING INDEX ix_tickets_from_number_started_at (from_number=? AND started_at>?)",
            "SEARCH tickets USING INDEX ix_tickets_to_number_started_at (to_number=? AND started_at>?)",
        ], text
    else:
        assert "Seq Scan" not in text and "Bitmap" not in text, text
        assert text.count("Index Scan Backward") == 2, text
