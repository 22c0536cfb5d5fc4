"""Policies take effect before planning (issue 10, item 2), on SQLite and PostgreSQL.

An apply that changes policy objects stores them as a revision of their own and publishes it before
the (slow) placement planning starts; the placements follow in the next revision. The planner is
replaced by one that blocks until the test lets it go, so "before planning finishes" is an ordering
the test controls, not a race it times.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub import revisions
from hub.placement.model import Placement
from hub.policy import Bundle, load_bundle
from hub.publish import MANAGED_KINDS, desired_objects
from hub.revisions import apply_bundle, drift, live_drift, published_objects
from protos.fleet.v1 import admin_pb2
from tests.integration.test_link import WAIT, eventually, make_fleet, no_leaked_tasks, pki  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
POLICY = "germany-only"


@pytest.fixture(scope="module")
def bundles() -> tuple[Bundle, Bundle]:
    """(loose, strict): the shipped bundle with germany-only allowing anywhere, and as shipped (DE only)."""
    strict = load_bundle([ROOT / "fleet_configs", ROOT / "policies"])
    items = json.loads(strict.to_json())
    for r in items:
        if r["kind"] == "ResidencyPolicy" and r["metadata"]["name"] == POLICY:
            r["spec"]["allow"] = {"anywhere": True}
    return Bundle.from_json(json.dumps(items)), strict


class BlockedPlanner:
    """A planner that blocks (in its worker thread) until released, then plans for real."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self.real = revisions._quiet_plan

    def __call__(self, *args):
        self.calls += 1
        self.entered.set()
        if not self.release.wait(60):
            raise TimeoutError("the test never released the planner")
        return self.real(*args)


class Crash(BaseException):
    """Stands for the hub process dying while it plans (nothing after it runs)."""


def crashing_planner(*args):
    raise Crash()


async def live_policy(store, name: str = POLICY):
    return next(o for o in await store.live_objects("ResidencyPolicy") if o.name == name)


async def test_policies_are_stored_and_published_before_planning_finishes(store, bundles):
    loose, strict = bundles
    first = await apply_bundle(store, loose, author="ana", message="open", base=0, now=T0, solver="greedy")
    placements_before = {o.name: (o.version, o.spec) for o in await store.live_objects("Placement")}
    planner, published = BlockedPlanner(), []
    task = asyncio.create_task(apply_bundle(store, strict, author="bo", message="tighten", base=1, now=T0,
                                            solver="greedy", planner=planner, on_published=published.append))
    try:
        await eventually(planner.entered.is_set, what="planning to start")
        # Planning is in progress (blocked): the tightened policy is already stored and was published.
        assert not task.done()
        assert [p.revision.number for p in published] == [2]
        revs = await store.list_revisions()
        assert [r.number for r in revs] == [2, 1]
        step = revs[0]
        assert step.summary["step"] == "policies" and step.digest == strict.digest()
        assert "step 1/2" in step.message and "tighten" in step.message
        assert (await live_policy(store)).spec["allow"]["anywhere"] is False
        # placements stay as they were until the re-plan (the door refuses what the policy forbids)
        assert {o.name: (o.version, o.spec) for o in await store.live_objects("Placement")} == placements_before
        assert Placement.from_spec(step.placement).assignments == Placement.from_spec(first.revision.placement).assignments
        # the policy step is a consistent revision: it says exactly what is live
        assert await live_drift(store, step) == []
    finally:
        planner.release.set()
    out = await task
    assert planner.calls == 1
    assert out.policy_step is not None and out.policy_step.revision.number == 2
    assert [(o.kind, o.name) for o in out.policy_step.upserted] == [("ResidencyPolicy", POLICY)]
    assert out.revision.number == 3 and "step 2/2" in out.revision.message and "step" not in out.revision.summary
    assert [p.revision.number for p in published] == [2, 3]
    # the re-plan moved the germany-only service's replicas off the sites it now forbids
    assert drift(desired_objects(strict, Placement.from_spec(out.revision.placement)), await store.live_objects()) == []
    audit = {a.subject: a for a in await store.list_audit()}
    assert audit["revision/2"].action == "revision.apply.policies"
    assert f"~ ResidencyPolicy/{POLICY}" in audit["revision/2"].details["changes"]
    assert audit["revision/3"].action == "revision.apply"
    # the policy has a lower version than anything the placement revision changed
    assert all(o.version > out.policy_step.upserted[0].version for o in out.published.upserted)


