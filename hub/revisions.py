"""Applying policy bundles as numbered revisions, and rolling back to one.

An apply validates the bundle again (the CLI already did, but the hub trusts
no client), plans placements against the latest revision's placement (so the
churn penalty keeps replicas where they are), and stores the revision and the
desired objects it publishes in one transaction (`Store.add_revision`): a
bundle is applied as a whole or not at all.

Planning runs in a worker thread (the exact solver may take seconds) and may
overlap with another apply; the store refuses the second writer with
`StaleRevision`, which the admin API answers as ABORTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from hub.placement.api import plan
from hub.placement.build import problem_from_bundle
from hub.placement.diff import PlanDiff, plan_diff
from hub.placement.model import Placement
from hub.policy import Bundle, diff
from hub.publish import MANAGED_KINDS, desired_objects
from hub.store import Store
from hub.store.repo import Published, RevisionRecord, StaleRevision


@dataclass(frozen=True)
class ApplyOutcome:
    revision: Optional[RevisionRecord]
    """The stored revision; the latest one when nothing changed or on a dry run."""
    plan: PlanDiff
    bundle_diff: list[str]
    published: Optional[Published] = None
    unchanged: bool = False


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


def _quiet_plan(bundle: Bundle, previous: Optional[Placement], solver: str, unschedulable: dict | None = None):
    # HiGHS writes its log to stdout from C; keep the hub's stdout for the hub.
    with contextlib.redirect_stdout(io.StringIO()):
        return plan(bundle, previous, solver=solver, unschedulable=unschedulable)  # type: ignore[arg-type]


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
    result = await asyncio.to_thread(_quiet_plan, bundle, previous, solver, await unschedulable_nodes(store))
    before = Bundle.from_json(latest.bundle) if latest else Bundle()
    bundle_lines = diff(before, bundle).lines()
    if latest is not None and latest.digest == bundle.digest() and not (result.diff.changes or result.diff.moves):
        # Same input, same replica counts: a no-op, like `kubectl apply` of an
        # unchanged file. (The solver may pick other GPU indices inside a pool
        # on a re-plan; publishing that would only churn the agents.)
        return ApplyOutcome(latest, result.diff, bundle_lines, unchanged=True)
    if dry_run:
        return ApplyOutcome(latest, result.diff, bundle_lines)
    published = await store.add_revision(
        author=author, message=message, digest=bundle.digest(), bundle=bundle.to_json(), placement=result.placement.to_spec(),
        summary=summary(result.diff, result.placement), objects=desired_objects(bundle, result.placement),
        managed_kinds=MANAGED_KINDS, base=latest_no, now=now,
    )
    return ApplyOutcome(published.revision, result.diff, bundle_lines, published)


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
    )
    return ApplyOutcome(published.revision, plan_, bundle_lines, published)
