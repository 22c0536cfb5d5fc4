"""Tables of the hub store.

Every schema change goes through an Alembic migration in `migrations/versions`;
a test checks that the migrations and these declarations agree.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    Unicode,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Counter(Base):
    """Named monotonic counters; `version` orders every desired-state change."""

    __tablename__ = "counters"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Node(Base):
    """One agent: a node of an edge site, as it last introduced itself."""

    __tablename__ = "nodes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site: Mapped[str] = mapped_column(String(128), nullable=False)
    node: Mapped[str] = mapped_column(String(128), nullable=False)
    agent_version: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    inventory: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    connected: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    recent_errors: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    reports_received: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    reports_duplicate: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    __table_args__ = (UniqueConstraint("site", "node", name="uq_nodes_site_node"),)


class DesiredObject(Base):
    """A desired-state object and whom it is meant for.

    Deleting keeps a tombstone (deleted=True, new version) so that hub
    processes that only watch versions learn of the deletion too.
    """

    __tablename__ = "desired_objects"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    name: Mapped[str] = mapped_column(String(253), nullable=False)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    spec: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    target_site: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    target_node: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    __table_args__ = (
        UniqueConstraint("kind", "name", name="uq_desired_kind_name"),
        Index("ix_desired_version", "version"),
    )


class Applied(Base):
    """The version of a desired object that a node reports it has applied."""

    __tablename__ = "applied"
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    object_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, nullable=False)
    ok: Mapped[bool] = mapped_column(Boolean, nullable=False)
    error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


REPORT_KIND_MAX = 64
"""Longest report kind, in characters: the hub refuses longer ones and the database checks it too."""


class Report(Base):
    """One report from an agent's outbox, stored once per (node, incarnation, seq).

    The incarnation names one report stream of an agent (minted with its local
    state): an agent that lost its state starts a new stream at seq 1, which
    must not collide with what the old one stored. Rows from before migration
    0004 have the incarnation ''. SQLite does not enforce VARCHAR lengths, so
    a CHECK does it for the kind on every database.
    """

    __tablename__ = "reports"
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True)
    incarnation: Mapped[str] = mapped_column(String(64), primary_key=True, server_default="")
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(REPORT_KIND_MAX), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    payload: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    __table_args__ = (CheckConstraint(f"length(kind) <= {REPORT_KIND_MAX}", name="ck_reports_kind_length"),)


class Revision(Base):
    """One `fleet apply` (or rollback): the whole policy bundle and the placement it produced.

    Append-only; the highest number is what the fleet should run. Publishing the
    placement's desired objects happens in the same transaction as the insert.
    """

    __tablename__ = "revisions"
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    author: Mapped[str] = mapped_column(String(253), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    digest: Mapped[str] = mapped_column(String(64), nullable=False)
    bundle: Mapped[str] = mapped_column(Text, nullable=False)
    """Canonical bundle JSON (hub.policy.Bundle.to_json)."""
    placement: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    summary: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    """Totals shown by `fleet get revisions`: replicas, GPUs, cost/h, carbon/h, SLO attainment."""
    rollback_of: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    """Set when this revision restores an earlier one."""


class Rollout(Base):
    """One rollout of a service to a model version: its spec and its state machine (hub.rollout.machine).

    ``state`` is the machine's plain-dict state; ``phase`` copies its phase for
    queries. ``active_service`` is the service name while the rollout is not
    terminal and NULL after, so the unique constraint allows one active rollout
    per service. Only the hub process holding the lease (``lease_owner`` until
    ``lease_until``) drives the rollout; operator commands are queued in
    ``commands`` and applied by that driver.
    """

    __tablename__ = "rollouts"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    service: Mapped[str] = mapped_column(String(63), nullable=False)
    active_service: Mapped[str | None] = mapped_column(String(63), nullable=True)
    from_version: Mapped[str] = mapped_column(String(63), nullable=False)
    to_version: Mapped[str] = mapped_column(String(63), nullable=False)
    phase: Mapped[str] = mapped_column(String(32), nullable=False)
    state: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    state_revision: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    commands: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    """Queued operator commands: [{id, name, actor, note, at}]."""
    command_results: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    """command id -> "" (done) or the refusal message, for the caller waiting on it."""
    created_by: Mapped[str] = mapped_column(String(253), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    __table_args__ = (
        UniqueConstraint("active_service", name="uq_rollouts_active_service"),
        Index("ix_rollouts_service", "service"),
        Index("ix_rollouts_phase", "phase"),
    )


class Audit(Base):
    """Append-only record of who did what, when, with the figures behind each decision.

    The store only inserts and reads these rows, and database triggers
    (migration 0003) refuse UPDATE and DELETE on SQLite and PostgreSQL alike.
    """

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    actor: Mapped[str] = mapped_column(String(253), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    subject: Mapped[str] = mapped_column(String(253), nullable=False)
    details: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict)
    __table_args__ = (Index("ix_audit_at", "at"), Index("ix_audit_subject", "subject"))


class SchedulerJob(Base):
    """APScheduler's SQLAlchemyJobStore table (the rollout controller's persistent jobs), declared here so
    that migrations create it; the job store's own create-if-missing is then a no-op."""

    __tablename__ = "apscheduler_jobs"
    id: Mapped[str] = mapped_column(Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), nullable=True, index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
