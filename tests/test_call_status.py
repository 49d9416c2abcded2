"""A final status callback that never arrived: the call is looked up on Twilio's REST API.

Which calls are overdue (the store, on SQLite and PostgreSQL), the pass itself against the fake
Twilio REST API through the real adapter, and the whole thing on the real server: a callback
answered 202 while the database was down, then recorded from Twilio's answer."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from callbot.adapters.store_sql import SqlTicketStore
from callbot.adapters.twilio_rest import TwilioRestCalls
from callbot.call_status import StatusReconciler
from callbot.core.call_control import CallState
from callbot.core.call_lifecycle import PlacedCall, StatusUpdate, fetched_status, status_overdue_s
from callbot.core.record import CallInfo
from callbot.core.ticket import TicketStatus
from callbot.errors import StoreUnavailable
from callbot.testing.fake_twilio_rest import FakeTwilioRest
from callbot.testing.serving import serve_app
from tests.outbound_rig import outbound_rig
from tests.test_store import BASE, database_url, make_record, store

__all__ = ["database_url", "store"]  # the fixtures, re-used

ACCOUNT = "AC" + "3" * 32
TOKEN = "status-token"
STREAM_S, START_S = status_overdue_s(30, 120)
NOW = BASE + timedelta(hours=1)


async def placed(store: SqlTicketStore, sid: str, at: datetime) -> int:
    info = CallInfo(sid, "", ACCOUNT, "+15550199", "+15550100", direction="outbound")
    return await store.create_placed_call(info, PlacedCall("p" + sid), at)


def overdue_for(store: SqlTicketStore) -> Any:
    return store.calls_awaiting_status(NOW - timedelta(seconds=STREAM_S), NOW - timedelta(seconds=START_S))


# ----- the core -----


def test_only_a_final_status_stands_for_the_missed_callback() -> None:
    assert status_overdue_s(30, 120) == (60, 210)
    update = fetched_status("CA1", CallState("no-answer", 0))
    assert update == StatusUpdate("CA1", "no-answer", None, 0)
    assert fetched_status("CA1", CallState("in-progress")) is None  # still going: ask again later
    assert fetched_status("CA1", CallState("ringing")) is None


# ----- the store: which calls are overdue -----


async def test_calls_overdue_are_those_without_a_final_status_past_their_bound(store: SqlTicketStore) -> None:
    long_ago, just_now = NOW - timedelta(seconds=START_S + 5), NOW - timedelta(seconds=5)
    await placed(store, "CAunanswered", long_ago)  # placed, never streamed, no callback since
    await placed(store, "CAringing", just_now)  # may still ring
    await placed(store, "CAbusy", long_ago)
    await store.apply_status(StatusUpdate("CAbusy", "busy", 2, 0, direction="outbound"))
    # Outbound calls that streamed: one ended long ago, one just now, one still talking.
    for sid, ended in (("CAtalked", long_ago), ("CAjustended", just_now), ("CAlive", None)):
        await placed(store, sid, long_ago)
        record = make_record(sid, started=long_ago - timedelta(seconds=60), ended=ended is not None)
        record = replace(record, info=replace(record.info, direction="outbound"), ended_at=ended)
        status = TicketStatus.PENDING_SUMMARY if ended else TicketStatus.IN_PROGRESS
        await store.upsert_call(record, status)
    # Inbound: without status callbacks (nothing is owed), and with them (one is missing).
    await store.upsert_call(
        make_record("CAinbound", started=long_ago, ended=True), TicketStatus.PENDING_SUMMARY
    )
    await store.upsert_call(
        make_record("CAinbound2", started=long_ago, ended=True), TicketStatus.PENDING_SUMMARY
    )
    await store.apply_status(StatusUpdate("CAinbound2", "in-progress", 1))
    assert sorted(await overdue_for(store)) == ["CAinbound2", "CAtalked", "CAunanswered"]


# ----- the pass, against the fake Twilio REST API -----


async def test_the_pass_records_what_twilio_says_and_leaves_calls_still_going(store: SqlTicketStore) -> None:
    rest = FakeTwilioRest(account_sid=ACCOUNT, auth_token=TOKEN)
    long_ago = NOW - timedelta(seconds=START_S + 5)
    for sid, status in (("CAa", "no-answer"), ("CAb", "in-progress"), ("CAc", "failed")):
        await placed(store, sid, long_ago)
        rest.register_call(sid).status = status
    await placed(store, "CAunknown", long_ago)  # Twilio has never heard of it
    async with serve_app(rest.app) as api_url:
        control = TwilioRestCalls(ACCOUNT, TOKEN, api_url=api_url)
        reconciler = StatusReconciler(store, control, after_stream_s=STREAM_S, after_start_s=START_S)
        try:
            assert await reconciler.reconcile(NOW) == 2
            assert sorted(await overdue_for(store)) == ["CAb", "CAunknown"]  # asked again next pass
            rest.calls["CAb"].status, rest.calls["CAb"].duration_s = "completed", 0
            rest.fail_next.append((500, 20500))  # Twilio down for one request: the pass stops there
            assert await reconciler.reconcile(NOW) == 0
            assert await reconciler.reconcile(NOW) == 1
        finally:
            await control.aclose()
    outcomes = {}
    for sid in ("CAa", "CAb", "CAc", "CAunknown"):
        view = await store.get_by_call_sid(sid)
        assert view is not None
        outcomes[sid] = (view.outcome, view.status)
    assert outcomes == {
        "CAa": ("no-answer", TicketStatus.COMPLETE),
        "CAb": ("completed", TicketStatus.COMPLETE),
        "CAc": ("failed", TicketStatus.COMPLETE),
        "CAunknown": (None, TicketStatus.IN_PROGRESS),
    }


# ----- the real server -----


class DatabaseDownForStatuses(SqlTicketStore):
    """A real store that cannot take status callbacks for a while, as during a database cut."""

    down = True

    async def apply_status(self, update: StatusUpdate) -> int:
        if self.down:
            raise StoreUnavailable("link cut (test)")
        return await super().apply_status(update)


async def test_a_final_callback_that_came_while_the_database_was_down_is_looked_up_later(
    tmp_path: Path,
) -> None:
    number = "+15557770042"
    options = {"answers": {number: "no-answer"}, "ring_s": 0.2}
    async with outbound_rig(tmp_path, dialer_options=options) as rig:
        services = rig.services
        # The same database, behind a link that is cut for status callbacks.
        flaky = await DatabaseDownForStatuses.open(rig.settings.database_url)
        services.calls = flaky
        placed_call = (await rig.place(number)).json()
        await rig.dialer.wait_all()
        dialed = rig.dialer.dialed[placed_call["call_sid"]]
        before = await rig.ticket(placed_call["call_sid"])
        flaky.down = False
        assert services.call_control is not None
        after_stream_s, after_start_s = status_overdue_s(
            rig.settings.outbound_ring_timeout_s, rig.settings.stream_token_ttl_s
        )
        reconciler = StatusReconciler(
            flaky, services.call_control, after_stream_s=after_stream_s, after_start_s=after_start_s
        )
        assert await reconciler.reconcile() == 0  # not overdue yet
        later = datetime.now(UTC) + timedelta(seconds=after_start_s + 1)
        assert await reconciler.reconcile(later) == 1
        after = await rig.ticket(placed_call["call_sid"])
        await flaky.close()
    codes = [code for path, _, code in dialed.callbacks if path == "/twilio/status"]
    assert codes[-1] == 202  # the final one: accepted, not recorded
    assert before.outcome is None and before.status == TicketStatus.IN_PROGRESS
    assert (after.outcome, after.lifecycle.twilio_status, after.status) == (
        "no-answer",
        "no-answer",
        TicketStatus.COMPLETE,
    )
