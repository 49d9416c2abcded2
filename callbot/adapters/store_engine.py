"""The ticket store's database engine, and the planner's view of a query.

`create_engine` builds the async engine with per-backend settings (SQLite's pragmas, PostgreSQL's
pool and timeouts); `explain_plan` shows how the database would run a select. They stand apart
from the store itself (store_sql) because the migrations (store_migrate), the memory-lookup bench
and the plan tests need an engine or a plan without the store's queries.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool


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


async def explain_plan(conn: AsyncConnection, stmt: sa.Select[Any]) -> list[str]:
    """The planner's plan for `stmt` on this connection, one line per step (bench and plan test).

    `EXPLAIN QUERY PLAN` on SQLite (the detail column), `EXPLAIN` on PostgreSQL."""
    compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = tuple(compiled.params[name] for name in compiled.positiontup or ())
    if conn.dialect.name == "sqlite":
        rows = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)
        return [str(row[-1]) for row in rows]
    rows = await conn.exec_driver_sql(f"EXPLAIN {compiled}", params)
    return [str(row[0]).strip() for row in rows]
