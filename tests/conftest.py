"""Shared fixtures.

`db_url` runs a test once on SQLite and once on PostgreSQL. PostgreSQL is a
real server named by FLEET_TEST_PG_URL (`.ci/run` starts one with
tools/pg.sh); each test gets a fresh database on it. Without the variable the
PostgreSQL half is skipped locally and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

PG_URL = os.environ.get("FLEET_TEST_PG_URL", "")
IN_CI = os.environ.get("CI") == "true"


def _fresh_pg_database(base_url: str) -> tuple[str, str]:
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    name = f"fleet_t_{uuid.uuid4().hex[:12]}"
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False), admin


def _drop_pg_database(admin: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    if not PG_URL:
        if IN_CI:
            pytest.fail("FLEET_TEST_PG_URL is not set in CI: .ci/run must start PostgreSQL (tools/pg.sh start)")
        pytest.skip("FLEET_TEST_PG_URL not set: start one with `export FLEET_TEST_PG_URL=$(tools/pg.sh start)`")
    url, admin = _fresh_pg_database(PG_URL)
    try:
        yield url
    finally:
        from sqlalchemy.engine import make_url

        _drop_pg_database(admin, make_url(url).database)
