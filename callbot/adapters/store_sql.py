"""Tickets in SQLite or PostgreSQL through SQLAlchemy's asyncio engine.

The store speaks to one outside system, the database, and turns every driver or SQLAlchemy
failure into `StoreUnavailable` here, so callers (the ticket service, the review pages) handle
one exception and decide what a missing database means for them: spool, retry, or a 503 page.

It never creates tables: the schema belongs to the Alembic migrations (`callbot db upgrade`),
so two processes can never race to create a different table than the migration would.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from callbot.adapters.store_models import replicas, tickets
from callbot.core.call_control import FINAL_CALL_STATUSES
from callbot.core.call_lifecycle import (
    NO_MEDIA_STREAM,
    Lifecycle,
    PlacedCall,
    StatusUpdate,
    call_outcome,
    merge_status,
)
from callbot.core.leases import REPLICA_LOST
from callbot.core.memory import EarlierCall, earlier_call
from callbot.core.record import TRANSFERRED_PREFIX, CallInfo, CallRecord, UsageTotals
from callbot.core.record_json import (
    entry_from_json,
    entry_to_json,
    response_usage_to_json,
    response_usages_from_json,
    summary_event_from_json,
    summary_event_to_json,
    tool_call_from_json,
    tool_call_to_json,
)
from callbot.core.ticket import (
    FINAL_STATUSES,
    STATUS_RANK,
    StructuredSummary,
    TicketStatus,
    summary_from_dict,
    transcript_as_text,
)
from callbot.core.ticket_views import TicketFilters, TicketListItem, TicketPage, TicketView
from callbot.errors import RecordJsonError, StoreUnavailable, TicketNotFound

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_PAGE_SIZE = 500
MAX_STATS_CALLS = 20_000
MAX_ERROR_CHARS = 2000
ABANDONED_AFTER_S = 2 * 3600.0
LIFECYCLE_ATTEMPTS = 20
_LIFECYCLE_GUARD = (
    "status", "stream_sid", "duration_s", "twilio_status", "twilio_sequence", "twilio_duration_s",
    "answered_by", "voicemail_left", "outcome", "search_text",
)  # fmt: skip


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    hint = ""
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        hint = " (the schema is missing: run `callbot db upgrade`)"
    return f"{type(orig).__name__}: {text[:300]}{hint}"


class SqlTicketStore:
    """Ticket rows keyed by call sid; writes are idempotent so retries and duplicates are safe."""

    def __init__(
        self, engine: AsyncEngine, *, op_timeout_s: float = 10.0, replica_id: str | None = None
    ) -> None:
        self._engine = engine
        self._op_timeout_s = op_timeout_s
        self._closed = False
        self.replica_id = replica_id
        """Stamped on the tickets this process saves (`owner_replica`); None for the CLI."""

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        connect_timeout_s: float = 5.0,
        op_timeout_s: float = 10.0,
        replica_id: str | None = None,
    ) -> SqlTicketStore:
        """An engine for `sqlite+aiosqlite:///...` or `postgresql+asyncpg://...` (no I/O yet)."""
        return cls(
            create_engine(database_url, connect_timeout_s=connect_timeout_s),
            op_timeout_s=op_timeout_s,
            replica_id=replica_id,
        )

    async def close(self) -> None:
        self._closed = True
        await self._engine.dispose()

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def _run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run `work` in one transaction, translating every database failure at this boundary."""
        if self._closed:
            raise StoreUnavailable("the ticket store is closed")
        try:
            async with asyncio.timeout(self._op_timeout_s), self._engine.begin() as conn:
                return await work(conn)
        except TimeoutError as exc:
            raise StoreUnavailable(f"database did not answer within {self._op_timeout_s:g} s") from exc
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(_describe(exc)) from exc

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers and the schema is in place."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(sa.select(tickets.c.id).limit(1))

        await self._run(work)

    # ----- writes -----

    async def upsert_call(self, record: CallRecord, status: TicketStatus | str) -> int:
        """Create or update the call's ticket from its record; return the ticket id.

        Never moves a ticket back: a late progress save cannot reopen a ticket whose call
        ended, and nothing here touches a complete ticket, with one exception. A ticket another
        replica finished as `replica lost` (from the transcript checkpointed so far) takes the
        call's final record when it turns up after all (its replica was cut off, not dead, or its
        spool is flushed after a restart): the ticket goes back to `pending_summary` with the
        whole transcript and is summarised again. Its end reason is then the real one, so that
        happens at most once per ticket.
        """
        status = TicketStatus(status)
        if status in FINAL_STATUSES:
            raise ValueError("upsert_call saves the call; use complete() to store the summary")
        values = _record_values(record)
        if self.replica_id is not None:
            values["owner_replica"] = self.replica_id
        now = _now()
        allowed_from = [s.value for s in TicketStatus if STATUS_RANK[s] <= STATUS_RANK[status]]
        may_update: sa.ColumnElement[bool] = tickets.c.status.in_(allowed_from)
        if status is TicketStatus.PENDING_SUMMARY and record.end_reason != REPLICA_LOST:
            may_update = sa.or_(may_update, tickets.c.end_reason == REPLICA_LOST)

        async def work(conn: AsyncConnection) -> int:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            new = insert(tickets).values(**values, status=status.value, created_at=now, updated_at=now)
            update = {name: new.excluded[name] for name in (*values, "status", "updated_at")}
            stmt = new.on_conflict_do_update(
                index_elements=[tickets.c.call_sid], set_=update, where=may_update
            ).returning(tickets.c.id)
            row = (await conn.execute(stmt)).first()
            if row is not None:
                return int(row[0])
            # The ticket exists but is further along: leave it as it is, report its id.
            found = await conn.scalar(
                sa.select(tickets.c.id).where(tickets.c.call_sid == record.info.call_sid)
            )
            if found is None:
                raise StoreUnavailable(f"ticket for call {record.info.call_sid} vanished during the save")
            return int(found)

        return await self._run(work)

    async def complete(self, call_sid: str, summary: StructuredSummary | Mapping[str, Any]) -> int:
        """Store the structured summary and mark the ticket complete (or `transferred`, when the
        agent handed the caller to a person); the first summary wins."""
        if not isinstance(summary, StructuredSummary):
            summary = summary_from_dict(summary)
        values = _complete_values(summary)
        return (await self._update_unfinished(call_sid, values))[0]

    async def complete_first(
        self,
        call_sid: str,
        summary: StructuredSummary | Mapping[str, Any],
        *,
        notify_after: datetime | None = None,
    ) -> tuple[int, bool]:
        """`complete`, and whether this call completed it (False: another summary was first).

        Several replicas retry the same pending tickets; only the one whose summary landed
        should announce the ticket (the webhook), or the receiver hears of it twice.
        `notify_after` records, in the same UPDATE, that the webhook is owed from then on
        (`webhooks_due` hands it out again until `webhook_sent` clears it)."""
        if not isinstance(summary, StructuredSummary):
            summary = summary_from_dict(summary)
        values = _complete_values(summary)
        if notify_after is not None:
            values["webhook_due_at"] = notify_after
        return await self._update_unfinished(call_sid, values)

    async def webhook_sent(self, ticket_id: int) -> None:
        """The ticket webhook took this ticket: it is owed no more."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(
                sa.update(tickets).where(tickets.c.id == ticket_id).values(webhook_due_at=None)
            )

        await self._run(work)

    async def webhooks_due(self, now: datetime, retry_at: datetime, limit: int = 50) -> builtins.list[int]:
        """Ids of complete tickets whose webhook is overdue (a delivery cut short by a crash or a
        database cut); each is pushed back to `retry_at` in the same UPDATE, so of several replicas
        asking at once only one gets it (FOR UPDATE SKIP LOCKED on PostgreSQL)."""
        due = sa.and_(
            tickets.c.webhook_due_at.is_not(None),
            tickets.c.webhook_due_at <= now,
            tickets.c.status == TicketStatus.COMPLETE.value,
        )

        async def work(conn: AsyncConnection) -> builtins.list[int]:
            candidates = sa.select(tickets.c.id).where(due).order_by(tickets.c.webhook_due_at).limit(limit)
            if conn.dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            stmt = (
                sa.update(tickets)
                .where(tickets.c.id.in_(candidates.scalar_subquery()), due)
                .values(webhook_due_at=retry_at)
                .returning(tickets.c.id)
            )
            return sorted(int(r[0]) for r in (await conn.execute(stmt)).all())

        return await self._run(work)

    async def mark_summary_failed(self, call_sid: str, error: str) -> int:
        """Count a failed summary attempt and keep its reason for the review page; the ticket id."""
        values = {
            "summary_attempts": tickets.c.summary_attempts + 1,
            "last_error": error[:MAX_ERROR_CHARS],
            "updated_at": _now(),
        }
        return (await self._update_unfinished(call_sid, values))[0]

    async def _update_unfinished(self, call_sid: str, values: dict[str, Any]) -> tuple[int, bool]:
        """Update the call's ticket unless it is already complete (the first summary wins); its
        id, and whether it was updated."""

        async def work(conn: AsyncConnection) -> tuple[int, bool]:
            stmt = (
                sa.update(tickets)
                .where(
                    tickets.c.call_sid == call_sid, tickets.c.status.not_in([s.value for s in FINAL_STATUSES])
                )
                .values(**values)
                .returning(tickets.c.id)
            )
            row = (await conn.execute(stmt)).first()
            if row is not None:
                return int(row[0]), True
            found = await conn.scalar(sa.select(tickets.c.id).where(tickets.c.call_sid == call_sid))
            if found is None:
                raise TicketNotFound(f"no ticket for call {call_sid}")
            return int(found), False

        return await self._run(work)

    # ----- the call's life (core/call_lifecycle.py) -----

    async def create_placed_call(self, info: CallInfo, placed: PlacedCall, started_at: datetime) -> int:
        """The ticket of a call callbot has just placed, before it rings; its id (idempotent)."""
        record = CallRecord(info=info, started_at=started_at)
        values = _record_values(record)
        now = _now()
        extra = {
            "placement_id": placed.placement_id,
            "instructions": placed.instructions,
            "call_context": dict(placed.context) if placed.context is not None else None,
            "twilio_status": "queued",
        }

        async def work(conn: AsyncConnection) -> int:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            stmt = insert(tickets).values(
                **values, **extra, status=TicketStatus.IN_PROGRESS.value, created_at=now, updated_at=now
            )
            # A status callback may have created the row first: the placement still goes on it.
            stmt = stmt.on_conflict_do_update(
                index_elements=[tickets.c.call_sid],
                set_={
                    name: stmt.excluded[name]
                    for name in ("placement_id", "instructions", "call_context", "direction")
                },
            )
            await conn.execute(stmt)
            found = await conn.scalar(sa.select(tickets.c.id).where(tickets.c.call_sid == info.call_sid))
            if found is None:
                raise StoreUnavailable(f"ticket for call {info.call_sid} vanished during the save")
            return int(found)

        return await self._run(work)

    async def record_arrival(self, info: CallInfo, arrived_at: datetime) -> int:
        """The `in_progress` ticket of an inbound call whose webhook is being answered, before
        its media stream starts: a replica killed in between leaves the call behind, owned by it
        (claimed like any of its calls), instead of nothing. A call that has a ticket already
        (Twilio asked again, or its stream's first save came first) keeps it as it is."""
        values = _record_values(CallRecord(info=info, started_at=arrived_at))
        if self.replica_id is not None:
            values["owner_replica"] = self.replica_id
        now = _now()

        async def work(conn: AsyncConnection) -> int:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            stmt = insert(tickets).values(
                **values, status=TicketStatus.IN_PROGRESS.value, created_at=now, updated_at=now
            )
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=[tickets.c.call_sid]))
            found = await conn.scalar(sa.select(tickets.c.id).where(tickets.c.call_sid == info.call_sid))
            if found is None:
                raise StoreUnavailable(f"ticket for call {info.call_sid} vanished during the save")
            return int(found)

        return await self._run(work)

    async def finish_streamless(
        self,
        *,
        started_before: datetime | None = None,
        call_sids: Sequence[str] = (),
        limit: int = 200,
    ) -> builtins.list[int]:
        """Complete, without a summary, the inbound tickets whose media stream never started:
        those still `in_progress` that started before `started_before` (end reason
        `no media stream`), and those of `call_sids` (tickets claimed from a dead replica, which
        keep their `replica lost`). Nobody spoke, so there is nothing to summarise and nothing
        for caller memory. The ids of the tickets this call completed."""
        no_stream = sa.or_(tickets.c.stream_sid == "", tickets.c.stream_sid.is_(None))
        inbound = tickets.c.direction != "outbound"
        which: list[sa.ColumnElement[bool]] = []
        if started_before is not None:
            which.append(
                sa.and_(
                    tickets.c.status == TicketStatus.IN_PROGRESS.value, tickets.c.started_at < started_before
                )
            )
        if call_sids:
            unfinished = [TicketStatus.IN_PROGRESS.value, TicketStatus.PENDING_SUMMARY.value]
            which.append(sa.and_(tickets.c.call_sid.in_(list(call_sids)), tickets.c.status.in_(unfinished)))
        if not which:
            return []
        now = _now()

        async def work(conn: AsyncConnection) -> builtins.list[int]:
            candidates = (
                sa.select(tickets.c.id)
                .where(no_stream, inbound, sa.or_(*which))
                .order_by(tickets.c.id)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            stmt = (
                sa.update(tickets)
                .where(tickets.c.id.in_(candidates.scalar_subquery()), no_stream, sa.or_(*which))
                .values(
                    status=TicketStatus.COMPLETE.value,
                    ended_at=sa.func.coalesce(tickets.c.ended_at, now),
                    duration_s=0.0,
                    end_reason=sa.func.coalesce(sa.func.nullif(tickets.c.end_reason, ""), NO_MEDIA_STREAM),
                    title="Inbound call: no media stream",
                    updated_at=now,
                )
                .returning(tickets.c.id)
            )
            return [int(r[0]) for r in (await conn.execute(stmt)).all()]

        return await self._run(work)

    async def placed_call(self, call_sid: str) -> PlacedCall | None:
        """The placement of an outbound call (its id, instructions, context), or None."""

        async def work(conn: AsyncConnection) -> Mapping[str, Any] | None:
            stmt = sa.select(tickets.c.placement_id, tickets.c.instructions, tickets.c.call_context).where(
                tickets.c.call_sid == call_sid
            )
            row = (await conn.execute(stmt)).mappings().first()
            return dict(row) if row is not None else None

        row = await self._run(work)
        if row is None or not row["placement_id"]:
            return None
        return PlacedCall(row["placement_id"], row["instructions"] or "", row["call_context"])

    async def apply_status(self, update: StatusUpdate) -> int:
        """Fold a status callback into the call's ticket, creating the ticket if the call never
        reached the stream (busy, no answer, hung up while ringing); the ticket id."""
        return await self._change_lifecycle(update.call_sid, lambda life: merge_status(life, update), update)

    async def apply_amd(self, call_sid: str, answered_by: str, *, voicemail_left: bool = False) -> int:
        """Record the answering-machine result, and that a voicemail was left."""

        def change(life: Lifecycle) -> Lifecycle:
            return Lifecycle(
                twilio_status=life.twilio_status,
                sequence=life.sequence,
                duration_s=life.duration_s,
                answered_by=answered_by or life.answered_by,
                voicemail_left=life.voicemail_left or voicemail_left,
            )

        return await self._change_lifecycle(call_sid, change, None)

    async def refresh_outcome(self, call_sid: str) -> int | None:
        """Work the outcome out again (the stream has just ended); None if there is no ticket."""
        try:
            return await self._change_lifecycle(call_sid, lambda life: life, None)
        except TicketNotFound:
            return None

    async def calls_awaiting_status(
        self, stream_ended_before: datetime, placed_before: datetime, limit: int = 50
    ) -> builtins.list[str]:
        """The calls whose final status callback is overdue, oldest first: outbound calls (and
        inbound ones that get callbacks) with no outcome yet, whose stream ended before
        `stream_ended_before` or, never streamed, that began before `placed_before`. A callback
        lost on the way (callbot's database was down when it came) leaves such a ticket."""
        final = sorted(FINAL_CALL_STATUSES)
        streamed = sa.and_(
            tickets.c.stream_sid != "",
            tickets.c.ended_at.is_not(None),
            tickets.c.ended_at < stream_ended_before,
        )
        unstreamed = sa.and_(
            sa.or_(tickets.c.stream_sid == "", tickets.c.stream_sid.is_(None)),
            tickets.c.started_at < placed_before,
        )
        overdue = sa.and_(
            tickets.c.outcome.is_(None),
            sa.or_(tickets.c.twilio_status.is_(None), tickets.c.twilio_status.not_in(final)),
            sa.or_(tickets.c.direction == "outbound", tickets.c.twilio_status.is_not(None)),
            sa.or_(streamed, unstreamed),
        )

        async def work(conn: AsyncConnection) -> builtins.list[str]:
            stmt = sa.select(tickets.c.call_sid).where(overdue).order_by(tickets.c.started_at).limit(limit)
            return [str(sid) for sid in (await conn.scalars(stmt)).all()]

        return await self._run(work)

    async def _change_lifecycle(
        self, call_sid: str, change: Callable[[Lifecycle], Lifecycle], create: StatusUpdate | None
    ) -> int:
        """Read the row, fold the change in (core/call_lifecycle.py), write it back only if nobody
        changed what was read meanwhile, else read again: callbacks and the stream's own saves
        arrive concurrently, and SQLite's reads take no lock."""
        for _attempt in range(LIFECYCLE_ATTEMPTS):
            ticket_id = await self._try_change_lifecycle(call_sid, change, create)
            if ticket_id is not None:
                return ticket_id
        raise StoreUnavailable(f"call {call_sid}: its ticket kept changing; lifecycle update gave up")

    async def _try_change_lifecycle(
        self, call_sid: str, change: Callable[[Lifecycle], Lifecycle], create: StatusUpdate | None
    ) -> int | None:
        async def work(conn: AsyncConnection) -> int | None:
            stmt = sa.select(tickets).where(tickets.c.call_sid == call_sid)
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update()
            found = (await conn.execute(stmt)).mappings().first()
            row: dict[str, Any] | None = dict(found) if found is not None else None
            now = _now()
            if row is None:
                if create is None:
                    raise TicketNotFound(f"no ticket for call {call_sid}")
                info = CallInfo(
                    call_sid=call_sid,
                    stream_sid="",
                    from_number=create.from_number,
                    to_number=create.to_number,
                    direction=create.direction,
                )
                fresh = _record_values(CallRecord(info=info, started_at=now))
                insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
                await conn.execute(
                    insert(tickets)
                    .values(**fresh, status=TicketStatus.IN_PROGRESS.value, created_at=now, updated_at=now)
                    .on_conflict_do_nothing(index_elements=[tickets.c.call_sid])
                )
                row = dict((await conn.execute(stmt)).mappings().one())
            life = change(_lifecycle(row))
            stream_started = bool(row["stream_sid"])
            outcome = call_outcome(life, stream_started=stream_started, stream_s=row["duration_s"])
            values: dict[str, Any] = {
                "twilio_status": life.twilio_status,
                "twilio_sequence": life.sequence,
                "twilio_duration_s": life.duration_s,
                "answered_by": life.answered_by,
                "voicemail_left": life.voicemail_left,
                "outcome": outcome,
                "updated_at": now,
            }
            if outcome is not None and not stream_started and row["status"] == TicketStatus.IN_PROGRESS.value:
                # Nobody spoke: there is nothing to summarise, the ticket is complete as it stands.
                values.update(
                    status=TicketStatus.COMPLETE.value,
                    ended_at=now,
                    duration_s=0.0,
                    title=f"{row['direction'].capitalize()} call: {outcome}"[:300],
                )
            if outcome is not None:
                values["search_text"] = _with_outcome(row["search_text"], row["outcome"], outcome)
            unchanged = [
                tickets.c[name].is_(None) if row[name] is None else tickets.c[name] == row[name]
                for name in _LIFECYCLE_GUARD
            ]
            write = sa.update(tickets).where(tickets.c.id == row["id"], *unchanged).values(**values)
            updated = await conn.execute(write)
            return int(row["id"]) if updated.rowcount == 1 else None

        return await self._run(work)

    # ----- returning callers (core/memory.py) -----

    async def earlier_calls(self, number: str, since: datetime, limit: int) -> builtins.list[EarlierCall]:
        """The number's complete, not forgotten tickets started at or after `since`, newest first.

        The number's calls are its inbound calls (it was `From`) and the outbound calls placed to
        it (it was `To`), whichever way the new call goes. A transferred call has its summary too
        and counts. The statement is `earlier_calls_statement`: one index range per direction, so
        it reads a handful of rows whatever the table's size (bench/memory_lookup.py)."""

        async def work(conn: AsyncConnection) -> builtins.list[Mapping[str, Any]]:
            stmt = earlier_calls_statement(number, since, limit)
            return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]

        calls = []
        for row in await self._run(work):
            if isinstance(row["summary"], dict):
                call = earlier_call(int(row["id"]), row["started_at"], row["summary"])
                if call is not None:
                    calls.append(call)
        return calls

    async def forget(self, ticket_id: int) -> bool:
        """Exclude a ticket from every later call's memory; False when there is no such ticket."""

        async def work(conn: AsyncConnection) -> bool:
            stmt = (
                sa.update(tickets)
                .where(tickets.c.id == ticket_id)
                .values(memory_excluded=True, updated_at=_now())
                .returning(tickets.c.id)
            )
            return (await conn.execute(stmt)).first() is not None

        return await self._run(work)

    async def purge_number(self, number: str) -> int:
        """Delete every ticket of calls from or placed to `number` (its whole history); how many."""

        async def work(conn: AsyncConnection) -> int:
            result = await conn.execute(sa.delete(tickets).where(_calls_of(number)))
            return int(result.rowcount or 0)

        return await self._run(work)

    async def count_number(self, number: str) -> int:
        """How many tickets `purge_number` would delete."""

        async def work(conn: AsyncConnection) -> int:
            stmt = sa.select(sa.func.count()).select_from(tickets).where(_calls_of(number))
            return int(await conn.scalar(stmt) or 0)

        return await self._run(work)

    # ----- reads -----

    async def get(self, ticket_id: int) -> TicketView | None:
        return await self._get_one(tickets.c.id == ticket_id)

    async def get_by_call_sid(self, call_sid: str) -> TicketView | None:
        return await self._get_one(tickets.c.call_sid == call_sid)

    async def _get_one(self, where: sa.ColumnElement[bool]) -> TicketView | None:
        async def work(conn: AsyncConnection) -> Mapping[str, Any] | None:
            row = (await conn.execute(sa.select(tickets).where(where))).mappings().first()
            return dict(row) if row is not None else None

        row = await self._run(work)
        return _view(row) if row is not None else None

    async def list(self, filters: TicketFilters, page: int = 1, page_size: int = 50) -> TicketPage:
        """One page of tickets, newest call first."""
        page = max(1, page)
        page_size = min(max(1, page_size), MAX_PAGE_SIZE)
        where = _where(filters)

        async def work(conn: AsyncConnection) -> tuple[int, builtins.list[Mapping[str, Any]]]:
            total = await conn.scalar(sa.select(sa.func.count()).select_from(tickets).where(*where))
            stmt = (
                sa.select(*_LIST_COLUMNS)
                .where(*where)
                .order_by(tickets.c.started_at.desc(), tickets.c.id.desc())
                .limit(page_size)
                .offset((page - 1) * page_size)
            )
            rows = (await conn.execute(stmt)).mappings().all()
            return int(total or 0), [dict(r) for r in rows]

        total, rows = await self._run(work)
        return TicketPage(items=[_list_item(r) for r in rows], total=total, page=page, page_size=page_size)

    async def calls(self, filters: TicketFilters, limit: int = MAX_STATS_CALLS) -> builtins.list[TicketView]:
        """Whole tickets of the calls `filters` select, oldest first, for the dashboard's figures
        (computed in callbot.core.stats from these rows); at most `limit` of the newest."""
        where = _where(filters)

        async def work(conn: AsyncConnection) -> builtins.list[Mapping[str, Any]]:
            stmt = (
                sa.select(tickets)
                .where(*where)
                .order_by(tickets.c.started_at.desc(), tickets.c.id.desc())
                .limit(max(1, limit))
            )
            return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]

        return [_view(r) for r in reversed(await self._run(work))]

    async def pending_summaries(
        self, limit: int = 50, *, abandoned_after_s: float | None = ABANDONED_AFTER_S
    ) -> builtins.list[TicketView]:
        """Ended calls still waiting for their summary, least recently tried first.

        Also calls abandoned mid-way: an `in_progress` ticket with no progress saved for
        `abandoned_after_s` belonged to a process that crashed (a live call saves after every
        turn, and a stream silent for seconds is hung up), so it is summarised as it stands.
        """
        waiting = tickets.c.status == TicketStatus.PENDING_SUMMARY.value
        if abandoned_after_s is not None:
            cutoff = _now() - timedelta(seconds=abandoned_after_s)
            abandoned = sa.and_(
                tickets.c.status == TicketStatus.IN_PROGRESS.value, tickets.c.updated_at < cutoff
            )
            waiting = sa.or_(waiting, abandoned)

        async def work(conn: AsyncConnection) -> builtins.list[Mapping[str, Any]]:
            stmt = sa.select(tickets).where(waiting).order_by(tickets.c.updated_at, tickets.c.id).limit(limit)
            return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]

        return [_view(r) for r in await self._run(work)]

    # ----- replica leases (callbot/core/leases.py holds the policy) -----

    async def renew_lease(self, replica_id: str, now: datetime) -> None:
        """Write this replica's heartbeat (creating its row on the first one)."""

        async def work(conn: AsyncConnection) -> None:
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            stmt = insert(replicas).values(replica_id=replica_id, started_at=now, heartbeat_at=now)
            stmt = stmt.on_conflict_do_update(
                index_elements=[replicas.c.replica_id], set_={"heartbeat_at": stmt.excluded.heartbeat_at}
            )
            await conn.execute(stmt)

        await self._run(work)

    async def release_lease(self, replica_id: str) -> None:
        """Forget this replica's lease (clean shutdown: its calls are all finished)."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(sa.delete(replicas).where(replicas.c.replica_id == replica_id))

        await self._run(work)

    async def claim_lost_tickets(
        self, replica_id: str, expired_before: datetime, now: datetime, limit: int = 50
    ) -> builtins.list[TicketView]:
        """Take over the `in_progress` tickets of replicas whose lease ran out before `expired_before`.

        Each is moved to `pending_summary` with the end reason `replica lost`, owned by
        `replica_id`, in one conditional UPDATE ... RETURNING: of several replicas racing for the
        same dead replica's tickets each ticket goes to exactly one. On PostgreSQL the candidate
        rows are locked with FOR UPDATE SKIP LOCKED, so a racer skips rows another is taking
        instead of waiting for them; the `status = 'in_progress'` condition decides on SQLite
        (one writer at a time) and on PostgreSQL alike. Tickets owned by a replica that has no
        lease row at all (its row was released, or written by an older release) count as lost too,
        once their last save is older than the lease.
        """
        in_progress = tickets.c.status == TicketStatus.IN_PROGRESS.value
        dead = sa.select(replicas.c.replica_id).where(replicas.c.heartbeat_at < expired_before)
        live = sa.select(replicas.c.replica_id).where(replicas.c.heartbeat_at >= expired_before)
        orphan = sa.or_(
            tickets.c.owner_replica.in_(dead),
            sa.and_(tickets.c.owner_replica.not_in(live), tickets.c.updated_at < expired_before),
        )
        lost = sa.and_(
            in_progress, tickets.c.owner_replica.is_not(None), tickets.c.owner_replica != replica_id, orphan
        )

        async def work(conn: AsyncConnection) -> builtins.list[Mapping[str, Any]]:
            candidates = sa.select(tickets.c.id).where(lost).order_by(tickets.c.id).limit(limit)
            if conn.dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            stmt = (
                sa.update(tickets)
                .where(tickets.c.id.in_(candidates.scalar_subquery()), in_progress)
                .values(
                    status=TicketStatus.PENDING_SUMMARY.value,
                    end_reason=REPLICA_LOST,
                    owner_replica=replica_id,
                    ended_at=sa.func.coalesce(tickets.c.ended_at, tickets.c.updated_at),
                    updated_at=now,
                )
                .returning(tickets.c.id)
            )
            ids = [int(r[0]) for r in (await conn.execute(stmt)).all()]
            if not ids:
                return []
            rows = await conn.execute(sa.select(tickets).where(tickets.c.id.in_(ids)).order_by(tickets.c.id))
            return [dict(r) for r in rows.mappings().all()]

        return [_view(r) for r in await self._run(work)]

    async def forget_dead_replicas(self, expired_before: datetime) -> int:
        """Delete lease rows expired before `expired_before` that own no unfinished call."""

        async def work(conn: AsyncConnection) -> int:
            busy = sa.select(tickets.c.owner_replica).where(
                tickets.c.status == TicketStatus.IN_PROGRESS.value, tickets.c.owner_replica.is_not(None)
            )
            stmt = sa.delete(replicas).where(
                replicas.c.heartbeat_at < expired_before, replicas.c.replica_id.not_in(busy)
            )
            return int((await conn.execute(stmt)).rowcount or 0)

        return await self._run(work)


# ----- engine -----


def create_engine(database_url: str, *, connect_timeout_s: float = 5.0) -> AsyncEngine:
    """An async engine with per-backend settings that keep a down database from hanging a call."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        memory = url.database in (None, "", ":memory:")
        engine = create_async_engine(
            url,
            connect_args={"timeout": 30},
            **({"poolclass": StaticPool} if memory else {}),
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if url.get_backend_name() == "postgresql":
        return create_async_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            pool_timeout=connect_timeout_s,
            connect_args={"timeout": connect_timeout_s},
        )
    raise ValueError(f"unsupported database URL {url.render_as_string(hide_password=True)!r}")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the review pages read while a call's ticket is written; busy_timeout makes
    # concurrent writers wait for each other instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# ----- row mapping -----


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _storable(value: Any) -> Any:
    """`value` with NUL and lone surrogates in its text as U+FFFD: PostgreSQL keeps NUL in no text
    or JSON, and a surrogate has no UTF-8 (a model's function call arguments, a tool's error or a
    transcript may hold either); without this such a ticket could never be saved."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value) if _UNSTORABLE.search(value) else value
    if isinstance(value, list):
        return [_storable(v) for v in value]
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    return value


def _record_values(record: CallRecord) -> dict[str, Any]:
    return {key: _storable(value) for key, value in _raw_record_values(record).items()}


def _raw_record_values(record: CallRecord) -> dict[str, Any]:
    info, usage = record.info, record.usage
    return {
        "call_sid": info.call_sid,
        "stream_sid": info.stream_sid,
        "account_sid": info.account_sid,
        "from_number": info.from_number,
        "to_number": info.to_number,
        "direction": info.direction,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "duration_s": record.duration_s,
        "end_reason": record.end_reason[:200],
        "realtime_model": record.realtime_model,
        "summary_model": record.summary_model,
        "responses": usage.responses,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "input_text_tokens": usage.input_text_tokens,
        "input_audio_tokens": usage.input_audio_tokens,
        "cached_tokens": usage.cached_tokens,
        "output_text_tokens": usage.output_text_tokens,
        "output_audio_tokens": usage.output_audio_tokens,
        "last_context_tokens": usage.last_context_tokens,
        "transcript": [entry_to_json(e) for e in record.transcript],
        "in_call_summaries": [summary_event_to_json(s) for s in record.summaries],
        "tool_calls": [tool_call_to_json(t) for t in record.tool_calls],
        "memory_ticket_ids": list(record.memory_ticket_ids),
        "response_usage": [response_usage_to_json(u) for u in record.response_usage],
        "search_text": "\n".join(
            [info.call_sid, info.from_number, info.to_number, transcript_as_text(record)]
        ).lower(),
    }


def _calls_of(number: str) -> sa.ColumnElement[bool]:
    """A phone number's calls: the ones it made (inbound, `From`) and the ones placed to it."""
    return sa.or_(
        sa.and_(tickets.c.from_number == number, tickets.c.direction != "outbound"),
        sa.and_(tickets.c.to_number == number, tickets.c.direction == "outbound"),
    )


