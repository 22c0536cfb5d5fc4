"""Repositories: every read and write of fleet state goes through `Store`.

Methods take and return plain domain records (dataclasses below), never ORM
rows or protobuf messages, so callers stay independent of both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import bindparam, case, delete, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hub.store import tables as t
from hub.store.db import Database, runs_to_completion

VERSION_COUNTER = "desired_version"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc(dt: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class NodeRecord:
    id: int
    site: str
    node: str
    agent_version: str
    inventory: dict
    first_seen: datetime
    last_seen: datetime
    connected: bool
    recent_errors: list[str]
    reports_received: int
    reports_duplicate: int


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    id: str
    kind: str
    name: str
    version: int
    spec: dict
    target_site: str
    target_node: str
    deleted: bool
    updated_at: datetime

    def targets(self, site: str, node: str) -> bool:
        """Whether this object is meant for the given node (ignores deletion)."""
        return self.target_site in ("", site) and self.target_node in ("", node)


@dataclass(frozen=True, slots=True)
class AppliedRecord:
    node_id: int
    object_id: str
    version: int
    ok: bool
    error: str = ""
    applied_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True, slots=True)
class IncomingReport:
    seq: int
    kind: str
    created_at: datetime
    payload: dict


@dataclass(frozen=True, slots=True)
class StoredReport(IncomingReport):
    """A report read back from the store, with the report stream (incarnation) it came in on."""

    incarnation: str = ""
    received_at: datetime = _EPOCH


@dataclass(frozen=True, slots=True)
class DesiredPut:
    """A desired object to publish: what `put_object` and revisions write."""

    kind: str
    name: str
    spec: dict
    target_site: str = ""
    target_node: str = ""


@dataclass(frozen=True, slots=True)
class RevisionRecord:
    number: int
    author: str
    message: str
    created_at: datetime
    digest: str
    bundle: str
    placement: dict
    summary: dict
    rollback_of: int | None = None


@dataclass(frozen=True, slots=True)
class Published:
    """What storing a revision changed among the desired objects."""

    revision: RevisionRecord
    upserted: tuple[ObjectRecord, ...]
    deleted: tuple[ObjectRecord, ...]
    unchanged: int


class StaleRevision(Exception):
    """Another revision landed between reading the base and writing the new one."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"expected revision {expected} to be the latest, found {actual}")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class StoredReports:
    """Outcome of storing one batch: which seqs are new and which were seen before."""

    new: tuple[int, ...]
    duplicate: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReportBatch:
    """One agent stream's batch of reports, as `Store.store_report_batches` takes several at once."""

    node_id: int
    incarnation: str
    reports: Sequence[IncomingReport]
    received_at: datetime


# PostgreSQL: a whole group of batches is one INSERT of seven array parameters, sent in binary
# (%b). A multi-row VALUES list of thousands of placeholders is re-parsed by the driver on every
# call (too long for its query cache: ~30 ms per 500 rows, most of the hub's time at 10,000
# records/s); this text is short and constant, and each array travels as one parameter. The plain
# insert is tried first, in a savepoint: a report seen before (a resend after a reconnect) fails it
# as a whole, and the same rows go again through ON CONFLICT DO NOTHING RETURNING, which tells the
# new from the old but costs the database about three times as much per row.
_PG_REPORT_ROWS = ("SELECT * FROM unnest(%b::integer[], %b::text[], %b::bigint[], %b::text[], %b::timestamptz[], "
                   "%b::timestamptz[], %b::text[]::json[])")
_PG_REPORT_COLUMNS = "reports (node_id, incarnation, seq, kind, created_at, received_at, payload)"
_PG_INSERT_REPORTS = f"INSERT INTO {_PG_REPORT_COLUMNS} {_PG_REPORT_ROWS}"
_PG_INSERT_NEW_REPORTS = (f"INSERT INTO {_PG_REPORT_COLUMNS} {_PG_REPORT_ROWS} "
                          "ON CONFLICT (node_id, incarnation, seq) DO NOTHING RETURNING node_id, incarnation, seq")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node_id: int
    at: datetime
    inventory: dict | None = None
    recent_errors: list[str] | None = None


def _node(row: t.Node) -> NodeRecord:
    return NodeRecord(
        id=row.id,
        site=row.site,
        node=row.node,
        agent_version=row.agent_version,
        inventory=dict(row.inventory or {}),
        first_seen=utc(row.first_seen),
        last_seen=utc(row.last_seen),
        connected=row.connected,
        recent_errors=list(row.recent_errors or []),
        reports_received=row.reports_received,
        reports_duplicate=row.reports_duplicate,
    )


def _object(row: t.DesiredObject) -> ObjectRecord:
    return ObjectRecord(
        id=row.id,
        kind=row.kind,
        name=row.name,
        version=row.version,
        spec=dict(row.spec or {}),
        target_site=row.target_site,
        target_node=row.target_node,
        deleted=row.deleted,
        updated_at=utc(row.updated_at),
    )


