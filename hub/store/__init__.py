"""The hub's durable fleet state: SQLAlchemy 2 tables, Alembic migrations, repositories."""

from hub.store import enroll_tables  # noqa: F401 - declares the enrollment tables on the shared metadata
from hub.store.db import Database, StoreError, normalize_url
from hub.store.repo import Store

__all__ = ["Database", "Store", "StoreError", "normalize_url"]