def earlier_calls_statement(number: str, since: datetime, limit: int) -> sa.Select[Any]:
    """The select `SqlTicketStore.earlier_calls` issues (also what bench/memory_lookup.py explains).

    The same tickets as `_calls_of(number)` with the memory filters, but as two index ranges
    merged: the calls the number made walk `ix_tickets_from_number_started_at` and the calls
    placed to it walk `ix_tickets_to_number_started_at`, each backwards from `limit` newest,
    then the at most 2 * `limit` rows are merged and cut to `limit`. One `OR` of the two made
    SQLite walk `ix_tickets_started_at` over every ticket of the window instead (63 ms at 100k
    tickets, 147 ms at 300k). The two halves are disjoint (`direction` is outbound or not), so
    UNION ALL never counts a ticket twice."""
    remembered = (
        tickets.c.started_at >= since,
        tickets.c.status.in_([TicketStatus.COMPLETE.value, TicketStatus.TRANSFERRED.value]),
        tickets.c.memory_excluded.is_(False),
    )
    columns = (tickets.c.id, tickets.c.started_at, tickets.c.summary)
    newest = (tickets.c.started_at.desc(), tickets.c.id.desc())
    made = (
        sa.select(*columns)
        .where(tickets.c.from_number == number, tickets.c.direction != "outbound", *remembered)
        .order_by(*newest)
        .limit(limit)
        .subquery("made")
    )
    placed = (
        sa.select(*columns)
        .where(tickets.c.to_number == number, tickets.c.direction == "outbound", *remembered)
        .order_by(*newest)
        .limit(limit)
        .subquery("placed")
    )
    both = sa.union_all(sa.select(made), sa.select(placed)).subquery("calls")
    return sa.select(both).order_by(both.c.started_at.desc(), both.c.id.desc()).limit(limit)


