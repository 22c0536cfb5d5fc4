"""Connecting to the store: URL handling, SQLite pragmas, migrations.

Users give one URL: `sqlite:///path/to/fleet.db` (the default) or
`postgresql://user:pass@host/db`. The hub talks to it through SQLAlchemy's
asyncio extension (aiosqlite / psycopg 3); Alembic migrates it with the
matching synchronous driver before the hub serves.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from hub.store import alembic_log

alembic_log.quiet()  # before Alembic is imported: it logs "setup plugin ..." at INFO on import

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from sqlalchemy import create_engine, event  # noqa: E402
from sqlalchemy.engine import URL, make_url  # noqa: E402
from sqlalchemy.exc import ArgumentError  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class StoreError(Exception):
    """The store cannot be used as configured; the message says what to do."""


def normalize_url(url: str) -> tuple[URL, URL]:
    """Return (async URL, sync URL) for a user-facing database URL."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(
            f"invalid database URL {url!r}: {exc}. "
            "Use sqlite:///path/to/fleet.db or postgresql://user:pass@host:5432/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise StoreError(
                "an in-memory SQLite database cannot be shared by the hub's connections; "
                "give a file: sqlite:///path/to/fleet.db"
            )
        return parsed.set(drivername="sqlite+aiosqlite"), parsed.set(drivername="sqlite")
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+psycopg"), parsed.set(drivername="postgresql+psycopg")
    raise StoreError(f"unsupported database {backend!r} in {url!r}: use sqlite:/// or postgresql://")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the single writer; NORMAL is durable across
    # process crashes in WAL mode (only an OS crash can lose the last commit).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def private_sqlite_file(path: Path) -> None:
    """Create the SQLite file owner-only (0600) before SQLite does, or tighten an existing one.

    The store holds the fleet's policy and every agent's telemetry; SQLite creates its -wal and
    -shm files with the database file's permissions, so they follow.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            log.warning("%s was readable by others (mode %o); making it owner-only", path, mode)
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists() and stat.S_IMODE(side.stat().st_mode) & 0o077:
            side.chmod(stat.S_IMODE(side.stat().st_mode) & 0o700)


def alembic_config(sync_url: URL) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sync_url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


class Database:
    """An async engine plus a session factory, migrated to the newest schema."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = url
        self.async_url, self.sync_url = normalize_url(url)
        self.is_sqlite = self.async_url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            path = Path(self.sync_url.database or "")
            if not path.parent.exists():
                raise StoreError(f"directory {path.parent} for the SQLite store does not exist; create it first")
            try:
                private_sqlite_file(path)
            except OSError as exc:
                raise StoreError(f"cannot open the SQLite store {path}: {exc}") from None
            # One connection per process: SQLite has a single writer anyway,
            # and one connection avoids SQLITE_BUSY between our own tasks.
            self.engine: AsyncEngine = create_async_engine(
                self.async_url, pool_size=1, max_overflow=0, pool_timeout=60
            )
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(
                self.async_url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        alembic_log.quiet()  # one INFO line when a migration runs, none when the store is up to date
        engine = create_engine(self.sync_url, poolclass=NullPool)
        if self.is_sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        try:
            with engine.begin() as conn:
                cfg = alembic_config(self.sync_url)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except Exception as exc:  # noqa: BLE001 - turned into a clear message
            raise StoreError(f"cannot migrate the store at {self.sync_url.render_as_string()}: {exc}") from exc
        finally:
            engine.dispose()

    def scheduler_engine(self):
        """A synchronous engine for APScheduler's job store (table ``apscheduler_jobs``).

        On PostgreSQL it is the store's own database. On SQLite it is a file beside the store
        (``fleet-scheduler.db`` for ``fleet.db``): APScheduler writes synchronously from the event loop's
        thread, and waiting there for SQLite's single write lock, held by one of the hub's own async
        transactions that needs that very loop to finish, would deadlock.
        """
        if self.is_sqlite:
            path = Path(self.sync_url.database or "")
            sched = path.with_name(f"{path.stem}-scheduler{path.suffix or '.db'}")
            private_sqlite_file(sched)
            url = self.sync_url.set(database=str(sched))
            engine = create_engine(url, poolclass=NullPool)
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(self.sync_url, pool_size=2, max_overflow=2, pool_pre_ping=True)

    async def close(self) -> None:
        await self.engine.dispose()