async def test_an_apply_that_changes_no_policy_stays_one_revision(store, bundles):
    _, strict = bundles
    await apply_bundle(store, strict, author="ana", message="", base=0, now=T0, solver="greedy")
    items = [r for r in json.loads(strict.to_json())
             if not (r["kind"] == "Service" and r["metadata"]["name"] == "assistant-de")]
    out = await apply_bundle(store, Bundle.from_json(json.dumps(items)), author="bo", message="", base=1, now=T0,
                             solver="greedy")
    assert out.policy_step is None and out.revision.number == 2
    assert [r.number for r in await store.list_revisions()] == [2, 1]


async def test_a_crash_between_the_two_revisions_leaves_a_consistent_store_that_the_next_apply_completes(
        store, bundles):
    loose, strict = bundles
    await apply_bundle(store, loose, author="ana", message="", base=0, now=T0, solver="greedy")
    with pytest.raises(Crash):
        await apply_bundle(store, strict, author="bo", message="", base=1, now=T0, solver="greedy",
                           planner=crashing_planner)
    # The store holds the policy step: policies tightened, placements as before, and nothing else.
    step = await store.get_revision()
    assert step.number == 2 and revisions.pending_placement(step)
    assert (await live_policy(store)).spec["allow"]["anywhere"] is False
    assert await live_drift(store, step) == []
    assert drift(published_objects(step), await store.live_objects(), MANAGED_KINDS) == []
    # The next apply of the same files is not "unchanged": it plans and publishes the placements.
    out = await apply_bundle(store, strict, author="bo", message="", base=2, now=T0, solver="greedy")
    assert not out.unchanged and out.policy_step is None and out.revision.number == 3
    assert not revisions.pending_placement(out.revision)
    assert await live_drift(store, out.revision) == []
    # ... and after that, the same files again are a no-op.
    again = await apply_bundle(store, strict, author="bo", message="", base=None, now=T0, solver="greedy")
    assert again.unchanged and again.revision.number == 3


# -- end to end: the admin API, a real agent ---------------------------------------------------------


async def test_an_agent_holds_the_tightened_policy_while_the_hub_still_plans(make_fleet, bundles, monkeypatch):
    loose, strict = bundles
    fleet = await make_fleet()
    await fleet.admin.Apply(admin_pb2.ApplyRequest(bundle_json=loose.to_json(), author="ana", solver="greedy"),
                            metadata=fleet.md, timeout=60)
    agent = fleet.start_agent("iad-1", "n1")
    await agent.resynced()

    def held_policy():
        return next((o for o in agent.state.objects() if o.kind == "ResidencyPolicy" and o.name == POLICY), None)

    assert held_policy().spec["allow"]["anywhere"] is True
    planner = BlockedPlanner()

    async def blocked_plan(*args):
        return await asyncio.to_thread(planner, *args)

    monkeypatch.setattr(revisions, "plan_placements", blocked_plan)  # the admin API's apply plans with this
    call = fleet.admin.Apply(admin_pb2.ApplyRequest(bundle_json=strict.to_json(), author="bo", solver="greedy"),
                             metadata=fleet.md, timeout=60)
    try:
        await eventually(planner.entered.is_set, what="planning to start")
        await eventually(lambda: held_policy().spec["allow"]["anywhere"] is False,
                         what="the agent to hold the tightened policy")
        assert not call.done()  # the hub is still planning
        revs = (await fleet.admin.ListRevisions(admin_pb2.ListRevisionsRequest(), metadata=fleet.md, timeout=WAIT)).revisions
        assert [r.number for r in revs] == [2, 1] and "step 1/2" in revs[0].message
    finally:
        planner.release.set()
    resp = await call
    assert planner.calls == 1
    assert resp.policy_revision.number == 2 and resp.revision.number == 3
    assert resp.policy_objects_published == 1
    revs = (await fleet.admin.ListRevisions(admin_pb2.ListRevisionsRequest(), metadata=fleet.md, timeout=WAIT)).revisions
    assert [r.number for r in revs] == [3, 2, 1]
