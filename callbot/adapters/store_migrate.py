"""Apply the ticket store's Alembic migrations from code (`callbot db upgrade`, server start-up).

The migrations live in the package (`callbot/migrations`), so an installed callbot needs no
alembic.ini in the working directory: the configuration is built here from the package path.
The migration runs on a connection of our own async engine, inside the caller's event loop.

Alembic (with Mako and Pygments) is imported only when a migration actually runs: at server start
`upgrade_if_needed` first reads the database's revision with plain SQLAlchemy and compares it with
the newest revision shipped in `callbot/migrations/versions`, so a server restarting on an
up-to-date database never loads it (about 11 MB of the idle server's RSS).
"""

from __future__ import annotations

import ast
import asyncio
import fcntl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url

from callbot.adapters.store_engine import create_engine
from callbot.errors import StoreUnavailable

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
MIGRATION_LOCK_KEY = 0x6361_6C6C_626F_74  # "callbot": an arbitrary, fixed advisory-lock id
VERSION_TABLE = "alembic_version"  # alembic's default, which callbot's env.py keeps


def alembic_config(database_url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would eat a '%' in a URL-encoded password.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision this release ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


async def upgrade_database(database_url: str, revision: str = "head") -> str | None:
    """Bring the schema to `revision`; return the revision the database is at afterwards."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

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
    lock_path = await asyncio.to_thread(_lock_path, str(url.database))
    with await asyncio.to_thread(open, lock_path, "a+b") as lock_file:
        await asyncio.to_thread(fcntl.flock, lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _lock_path(database: str) -> Path:
    """The lock file beside an SQLite database (`~` expanded: that may read the password database)."""
    return Path(database).expanduser().with_suffix(".migrate-lock")


def _file_exists(database: str) -> bool:
    return Path(database).expanduser().exists()


def upgrade_database_sync(database_url: str, revision: str = "head") -> str | None:
    """`upgrade_database` for callers without an event loop (CLI, deployment scripts)."""
    return asyncio.run(upgrade_database(database_url, revision))


async def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or None before the first upgrade."""
    from alembic.runtime.migration import MigrationContext

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


@cache
def shipped_head() -> str:
    """The newest revision in `callbot/migrations/versions`, read without alembic: the revision
    that no other names as its `down_revision` (callbot's history is one line, no branches)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
                continue
            target, value = node.targets[0], node.value
            if not (isinstance(target, ast.Name) and isinstance(value, ast.Constant)):
                continue
            if target.id == "revision" and isinstance(value.value, str):
                revisions.add(value.value)
            elif target.id == "down_revision" and isinstance(value.value, str):
                parents.add(value.value)
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"expected one head revision in {MIGRATIONS_DIR}, found {sorted(heads)}")
    return heads.pop()


async def recorded_revision(database_url: str) -> str | None:
    """The revision in the database's version table, read with SQLAlchemy alone (None if absent)."""
    url = make_url(database_url)
    local_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if local_file and not await asyncio.to_thread(_file_exists, str(url.database)):
        return None  # asking would create an empty file; the upgrade makes its directory first
    engine = create_engine(database_url)

    def read(connection: Connection) -> str | None:
        if not sa.inspect(connection).has_table(VERSION_TABLE):
            return None
        rows = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
        return str(rows[0]) if len(rows) == 1 else None

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        raise StoreUnavailable(f"could not read the ticket database's revision: {exc}") from exc
    finally:
        await engine.dispose()


async def upgrade_if_needed(database_url: str) -> str | None:
    """Server start-up: upgrade only when the database is behind this release (then alembic loads)."""
    if await recorded_revision(database_url) == shipped_head():
        return shipped_head()
    return await upgrade_database(database_url)
