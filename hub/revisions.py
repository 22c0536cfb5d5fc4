"""Applying policy bundles as numbered revisions, and rolling back to one.

An apply validates the bundle again (the CLI already did, but the hub trusts
no client), plans placements against the latest revision's placement (so the
churn penalty keeps replicas where they are), and stores the revision and the
desired objects it publishes in one transaction (`Store.add_revision`): a
bundle is applied as a whole or not at all.

The revision's audit record is written in that same transaction.

Policies take effect before planning. Planning may take seconds (the greedy
solver ~2 s on the shipped bundle); a tightened ResidencyPolicy must not wait
for it. So when an apply changes any policy object (`hub.publish.POLICY_KINDS`:
SiteLocation, ResidencyPolicy, PriorityClass) of a fleet that already has a
revision, it stores two revisions:

1. the *policy step*: the new bundle with the previous placement carried over
   (`hub.publish.carried_placement`, nothing re-planned), published at once
   (``on_published``), so agents hold the new policies while the hub plans.
   Fail-closed holds in between: the agent's door checks every request against
   the policy it holds whatever the placements say, so a replica left at a
   now-forbidden site has its requests refused until step 2 removes it.
   Its summary says ``"step": "policies"``;
2. the *placement step*: the same bundle with the new plan, based on step 1.

Both are audited and listed by `fleet get revisions`. Each is a consistent
(bundle, placement) pair that says exactly what it published, so if the hub
dies between the two, the store holds step 1 (policies tightened, placements
as before) and drift checks, rollbacks and rollouts work on it as on any
revision. The *next apply* completes it: an apply over a policy step is never
answered "unchanged" (`pending_placement`), even of the same files.

Revision-managed objects (`hub.publish.MANAGED_KINDS`) change only through
revisions; the admin API refuses to set or delete them one by one. Whatever
still changed them (a row written straight into the store) is *drift*: `drift`
finds it, `fleet diff` shows it, and an apply of the unchanged bundle
republishes the latest revision's objects instead of answering "unchanged".

Planning runs in a worker process (`hub.plan_pool`; the exact solver may take seconds) and may
overlap with another apply; the store refuses the second writer with
`StaleRevision`, which the admin API answers as ABORTED.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Optional

from hub import plan_pool
from hub.placement.api import plan
from hub.placement.build import problem_from_bundle
from hub.placement.diff import PlanDiff, plan_diff
from hub.placement.model import Placement
from hub.policy import Bundle, diff
from hub.publish import MANAGED_KINDS, POLICY_KINDS, carried_placement, desired_objects
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
    policy_step: Optional[Published] = None
    """The revision that published this apply's policy objects before planning, when it changed any."""


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


def published_objects(rev: RevisionRecord, bundle: Bundle | None = None) -> list[DesiredPut]:
    """The revision-managed objects ``rev`` published (its bundle placed as it was, not re-planned).
    ``bundle``: ``rev``'s bundle when the caller has already read it."""
    return desired_objects(bundle or stored_bundle(rev), Placement.from_spec(rev.placement))


_BUNDLES: dict[str, Bundle] = {}
"""Bundles read back from revisions, by digest (a few): the latest revision's bundle is read by every
apply, and validating it again costs as much as the policy step itself."""


_BUNDLES_LOCK = threading.Lock()  # read from worker threads (asyncio.to_thread)


def stored_bundle(rev: RevisionRecord) -> Bundle:
    """``rev``'s bundle, validated (`Bundle.from_json`) once per digest. Callers must not change it."""
    with _BUNDLES_LOCK:
        got = _BUNDLES.get(rev.digest)
    if got is None:
        got = Bundle.from_json(rev.bundle)
        with _BUNDLES_LOCK:
            while len(_BUNDLES) >= 4:
                _BUNDLES.pop(next(iter(_BUNDLES)))
            _BUNDLES[rev.digest] = got
    return got


async def live_drift(store: Store, rev: RevisionRecord | None, live: Sequence[ObjectRecord] | None = None) -> list[str]:
    """How the store's live revision-managed objects (or ``live``) differ from what ``rev`` published."""
    desired = await asyncio.to_thread(published_objects, rev) if rev is not None else []
    return drift(desired, await store.live_objects() if live is None else live)


