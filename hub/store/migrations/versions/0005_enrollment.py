"""Node enrollment: bootstrap tokens (hashed) and certificate requests.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bootstrap_tokens",
        sa.Column("id", sa.String(12), primary_key=True),
        sa.Column("site", sa.String(63), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("auto_approve", sa.Boolean(), nullable=False),
        sa.Column("description", sa.String(253), nullable=False),
        sa.Column("created_by", sa.String(253), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(253), nullable=False),
    )
    op.create_index("ix_bootstrap_tokens_site", "bootstrap_tokens", ["site"])
    op.create_table(
        "cert_requests",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("site", sa.String(63), nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("token_id", sa.String(12), nullable=False),
        sa.Column("public_key_sha256", sa.String(64), nullable=False),
        sa.Column("csr_pem", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(253), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("peer", sa.String(253), nullable=False),
    )
    op.create_index("ix_cert_requests_site_node", "cert_requests", ["site", "node"])
    op.create_index("ix_cert_requests_state", "cert_requests", ["state"])


def downgrade() -> None:
    op.drop_table("cert_requests")
    op.drop_table("bootstrap_tokens")
