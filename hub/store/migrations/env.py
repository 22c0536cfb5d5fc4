"""Alembic environment: runs migrations on the connection the hub passes in,
or on `sqlalchemy.url` when run from the alembic command line.

Quiet on an up-to-date store: Alembic's own INFO lines ("Context impl ...",
"Will assume ...", "Running upgrade ...") are logged at DEBUG, and a start
that does migrate says so in one INFO line naming the revisions.
"""

import logging

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from hub.store import alembic_log
from hub.store.tables import Base

config = context.config
target_metadata = Base.metadata
log = logging.getLogger(alembic_log.LOGGER)
alembic_log.quiet()  # also when run from the alembic command line


def _configure(connection) -> list[tuple[str, str]]:
    """Configure the context on ``connection``; returns the list the applied steps are appended to."""
    steps: list[tuple[str, str]] = []

    def applied(*, ctx, step, heads, run_args) -> None:  # noqa: ARG001 - Alembic's callback signature
        steps.append((",".join(step.source_revision_ids) or "empty", ",".join(step.destination_revision_ids)))

    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      on_version_apply=applied)
    return steps


def _report(steps: list[tuple[str, str]], connection) -> None:
    if steps:
        log.info("store schema migrated from %s to %s (%d step%s on %s)", steps[0][0], steps[-1][1], len(steps),
                 "" if len(steps) == 1 else "s", connection.dialect.name)


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        steps = _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        _report(steps, connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=NullPool)
    with engine.begin() as conn:
        steps = _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
        _report(steps, conn)
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run()