async def explain_plan(conn: AsyncConnection, stmt: sa.Select[Any]) -> builtins.list[str]:
    """The planner's plan for `stmt` on this connection, one line per step (bench and plan test).

    `EXPLAIN QUERY PLAN` on SQLite (the detail column), `EXPLAIN` on PostgreSQL."""
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    if conn.dialect.name == "sqlite":
        rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)
        return [str(row[-1]) for row in rows]
    rows = await conn.exec_driver_sql(f"EXPLAIN {compiled}", params)
    return [str(row[0]).strip() for row in rows]


def _complete_values(summary: StructuredSummary) -> dict[str, Any]:
    """The columns a summary completes: `transferred` when the agent handed the caller to a person."""
    return {
        "status": sa.case(
            (tickets.c.end_reason.startswith(TRANSFERRED_PREFIX), TicketStatus.TRANSFERRED.value),
            else_=TicketStatus.COMPLETE.value,
        ),
        "summary": summary.to_dict(),
        "title": summary.title[:300],
        "category": summary.category[:32] or None,
        "priority": summary.priority[:16] or None,
        "sentiment": summary.sentiment[:16] or None,
        "follow_up_needed": summary.follow_up_needed,
        "summary_attempts": tickets.c.summary_attempts + 1,
        "last_error": None,
        "search_text": tickets.c.search_text + ("\n" + _summary_search_text(summary)),
        "updated_at": _now(),
    }


