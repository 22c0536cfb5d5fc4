"""Reports are de-duplicated per (node, incarnation, seq); the report kind's length is checked.

An agent that loses its local state (a new disk, a replaced pod) starts a new
report stream at seq 1 under a new incarnation id; keyed on (node, seq) alone
its new reports were taken for re-sends of stored ones and dropped. Rows from
before this migration belong to the incarnation ''.

SQLite ignores VARCHAR lengths, so a CHECK enforces the kind's 64 characters
on every database. (On SQLite a longer kind may already be stored: it is cut
to 64 characters here, as PostgreSQL would never have held it.)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

KIND_CHECK = "length(kind) <= 64"


def _reports(*, with_incarnation: bool) -> sa.Table:
    """The reports table as it is after (or, without the incarnation, before) this migration."""
    key = [sa.Column("incarnation", sa.String(64), primary_key=True, server_default="")] if with_incarnation else []
    return sa.Table(
        "reports",
        sa.MetaData(),
        sa.Column("node_id", sa.Integer(), sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
        *key,
        sa.Column("seq", sa.BigInteger(), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
    )


def upgrade() -> None:
    op.add_column("reports", sa.Column("incarnation", sa.String(64), nullable=False, server_default=""))
    if op.get_bind().dialect.name == "sqlite":
        op.execute("UPDATE reports SET kind = substr(kind, 1, 64) WHERE length(kind) > 64")
        # SQLite cannot change a primary key or add a CHECK in place: the table is
        # rebuilt as declared here, rows copied.
        with op.batch_alter_table("reports", recreate="always", copy_from=_reports(with_incarnation=True)) as b:
            b.create_check_constraint("ck_reports_kind_length", KIND_CHECK)
    else:
        op.drop_constraint("reports_pkey", "reports", type_="primary")
        op.create_primary_key("reports_pkey", "reports", ["node_id", "incarnation", "seq"])
        op.create_check_constraint("ck_reports_kind_length", "reports", KIND_CHECK)


def downgrade() -> None:
    # Going back to one stream per node keeps each (node, seq) once: the row of
    # the legacy incarnation '' (else the first by name) stays, others are dropped.
    op.execute(
        "DELETE FROM reports WHERE EXISTS (SELECT 1 FROM reports r WHERE r.node_id = reports.node_id "
        "AND r.seq = reports.seq AND r.incarnation < reports.incarnation)"
    )
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("reports", recreate="always", copy_from=_reports(with_incarnation=False)):
            pass
    else:
        op.drop_constraint("ck_reports_kind_length", "reports", type_="check")
        op.drop_constraint("reports_pkey", "reports", type_="primary")
        op.drop_column("reports", "incarnation")
        op.create_primary_key("reports_pkey", "reports", ["node_id", "seq"])
