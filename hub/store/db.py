"""Connecting to the store: URL handling, SQLite pragmas, migrations.

Users give one URL: `sqlite:///path/to/fleet.db` (the default) or
`postgresql://user:pass@host/db`. The hub talks to it through SQLAlchemy's
asyncio extension (aiosqlite / psycopg 3); Alembic migrates it with the
matching synchronous driver before the hub serves.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

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
T = TypeVar("T")

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
        self._inflight: set[asyncio.Task] = set()
        self._closed = False

    async def run_to_completion(self, work: Awaitable[T]) -> T:
        """Run one store operation to its end even if the caller is cancelled, and let `close` wait for it.

        Stream handlers and background loops are cancelled whenever an agent leaves or
        the hub stops. A write cut off in the middle would abandon a transaction, so the
        operation runs in a task of its own that the caller only waits for. `close` waits
        for those tasks: an operation still running when the engine is disposed returns
        its connection to a pool nobody closes any more, and the garbage collector closes
        it later (aiosqlite and psycopg warn; CI failed on exactly that in test_link).
        """
        if self._closed:
            if inspect.iscoroutine(work):
                work.close()
            raise StoreError("the store is closed (the hub is shutting down)")
        task = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that was cancelled no longer reads it

    @property
    def busy(self) -> int:
        """Store operations still running (their callers may have gone)."""
        return len(self._inflight)

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

    async def close(self, timeout: float = 10.0) -> None:
        """Refuse new operations, wait (at most `timeout` seconds) for those in flight, then
        close every connection. An operation started after this would open a connection in a
        fresh pool that nobody closes."""
        self._closed = True
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=timeout)
            if pending:
                log.warning("closing the store with %d operations still running after %.0f s", len(pending), timeout)
        await self.engine.dispose()


def runs_to_completion(cls: type) -> type:
    """Class decorator: each public coroutine method of a store class (one that opens
    its own session through ``self.db``) runs through `Database.run_to_completion`.
    Private helpers take the caller's session and are left as they are."""
    for name, fn in list(vars(cls).items()):
        if name.startswith("_") or not inspect.iscoroutinefunction(fn):
            continue
        setattr(cls, name, _completing(fn))
    return cls


def _completing(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.db.run_to_completion(fn(self, *args, **kwargs))

    return run