def _summary_search_text(summary: StructuredSummary) -> str:
    parts = [summary.title, summary.summary, summary.caller_request, summary.outcome]
    parts += [f"{f.label} {f.value}" for f in summary.facts]
    parts += [a.description for a in summary.action_items]
    return "\n".join(parts).lower()


def _where(filters: TicketFilters) -> builtins.list[sa.ColumnElement[bool]]:
    where: builtins.list[sa.ColumnElement[bool]] = []
    if filters.search:
        # Every word must appear somewhere: title, summary, transcript or phone numbers.
        for term in filters.search.lower().split()[:10]:
            where.append(tickets.c.search_text.contains(term, autoescape=True))
    if filters.status:
        where.append(tickets.c.status == filters.status)
    if filters.category:
        where.append(tickets.c.category == filters.category)
    if filters.priority:
        where.append(tickets.c.priority == filters.priority)
    if filters.since:
        where.append(tickets.c.started_at >= filters.since)
    if filters.until:
        where.append(tickets.c.started_at < filters.until)
    if filters.call_sid:
        where.append(tickets.c.call_sid == filters.call_sid)
    if filters.number:
        where.append(sa.or_(tickets.c.from_number == filters.number, tickets.c.to_number == filters.number))
    return where


_LIST_COLUMNS = [
    tickets.c[name]
    for name in (
        "id", "call_sid", "from_number", "to_number", "started_at", "ended_at", "duration_s", "status",
        "title", "category", "priority", "sentiment", "follow_up_needed", "summary", "summary_attempts",
        "last_error", "created_at", "updated_at", "memory_excluded",
    )
]  # fmt: skip


