"""Apply the ticket store's Alembic migrations from code (`callbot db upgrade`, server start-up).

The migrations live in the package (`callbot/migrations`), so an installed callbot needs no
alembic.ini in the working directory: the configuration is built here from the package path.
The migration runs on a connection of our own async engine, inside the caller's event loop.
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url

from callbot.adapters.store_sql import StoreUnavailable, create_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MIGRATION_LOCK_KEY = 0x6361_6C6C_626F_74  # "callbot": an arbitrary, fixed advisory-lock id


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would eat a '%' in a URL-encoded password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision this release ships."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


async def upgrade_database(database_url: str, revision: str = "head") -> str | None:
    """Bring the schema to `revision`; return the revision the database is at afterwards."""
    _ensure_sqlite_directory(database_url)
    config = alembic_config(database_url)
    engine = create_engine(database_url)

    def upgrade(connection: Connection) -> str | None:
        if connection.dialect.name == "postgresql":
            # Several server processes may start at once; one migrates, the others wait and
            # then find nothing left to do. The lock ends with the transaction.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        return MigrationContext.configure(connection).get_current_revision()

    try:
        async with _sqlite_migration_lock(database_url), engine.begin() as conn:
            return await conn.run_sync(upgrade)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(f"could not migrate the ticket database: {exc}") from exc
    finally:
        await engine.dispose()


@asynccontextmanager
async def _sqlite_migration_lock(database_url: str) -> AsyncIterator[None]:
    """Serialise migrations of one SQLite file across processes (and within this one).

    SQLite's driver runs DDL outside a transaction, so two processes starting together would
    both see an empty database and both create the table. A lock file beside the database
    makes the second wait and then find the schema in place.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        yield
        return
    lock_path = Path(str(url.database)).expanduser().with_suffix(".migrate-lock")
    with open(lock_path, "a+b") as lock_file:
        await asyncio.to_thread(fcntl.flock, lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def upgrade_database_sync(database_url: str, revision: str = "head") -> str | None:
    """`upgrade_database` for callers without an event loop (CLI, deployment scripts)."""
    return asyncio.run(upgrade_database(database_url, revision))


async def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or None before the first upgrade."""
    engine = create_engine(database_url)

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(f"could not read the ticket database's revision: {exc}") from exc
    finally:
        await engine.dispose()


def _ensure_sqlite_directory(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(str(url.database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
