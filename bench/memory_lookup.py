"""How long the returning caller's lookup takes at 10k and 1M tickets, on SQLite and PostgreSQL.

    python bench/memory_lookup.py [--sizes 10000,1000000] [--lookups 200] [--skip-postgres]

Builds a fresh database per size through the real migrations (so the indexes of migration 0004
are the ones measured), fills it with generated tickets in bulk (the database generates the rows
itself: a recursive CTE on SQLite, generate_series on PostgreSQL), then times
the real `SqlTicketStore.earlier_calls` for random numbers that have history, the way a call start
does, and prints the plan of the statement it issues (`earlier_calls_statement`).
Not part of the test run; the figures are in the README ("Returning callers").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from callbot.adapters.store_engine import explain_plan
from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_rows import earlier_calls_statement
from callbot.adapters.store_sql import SqlTicketStore

PG_URL = os.environ.get("CALLBOT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
NOW = datetime(2026, 12, 7, tzinfo=UTC)
plans: list[str] = []
WITHOUT_INDEX = False
CALLS_PER_NUMBER = 10
"""Each generated number has called this many times, over the last 90 days."""

SUMMARY = (
    '{"title": "Router drops the connection", "summary": "s", "caller_request": "Fix the router", '
    '"outcome": "Technician booked", "category": "technical", "priority": "normal", '
    '"sentiment": "neutral", "action_items": [{"description": "Visit Tuesday", "owner": null, '
    '"due": null}], "facts": [], "follow_up_needed": true, "language": "en"}'
)

# One row per n: number n % numbers, started n minutes-ish apart over 90 days, all complete;
# every fifth is an outbound call placed to the number (callbot's number is From), so the
# lookup's both halves (the calls the number made, the calls placed to it) find rows.
_COLUMNS = (
    "call_sid, direction, from_number, to_number, started_at, status, summary, title, transcript, "
    "in_call_summaries, created_at, updated_at"
)
_BOT = "'+15559870000'"


def _sqlite_fill(n: int, numbers: int) -> str:
    return f"""
    WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i + 1 < {n})
    INSERT INTO tickets ({_COLUMNS})
    SELECT 'CA' || i, CASE WHEN i % 5 = 0 THEN 'outbound' ELSE 'inbound' END,
           CASE WHEN i % 5 = 0 THEN {_BOT} ELSE '+1555' || printf('%07d', i % {numbers}) END,
           CASE WHEN i % 5 = 0 THEN '+1555' || printf('%07d', i % {numbers}) ELSE {_BOT} END,
           datetime('{NOW:%Y-%m-%d %H:%M:%S}', '-' || ((i * 7919) % 129600) || ' minutes'),
           'complete', json('{SUMMARY}'), 'Router drops the connection', '[]', '[]',
           datetime('now'), datetime('now')
    FROM seq
    """


def _pg_fill(n: int, numbers: int) -> str:
    return f"""
    INSERT INTO tickets ({_COLUMNS})
    SELECT 'CA' || i, CASE WHEN i % 5 = 0 THEN 'outbound' ELSE 'inbound' END,
           CASE WHEN i % 5 = 0 THEN {_BOT} ELSE '+1555' || lpad((i % {numbers})::text, 7, '0') END,
           CASE WHEN i % 5 = 0 THEN '+1555' || lpad((i % {numbers})::text, 7, '0') ELSE {_BOT} END,
           timestamptz '{NOW.isoformat()}' - ((i * 7919) % 129600) * interval '1 minute',
           'complete', '{SUMMARY}'::jsonb, 'Router drops the connection', '[]', '[]', now(), now()
    FROM generate_series(0::bigint, {n - 1}) AS i
    """


async def _fill(url: str, n: int) -> float:
    numbers = max(1, n // CALLS_PER_NUMBER)
    started = time.perf_counter()
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            fill = _pg_fill if conn.dialect.name == "postgresql" else _sqlite_fill
            await conn.execute(sa.text(fill(n, numbers)))
            await conn.execute(sa.text("ANALYZE"))
    finally:
        await engine.dispose()
    return time.perf_counter() - started


async def _plan(url: str) -> str:
    """The planner's plan for the statement `SqlTicketStore.earlier_calls` issues (built by the
    store's own `earlier_calls_statement`, so it cannot drift from the real lookup)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            stmt = earlier_calls_statement("+15550000042", NOW - timedelta(days=30), 3)
            return " / ".join(await explain_plan(conn, stmt))
    finally:
        await engine.dispose()


async def _measure(url: str, n: int, lookups: int) -> tuple[float, float, float, int]:
    numbers = max(1, n // CALLS_PER_NUMBER)
    store = await SqlTicketStore.open(url)
    rng = random.Random(17)
    times = []
    found = 0
    try:
        await store.earlier_calls("+15550000000", NOW - timedelta(days=30), 3)  # warm the pool
        for _ in range(lookups):
            number = f"+1555{rng.randrange(numbers):07d}"
            t0 = time.perf_counter()
            calls = await store.earlier_calls(number, NOW - timedelta(days=30), 3)
            times.append((time.perf_counter() - t0) * 1000)
            found += len(calls)
    finally:
        await store.close()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return statistics.median(times), p99, max(times), found


async def _drop_index(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("DROP INDEX ix_tickets_from_number_started_at"))
            await conn.execute(sa.text("DROP INDEX ix_tickets_to_number_started_at"))
    finally:
        await engine.dispose()


async def _run_one(label: str, url: str, n: int, lookups: int) -> None:
    await upgrade_database(url)
    fill_s = await _fill(url, n)
    if WITHOUT_INDEX:
        await _drop_index(url)
        label += " without the 0004 indexes"
    p50, p99, worst, found = await _measure(url, n, lookups)
    plans.append(f"{label} {n:,}: {await _plan(url)}")
    print(
        f"| {label} | {n:,} | {fill_s:.1f} s | {p50:.2f} ms | {p99:.2f} ms | {worst:.2f} ms | "
        f"{found / lookups:.1f} |",
        flush=True,
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="10000,1000000", help="ticket counts, comma separated")
    parser.add_argument("--lookups", type=int, default=200, help="lookups timed per database and size")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--without-index", action="store_true", help="drop the lookup's two indexes first, for comparison"
    )
    args = parser.parse_args()
    global WITHOUT_INDEX
    WITHOUT_INDEX = args.without_index
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()} on {platform.platform()}")  # fmt: skip
    print("| database | tickets | bulk insert | lookup p50 | p99 | max | calls found |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            await _run_one("SQLite", f"sqlite+aiosqlite:///{Path(tmp) / f'bench{n}.db'}", n, args.lookups)
    if args.skip_postgres:
        print("\n".join(["", "query plans:", *plans]))
        return 0
    admin_dsn = PG_URL.replace("+asyncpg", "")
    for n in sizes:
        name = f"callbot_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(admin_dsn, timeout=5)
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            await _run_one("PostgreSQL", PG_URL.rsplit("/", 1)[0] + "/" + name, n, args.lookups)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    print("\n".join(["", "query plans:", *plans]))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