def _list_item(row: Mapping[str, Any]) -> TicketListItem:
    return TicketListItem(**{c.name: row[c.name] for c in _LIST_COLUMNS})


def _view(row: Mapping[str, Any]) -> TicketView:
    try:
        transcript = tuple(entry_from_json(e) for e in row["transcript"] or [])
        summaries = tuple(summary_event_from_json(s) for s in row["in_call_summaries"] or [])
        tool_calls = tuple(tool_call_from_json(t) for t in row["tool_calls"] or [])
        response_usage = response_usages_from_json(row.get("response_usage"))
    except RecordJsonError as exc:
        raise StoreUnavailable(f"ticket {row['id']} has an unreadable transcript: {exc}") from exc
    return TicketView(
        item=_list_item(row),
        stream_sid=row["stream_sid"],
        account_sid=row["account_sid"],
        end_reason=row["end_reason"],
        realtime_model=row["realtime_model"],
        summary_model=row["summary_model"],
        usage=UsageTotals(
            responses=row["responses"],
            input_tokens=row["input_tokens"],
            output_tokens=row["output_tokens"],
            input_text_tokens=row["input_text_tokens"],
            input_audio_tokens=row["input_audio_tokens"],
            cached_tokens=row["cached_tokens"],
            output_text_tokens=row["output_text_tokens"],
            output_audio_tokens=row["output_audio_tokens"],
            last_context_tokens=row["last_context_tokens"],
        ),
        transcript=transcript,
        summaries=summaries,
        direction=row.get("direction") or "inbound",
        lifecycle=_lifecycle(row),
        outcome=row.get("outcome"),
        instructions=row.get("instructions"),
        context=row.get("call_context"),
        tool_calls=tool_calls,
        memory_ticket_ids=tuple(i for i in row["memory_ticket_ids"] or [] if isinstance(i, int)),
        response_usage=response_usage,
    )


def _with_outcome(search_text: str, old: str | None, new: str) -> str:
    """The search text with `outcome:<new>` in it (searchable: "voicemail_left"), and not the old one."""
    if old and old != new:
        search_text = search_text.replace(f"\noutcome:{old}", "")
    marker = f"\noutcome:{new}"
    return search_text if marker in search_text else search_text + marker


def _lifecycle(row: Mapping[str, Any]) -> Lifecycle:
    return Lifecycle(
        twilio_status=row.get("twilio_status"),
        sequence=row.get("twilio_sequence"),
        duration_s=row.get("twilio_duration_s"),
        answered_by=row.get("answered_by"),
        voicemail_left=bool(row.get("voicemail_left")),
    )
