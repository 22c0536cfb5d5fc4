"""Fixtures for the integration tests."""

from __future__ import annotations

import pytest

from hub.store import Database, Store


@pytest.fixture
async def store(db_url):
    """A migrated store on SQLite and (with FLEET_TEST_PG_URL) PostgreSQL."""
    db = Database(db_url)
    db.migrate()
    try:
        yield Store(db)
    finally:
        await db.close()
