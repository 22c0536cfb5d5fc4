"""Applying policy bundles as numbered revisions, and rolling back to one.

An apply validates the bundle again (the CLI already did, but the hub trusts
no client), plans placements against the latest revision's placement (so the
churn penalty keeps replicas where they are), and stores the revision and the
desired objects it publishes in one transaction (`Store.add_revision`): a
bundle is applied as a whole or not at all.

The revision's audit record is written in that same transaction.

Revision-managed objects (`hub.publish.MANAGED_KINDS`) change only through
revisions; the admin API refuses to set or delete them one by one. Whatever
still changed them (a row written straight into the store) is *drift*: `drift`
finds it, `fleet diff` shows it, and an apply of the unchanged bundle
republishes the latest revision's objects instead of answering "unchanged".

Planning runs in a worker thread (the exact solver may take seconds) and may
overlap with another apply; the store refuses the second writer with
`StaleRevision`, which the admin API answers as ABORTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

from hub.placement.api import plan
from hub.placement.build import problem_from_bundle
from hub.placement.diff import PlanDiff, plan_diff
from hub.placement.model import Placement
from hub.policy import Bundle, diff
from hub.publish import MANAGED_KINDS, desired_objects
from hub.store import Store
from hub.store.repo import AuditRecord, DesiredPut, ObjectRecord, Published, RevisionRecord, StaleRevision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApplyOutcome:
    revision: Optional[RevisionRecord]
    """The stored revision; the latest one when nothing changed or on a dry run."""
    plan: PlanDiff
    bundle_diff: list[str]
    published: Optional[Published] = None
    unchanged: bool = False
    drift: tuple[str, ...] = ()
    """How the live revision-managed objects differed from the latest revision before this call."""


# -- drift ------------------------------------------------------------------------


def _changed_paths(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted paths where ``a`` and ``b`` differ (a whole list counts as one value)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _changed_paths(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if a == b else [path or "(whole spec)"]


def drift(desired: Iterable[DesiredPut], live: Iterable[DesiredPut | ObjectRecord],
          kinds: Iterable[str] = MANAGED_KINDS) -> list[str]:
    """One line per live object of ``kinds`` that differs from ``desired`` (what a revision published).

    ``~`` changed, ``+`` present though the revision has no such object, ``-`` missing though the
    revision has it. Empty when the live objects are exactly the revision's.
    """
    kinds = set(kinds)
    want = {(p.kind, p.name): p for p in desired if p.kind in kinds}
    have = {(o.kind, o.name): o for o in live if o.kind in kinds and not getattr(o, "deleted", False)}
    lines: list[str] = []
    for key in sorted(set(want) | set(have)):
        w, h = want.get(key), have.get(key)
        label = f"{key[0]}/{key[1]}"
        if w is None:
            lines.append(f"+ {label}: exists live but not in the revision (added outside revisions)")
        elif h is None:
            lines.append(f"- {label}: in the revision but missing live (removed outside revisions)")
        else:
            paths = _changed_paths(w.spec, h.spec)
            if (w.target_site, w.target_node) != (h.target_site, h.target_node):
                paths.append("target")
            if paths:
                shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
                lines.append(f"~ {label}: changed outside revisions ({shown})")
    return lines


def published_objects(rev: RevisionRecord) -> list[DesiredPut]:
    """The revision-managed objects ``rev`` published (its bundle placed as it was, not re-planned)."""
    return desired_objects(Bundle.from_json(rev.bundle), Placement.from_spec(rev.placement))


async def live_drift(store: Store, rev: RevisionRecord | None) -> list[str]:
    """How the store's live revision-managed objects differ from what ``rev`` published."""
    desired = await asyncio.to_thread(published_objects, rev) if rev is not None else []
    return drift(desired, await store.live_objects())


# -- audit ------------------------------------------------------------------------


def audit_records(action: str, plan_: PlanDiff, drift_: Sequence[str] = ()):
    """A builder of the audit record of a revision, for `Store.add_revision` (same transaction)."""

    def build(p: Published) -> list[AuditRecord]:
        rev = p.revision
        details = {"message": rev.message or f"revision {rev.number}", "digest": rev.digest,
                   "rollbackOf": rev.rollback_of, "objectsPublished": len(p.upserted),
                   "objectsDeleted": len(p.deleted), "summary": rev.summary, "changes": plan_.lines()[:50]}
        if drift_:
            details["driftRepaired"] = list(drift_)[:50]
        return [AuditRecord(at=rev.created_at, actor=rev.author, action=action, subject=f"revision/{rev.number}",
                            details=details)]

    return build


def summary(diff_: PlanDiff, placement: Placement) -> dict:
    after = diff_.after
    return {
        "replicas": sum(a.replicas for a in placement.assignments),
        "gpus": after.gpus,
        "costUsdPerHour": round(after.cost_usd_h, 4),
        "carbonKgPerHour": round(after.carbon_kg_h, 6),
        "sloAttainment": round(after.slo_attainment, 4),
        "unplaced": len(placement.unplaced),
        "solver": placement.solver,
    }


def _quiet_plan(bundle: Bundle, previous: Optional[Placement], solver: str, unschedulable: dict | None = None,
                reported_gpus: dict | None = None):
    # HiGHS writes its log to stdout from C; keep the hub's stdout for the hub.
    with contextlib.redirect_stdout(io.StringIO()):
        return plan(bundle, previous, solver=solver, unschedulable=unschedulable,  # type: ignore[arg-type]
                    reported_gpus=reported_gpus)


#: Where an agent's GPU figures come from when it looked for them (NVML, torch, the Node object).
_MEASURED_SOURCES = ("nvml", "torch", "kubernetes")


