"""Crash recovery across replicas: leases in the database, dead replicas' tickets taken over once.

Runs on SQLite and on PostgreSQL (the `database_url` fixture of tests/test_store.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from callbot.adapters.spool import Spool
from callbot.adapters.store_engine import create_engine
from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.adapters.ticket_summariser_openai import OpenAITicketSummariser
from callbot.core.leases import REPLICA_LOST, LeasePolicy, LeaseState
from callbot.core.record import CallRecord
from callbot.core.ticket import TicketStatus
from callbot.core.ticket_views import TicketFilters
from callbot.errors import StoreUnavailable
from callbot.ticketing import TicketService
from tests.e2e_helpers import fake_ticket_model
from tests.test_store import database_url, make_record, summary

__all__ = ["database_url"]  # the fixture, re-used

LEASE = timedelta(seconds=30)


async def _stores(url: str, *names: str) -> list[SqlTicketStore]:
    return [await SqlTicketStore.open(url, replica_id=name) for name in names]


@pytest.fixture
async def migrated(database_url: str) -> str:
    await upgrade_database(database_url)
    return database_url


async def test_only_in_progress_tickets_of_expired_replicas_are_claimed(migrated: str) -> None:
    dead, live, claimer = await _stores(migrated, "dead", "live", "claimer")
    now = datetime.now(UTC)
    try:
        await dead.renew_lease("dead", now - 2 * LEASE)
        await live.renew_lease("live", now)
        await claimer.renew_lease("claimer", now)
        await dead.upsert_call(
            make_record("CAdead1", ended=False, lines=("My order is 771", "Let me look")),
            TicketStatus.IN_PROGRESS,
        )
        await dead.upsert_call(make_record("CAdead2"), TicketStatus.PENDING_SUMMARY)
        await dead.upsert_call(make_record("CAdead3"), TicketStatus.PENDING_SUMMARY)
        await dead.complete("CAdead3", summary("done"))
        await live.upsert_call(make_record("CAlive", ended=False), TicketStatus.IN_PROGRESS)
        await claimer.upsert_call(make_record("CAmine", ended=False), TicketStatus.IN_PROGRESS)

        claimed = await claimer.claim_lost_tickets("claimer", now - LEASE, now)
        assert [v.call_sid for v in claimed] == ["CAdead1"]
        [view] = claimed
        assert view.status == TicketStatus.PENDING_SUMMARY.value
        assert view.end_reason == REPLICA_LOST
        assert [e.text for e in view.transcript] == ["My order is 771", "Let me look"]
        assert view.item.ended_at is not None  # the last checkpoint's time
        assert await claimer.claim_lost_tickets("claimer", now - LEASE, now) == []  # once only
        others = {
            sid: await claimer.get_by_call_sid(sid) for sid in ("CAdead2", "CAdead3", "CAlive", "CAmine")
        }
        assert {sid: v.status for sid, v in others.items() if v is not None} == {
            "CAdead2": "pending_summary",
            "CAdead3": "complete",
            "CAlive": "in_progress",
            "CAmine": "in_progress",
        }
        # The dead replica's lease row goes once it owns nothing unfinished; live ones stay.
        assert await claimer.forget_dead_replicas(now - LEASE) == 1
        assert await claimer.claim_lost_tickets("claimer", now - LEASE, now) == []
    finally:
        for s in (dead, live, claimer):
            await s.close()


async def test_owner_without_a_lease_row_is_lost_once_its_last_save_is_older_than_the_lease(
    migrated: str,
) -> None:
    gone, claimer = await _stores(migrated, "gone", "claimer")
    try:
        await gone.upsert_call(make_record("CAgone", ended=False), TicketStatus.IN_PROGRESS)
        now = datetime.now(UTC)
        assert await claimer.claim_lost_tickets("claimer", now - LEASE, now) == []  # saved just now
        later = now + 2 * LEASE
        [view] = await claimer.claim_lost_tickets("claimer", later - LEASE, later)
        assert view.call_sid == "CAgone" and view.end_reason == REPLICA_LOST
    finally:
        await gone.close()
        await claimer.close()


async def test_two_replicas_racing_for_a_dead_replicas_tickets_take_each_exactly_once(
    migrated: str,
) -> None:
    dead, b, c = await _stores(migrated, "dead", "b", "c")
    now = datetime.now(UTC)
    sids = [f"CArace{i:03d}" for i in range(60)]
    try:
        await dead.renew_lease("dead", now - 2 * LEASE)
        for sid in sids:
            await dead.upsert_call(make_record(sid, ended=False), TicketStatus.IN_PROGRESS)

        async def claim_all(store: SqlTicketStore, name: str) -> list[str]:
            got: list[str] = []
            while True:
                views = await store.claim_lost_tickets(name, now - LEASE, now, limit=7)
                if not views:
                    return got
                got += [v.call_sid for v in views]
                await asyncio.sleep(0)

        got_b, got_c = await asyncio.gather(claim_all(b, "b"), claim_all(c, "c"))
        assert sorted(got_b + got_c) == sids  # every ticket taken, none twice
        assert not set(got_b) & set(got_c)
        page = await b.list(TicketFilters(), 1, 500)
        assert page.total == len(sids)
        assert {t.status for t in page.items} == {"pending_summary"}
    finally:
        for s in (dead, b, c):
            await s.close()


async def test_the_calls_final_record_arriving_late_replaces_the_replica_lost_ticket_once(
    migrated: str,
) -> None:
    owner, claimer = await _stores(migrated, "owner", "claimer")
    now = datetime.now(UTC)
    try:
        await owner.renew_lease("owner", now - 2 * LEASE)
        await owner.upsert_call(make_record("CAlate", ended=False, lines=("one",)), TicketStatus.IN_PROGRESS)
        [view] = await claimer.claim_lost_tickets("claimer", now - LEASE, now)
        await claimer.complete("CAlate", summary("from the checkpoint"))
        # A progress save from the cut-off owner does not reopen it ...
        await owner.upsert_call(
            make_record("CAlate", ended=False, lines=("one", "two")), TicketStatus.IN_PROGRESS
        )
        ticket = await claimer.get_by_call_sid("CAlate")
        assert ticket is not None and ticket.status == "complete" and len(ticket.transcript) == 1
        # ... its final record (at hang-up, or flushed from its spool after a restart) does, once.
        final = make_record("CAlate", lines=("one", "two", "three"))
        assert await owner.upsert_call(final, TicketStatus.PENDING_SUMMARY) == view.id
        ticket = await claimer.get_by_call_sid("CAlate")
        assert ticket is not None and ticket.status == "pending_summary"
        assert ticket.end_reason == "caller hung up" and len(ticket.transcript) == 3
        await owner.complete("CAlate", summary("the whole call"))
        assert await owner.upsert_call(final, TicketStatus.PENDING_SUMMARY) == view.id
        ticket = await claimer.get_by_call_sid("CAlate")
        assert ticket is not None and ticket.status == "complete" and ticket.item.title == "the whole call"
        assert (await claimer.list(TicketFilters(), 1, 10)).total == 1
    finally:
        await owner.close()
        await claimer.close()


# ----- the service: heartbeats, claims and summaries -----


async def test_a_live_replica_finishes_a_dead_replicas_call_and_the_returning_spool_adds_no_duplicate(
    migrated: str, tmp_path: Path
) -> None:
    policy = LeasePolicy(lease_ms=30_000, heartbeat_ms=10_000)
    async with fake_ticket_model() as summariser:
        a_store, b_store = await _stores(migrated, "a", "b")
        spool = Spool(tmp_path / "spool-a")
        a = TicketService(a_store, summariser, spool, timeout_s=5.0)
        b = TicketService(b_store, summariser, Spool(tmp_path / "spool-b"), timeout_s=5.0)
        try:
            t0 = int(datetime.now(UTC).timestamp() * 1000)
            a_state, b_state = LeaseState(policy), LeaseState(policy)
            assert await a.lease_pass(a_store, "a", a_state, t0) == 0
            assert await b.lease_pass(b_store, "b", b_state, t0) == 0
            record = make_record("CAkill", ended=False, lines=("My order is 771", "Checking"))
            await a.call_started(record)
            await a.drain()
            # A is SIGKILLed here: it renews no more. B keeps renewing; within the lease nothing moves.
            for t in (t0 + 10_000, t0 + 20_000, t0 + 30_000):
                assert await b.lease_pass(b_store, "b", b_state, t) == 0
            assert await b.lease_pass(b_store, "b", b_state, t0 + 40_000) == 1
            await b.drain()
            ticket = await b_store.get_by_call_sid("CAkill")
            assert ticket is not None and ticket.status == "complete"
            assert ticket.end_reason == REPLICA_LOST
            assert [e.text for e in ticket.transcript] == ["My order is 771", "Checking"]
            assert await b.lease_pass(b_store, "b", b_state, t0 + 50_000) == 0  # exactly once

            # A had spooled the call's end before it died; restarted, it flushes: one ticket, whole.
            spool.put(make_record("CAkill", lines=("My order is 771", "Checking", "Done, bye")))
            a2 = TicketService(await SqlTicketStore.open(migrated, replica_id="a2"), summariser, spool)
            assert await a2.flush_spool() == 1
            assert await a2.retry_pending() == 1
            page = await b_store.list(TicketFilters(), 1, 10)
            assert page.total == 1
            ticket = await b_store.get_by_call_sid("CAkill")
            assert ticket is not None and ticket.status == "complete" and len(ticket.transcript) == 3
            assert ticket.end_reason == "caller hung up"
            await a2.aclose()
        finally:
            await a_store.close()
            await b_store.close()


# ----- findings of the fault soak (bench/fault_soak.py), each fixed -----


class FlakyStore(SqlTicketStore):
    """A real store whose writes can be switched off, as when the database link is cut."""

    down = False

    async def upsert_call(self, record: CallRecord, status: TicketStatus | str) -> int:
        if self.down:
            raise StoreUnavailable("link cut (test)")
        return await super().upsert_call(record, status)


class CountingNotifier:
    def __init__(self) -> None:
        self.delivered: list[str] = []

    async def deliver(self, ticket: dict[str, Any]) -> bool:
        self.delivered.append(str(ticket["call_sid"]))
        return True

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def summariser() -> AsyncIterator[OpenAITicketSummariser]:
    async with fake_ticket_model() as model:
        yield model


async def test_a_replica_killed_during_a_database_outage_leaves_its_calls_in_the_spool(
    tmp_path: Path, summariser: OpenAITicketSummariser
) -> None:
    # Found by the soak: a call that started while the database was cut, on a replica then
    # SIGKILLed, had no ticket anywhere. Its checkpoints now go to the spool meanwhile.
    url = f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    await upgrade_database(url)
    spool = Spool(tmp_path / "spool")
    store = FlakyStore(create_engine(url), replica_id="a")
    store.down = True
    dead = TicketService(store, summariser, spool, timeout_s=5.0, start_wait_s=1.0)
    await dead.call_started(make_record("CAout", ended=False, lines=("My order is 771",)))
    await dead.call_progress(make_record("CAout", ended=False, lines=("My order is 771", "Checking")))
    await dead.drain()
    [item] = spool.items()
    assert item.record.ended_at is None and len(item.record.transcript) == 2
    # The process is gone (SIGKILL: nothing else runs). Its restart flushes the spool.
    restarted_store = await SqlTicketStore.open(url, replica_id="a2")
    restarted = TicketService(restarted_store, summariser, spool, timeout_s=5.0)
    try:
        assert await restarted.flush_spool() == 1
        assert await restarted.retry_pending() == 1
        ticket = await restarted_store.get_by_call_sid("CAout")
        assert ticket is not None and ticket.status == "complete"
        assert ticket.end_reason == REPLICA_LOST
        assert [e.text for e in ticket.transcript] == ["My order is 771", "Checking"]
        assert spool.items() == []
    finally:
        await restarted.aclose()
        await restarted_store.close()
        await store.close()


async def test_a_live_calls_spooled_checkpoint_never_overwrites_a_newer_save(
    tmp_path: Path, summariser: OpenAITicketSummariser
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    await upgrade_database(url)
    spool = Spool(tmp_path / "spool")
    store = FlakyStore(create_engine(url), replica_id="a")
    service = TicketService(store, summariser, spool, timeout_s=5.0, start_wait_s=1.0)
    try:
        store.down = True
        await service.call_started(make_record("CAlive", ended=False, lines=("one",)))
        await service.drain()
        assert len(spool.items()) == 1
        store.down = False
        assert await service.flush_spool() == 0  # the call is live here: its own saves decide
        await service.call_progress(make_record("CAlive", ended=False, lines=("one", "two")))
        await service.drain()
        assert spool.items() == []  # the database has a newer checkpoint: the spooled one goes
        assert await service.call_ended(make_record("CAlive", lines=("one", "two", "three"))) is not None
        ticket = await store.get_by_call_sid("CAlive")
        assert ticket is not None and ticket.status == "complete" and len(ticket.transcript) == 3
        assert ticket.end_reason == "caller hung up"
    finally:
        await service.aclose()
        await store.close()


async def test_replicas_retrying_the_same_pending_ticket_announce_it_once(
    migrated: str, tmp_path: Path, summariser: OpenAITicketSummariser
) -> None:
    # Found by the soak: every replica retries every pending ticket; both summaries "won"
    # in the service's eyes and the webhook heard of the ticket twice.
    notifier = CountingNotifier()
    stores = await _stores(migrated, "a", "b")
    services = [
        TicketService(s, summariser, Spool(tmp_path / s.replica_id), notifier, timeout_s=5.0)  # type: ignore[arg-type]
        for s in stores
    ]
    try:
        for i in range(10):
            await stores[0].upsert_call(make_record(f"CAp{i}"), TicketStatus.PENDING_SUMMARY)
        await asyncio.gather(*(s.retry_pending() for s in services))
        for s in services:
            await s.drain()
        assert sorted(notifier.delivered) == [f"CAp{i}" for i in range(10)]
        page = await stores[1].list(TicketFilters(status="complete"), 1, 50)
        assert page.total == 10
    finally:
        for svc in services:
            await svc.drain()
        for st in stores:
            await st.close()


class FlakyNotifier(CountingNotifier):
    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    async def deliver(self, ticket: dict[str, Any]) -> bool:
        if self.failing:
            return False
        return await super().deliver(ticket)


async def test_a_webhook_cut_short_is_sent_again_by_one_replica_until_it_is_taken(
    migrated: str, tmp_path: Path, summariser: OpenAITicketSummariser
) -> None:
    # Found by the soak: 4 of 996 complete tickets never reached the webhook (its delivery was
    # in memory only: skipped during a database cut, or killed with its replica).
    notifier = FlakyNotifier()
    stores = await _stores(migrated, "a", "b")
    services = [
        TicketService(
            s,
            summariser,
            Spool(tmp_path / str(s.replica_id)),
            notifier,
            timeout_s=5.0,
            webhook_redeliver_s=0.2,
        )
        for s in stores
    ]
    try:
        ticket_id = await services[0].call_ended(make_record("CAhook"))
        await services[0].drain()
        assert ticket_id is not None and notifier.delivered == []  # the receiver was down
        assert await services[1].redeliver_webhooks() == 0  # not due yet
        notifier.failing = False
        await asyncio.sleep(0.3)
        sent = await asyncio.gather(*(s.redeliver_webhooks() for s in services))
        assert sorted(sent) == [0, 1]  # one replica took it
        assert notifier.delivered == ["CAhook"]
        await asyncio.sleep(0.3)
        assert [await s.redeliver_webhooks() for s in services] == [0, 0]  # taken: owed no more
        assert notifier.delivered == ["CAhook"]
    finally:
        for svc in services:
            await svc.drain()
        for st in stores:
            await st.close()


async def test_without_a_webhook_no_ticket_is_owed_to_one(migrated: str, tmp_path: Path) -> None:
    [store] = await _stores(migrated, "a")
    try:
        await store.upsert_call(make_record("CAnone"), TicketStatus.PENDING_SUMMARY)
        _, first = await store.complete_first("CAnone", summary("x"))
        assert first
        far = datetime.now(UTC) + timedelta(days=1)
        assert await store.webhooks_due(far, far) == []
    finally:
        await store.close()


class FlakyAfterSendStore(SqlTicketStore):
    down_after_send = True

    async def webhook_sent(self, ticket_id: int) -> None:
        if self.down_after_send:
            raise StoreUnavailable("link cut (test)")
        await super().webhook_sent(ticket_id)


async def test_a_webhook_taken_while_the_database_is_down_is_recorded_later_not_resent(
    migrated: str, tmp_path: Path, summariser: OpenAITicketSummariser
) -> None:
    notifier = CountingNotifier()
    store = FlakyAfterSendStore(create_engine(migrated), replica_id="a")
    service = TicketService(
        store, summariser, Spool(tmp_path / "s"), notifier, timeout_s=5.0, webhook_redeliver_s=0.2
    )
    try:
        assert await service.call_ended(make_record("CAonce")) is not None
        await service.drain()
        assert notifier.delivered == ["CAonce"]
        await asyncio.sleep(0.3)
        assert await service.redeliver_webhooks() == 0  # still down: nothing recorded, nothing resent
        store.down_after_send = False
        assert await service.redeliver_webhooks() == 0  # recorded first, so it is not due
        await asyncio.sleep(0.3)
        assert await service.redeliver_webhooks() == 0
        assert notifier.delivered == ["CAonce"]
    finally:
        await service.drain()
        await store.close()


class SlowStore(SqlTicketStore):
    """A real store whose progress saves wait for a gate, as when the database is slow."""

    gate: asyncio.Event

    async def upsert_call(self, record: CallRecord, status: TicketStatus | str) -> int:
        await self.gate.wait()
        return await super().upsert_call(record, status)


async def test_a_checkpoint_the_database_is_slow_to_take_is_on_disk_meanwhile(
    tmp_path: Path, summariser: OpenAITicketSummariser
) -> None:
    # Found by the soak: calls begun on a replica whose saves took seconds (a loaded database
    # link) had no ticket anywhere when it was SIGKILLed before the database answered.
    url = f"sqlite+aiosqlite:///{tmp_path / 't.db'}"
    await upgrade_database(url)
    spool = Spool(tmp_path / "spool")
    store = SlowStore(create_engine(url), replica_id="a")
    store.gate = asyncio.Event()
    service = TicketService(store, summariser, spool, timeout_s=5.0, start_wait_s=0.5, spool_slow_save_s=0.05)
    try:
        await service.call_started(make_record("CAslow", ended=False, lines=("hello",)))
        [item] = spool.items()  # the save is still waiting: the checkpoint is on disk already
        assert item.call_sid == "CAslow" and item.record.ended_at is None
        store.gate.set()
        await service.drain()
        assert spool.items() == []  # the database took it: the spooled copy is gone
        ticket = await store.get_by_call_sid("CAslow")
        assert ticket is not None and ticket.status == "in_progress"
    finally:
        store.gate.set()
        await service.drain()
        await store.close()
