"""The call's life on its ticket, in SQLite and PostgreSQL: callbacks in either order around the
stream's own saves, placements, tickets for calls that never streamed, and a transfer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.call_lifecycle import PlacedCall, StatusUpdate, parse_status_callback
from callbot.core.record import CallInfo
from callbot.core.ticket import TicketStatus
from tests.test_store import BASE, database_url, make_record  # noqa: F401  (the fixture)

SID = "CA" + "b" * 32


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlTicketStore]:  # noqa: F811
    await upgrade_database(database_url)
    store = await SqlTicketStore.open(database_url)
    yield store
    await store.close()


def completed(duration_s: int, sequence: int = 3) -> StatusUpdate:
    return StatusUpdate(SID, "completed", sequence, duration_s, None, "+15550100", "+15550199", "inbound")


async def test_a_callback_after_the_stream_ended_gives_the_outcome(store: SqlTicketStore) -> None:
    ticket_id = await store.upsert_call(make_record(SID), TicketStatus.PENDING_SUMMARY)  # 42 s stream
    assert await store.apply_status(completed(43)) == ticket_id
    assert await store.apply_status(completed(43)) == ticket_id  # a duplicate
    view = await store.get(ticket_id)
    assert view is not None
    assert (view.lifecycle.twilio_status, view.lifecycle.duration_s, view.outcome) == (
        "completed",
        43,
        "talked",
    )
    assert view.status == TicketStatus.PENDING_SUMMARY  # the summary still comes


async def test_a_call_that_outlived_its_stream_was_transferred(store: SqlTicketStore) -> None:
    ticket_id = await store.upsert_call(make_record(SID), TicketStatus.PENDING_SUMMARY)
    await store.apply_status(completed(300))
    view = await store.get(ticket_id)
    assert view is not None and view.outcome == "transferred"


async def test_a_callback_before_the_stream_ended_is_kept_and_the_outcome_follows_the_stream(
    store: SqlTicketStore,
) -> None:
    live = make_record(SID, ended=False)
    ticket_id = await store.upsert_call(live, TicketStatus.IN_PROGRESS)
    await store.apply_status(completed(44))
    await store.apply_status(StatusUpdate(SID, "in-progress", 2))  # late and out of order
    view = await store.get(ticket_id)
    assert view is not None and view.status == TicketStatus.IN_PROGRESS  # the stream is still saving
    await store.upsert_call(make_record(SID), TicketStatus.PENDING_SUMMARY)
    assert await store.refresh_outcome(SID) == ticket_id
    view = await store.get(ticket_id)
    assert view is not None
    assert (view.lifecycle.twilio_status, view.outcome, view.lifecycle.duration_s) == (
        "completed",
        "talked",
        44,
    )
    assert len(view.transcript) == 1  # the stream's save kept its transcript


async def test_a_call_that_never_streamed_gets_a_complete_ticket_from_its_callbacks(
    store: SqlTicketStore,
) -> None:
    ringing = StatusUpdate(SID, "ringing", 1, None, None, "+15550100", "+15550199", "outbound")
    ticket_id = await store.apply_status(ringing)
    view = await store.get(ticket_id)
    assert view is not None and view.status == TicketStatus.IN_PROGRESS and view.outcome is None
    await store.apply_status(StatusUpdate(SID, "no-answer", 2, 0, None, "+15550100", "+15550199", "outbound"))
    view = await store.get(ticket_id)
    assert view is not None
    assert view.status == TicketStatus.COMPLETE and view.outcome == "no-answer"
    assert view.direction == "outbound" and view.item.title == "Outbound call: no-answer"
    assert await store.refresh_outcome("CA" + "0" * 32) is None


async def test_a_callback_with_overlong_numbers_is_stored_cut_not_refused(store: SqlTicketStore) -> None:
    # The fuzzer's find: a signed callback with a 100-character From was a 503 on PostgreSQL
    # (the column holds 64); parsing cuts both numbers to what the ticket keeps.
    update = parse_status_callback(
        {"CallSid": SID, "CallStatus": "no-answer", "From": "+1" + "5" * 98, "To": "sip:" + "q" * 96}
    )
    ticket_id = await store.apply_status(update)
    view = await store.get(ticket_id)
    assert view is not None and view.outcome == "no-answer"
    assert view.item.from_number == update.from_number and len(update.from_number) == 64


async def test_a_placement_lands_on_a_row_a_callback_created_first(store: SqlTicketStore) -> None:
    early = await store.apply_status(StatusUpdate(SID, "initiated", 0, direction="outbound"))
    info = CallInfo(SID, "", "AC1", "+15550100", "+15550199", direction="outbound")
    placed = PlacedCall("p" * 32, "Confirm the slot.", {"slot": "Friday"})
    assert await store.create_placed_call(info, placed, BASE + timedelta(seconds=1)) == early
    assert await store.placed_call(SID) == placed
    view = await store.get(early)
    assert view is not None
    assert view.lifecycle.twilio_status == "initiated"  # not moved back to "queued"
    assert (view.instructions, view.context) == ("Confirm the slot.", {"slot": "Friday"})
    await store.apply_amd(SID, "machine_end_beep", voicemail_left=True)
    await store.apply_status(StatusUpdate(SID, "completed", 4, 20, direction="outbound"))
    view = await store.get(early)
    assert (
        view is not None
        and view.outcome == "voicemail_left"
        and view.lifecycle.answered_by == "machine_end_beep"
    )
    assert await store.placed_call("CA" + "0" * 32) is None


async def test_concurrent_callbacks_and_amd_results_all_land(store: SqlTicketStore) -> None:
    import asyncio

    await store.upsert_call(make_record(SID, ended=False), TicketStatus.IN_PROGRESS)
    await asyncio.gather(
        store.apply_amd(SID, "machine_end_beep"),
        store.apply_status(StatusUpdate(SID, "in-progress", 2)),
        store.apply_amd(SID, "machine_end_beep", voicemail_left=True),
        store.apply_status(completed(9)),
    )
    view = await store.get_by_call_sid(SID)
    assert view is not None
    life = view.lifecycle
    assert (life.twilio_status, life.duration_s, life.answered_by, life.voicemail_left) == (
        "completed", 9, "machine_end_beep", True,
    )  # fmt: skip
    assert view.outcome == "voicemail_left"


async def test_the_outcome_is_searchable_and_only_the_current_one(store: SqlTicketStore) -> None:
    from callbot.core.ticket_views import TicketFilters

    await store.upsert_call(make_record(SID), TicketStatus.PENDING_SUMMARY)
    await store.apply_status(completed(43))  # talked, for now
    assert (await store.list(TicketFilters(search="outcome:talked"))).total == 1
    await store.apply_amd(SID, "machine_end_beep", voicemail_left=True)
    assert (await store.list(TicketFilters(search="voicemail_left"))).total == 1
    assert (await store.list(TicketFilters(search="outcome:talked"))).total == 0
    assert (await store.list(TicketFilters(search="Hello"))).total == 1  # the transcript is still searchable