def reported_gpus(inventory: dict) -> int | None:
    """GPUs an agent's inventory reports, or None when it reports no GPU facts at all (no GPU
    listed and none looked for: an agent started with neither a probe nor ``--gpu``)."""
    gpus = inventory.get("gpus") or []
    if not gpus and inventory.get("gpu_source") not in _MEASURED_SOURCES:
        return None
    return sum(int(g.get("count") or 0) for g in gpus)


async def node_gpus(store: Store) -> dict[tuple[str, str], int]:
    """(site, node) -> GPUs its agent last reported (the planner caps the node's pools there)."""
    out = {}
    for n in await store.list_nodes():
        count = reported_gpus(n.inventory)
        if count is not None:
            out[(n.site, n.node)] = count
    return out


async def unschedulable_nodes(store: Store) -> dict[tuple[str, str], str]:
    """(site, node) -> why, for nodes whose agent reports them unschedulable (cordoned in Kubernetes)."""
    return {(n.site, n.node): "node is cordoned (unschedulable, as its agent reports)"
            for n in await store.list_nodes() if n.inventory.get("unschedulable")}


async def apply_bundle(
    store: Store,
    bundle: Bundle,
    *,
    author: str,
    message: str,
    base: Optional[int],
    now: datetime,
    dry_run: bool = False,
    solver: str = "auto",
) -> ApplyOutcome:
    """Plan ``bundle`` against the latest revision and (unless ``dry_run``) store and publish it.

    Raises `hub.store.repo.StaleRevision` when ``base`` is given and is not the
    latest revision, before or after planning.
    """
    latest = await store.get_revision()
    latest_no = latest.number if latest else 0
    if base is not None and base != latest_no:
        raise StaleRevision(base, latest_no)
    previous = Placement.from_spec(latest.placement) if latest else None
    result = await asyncio.to_thread(_quiet_plan, bundle, previous, solver, await unschedulable_nodes(store),
                                     await node_gpus(store))
    before = Bundle.from_json(latest.bundle) if latest else Bundle()
    bundle_lines = diff(before, bundle).lines()
    drifted = tuple(await live_drift(store, latest))
    if latest is not None and latest.digest == bundle.digest() and not (result.diff.changes or result.diff.moves):
        # Same input, same replica counts: a no-op, like `kubectl apply` of an
        # unchanged file. (The solver may pick other GPU indices inside a pool
        # on a re-plan; publishing that would only churn the agents.)
        if not drifted:
            return ApplyOutcome(latest, result.diff, bundle_lines, unchanged=True)
        # The live objects were changed behind the revisions' back: republish the latest
        # revision's objects exactly (its placement, not a re-plan) as a new, audited revision.
        if dry_run:
            return ApplyOutcome(latest, result.diff, bundle_lines, drift=drifted)
        placement = Placement.from_spec(latest.placement)
        published = await store.add_revision(
            author=author, message=message or f"republish revision {latest.number}: live objects had drifted",
            digest=latest.digest, bundle=latest.bundle, placement=latest.placement, summary=dict(latest.summary),
            objects=desired_objects(bundle, placement), managed_kinds=MANAGED_KINDS, base=latest_no, now=now,
            audit=audit_records("revision.apply", result.diff, drifted),
        )
        return ApplyOutcome(published.revision, result.diff, bundle_lines, published, drift=drifted)
    if dry_run:
        return ApplyOutcome(latest, result.diff, bundle_lines, drift=drifted)
    unverified = [f"{n}:{v.name}" for n, m in sorted(bundle.models.items()) for v in m.spec.versions
                  if v.integrity == "none"]
    if unverified:
        log.warning("apply by %s: agents will serve %d model version(s) with unverified weights "
                    "(integrity: none): %s", author, len(unverified), ", ".join(unverified))
    published = await store.add_revision(
        author=author, message=message, digest=bundle.digest(), bundle=bundle.to_json(), placement=result.placement.to_spec(),
        summary=summary(result.diff, result.placement), objects=desired_objects(bundle, result.placement),
        managed_kinds=MANAGED_KINDS, base=latest_no, now=now, audit=audit_records("revision.apply", result.diff, drifted),
    )
    return ApplyOutcome(published.revision, result.diff, bundle_lines, published, drift=drifted)


async def rollback(store: Store, to: int, *, author: str, message: str, base: Optional[int], now: datetime) -> ApplyOutcome:
    """Store a new revision with the bundle and placement of revision ``to``, and publish them.

    The placement comes back exactly as it was (not re-planned), so a rollback
    restores what ran then. Raises LookupError when ``to`` does not exist.
    """
    target = await store.get_revision(to)
    if target is None:
        raise LookupError(f"revision {to} does not exist")
    latest = await store.get_revision()
    assert latest is not None  # `target` exists
    if base is not None and base != latest.number:
        raise StaleRevision(base, latest.number)
    bundle = Bundle.from_json(target.bundle)
    placement = Placement.from_spec(target.placement)
    current = Placement.from_spec(latest.placement)
    plan_ = plan_diff(current, placement, problem_from_bundle(bundle, at=now))
    bundle_lines = diff(Bundle.from_json(latest.bundle), bundle).lines()
    published = await store.add_revision(
        author=author, message=message or f"rollback to revision {to}", digest=target.digest, bundle=target.bundle,
        placement=target.placement, summary=summary(plan_, placement), objects=desired_objects(bundle, placement),
        managed_kinds=MANAGED_KINDS, base=latest.number, now=now, rollback_of=to,
        audit=audit_records("revision.rollback", plan_),
    )
    return ApplyOutcome(published.revision, plan_, bundle_lines, published)
