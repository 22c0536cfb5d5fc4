"""The SQLite store's files are owner-only, like the admin token (issue 10, item 8)."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime

from hub.store import Database, Store


def mode(p) -> int:
    return stat.S_IMODE(p.stat().st_mode)


async def test_fleet_db_and_its_wal_and_shm_are_created_0600(tmp_path) -> None:
    old = os.umask(0o022)  # a usual umask: files would be world-readable
    try:
        path = tmp_path / "fleet.db"
        db = Database(f"sqlite:///{path}")
        db.migrate()
        try:
            await Store(db).put_object("Config", "x", {"secret": 1}, "", "", now=datetime.now(UTC))
            engine = db.scheduler_engine()
            engine.dispose()
            files = [path, tmp_path / "fleet.db-wal", tmp_path / "fleet.db-shm", tmp_path / "fleet-scheduler.db"]
            assert all(f.exists() for f in files[:3]), sorted(p.name for p in tmp_path.iterdir())
            assert {f.name: oct(mode(f)) for f in files if f.exists()} == {f.name: "0o600" for f in files if f.exists()}
        finally:
            await db.close()
    finally:
        os.umask(old)


def test_an_existing_world_readable_store_is_made_owner_only(tmp_path) -> None:
    path = tmp_path / "fleet.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    Database(f"sqlite:///{path}").migrate()
    assert mode(path) == 0o600