def _revision(row: t.Revision) -> RevisionRecord:
    return RevisionRecord(
        number=row.number, author=row.author, message=row.message, created_at=utc(row.created_at),
        digest=row.digest, bundle=row.bundle, placement=dict(row.placement or {}), summary=dict(row.summary or {}),
        rollback_of=row.rollback_of,
    )


# -- rollouts and audit ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    id: str
    service: str
    from_version: str
    to_version: str
    phase: str
    state: dict
    state_revision: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    active: bool = True
    commands: tuple[dict, ...] = ()
    command_results: dict = field(default_factory=dict)
    lease_owner: str | None = None
    lease_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict
    id: int = 0


class RolloutConflict(Exception):
    """Another rollout of the same service is not finished."""


def _rollout(row: t.Rollout) -> RolloutRecord:
    return RolloutRecord(
        id=row.id, service=row.service, from_version=row.from_version, to_version=row.to_version, phase=row.phase,
        state=dict(row.state or {}), state_revision=row.state_revision, created_by=row.created_by,
        created_at=utc(row.created_at), updated_at=utc(row.updated_at), active=row.active_service is not None,
        commands=tuple(row.commands or ()), command_results=dict(row.command_results or {}),
        lease_owner=row.lease_owner, lease_until=utc(row.lease_until) if row.lease_until else None,
    )


def _audit_row(a: AuditRecord) -> t.Audit:
    return t.Audit(at=a.at, actor=a.actor, action=a.action, subject=a.subject, details=a.details)