def policy_changes(desired: Iterable[DesiredPut], live: Iterable[ObjectRecord | DesiredPut]) -> list[str]:
    """One line per policy object (`POLICY_KINDS`) that ``desired`` adds, changes or removes among ``live``."""
    want = {(p.kind, p.name): p for p in desired if p.kind in POLICY_KINDS}
    have = {(o.kind, o.name): o for o in live if o.kind in POLICY_KINDS and not getattr(o, "deleted", False)}
    lines = []
    for key in sorted(set(want) | set(have)):
        w, h = want.get(key), have.get(key)
        if w is None:
            lines.append(f"- {key[0]}/{key[1]}")
        elif h is None:
            lines.append(f"+ {key[0]}/{key[1]}")
        elif (w.spec, w.target_site, w.target_node) != (h.spec, h.target_site, h.target_node):
            lines.append(f"~ {key[0]}/{key[1]}")
    return lines


def pending_placement(rev: RevisionRecord | None) -> bool:
    """Whether ``rev`` is a policy step whose placement step was never stored (the hub stopped between)."""
    return rev is not None and rev.summary.get("step") == "policies"


# -- audit ------------------------------------------------------------------------


def audit_records(action: str, plan_: PlanDiff | Sequence[str], drift_: Sequence[str] = ()):
    """A builder of the audit record of a revision, for `Store.add_revision` (same transaction).

    ``plan_`` is the placement diff, or for a policy step the lines of what changed."""
    changes = list(plan_) if not isinstance(plan_, PlanDiff) else plan_.lines()

    def build(p: Published) -> list[AuditRecord]:
        rev = p.revision
        details = {"message": rev.message or f"revision {rev.number}", "digest": rev.digest,
                   "rollbackOf": rev.rollback_of, "objectsPublished": len(p.upserted),
                   "objectsDeleted": len(p.deleted), "summary": rev.summary, "changes": changes[:50]}
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


async def plan_placements(bundle: Bundle, previous: Optional[Placement], solver: str,
                          unschedulable: dict | None = None, reported_gpus: dict | None = None):
    """`hub.placement.api.plan`, in the planning process (`hub.plan_pool`): the hub's event loop keeps
    the GIL to itself while it fans out what was just published."""
    return await plan_pool.run(_quiet_plan, bundle, previous, solver, unschedulable, reported_gpus)


def ready() -> None:
    """Nothing: `hub.plan_pool.warm` runs it so that the planning process has imported this module
    (and through it the placement code) before the first apply."""


async def unschedulable_nodes(store: Store) -> dict[tuple[str, str], str]:
    """(site, node) -> why, for nodes whose agent reports them unschedulable (cordoned in Kubernetes)."""
    return {(n.site, n.node): "node is cordoned (unschedulable, as its agent reports)"
            for n in await store.list_nodes() if n.inventory.get("unschedulable")}


Planner = Callable[[Bundle, Optional[Placement], str, "dict | None", "dict | None"], Any]
"""(bundle, previous placement, solver, unschedulable, reported GPUs) -> `hub.placement.api.PlanResult`;
run in a thread."""


