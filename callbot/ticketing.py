"""The post-call ticket service: what the call bridge calls at start, after each turn and at hang-up.

It ties the store, the summariser, the spool and the webhook together with one promise to the
bridge: nothing here raises into a call, and no call's record is lost. While the call runs, the
transcript so far is saved in the background (a crash mid-call still leaves a partial ticket).
At hang-up the final transcript is saved as `pending_summary`, the structured summary is asked
for under a deadline, and the ticket becomes `complete`. When the summary fails the ticket stays
pending and `retry_pending` tries again; when the database is down the record goes to the spool
on disk and `flush_spool` writes it once the database is back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from callbot.core.leases import REPLICA_LOST, LeasePolicy, LeaseState
from callbot.core.memory import (
    MemoryPolicy,
    MemorySeed,
    build_memory,
    lookup_number,
    rememberable_number,
    since,
)
from callbot.core.record import CallInfo, CallRecord
from callbot.core.ticket import (
    StructuredSummary,
    TicketStatus,
    compile_patterns,
    redact_record,
    redact_summary,
)
from callbot.core.ticket_views import TicketView
from callbot.errors import (
    SpoolError,
    StoreUnavailable,
    SummaryUnavailable,
    TicketNotFound,
    TicketSummaryInvalid,
)
from callbot.ports import (
    MemoryStore,
    ReplicaLeases,
    TicketNotifier,
    TicketSpool,
    TicketStore,
    TicketSummariser,
)

log = logging.getLogger(__name__)


class CallerMemoryService:
    """Implements `callbot.ports.CallerMemory`: the earlier calls of a returning caller's number.

    The policy (which numbers, how many calls, how many tokens) and the message are core code
    (core/memory.py); this only reads the store, under a short timeout so a slow database
    cannot hold the greeting back, and turns every failure into "no memory" and a log line.
    """

    def __init__(
        self,
        store: MemoryStore,
        policy: MemoryPolicy,
        redact_patterns: Sequence[str] = (),
        *,
        timeout_s: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._policy = policy
        self._patterns: list[re.Pattern[str]] = compile_patterns(redact_patterns)
        self._timeout_s = timeout_s
        self._clock = clock

    async def recall(self, info: CallInfo) -> MemorySeed | None:
        policy = self._policy
        if not policy.enabled:
            return None
        number = rememberable_number(lookup_number(info))
        if number is None:
            log.info("call %s: no memory for a withheld or invalid number", info.call_sid)
            return None
        now = self._clock()
        try:
            async with asyncio.timeout(self._timeout_s):
                calls = await self._store.earlier_calls(number, since(now, policy), policy.max_calls)
        except TimeoutError:
            log.warning(
                "call %s: memory lookup took over %g s; the call starts without it",
                info.call_sid,
                self._timeout_s,
            )
            return None
        except StoreUnavailable as exc:
            log.warning("call %s: memory lookup failed, the call starts without it: %s", info.call_sid, exc)
            return None
        seed = build_memory(calls, now, policy, self._patterns)
        if seed is not None:
            log.info(
                "call %s: seeded with %d earlier call(s): tickets %s (~%d tokens)",
                info.call_sid,
                len(seed.ticket_ids),
                ", ".join(map(str, seed.ticket_ids)),
                seed.tokens,
            )
        return seed


class TicketService:
    """Implements `callbot.ports.CallObserver` over the ticket ports; built by `callbot.compose`."""

    def __init__(
        self,
        store: TicketStore,
        summariser: TicketSummariser,
        spool: TicketSpool,
        webhook: TicketNotifier | None = None,
        redact_patterns: Sequence[str] = (),
        timeout_s: float = 60.0,
        *,
        start_wait_s: float = 2.0,
        retry_batch: int = 20,
        remember_calls: int = 10_000,
        webhook_redeliver_s: float = 60.0,
        spool_slow_save_s: float = 1.0,
        streamless_after_s: float | None = None,
    ) -> None:
        self._store = store
        self._summariser = summariser
        self._spool = spool
        self._webhook = webhook
        self._patterns: list[re.Pattern[str]] = compile_patterns(redact_patterns)
        self._timeout_s = timeout_s
        self._start_wait_s = start_wait_s
        self._retry_batch = retry_batch
        self._remember_calls = remember_calls
        self._webhook_redeliver_s = webhook_redeliver_s
        self._spool_slow_save_s = spool_slow_save_s
        self._streamless_after_s = streamless_after_s
        self._latest: dict[str, CallRecord] = {}  # newest unsaved progress per call
        self._savers: dict[str, asyncio.Task[None]] = {}  # the one progress writer per call
        self._endings: OrderedDict[str, asyncio.Task[int | None]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retry_lock = asyncio.Lock()
        self._live: set[str] = set()  # calls started here and not yet ended
        self._spooled_progress: set[str] = set()  # calls whose checkpoint sits in the spool
        self._sent_unrecorded: set[int] = set()  # webhooks taken while the database was down

    # ----- during the call -----

    async def call_started(self, record: CallRecord) -> None:
        """Create the call's `in_progress` ticket, waiting at most `start_wait_s` for the database."""
        self._live.add(record.info.call_sid)
        saver = self._queue_progress(record)
        if saver is not None:
            await asyncio.wait({saver}, timeout=self._start_wait_s)

    async def call_progress(self, record: CallRecord) -> None:
        """Remember the transcript so far; a background writer saves the newest one. Never blocks."""
        self._queue_progress(record)

    def _queue_progress(self, record: CallRecord) -> asyncio.Task[None] | None:
        call_sid = record.info.call_sid
        if call_sid in self._endings:
            return None  # the final save owns the ticket now
        self._latest[call_sid] = record
        saver = self._savers.get(call_sid)
        if saver is None:
            saver = self._spawn(self._save_progress(call_sid))
            self._savers[call_sid] = saver
        return saver

    async def _save_progress(self, call_sid: str) -> None:
        # One writer per call, always writing the newest record: saves can't land out of order.
        try:
            while (record := self._latest.pop(call_sid, None)) is not None:
                redacted = redact_record(record, self._patterns)
                save = asyncio.ensure_future(self._store.upsert_call(redacted, TicketStatus.IN_PROGRESS))
                done, _ = await asyncio.wait({save}, timeout=self._spool_slow_save_s)
                if not done:
                    # The database is slow to answer: the checkpoint goes to disk meanwhile, so
                    # a replica killed before the answer still leaves the call behind.
                    await self._spool_checkpoint(redacted)
                try:
                    await save
                except StoreUnavailable as exc:
                    log.warning(
                        "call %s: transcript not saved yet, database unavailable (checkpoint spooled): %s",
                        call_sid,
                        exc,
                    )
                    if done:
                        await self._spool_checkpoint(redacted)
                else:
                    await self._drop_spooled_checkpoint(call_sid)
        finally:
            self._savers.pop(call_sid, None)

    async def _spool_checkpoint(self, record: CallRecord) -> None:
        """Keep the transcript so far on disk while the database is down: a replica killed
        during an outage then still leaves its calls behind, in the spool it is restarted on."""
        call_sid = record.info.call_sid
        if call_sid in self._endings:
            return  # the final save owns the spool file now
        if await self._put_spool(record, None):
            self._spooled_progress.add(call_sid)

    async def _drop_spooled_checkpoint(self, call_sid: str) -> None:
        """The database has a newer checkpoint (or the final record): the spooled one must go,
        or a flush would write the older transcript over it."""
        if call_sid in self._spooled_progress:
            self._spooled_progress.discard(call_sid)
            try:
                await asyncio.to_thread(self._spool.remove, call_sid)
            except OSError as exc:
                log.warning("call %s: stale spooled checkpoint not removed: %s", call_sid, exc)

    # ----- at hang-up -----

    async def call_ended(self, record: CallRecord) -> int | None:
        """Save the final ticket and summarise it; the ticket id, or None if it went to the spool.

        Idempotent per call sid: duplicate stop/close events share the first one's work and
        result. Never raises; the work goes on even if the caller is cancelled (see `drain`).
        """
        call_sid = record.info.call_sid
        task = self._endings.get(call_sid)
        if task is None:
            task = self._spawn(self._finish(record))
            self._endings[call_sid] = task
            self._forget_old_endings()
        return await asyncio.shield(task)

    async def _finish(self, record: CallRecord) -> int | None:
        call_sid = record.info.call_sid
        try:
            self._latest.pop(call_sid, None)
            saver = self._savers.get(call_sid)
            if saver is not None:
                await asyncio.wait({saver}, timeout=self._start_wait_s)
            record = redact_record(record, self._patterns)
            try:
                await self._store.upsert_call(record, TicketStatus.PENDING_SUMMARY)
            except StoreUnavailable as exc:
                log.warning(
                    "call %s: database unavailable at hang-up, spooling the ticket: %s", call_sid, exc
                )
                self._spooled_progress.discard(call_sid)  # the final record replaces it on disk
                await self._finish_offline(record)
                return None
            await self._drop_spooled_checkpoint(call_sid)
            outcome = await self._summarise(record)
            return await self._store_outcome(call_sid, outcome, record)
        except Exception:
            log.exception("call %s: ticket could not be finished", call_sid)
            return None
        finally:
            self._live.discard(call_sid)

    async def _finish_offline(self, record: CallRecord) -> None:
        """Spool the record first (durability), then once more with its summary if one comes."""
        if not await self._put_spool(record, None):
            return None
        outcome = await self._summarise(record)
        if isinstance(outcome, StructuredSummary):
            await self._put_spool(record, outcome.to_dict())
        return None

    async def _store_outcome(
        self, call_sid: str, outcome: StructuredSummary | str, record: CallRecord | None
    ) -> int | None:
        """Write a summary (or its failure) for a ticket already in the database."""
        try:
            if isinstance(outcome, StructuredSummary):
                ticket_id, first = await self._store.complete_first(
                    call_sid, outcome, notify_after=self._notify_after()
                )
                if first:
                    self._notify(ticket_id)
                return ticket_id
            log.warning("call %s: ticket summary failed, will retry: %s", call_sid, outcome)
            return await self._store.mark_summary_failed(call_sid, outcome)
        except StoreUnavailable as exc:
            if record is None:
                log.warning(
                    "call %s: database unavailable, summary kept for the next retry: %s", call_sid, exc
                )
                return None
            log.warning("call %s: database went away after hang-up, spooling the ticket: %s", call_sid, exc)
            summary = outcome.to_dict() if isinstance(outcome, StructuredSummary) else None
            await self._put_spool(record, summary)
            return None

    async def _summarise(self, record: CallRecord) -> StructuredSummary | str:
        """The redacted summary, or why there is none (for the ticket's last_error)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                summary = await self._summariser.summarise(record)
            return redact_summary(summary, self._patterns)
        except TimeoutError:
            return f"ticket summary timed out after {self._timeout_s:g} s"
        except (SummaryUnavailable, TicketSummaryInvalid) as exc:
            return str(exc) or type(exc).__name__
        except Exception as exc:
            log.exception("call %s: ticket summariser failed unexpectedly", record.info.call_sid)
            return f"summariser error: {type(exc).__name__}: {exc}"

    async def _put_spool(self, record: CallRecord, summary: dict[str, Any] | None) -> bool:
        try:
            await asyncio.to_thread(self._spool.put, record, summary)
            return True
        except SpoolError:
            log.critical(
                "call %s: ticket LOST: database and spool both unavailable",
                record.info.call_sid,
                exc_info=True,
            )
            return False

    def _notify_after(self) -> datetime | None:
        """When a ticket completed now is owed to the webhook, if there is one: after the
        in-memory delivery (with its own retries) has had its chance."""
        if self._webhook is None:
            return None
        return _as_datetime(_wall_ms() + int(self._webhook_redeliver_s * 1000))

    def _notify(self, ticket_id: int) -> None:
        if self._webhook is not None:
            self._spawn(self._deliver_webhook(self._webhook, ticket_id))

    async def _deliver_webhook(self, webhook: TicketNotifier, ticket_id: int) -> bool:
        try:
            view = await self._store.get(ticket_id)
        except StoreUnavailable:
            log.warning("ticket %s: webhook postponed, database unavailable", ticket_id, exc_info=True)
            return False
        if view is None:
            return False
        if not await webhook.deliver(view.to_json()):
            return False
        try:
            await self._store.webhook_sent(ticket_id)
        except StoreUnavailable:
            # Remembered here and recorded by the maintenance loop; only a crash before then
            # makes the receiver see the ticket twice (at least once, never lost).
            log.warning("ticket %s: webhook sent, not recorded yet: database unavailable", ticket_id)
            self._sent_unrecorded.add(ticket_id)
        return True

    async def redeliver_webhooks(self) -> int:
        """Send the webhooks still owed (a delivery cut short by a crash, a database cut or a
        receiver down for longer than the retries); the number delivered."""
        webhook = self._webhook
        if webhook is None:
            return 0
        for ticket_id in sorted(self._sent_unrecorded):
            try:
                await self._store.webhook_sent(ticket_id)
            except StoreUnavailable as exc:
                log.warning("sent ticket webhooks not recorded yet, database unavailable: %s", exc)
                return 0
            self._sent_unrecorded.discard(ticket_id)
        now = _wall_ms()
        try:
            due = await self._store.webhooks_due(
                _as_datetime(now), _as_datetime(now + int(self._webhook_redeliver_s * 1000))
            )
        except StoreUnavailable as exc:
            log.warning("owed ticket webhooks not sent, database unavailable: %s", exc)
            return 0
        sent = 0
        for ticket_id in due:
            if await self._deliver_webhook(webhook, ticket_id):
                sent += 1
        return sent

    # ----- recovery -----

    async def retry_pending(self) -> int:
        """Summarise tickets left pending (failed summaries, calls from before a restart)."""
        async with self._retry_lock:
            try:
                views = await self._store.pending_summaries(self._retry_batch)
            except StoreUnavailable as exc:
                log.warning("pending ticket summaries not retried, database unavailable: %s", exc)
                return 0
            completed = 0
            for view in views:
                if not self._is_ending(view.call_sid) and await self.retry_ticket(view):
                    completed += 1
            return completed

    async def retry_ticket(self, view: TicketView) -> bool:
        """Summarise one pending ticket now; True if it is complete afterwards.

        An inbound call whose stream never started (its replica died between the webhook and
        the stream) is completed as it stands: nobody spoke, there is nothing to summarise."""
        if not view.stream_sid and not view.transcript and view.direction != "outbound":
            try:
                return bool(await self._store.finish_streamless(call_sids=[view.call_sid]))
            except StoreUnavailable as exc:
                log.warning("call %s: ticket left pending, database unavailable: %s", view.call_sid, exc)
                return False
        outcome = await self._summarise(view.to_record())
        ticket_id = await self._store_outcome(view.call_sid, outcome, None)
        return isinstance(outcome, StructuredSummary) and ticket_id is not None

    async def flush_spool(self) -> int:
        """Write spooled tickets to the database; stops at the first sign it is still down.

        A spooled checkpoint (a call's transcript so far, `ended_at` unset) of a call still live
        here waits for that call's own next save; one of a call this process does not carry
        belonged to a process that died mid-call (this one, before a restart): it is written
        as ended, with the reason "replica lost", and summarised like any pending ticket.
        """
        written = 0
        for item in await asyncio.to_thread(self._spool.items):
            if self._is_ending(item.call_sid):
                continue  # its call_ended is still writing it
            record = item.record
            if record.ended_at is None:
                if item.call_sid in self._live:
                    continue
                record = replace(record, end_reason=record.end_reason or REPLICA_LOST)
            try:
                ticket_id = await self._store.upsert_call(record, TicketStatus.PENDING_SUMMARY)
                if item.summary is not None:
                    try:
                        ticket_id, first = await self._store.complete_first(
                            item.call_sid, item.summary, notify_after=self._notify_after()
                        )
                        if first:
                            self._notify(ticket_id)
                    except (TicketSummaryInvalid, TicketNotFound) as exc:
                        log.warning("call %s: spooled summary unusable, left pending: %s", item.call_sid, exc)
            except StoreUnavailable as exc:
                log.info("spool not flushed, database still unavailable: %s", exc)
                break
            await asyncio.to_thread(self._spool.remove, item.call_sid)
            log.info("call %s: spooled ticket written as ticket %s", item.call_sid, ticket_id)
            written += 1
        return written

    async def run_background(self, interval_s: float) -> None:
        """Flush the spool and retry pending summaries every `interval_s` until cancelled."""
        while True:
            try:
                await self.flush_spool()
                await self.retry_pending()
                await self.redeliver_webhooks()
                await self.finish_streamless()
            except Exception:
                log.exception("ticket maintenance pass failed; trying again in %g s", interval_s)
            await asyncio.sleep(interval_s)

    async def finish_streamless(self, now: datetime | None = None) -> int:
        """Complete the tickets of inbound calls whose webhook was answered (web/twilio_routes.py
        writes the ticket then) but whose media stream never started, once their stream token
        has run out (`streamless_after_s` before `now`); how many. No summary: nobody spoke."""
        if self._streamless_after_s is None:
            return 0
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self._streamless_after_s)
        try:
            done = await self._store.finish_streamless(started_before=cutoff)
        except StoreUnavailable as exc:
            log.warning("tickets of calls without a media stream not finished, database unavailable: %s", exc)
            return 0
        if done:
            log.info("finished %d ticket(s) of calls whose media stream never started", len(done))
        return len(done)

    # ----- replica leases: a dead replica's calls are finished here -----

    async def run_leases(
        self,
        leases: ReplicaLeases,
        replica_id: str,
        policy: LeasePolicy,
        *,
        clock_ms: Callable[[], int] | None = None,
        claim_batch: int = 50,
    ) -> None:
        """Renew this replica's lease every heartbeat and finish the tickets of dead replicas.

        Runs until cancelled. Whether a claim may happen is `LeaseState.may_claim` (the core);
        the claim itself is one atomic UPDATE in the store, so racing replicas never both take
        a ticket. Claimed tickets are summarised at once from their last checkpoint.
        """
        now_ms = clock_ms or _wall_ms
        state = LeaseState(policy)
        while True:
            try:
                await self.lease_pass(leases, replica_id, state, now_ms(), claim_batch=claim_batch)
            except Exception:
                # The loop must outlive any one failure: a replica without it would look dead.
                log.exception("replica lease pass failed; trying again in %d ms", policy.heartbeat_ms)
            await asyncio.sleep(state.next_beat_in_ms(now_ms()) / 1000 or policy.heartbeat_ms / 1000)

    async def lease_pass(
        self,
        leases: ReplicaLeases,
        replica_id: str,
        state: LeaseState,
        now_ms: int,
        *,
        claim_batch: int = 50,
    ) -> int:
        """One heartbeat: renew the lease, then (when the policy allows) claim and finish the
        tickets of replicas whose lease expired; the number of tickets claimed."""
        try:
            await leases.renew_lease(replica_id, _as_datetime(now_ms))
        except StoreUnavailable as exc:
            state.renewal_failed(now_ms)
            log.warning("replica %s: lease not renewed, database unavailable: %s", replica_id, exc)
            return 0
        state.renewed(now_ms)
        if not state.may_claim(now_ms):
            return 0
        expired_before = _as_datetime(state.policy.expired_before_ms(now_ms))
        try:
            views = await leases.claim_lost_tickets(
                replica_id, expired_before, _as_datetime(now_ms), claim_batch
            )
            if not views:
                await leases.forget_dead_replicas(expired_before)
        except StoreUnavailable as exc:
            log.warning("replica %s: lost tickets not claimed, database unavailable: %s", replica_id, exc)
            return 0
        for view in views:
            log.warning(
                "call %s: its replica stopped renewing its lease; finishing ticket %s from the "
                "transcript saved so far (%d turns)",
                view.call_sid,
                view.id,
                len(view.transcript),
            )
        if views:
            # Summarised in the background: the next heartbeat must not wait for the model.
            self._spawn(self._finish_claimed(views))
        return len(views)

    async def _finish_claimed(self, views: Sequence[TicketView]) -> None:
        async with self._retry_lock:
            for view in views:
                if not self._is_ending(view.call_sid):
                    await self.retry_ticket(view)

    async def drain(self) -> None:
        """Wait for every save, summary and webhook in flight (graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Drain, then close the webhook's HTTP client (the store belongs to the caller)."""
        await self.drain()
        if self._webhook is not None:
            await self._webhook.aclose()

    # ----- bookkeeping -----

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _is_ending(self, call_sid: str) -> bool:
        task = self._endings.get(call_sid)
        return task is not None and not task.done()

    def _forget_old_endings(self) -> None:
        # Finished calls are remembered so late duplicates get the same answer, within a bound.
        while len(self._endings) > self._remember_calls:
            oldest_sid, oldest = next(iter(self._endings.items()))
            if not oldest.done():
                break
            del self._endings[oldest_sid]


def _wall_ms() -> int:
    # Leases are compared across processes (and hosts), so they are wall-clock times.
    return int(time.time() * 1000)


def _as_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