@runs_to_completion
class RolloutStore:
    """Rollout rows and the audit trail (mixed into `Store`)."""

    db: Database

    async def create_rollout(self, r: RolloutRecord, audit: Sequence[AuditRecord] = ()) -> RolloutRecord:
        """Insert a new active rollout; raises `RolloutConflict` when the service has an active one."""
        try:
            async with self.db.sessions.begin() as s:
                row = t.Rollout(
                    id=r.id, service=r.service, active_service=r.service if r.active else None,
                    from_version=r.from_version, to_version=r.to_version, phase=r.phase, state=r.state,
                    state_revision=r.state_revision, commands=[], command_results={}, created_by=r.created_by,
                    created_at=r.created_at, updated_at=r.updated_at,
                )
                s.add(row)
                await s.flush()
                s.add_all([_audit_row(a) for a in audit])
                return _rollout(row)
        except IntegrityError:
            raise RolloutConflict(r.service) from None

    async def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        async with self.db.sessions() as s:
            row = await s.get(t.Rollout, rollout_id)
            return _rollout(row) if row else None

    async def latest_rollout(self, service: str) -> RolloutRecord | None:
        """The service's active rollout, else its newest one."""
        async with self.db.sessions() as s:
            q = (select(t.Rollout).where(t.Rollout.service == service)
                 .order_by(t.Rollout.active_service.is_(None), t.Rollout.created_at.desc()).limit(1))
            row = (await s.execute(q)).scalar_one_or_none()
            return _rollout(row) if row else None

    async def list_rollouts(self, *, active_only: bool = False, service: str | None = None,
                            limit: int = 100) -> list[RolloutRecord]:
        """Newest first."""
        async with self.db.sessions() as s:
            q = select(t.Rollout).order_by(t.Rollout.created_at.desc()).limit(limit)
            if active_only:
                q = q.where(t.Rollout.active_service.is_not(None))
            if service:
                q = q.where(t.Rollout.service == service)
            return [_rollout(r) for r in (await s.execute(q)).scalars()]

    async def acquire_lease(self, rollout_id: str, owner: str, now: datetime, until: datetime) -> bool:
        """Take or renew the right to drive a rollout: succeeds when the lease is free, expired or ours.

        One conditional UPDATE, atomic on SQLite and PostgreSQL alike.
        """
        async with self.db.sessions.begin() as s:
            res = await s.execute(
                update(t.Rollout)
                .where(t.Rollout.id == rollout_id,
                       (t.Rollout.lease_owner.is_(None)) | (t.Rollout.lease_owner == owner)
                       | (t.Rollout.lease_until < now))
                .values(lease_owner=owner, lease_until=until)
                .execution_options(synchronize_session=False)
            )
            return res.rowcount == 1

    async def release_lease(self, rollout_id: str, owner: str) -> None:
        async with self.db.sessions.begin() as s:
            await s.execute(
                update(t.Rollout).where(t.Rollout.id == rollout_id, t.Rollout.lease_owner == owner)
                .values(lease_owner=None, lease_until=None).execution_options(synchronize_session=False)
            )

    async def save_rollout(
        self, rollout_id: str, *, owner: str, expected_revision: int, state: dict, phase: str, active: bool,
        now: datetime, consumed: dict[str, str] | None = None, audit: Sequence[AuditRecord] = (),
    ) -> bool:
        """Persist a new state if we still hold the lease and nobody saved since ``expected_revision``.

        ``consumed`` maps queued command ids to their result ("" done, else the refusal); they leave the
        queue in the same transaction. Returns False (nothing written) on a lost lease or a stale revision.
        """
        async with self.db.sessions.begin() as s:
            row = (await s.execute(select(t.Rollout).where(t.Rollout.id == rollout_id).with_for_update())
                   ).scalar_one_or_none()
            if row is None or row.lease_owner != owner or row.state_revision != expected_revision:
                return False
            row.state = state
            row.state_revision = int(state.get("revision", expected_revision + 1))
            if row.state_revision == expected_revision:
                row.state_revision += 1
            row.phase = phase
            row.active_service = row.service if active else None
            row.updated_at = now
            if consumed:
                row.commands = [c for c in (row.commands or []) if c.get("id") not in consumed]
                results = dict(row.command_results or {})
                results.update(consumed)
                row.command_results = dict(list(results.items())[-50:])
            s.add_all([_audit_row(a) for a in audit])
            return True

    async def enqueue_command(self, rollout_id: str, cmd: dict) -> bool:
        """Queue an operator command for the rollout's driver; False when the rollout does not exist."""
        async with self.db.sessions.begin() as s:
            row = (await s.execute(select(t.Rollout).where(t.Rollout.id == rollout_id).with_for_update())
                   ).scalar_one_or_none()
            if row is None:
                return False
            row.commands = [*(row.commands or []), cmd]
            return True

    async def append_audit(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        async with self.db.sessions.begin() as s:
            s.add_all([_audit_row(a) for a in records])

    async def list_audit(self, *, since: datetime | None = None, subject: str | None = None,
                         limit: int = 10_000) -> list[AuditRecord]:
        """Oldest first."""
        async with self.db.sessions() as s:
            q = select(t.Audit).order_by(t.Audit.id).limit(limit)
            if since is not None:
                q = q.where(t.Audit.at >= since)
            if subject:
                q = q.where(t.Audit.subject == subject)
            return [AuditRecord(utc(r.at), r.actor, r.action, r.subject, dict(r.details or {}), r.id)
                    for r in (await s.execute(q)).scalars()]


@runs_to_completion
class Store(RolloutStore):
    """Fleet state on top of a migrated `Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._insert = sqlite.insert if db.is_sqlite else postgresql.insert

    # -- versions -----------------------------------------------------------

    async def _next_version(self, s: AsyncSession, count: int = 1) -> int:
        """Allocate ``count`` consecutive versions; returns the highest (the block ends there)."""
        # UPDATE ... RETURNING takes the row lock in PostgreSQL and the write
        # lock in SQLite, so concurrent hub processes never share a version.
        ins = self._insert(t.Counter).values(name=VERSION_COUNTER, value=0)
        await s.execute(ins.on_conflict_do_nothing(index_elements=["name"]))
        res = await s.execute(
            update(t.Counter)
            .where(t.Counter.name == VERSION_COUNTER)
            .values(value=t.Counter.value + count)
            .returning(t.Counter.value)
            .execution_options(synchronize_session=False)
        )
        return int(res.scalar_one())

    async def current_version(self) -> int:
        async with self.db.sessions() as s:
            res = await s.execute(select(t.Counter.value).where(t.Counter.name == VERSION_COUNTER))
            return int(res.scalar_one_or_none() or 0)

    # -- nodes --------------------------------------------------------------

    async def register_node(
        self, site: str, node: str, agent_version: str, inventory: dict, now: datetime
    ) -> NodeRecord:
        """Insert or refresh a node as it says hello; marks it connected."""
        async with self.db.sessions.begin() as s:
            ins = self._insert(t.Node).values(
                site=site,
                node=node,
                agent_version=agent_version,
                inventory=inventory,
                first_seen=now,
                last_seen=now,
                connected=True,
                recent_errors=[],
                reports_received=0,
                reports_duplicate=0,
            )
            ins = ins.on_conflict_do_update(
                index_elements=["site", "node"],
                set_={
                    "agent_version": agent_version,
                    "inventory": inventory,
                    "last_seen": now,
                    "connected": True,
                },
            ).returning(t.Node)
            row = (await s.execute(ins)).scalar_one()
            return _node(row)

    async def register_nodes(
        self, hellos: Sequence[tuple[str, str, str, dict, str]], now: datetime
    ) -> dict[tuple[str, str, str], tuple[NodeRecord, int]]:
        """`register_node` for many (site, node, agent_version, inventory, incarnation) at once,
        in one transaction. Keyed by (site, node, incarnation): the node's record and the
        highest report seq stored for that incarnation of it (0 if none). The last entry
        wins for the node's fields when a node is listed twice."""
        latest = {(site, node): (site, node, ver, inv) for site, node, ver, inv, _ in hellos}
        if not latest:
            return {}
        streams = {(site, node, inc) for site, node, _, _, inc in hellos}
        async with self.db.sessions.begin() as s:
            ins = self._insert(t.Node)
            stmt = ins.on_conflict_do_update(
                index_elements=["site", "node"],
                set_={"agent_version": ins.excluded.agent_version, "inventory": ins.excluded.inventory,
                      "last_seen": ins.excluded.last_seen, "connected": True},
            )
            conn = await s.connection()
            await conn.execute(stmt, [
                {"site": site, "node": node, "agent_version": ver, "inventory": inv, "first_seen": now,
                 "last_seen": now, "connected": True, "recent_errors": [], "reports_received": 0,
                 "reports_duplicate": 0}
                for site, node, ver, inv in latest.values()
            ])
            rows = (await s.execute(select(t.Node).where(tuple_(t.Node.site, t.Node.node).in_(list(latest))))).scalars()
            nodes = {(r.site, r.node): _node(r) for r in rows}
            # One grouped read, along the primary key (node_id, incarnation, seq).
            seqs = dict(((n, i), m) for n, i, m in (await s.execute(
                select(t.Report.node_id, t.Report.incarnation, func.max(t.Report.seq))
                .where(tuple_(t.Report.node_id, t.Report.incarnation).in_(
                    [(nodes[(site, node)].id, inc) for site, node, inc in streams]))
                .group_by(t.Report.node_id, t.Report.incarnation)
            )).all())
            return {
                (site, node, inc): (nodes[(site, node)], int(seqs.get((nodes[(site, node)].id, inc)) or 0))
                for site, node, inc in streams
            }

    async def mark_disconnected(self, node_id: int, now: datetime) -> None:
        async with self.db.sessions.begin() as s:
            await s.execute(update(t.Node).where(t.Node.id == node_id).values(connected=False, last_seen=now))

    async def mark_all_disconnected(self, node_ids: Iterable[int]) -> None:
        ids = list(node_ids)
        if not ids:
            return
        async with self.db.sessions.begin() as s:
            await s.execute(update(t.Node).where(t.Node.id.in_(ids)).values(connected=False))

    async def record_heartbeats(self, beats: Sequence[Heartbeat]) -> None:
        """Apply many heartbeats in one transaction (they arrive by the thousand)."""
        if not beats:
            return
        async with self.db.sessions.begin() as s:
            plain = [{"b_id": b.node_id, "b_at": b.at} for b in beats if b.inventory is None and b.recent_errors is None]
            if plain:
                stmt = (
                    update(t.Node)
                    .where(t.Node.id == bindparam("b_id"))
                    .values(last_seen=bindparam("b_at"))
                    .execution_options(synchronize_session=False)
                )
                conn = await s.connection()
                await conn.execute(stmt, plain)
            for b in beats:
                if b.inventory is None and b.recent_errors is None:
                    continue
                values: dict = {"last_seen": b.at}
                if b.inventory is not None:
                    values["inventory"] = b.inventory
                if b.recent_errors is not None:
                    values["recent_errors"] = b.recent_errors
                await s.execute(update(t.Node).where(t.Node.id == b.node_id).values(**values))

    async def list_nodes(self, site: str | None = None) -> list[NodeRecord]:
        async with self.db.sessions() as s:
            q = select(t.Node).order_by(t.Node.site, t.Node.node)
            if site:
                q = q.where(t.Node.site == site)
            return [_node(r) for r in (await s.execute(q)).scalars()]

    async def get_node(self, site: str, node: str) -> NodeRecord | None:
        async with self.db.sessions() as s:
            row = (
                await s.execute(select(t.Node).where(t.Node.site == site, t.Node.node == node))
            ).scalar_one_or_none()
            return _node(row) if row else None

    # -- desired objects ----------------------------------------------------

    async def put_object(
        self, kind: str, name: str, spec: dict, target_site: str = "", target_node: str = "", *, now: datetime
    ) -> ObjectRecord:
        """Create or replace (kind, name) with a new version."""
        async with self.db.sessions.begin() as s:
            return await self._upsert(s, DesiredPut(kind, name, spec, target_site, target_node), now)

    async def _upsert(self, s: AsyncSession, put: DesiredPut, now: datetime) -> ObjectRecord:
        version = await self._next_version(s)
        row = (
            await s.execute(
                select(t.DesiredObject).where(t.DesiredObject.kind == put.kind, t.DesiredObject.name == put.name)
            )
        ).scalar_one_or_none()
        if row is None:
            row = t.DesiredObject(id=str(uuid.uuid4()), kind=put.kind, name=put.name)
            s.add(row)
        row.version = version
        row.spec = put.spec
        row.target_site = put.target_site
        row.target_node = put.target_node
        row.deleted = False
        row.updated_at = now
        await s.flush()
        return _object(row)

    async def delete_object(self, kind: str, name: str, *, now: datetime) -> ObjectRecord | None:
        """Tombstone (kind, name); None if it does not exist."""
        async with self.db.sessions.begin() as s:
            row = (
                await s.execute(
                    select(t.DesiredObject).where(
                        t.DesiredObject.kind == kind, t.DesiredObject.name == name, t.DesiredObject.deleted.is_(False)
                    )
                )
            ).scalar_one_or_none()
            if row is None:
                return None
            row.version = await self._next_version(s)
            row.deleted = True
            row.updated_at = now
            await s.flush()
            return _object(row)

    async def live_objects(self, kind: str | None = None) -> list[ObjectRecord]:
        async with self.db.sessions() as s:
            q = select(t.DesiredObject).where(t.DesiredObject.deleted.is_(False)).order_by(t.DesiredObject.version)
            if kind:
                q = q.where(t.DesiredObject.kind == kind)
            return [_object(r) for r in (await s.execute(q)).scalars()]

    async def objects_for(self, site: str, node: str) -> list[ObjectRecord]:
        """Live objects meant for one node, in version order."""
        async with self.db.sessions() as s:
            q = (
                select(t.DesiredObject)
                .where(
                    t.DesiredObject.deleted.is_(False),
                    t.DesiredObject.target_site.in_(["", site]),
                    t.DesiredObject.target_node.in_(["", node]),
                )
                .order_by(t.DesiredObject.version)
            )
            return [_object(r) for r in (await s.execute(q)).scalars()]

    async def changed_since(self, version: int) -> list[ObjectRecord]:
        """Objects (tombstones included) changed after `version`, in version order."""
        async with self.db.sessions() as s:
            q = select(t.DesiredObject).where(t.DesiredObject.version > version).order_by(t.DesiredObject.version)
            return [_object(r) for r in (await s.execute(q)).scalars()]

    # -- revisions ----------------------------------------------------------

    async def add_revision(
        self,
        *,
        author: str,
        message: str,
        digest: str,
        bundle: str,
        placement: dict,
        summary: dict,
        objects: Sequence[DesiredPut],
        managed_kinds: Iterable[str],
        base: int,
        now: datetime,
        rollback_of: int | None = None,
        audit: Callable[[Published], Sequence[AuditRecord]] | None = None,
    ) -> Published:
        """Store revision ``base + 1`` and publish its objects, all in one transaction.

        ``objects`` is the complete desired set for ``managed_kinds``: objects of
        those kinds missing from it are tombstoned, identical ones keep their
        version (agents see no churn), the rest get new versions. Raises
        `StaleRevision` when ``base`` is not the latest revision any more; the
        primary key on ``number`` settles a race between two hub processes.

        ``audit`` builds the audit records of the revision from what it
        published; they are written in the same transaction, so a revision
        never exists without its audit record (nor a record without it).
        """
        kinds = set(managed_kinds)
        try:
            return await self._add_revision(kinds, base, objects, now, dict(
                author=author, message=message, digest=digest, bundle=bundle, placement=placement, summary=summary,
                rollback_of=rollback_of), audit)
        except IntegrityError:
            latest = await self.get_revision()
            latest_no = latest.number if latest else 0
            if latest_no == base:
                raise  # not a race: something else in the transaction broke a constraint
            # Two writers read the same base; the primary key let one through.
            raise StaleRevision(base, latest_no) from None

    async def _add_revision(
        self, kinds: set[str], base: int, objects: Sequence[DesiredPut], now: datetime, fields: dict,
        audit: Callable[[Published], Sequence[AuditRecord]] | None = None,
    ) -> Published:
        async with self.db.sessions.begin() as s:
            stray = sorted({p.kind for p in objects} - kinds)
            if stray:
                raise ValueError(f"a revision may only publish {sorted(kinds)}, not {stray}")
            latest = int((await s.execute(select(func.max(t.Revision.number)))).scalar_one_or_none() or 0)
            if latest != base:
                raise StaleRevision(base, latest)
            row = t.Revision(number=base + 1, created_at=now, **fields)
            s.add(row)
            await s.flush()
            existing = {
                (r.kind, r.name): r
                for r in (
                    await s.execute(select(t.DesiredObject).where(t.DesiredObject.kind.in_(kinds)))
                ).scalars()
            }
            wanted = {(p.kind, p.name): p for p in objects}
            changes: list[tuple[DesiredPut, t.DesiredObject | None]] = []
            unchanged = 0
            # In the caller's order (hub.publish lists policies before placements): versions follow it,
            # so an agent never gets a placement at a lower version than the policies it depends on.
            for key, put in wanted.items():
                row_ = existing.get(key)
                if (
                    row_ is not None and not row_.deleted and row_.spec == put.spec
                    and row_.target_site == put.target_site and row_.target_node == put.target_node
                ):
                    unchanged += 1
                    continue
                changes.append((put, row_))
            gone = [row_ for key, row_ in sorted(existing.items()) if key not in wanted and not row_.deleted]
            # One block of versions for the whole revision, in the same order as one at a time.
            total = len(changes) + len(gone)
            version = await self._next_version(s, total) - total + 1 if total else 0
            upserted_rows, deleted_rows = [], []
            for put, row_ in changes:
                if row_ is None:
                    row_ = t.DesiredObject(id=str(uuid.uuid4()), kind=put.kind, name=put.name)
                    s.add(row_)
                row_.version, version = version, version + 1
                row_.spec = put.spec
                row_.target_site = put.target_site
                row_.target_node = put.target_node
                row_.deleted = False
                row_.updated_at = now
                upserted_rows.append(row_)
            for row_ in gone:
                row_.version, version = version, version + 1
                row_.deleted = True
                row_.updated_at = now
                deleted_rows.append(row_)
            await s.flush()
            published = Published(_revision(row), tuple(_object(r) for r in upserted_rows),
                                  tuple(_object(r) for r in deleted_rows), unchanged)
            if audit is not None:
                s.add_all([_audit_row(a) for a in audit(published)])
                await s.flush()
            return published

    async def get_revision(self, number: int | None = None) -> RevisionRecord | None:
        """Revision ``number``, or the latest when None; None if there is none."""
        async with self.db.sessions() as s:
            q = select(t.Revision)
            q = q.where(t.Revision.number == number) if number is not None else q.order_by(t.Revision.number.desc()).limit(1)
            row = (await s.execute(q)).scalar_one_or_none()
            return _revision(row) if row else None

    async def latest_revision_number(self) -> int:
        """The latest revision's number (0 if none): a check that reads no bundle, for loops that keep
        the latest revision parsed and read it again only when it changed."""
        async with self.db.sessions() as s:
            return int((await s.execute(select(func.max(t.Revision.number)))).scalar_one_or_none() or 0)

    async def list_revisions(self, limit: int = 50) -> list[RevisionRecord]:
        """Newest first."""
        async with self.db.sessions() as s:
            q = select(t.Revision).order_by(t.Revision.number.desc()).limit(limit)
            return [_revision(r) for r in (await s.execute(q)).scalars()]

    # -- applied ------------------------------------------------------------

    async def record_applied(self, acks: Sequence[AppliedRecord], deletions: Sequence[tuple[int, str]] = ()) -> None:
        """Upsert many applied versions and drop rows for applied deletions, in one transaction."""
        if not acks and not deletions:
            return
        async with self.db.sessions.begin() as s:
            if acks:
                # Last ack per (node, object) wins inside the batch.
                latest: dict[tuple[int, str], AppliedRecord] = {}
                for a in acks:
                    latest[(a.node_id, a.object_id)] = a
                ins = self._insert(t.Applied)
                cur = t.Applied.__table__.c
                stmt = ins.on_conflict_do_update(
                    index_elements=["node_id", "object_id"],
                    set_={
                        "version": ins.excluded.version,
                        "ok": ins.excluded.ok,
                        "error": ins.excluded.error,
                        # When the version was first applied: an agent re-stating what it holds
                        # (its Hello after a reconnect) does not move it.
                        "applied_at": case(
                            ((cur.version == ins.excluded.version) & cur.ok & ins.excluded.ok, cur.applied_at),
                            else_=ins.excluded.applied_at,
                        ),
                    },
                )
                await s.execute(
                    stmt,
                    [
                        {
                            "node_id": a.node_id,
                            "object_id": a.object_id,
                            "version": a.version,
                            "ok": a.ok,
                            "error": a.error,
                            "applied_at": a.applied_at,
                        }
                        for a in latest.values()
                    ],
                )
            for node_id, object_id in deletions:
                await s.execute(delete(t.Applied).where(t.Applied.node_id == node_id, t.Applied.object_id == object_id))

    async def object_heads(self, kind: str) -> list[tuple[str, int, str, str]]:
        """(id, version, target_site, target_node) of the live objects of ``kind``, without their specs."""
        async with self.db.sessions() as s:
            q = select(t.DesiredObject.id, t.DesiredObject.version, t.DesiredObject.target_site,
                       t.DesiredObject.target_node).where(t.DesiredObject.kind == kind,
                                                          t.DesiredObject.deleted.is_(False))
            return [(i, int(v), ts, tn) for i, v, ts, tn in (await s.execute(q)).all()]

    async def objects_by_id(self, ids: Sequence[str]) -> list[ObjectRecord]:
        out: list[ObjectRecord] = []
        async with self.db.sessions() as s:
            for i in range(0, len(ids), 500):
                q = select(t.DesiredObject).where(t.DesiredObject.id.in_(list(ids[i:i + 500])))
                out += [_object(r) for r in (await s.execute(q)).scalars()]
        return out

    async def applied_of_kind(self, kind: str) -> list[AppliedRecord]:
        """Applied rows of the live objects of ``kind`` only."""
        async with self.db.sessions() as s:
            q = (select(t.Applied.node_id, t.Applied.object_id, t.Applied.version, t.Applied.ok)
                 .join(t.DesiredObject, t.DesiredObject.id == t.Applied.object_id)
                 .where(t.DesiredObject.kind == kind, t.DesiredObject.deleted.is_(False)))
            return [AppliedRecord(n, o, int(v), bool(ok), "", _EPOCH) for n, o, v, ok in (await s.execute(q)).all()]

    async def node_liveness(self) -> list[NodeRecord]:
        """Every node's identity and liveness (inventory and counters left empty: cheap for thousands)."""
        async with self.db.sessions() as s:
            q = select(t.Node.id, t.Node.site, t.Node.node, t.Node.last_seen, t.Node.connected)
            return [NodeRecord(i, site, node, "", {}, utc(seen), utc(seen), bool(c), [], 0, 0)
                    for i, site, node, seen, c in (await s.execute(q)).all()]

    async def applied_rows(self) -> list[AppliedRecord]:
        async with self.db.sessions() as s:
            rows = (await s.execute(select(t.Applied))).scalars()
            return [
                AppliedRecord(r.node_id, r.object_id, r.version, r.ok, r.error, utc(r.applied_at)) for r in rows
            ]

    # -- reports ------------------------------------------------------------

    async def store_reports(
        self, node_id: int, reports: Sequence[IncomingReport], now: datetime, *, incarnation: str = ""
    ) -> StoredReports:
        """Store a batch exactly once per (node, incarnation, seq), atomically with the node's counters.

        One multi-row insert that skips rows already stored: no read per report. The hub's
        link always names the stream's incarnation; '' is the stream of rows from before
        incarnations existed (migration 0004).
        """
        if not reports:
            return StoredReports((), ())
        return (await self.store_report_batches([ReportBatch(node_id, incarnation, reports, now)]))[0]

    async def store_report_batches(self, batches: Sequence[ReportBatch]) -> list[StoredReports]:
        """`store_reports` for several streams' batches in ONE transaction (group commit), in order.

        The hub's link gathers the batches that arrive while a write is in flight and commits them
        together: one commit, one insert and one counter update for all of them instead of one
        transaction each. All or nothing: if the transaction fails, no batch of it is stored (the
        caller may retry them one by one). Each (node, incarnation) may appear at most once, so
        that every new row belongs to exactly one batch.
        """
        streams = [(b.node_id, b.incarnation) for b in batches]
        if len(set(streams)) != len(streams):
            raise ValueError("store_report_batches: a report stream (node, incarnation) is listed twice")
        batches = [b for b in batches if b.reports]
        if not batches:
            return [StoredReports((), ()) for _ in streams]
        async with self.db.sessions.begin() as s:
            if self.db.is_sqlite:
                new = await self._insert_reports_sqlite(s, batches)
            else:
                new = await self._insert_reports_pg(s, batches)
            out: dict[tuple[int, str], StoredReports] = {}
            counters: dict[int, list[int]] = {}
            for b in batches:
                fresh = new.get((b.node_id, b.incarnation), set())
                dup = tuple(r.seq for r in b.reports if r.seq not in fresh)
                out[(b.node_id, b.incarnation)] = StoredReports(tuple(sorted(fresh)), dup)
                c = counters.setdefault(b.node_id, [0, 0])
                c[0] += len(fresh)
                c[1] += len(dup)
            # Node rows in id order: two hub processes committing groups never wait on each other in a cycle.
            conn = await s.connection()
            await conn.execute(
                update(t.Node)
                .where(t.Node.id == bindparam("b_id"))
                .values(reports_received=t.Node.reports_received + bindparam("b_new"),
                        reports_duplicate=t.Node.reports_duplicate + bindparam("b_dup"))
                .execution_options(synchronize_session=False),
                [{"b_id": n, "b_new": c[0], "b_dup": c[1]} for n, c in sorted(counters.items())],
            )
        return [out.get(k, StoredReports((), ())) for k in streams]

    async def _insert_reports_sqlite(self, s: AsyncSession, batches: Sequence[ReportBatch]) -> dict:
        """(node, incarnation) -> seqs inserted now; one multi-row insert per batch (SQLite's own limits)."""
        new: dict[tuple[int, str], set[int]] = {}
        ins = (self._insert(t.Report)
               .on_conflict_do_nothing(index_elements=["node_id", "incarnation", "seq"])
               .returning(t.Report.seq))
        for b in batches:
            res = await s.execute(ins, [
                {"node_id": b.node_id, "incarnation": b.incarnation, "seq": r.seq, "kind": r.kind,
                 "created_at": r.created_at, "received_at": b.received_at, "payload": r.payload}
                for r in b.reports
            ])
            new[(b.node_id, b.incarnation)] = set(res.scalars().all())
        return new

    async def _insert_reports_pg(self, s: AsyncSession, batches: Sequence[ReportBatch]) -> dict:
        """(node, incarnation) -> seqs inserted now; every batch in one INSERT .. SELECT FROM unnest(arrays)."""
        import psycopg
        from psycopg.errors import UniqueViolation

        cols: list[list] = [[] for _ in range(7)]
        node_ids, incarnations, seqs, kinds, created, received, payloads = cols
        for b in batches:
            n = len(b.reports)
            node_ids += [b.node_id] * n
            incarnations += [b.incarnation] * n
            received += [b.received_at] * n
            for r in b.reports:
                seqs.append(r.seq)
                kinds.append(r.kind)
                created.append(r.created_at)
                payloads.append(json.dumps(r.payload))
        # The driver's own connection, inside the session's transaction (it began it: a savepoint needs one).
        conn = await s.connection()
        pg = (await conn.get_raw_connection()).driver_connection
        stmt = _PG_INSERT_REPORTS
        try:
            async with pg.cursor() as cur:
                await cur.execute("SAVEPOINT store_reports")
                try:
                    await cur.execute(stmt, cols)
                except UniqueViolation:
                    await cur.execute("ROLLBACK TO SAVEPOINT store_reports")
                    stmt = _PG_INSERT_NEW_REPORTS
                    await cur.execute(stmt, cols)
                    new: dict[tuple[int, str], set[int]] = {}
                    for node_id, incarnation, seq in await cur.fetchall():
                        new.setdefault((node_id, incarnation), set()).add(int(seq))
                    return new
                await cur.execute("RELEASE SAVEPOINT store_reports")
        except psycopg.Error as exc:  # the driver's own error, as SQLAlchemy would have raised it
            raise DBAPIError.instance(stmt, None, exc, psycopg.Error) from exc
        return {(b.node_id, b.incarnation): {r.seq for r in b.reports} for b in batches}

    async def max_report_seq(self, node_id: int, incarnation: str = "") -> int:
        """The highest seq stored for one report stream (node, incarnation); 0 if none."""
        async with self.db.sessions() as s:
            res = await s.execute(select(func.max(t.Report.seq)).where(
                t.Report.node_id == node_id, t.Report.incarnation == incarnation))
            return int(res.scalar_one_or_none() or 0)

    async def report_counts(self) -> dict[int, tuple[int, int]]:
        """node_id -> (distinct reports stored, highest seq)."""
        async with self.db.sessions() as s:
            res = await s.execute(
                select(t.Report.node_id, func.count(), func.max(t.Report.seq)).group_by(t.Report.node_id)
            )
            return {int(n): (int(c), int(m)) for n, c, m in res.all()}

    async def reports_of_kind(
        self, kind: str, since: datetime | None = None, received_since: datetime | None = None,
        sites: Iterable[str] | None = None,
    ) -> list[tuple[str, str, StoredReport]]:
        """(site, node, report) of every stored report of ``kind`` created at or after ``since`` (and, if
        given, received by the hub at or after ``received_since``: for reading new reports incrementally;
        and, if given, of nodes of ``sites`` only: a rollout's wave reads its own sites, not the fleet's)."""
        r = t.Report
        q = (
            select(t.Node.site, t.Node.node, r.seq, r.kind, r.created_at, r.payload, r.incarnation, r.received_at)
            .join(t.Node, t.Node.id == r.node_id)
            .where(r.kind == kind)
            .order_by(r.node_id, r.incarnation, r.seq)
        )
        if since is not None:
            q = q.where(r.created_at >= since)
        if received_since is not None:
            q = q.where(r.received_at >= received_since)
        wanted = None if sites is None else set(sites)
        if wanted is not None and not wanted:
            return []
        if wanted is not None and len(wanted) <= 900:  # SQLite allows a limited number of bound parameters
            q = q.where(t.Node.site.in_(sorted(wanted)))
        async with self.db.sessions() as s:
            rows = (await s.execute(q)).all()
        return [(site, node, StoredReport(seq, k, utc(created), payload, inc, utc(received)))
                for site, node, seq, k, created, payload, inc, received in rows
                if wanted is None or site in wanted]

    async def reports(self, node_id: int, kind: str | None = None) -> list[StoredReport]:
        """One node's reports in the order they arrived (then by stream and seq)."""
        async with self.db.sessions() as s:
            q = (select(t.Report).where(t.Report.node_id == node_id)
                 .order_by(t.Report.received_at, t.Report.incarnation, t.Report.seq))
            if kind:
                q = q.where(t.Report.kind == kind)
            return [_report(r) for r in (await s.execute(q)).scalars()]


def _report(r: t.Report) -> StoredReport:
    return StoredReport(r.seq, r.kind, utc(r.created_at), dict(r.payload), r.incarnation, utc(r.received_at))
