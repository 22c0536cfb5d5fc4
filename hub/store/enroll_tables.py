"""Tables of node enrollment: bootstrap tokens and certificate requests (migration 0005).

Kept beside `tables.py` on the same declarative base, so the check that
migrations and declarations agree covers them too (`hub.store` imports this).
No private key is ever stored: a request holds the node's CSR (its public
key) and, once signed, its certificate.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hub.store.tables import Base


class BootstrapTokenRow(Base):
    """A bootstrap token: scoped to one site, expiring, revocable; only its secret's SHA-256 is kept."""

    __tablename__ = "bootstrap_tokens"
    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    site: Mapped[str] = mapped_column(String(63), nullable=False)
    secret_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    auto_approve: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    description: Mapped[str] = mapped_column(String(253), nullable=False, default="")
    created_by: Mapped[str] = mapped_column(String(253), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_by: Mapped[str] = mapped_column(String(253), nullable=False, default="")
    __table_args__ = (Index("ix_bootstrap_tokens_site", "site"),)


class CertRequestRow(Base):
    """A node's request for a certificate; named after its public key, so a resent CSR finds it."""

    __tablename__ = "cert_requests"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(63), nullable=False)
    node: Mapped[str] = mapped_column(String(63), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    token_id: Mapped[str] = mapped_column(String(12), nullable=False, default="")
    public_key_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    csr_pem: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    decided_by: Mapped[str] = mapped_column(String(253), nullable=False, default="")
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    certificate_pem: Mapped[str] = mapped_column(Text, nullable=False, default="")
    not_after: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    peer: Mapped[str] = mapped_column(String(253), nullable=False, default="")
    __table_args__ = (
        Index("ix_cert_requests_site_node", "site", "node"),
        Index("ix_cert_requests_state", "state"),
    )
