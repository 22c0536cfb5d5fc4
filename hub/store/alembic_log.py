"""Alembic's INFO lines at DEBUG: a hub start on an up-to-date store logs nothing about migrations.

Alembic logs "setup plugin ...", "Context impl ...", "Will assume ..." and
"Running upgrade ..." at INFO on every run. :func:`quiet` demotes them to DEBUG
(shown with FLEET_DEBUG=1); the migration environment logs one INFO line of
its own when a migration actually runs (hub/store/migrations/env.py).
"""

from __future__ import annotations

import logging

LOGGER = "hub.store.migrations"
"""Where the one line about an applied migration goes; at DEBUG, Alembic's own lines show too."""
ALEMBIC_LOGGERS = ("alembic.runtime.plugins", "alembic.runtime.migration", "alembic.ddl.postgresql",
                   "alembic.ddl.impl")


class Demote(logging.Filter):
    """INFO records as DEBUG ones, kept only when :data:`LOGGER` logs at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(LOGGER).isEnabledFor(logging.DEBUG)
        return True


def quiet() -> None:
    """Install the filter on Alembic's loggers (a filter acts where a record is made); idempotent."""
    for name in ALEMBIC_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Demote) for f in logger.filters):
            logger.addFilter(Demote())