def _step_message(message: str, step: str) -> str:
    return f"{message} [{step}]" if message else step


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
    on_published: Callable[[Published], None] | None = None,
    planner: Planner | None = None,
) -> ApplyOutcome:
    """Plan ``bundle`` against the latest revision and (unless ``dry_run``) store and publish it.

    When the bundle changes policy objects, they are stored and published first, in a revision of
    their own, before planning starts (see the module docstring). ``on_published`` is called after
    each stored revision (the admin API pokes the broker with it, so agents get the policies while
    the hub plans). ``planner`` replaces the solver call, run in a thread (tests inject a slow one);
    by default planning runs in the planning process (`plan_placements`).

    Raises `hub.store.repo.StaleRevision` when ``base`` is given and is not the
    latest revision, before or after planning.
    """
    latest = await store.get_revision()
    latest_no = latest.number if latest else 0
    if base is not None and base != latest_no:
        raise StaleRevision(base, latest_no)
    previous = Placement.from_spec(latest.placement) if latest else None
    text = bundle.to_json()
    digest = hashlib.sha256(text.encode()).hexdigest()  # = bundle.digest(), without serialising twice
    before = await asyncio.to_thread(stored_bundle, latest) if latest else Bundle()
    published_before = await asyncio.to_thread(published_objects, latest, before) if latest is not None else []
    drifted = tuple(drift(published_before, await store.live_objects()))
    policy_step: Optional[Published] = None
    if not dry_run and latest is not None and previous is not None:
        policy_step = await _publish_policies_first(store, bundle, previous, latest, published_before, author=author,
                                                    message=message, now=now, drifted=drifted,
                                                    text=text, digest=digest)
        if policy_step is not None:
            if on_published is not None:
                on_published(policy_step)
            latest_no = policy_step.revision.number
    unschedulable, gpus = await unschedulable_nodes(store), await node_gpus(store)
    if planner is None:
        result = await plan_placements(bundle, previous, solver, unschedulable, gpus)
    else:
        result = await asyncio.to_thread(planner, bundle, previous, solver, unschedulable, gpus)
    # Computed late: the policy step need not wait for it, nor the fan-out of the policy step compete with it.
    bundle_lines = diff(before, bundle).lines()
    pending = pending_placement(latest) or policy_step is not None
    if latest is not None and latest.digest == digest and not (result.diff.changes or result.diff.moves):
        # Same input, same replica counts: a no-op, like `kubectl apply` of an
        # unchanged file. (The solver may pick other GPU indices inside a pool
        # on a re-plan; publishing that would only churn the agents.)
        if not drifted and not pending:
            return ApplyOutcome(latest, result.diff, bundle_lines, unchanged=True)
        # The live objects were changed behind the revisions' back (or a policy step awaits its
        # placements): republish the latest revision's placement exactly (not a re-plan) as a new,
        # audited revision.
        if dry_run:
            return ApplyOutcome(latest, result.diff, bundle_lines, drift=drifted)
        placement = Placement.from_spec(latest.placement)
        summary_ = {k: v for k, v in latest.summary.items() if k != "step"}
        why = "live objects had drifted" if drifted else "placements of the policy step"
        published = await store.add_revision(
            author=author, message=(_step_message(message, f"step 2/2: placements (policies in revision {latest_no})")
                                    if policy_step else message or f"republish revision {latest.number}: {why}"),
            digest=latest.digest, bundle=latest.bundle, placement=latest.placement, summary=summary_,
            objects=desired_objects(bundle, placement), managed_kinds=MANAGED_KINDS, base=latest_no, now=now,
            audit=audit_records("revision.apply", result.diff, () if policy_step else drifted),
        )
        if on_published is not None:
            on_published(published)
        return ApplyOutcome(published.revision, result.diff, bundle_lines, published, drift=drifted,
                            policy_step=policy_step)
    if dry_run:
        return ApplyOutcome(latest, result.diff, bundle_lines, drift=drifted)
    unverified = [f"{n}:{v.name}" for n, m in sorted(bundle.models.items()) for v in m.spec.versions
                  if v.integrity == "none"]
    if unverified:
        log.warning("apply by %s: agents will serve %d model version(s) with unverified weights "
                    "(integrity: none): %s", author, len(unverified), ", ".join(unverified))
    published = await store.add_revision(
        author=author,
        message=(_step_message(message, f"step 2/2: placements (policies in revision {latest_no})")
                 if policy_step else message),
        digest=digest, bundle=text, placement=result.placement.to_spec(),
        summary=summary(result.diff, result.placement), objects=desired_objects(bundle, result.placement),
        managed_kinds=MANAGED_KINDS, base=latest_no, now=now,
        audit=audit_records("revision.apply", result.diff, () if policy_step else drifted),
    )
    if on_published is not None:
        on_published(published)
    return ApplyOutcome(published.revision, result.diff, bundle_lines, published, drift=drifted,
                        policy_step=policy_step)


async def _publish_policies_first(
    store: Store, bundle: Bundle, previous: Placement, latest: RevisionRecord, published_before: Sequence[DesiredPut],
    *, author: str, message: str, now: datetime, drifted: Sequence[str], text: str, digest: str,
) -> Optional[Published]:
    """Store the policy step (``bundle`` with ``previous`` carried over) when ``bundle``'s policy objects
    differ from those the latest revision published (``published_before``); None (nothing stored) when
    they do not. (Live objects changed behind the revisions' back are repaired as before: by one revision.)"""
    carried = carried_placement(bundle, previous)
    objects = await asyncio.to_thread(desired_objects, bundle, carried)
    changed = policy_changes(objects, published_before)
    if not changed:
        return None
    step_summary = {k: v for k, v in latest.summary.items() if k != "step"}
    step_summary["step"] = "policies"
    step_summary["replicas"] = sum(a.replicas for a in carried.assignments)
    return await store.add_revision(
        author=author, message=_step_message(message, "step 1/2: policies, published before placement planning"),
        digest=digest, bundle=text, placement=carried.to_spec(), summary=step_summary,
        objects=objects, managed_kinds=MANAGED_KINDS, base=latest.number, now=now,
        audit=audit_records("revision.apply.policies", changed, drifted),
    )


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
