"""Tickets in SQLite or PostgreSQL through SQLAlchemy's asyncio engine.

The store speaks to one outside system, the database, and turns every driver or SQLAlchemy
failure into `StoreUnavailable` here, so callers (the ticket service, the review pages) handle
one exception and decide what a missing database means for them: spool, retry, or a 503 page.

It never creates tables: the schema belongs to the Alembic migrations (`callbot db upgrade`),
so two processes can never race to create a different table than the migration would.

The engine is built in `store_engine`; the row mapping and the query pieces over the table that
the store runs are plain functions in `store_rows`.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from callbot.adapters.store_engine import create_engine
from callbot.adapters.store_models import replicas, tickets
from callbot.adapters.store_rows import (
    LIST_COLUMNS,
    calls_of,
    complete_values,
    earlier_calls_statement,
    lifecycle,
    list_item,
    record_values,
    view,
    where,
    with_outcome,
)
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
from callbot.core.record import CallInfo, CallRecord
from callbot.core.ticket import (
    FINAL_STATUSES,
    STATUS_RANK,
    StructuredSummary,
    TicketStatus,
    summary_from_dict,
)
from callbot.core.ticket_views import TicketFilters, TicketPage, TicketView
from callbot.errors import StoreUnavailable, TicketNotFound

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
        values = record_values(record)
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
        values = complete_values(summary, _now())
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
        values = complete_values(summary, _now())
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
        values = record_values(record)
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
        values = record_values(CallRecord(info=info, started_at=arrived_at))
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
                fresh = record_values(CallRecord(info=info, started_at=now))
                insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
                await conn.execute(
                    insert(tickets)
                    .values(**fresh, status=TicketStatus.IN_PROGRESS.value, created_at=now, updated_at=now)
                    .on_conflict_do_nothing(index_elements=[tickets.c.call_sid])
                )
                row = dict((await conn.execute(stmt)).mappings().one())
            life = change(lifecycle(row))
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
                values["search_text"] = with_outcome(row["search_text"], row["outcome"], outcome)
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
            result = await conn.execute(sa.delete(tickets).where(calls_of(number)))
            return int(result.rowcount or 0)

        return await self._run(work)

    async def count_number(self, number: str) -> int:
        """How many tickets `purge_number` would delete."""

        async def work(conn: AsyncConnection) -> int:
            stmt = sa.select(sa.func.count()).select_from(tickets).where(calls_of(number))
            return int(await conn.scalar(stmt) or 0)

        return await self._run(work)

    # ----- reads -----

    async def get(self, ticket_id: int) -> TicketView | None:
        return await self._get_one(tickets.c.id == ticket_id)

    async def get_by_call_sid(self, call_sid: str) -> TicketView | None:
        return await self._get_one(tickets.c.call_sid == call_sid)

    async def _get_one(self, condition: sa.ColumnElement[bool]) -> TicketView | None:
        async def work(conn: AsyncConnection) -> Mapping[str, Any] | None:
            row = (await conn.execute(sa.select(tickets).where(condition))).mappings().first()
            return dict(row) if row is not None else None

        row = await self._run(work)
        return view(row) if row is not None else None

    async def list(self, filters: TicketFilters, page: int = 1, page_size: int = 50) -> TicketPage:
        """One page of tickets, newest call first."""
        page = max(1, page)
        page_size = min(max(1, page_size), MAX_PAGE_SIZE)
        conditions = where(filters)

        async def work(conn: AsyncConnection) -> tuple[int, builtins.list[Mapping[str, Any]]]:
            total = await conn.scalar(sa.select(sa.func.count()).select_from(tickets).where(*conditions))
            stmt = (
                sa.select(*LIST_COLUMNS)
                .where(*conditions)
                .order_by(tickets.c.started_at.desc(), tickets.c.id.desc())
                .limit(page_size)
                .offset((page - 1) * page_size)
            )
            rows = (await conn.execute(stmt)).mappings().all()
            return int(total or 0), [dict(r) for r in rows]

        total, rows = await self._run(work)
        return TicketPage(items=[list_item(r) for r in rows], total=total, page=page, page_size=page_size)

    async def calls(self, filters: TicketFilters, limit: int = MAX_STATS_CALLS) -> builtins.list[TicketView]:
        """Whole tickets of the calls `filters` select, oldest first, for the dashboard's figures
        (computed in callbot.core.stats from these rows); at most `limit` of the newest."""
        conditions = where(filters)

        async def work(conn: AsyncConnection) -> builtins.list[Mapping[str, Any]]:
            stmt = (
                sa.select(tickets)
                .where(*conditions)
                .order_by(tickets.c.started_at.desc(), tickets.c.id.desc())
                .limit(max(1, limit))
            )
            return [dict(r) for r in (await conn.execute(stmt)).mappings().all()]

        return [view(r) for r in reversed(await self._run(work))]

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

        return [view(r) for r in await self._run(work)]

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

        return [view(r) for r in await self._run(work)]

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
