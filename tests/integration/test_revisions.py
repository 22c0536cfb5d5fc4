"""Policy revisions on SQLite and PostgreSQL: apply, no-op, stale base, atomicity, rollback."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.placement.model import Placement
from hub.policy import Bundle, load_bundle
from hub.publish import MANAGED_KINDS
from hub.revisions import apply_bundle, rollback
from hub.store.repo import DesiredPut, StaleRevision

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def shipped() -> Bundle:
    return load_bundle([ROOT / "fleet_configs", ROOT / "policies"])


def without_service(bundle: Bundle, name: str) -> Bundle:
    items = [r for r in json.loads(bundle.to_json()) if not (r["kind"] == "Service" and r["metadata"]["name"] == name)]
    return Bundle.from_json(json.dumps(items))


async def objects_by_key(store) -> dict[tuple[str, str], object]:
    return {(o.kind, o.name): o for o in await store.live_objects() if o.kind in MANAGED_KINDS}


async def test_apply_publishes_each_node_its_own_placement(store, shipped):
    out = await apply_bundle(store, shipped, author="ana", message="first", base=0, now=T0)
    assert out.revision is not None and out.revision.number == 1 and out.revision.author == "ana"
    objs = await objects_by_key(store)
    placement = Placement.from_spec(out.revision.placement)
    nodes = {(a.site, a.node) for a in placement.assignments}
    placements = [o for (k, _), o in objs.items() if k == "Placement"]
    assert {(o.target_site, o.target_node) for o in placements} == nodes  # one per node, targeted at it alone
    for o in placements:
        assert {a["site"] for a in o.spec["assignments"]} == {o.target_site}
        assert all(a["priorityClass"] and a["dataClass"] and a["ttftSloS"] > 0 for a in o.spec["assignments"])
        assert o.spec["costModel"]["gpuPricePerHourUsd"] > 0 and o.spec["costModel"]["gridGco2PerKwh"] > 0
    assert {n for k, n in objs if k == "ResidencyPolicy"} == set(shipped.residency_policies)
    assert {n for k, n in objs if k == "PriorityClass"} == set(shipped.priority_classes)
    assert out.revision.summary["replicas"] == sum(a.replicas for a in placement.assignments) > 0


async def test_same_bundle_again_is_a_no_op(store, shipped):
    first = await apply_bundle(store, shipped, author="ana", message="", base=None, now=T0)
    versions = {k: o.version for k, o in (await objects_by_key(store)).items()}
    again = await apply_bundle(store, shipped, author="ana", message="", base=None, now=T0)
    assert again.unchanged and again.revision.number == first.revision.number
    assert {k: o.version for k, o in (await objects_by_key(store)).items()} == versions
    assert len(await store.list_revisions()) == 1


async def test_changed_bundle_touches_only_what_changed(store, shipped):
    await apply_bundle(store, shipped, author="ana", message="", base=0, now=T0)
    before = await objects_by_key(store)
    smaller = without_service(shipped, "assistant-de")
    out = await apply_bundle(store, smaller, author="bo", message="drop de", base=1, now=T0)
    assert out.revision.number == 2
    assert any("Service/assistant-de" in line for line in out.bundle_diff)
    after = await objects_by_key(store)
    de_nodes = {o.name for o in before.values() if o.kind == "Placement"
                and any(a["service"] == "assistant-de" for a in o.spec["assignments"])}
    assert de_nodes
    for key, obj in after.items():
        if key[1] not in de_nodes and key in before and before[key].spec == obj.spec:
            assert obj.version == before[key].version  # unchanged objects keep their version
    for name in de_nodes:
        o = after.get(("Placement", name))
        assert o is None or all(a["service"] != "assistant-de" for a in o.spec["assignments"])
    assert out.published is not None and out.published.unchanged > 0


async def test_stale_base_changes_nothing(store, shipped):
    await apply_bundle(store, shipped, author="ana", message="", base=0, now=T0)
    objs = await objects_by_key(store)
    with pytest.raises(StaleRevision) as err:
        await apply_bundle(store, without_service(shipped, "assistant-de"), author="bo", message="", base=0, now=T0)
    assert (err.value.expected, err.value.actual) == (0, 1)
    assert [r.number for r in await store.list_revisions()] == [1]
    assert {k: o.version for k, o in (await objects_by_key(store)).items()} == {k: o.version for k, o in objs.items()}


async def test_racing_writers_one_wins(store):
    async def write(author: str):
        return await store.add_revision(
            author=author, message="", digest="d", bundle="[]", placement={}, summary={},
            objects=[DesiredPut("PriorityClass", f"pc-{author}", {"value": 1})], managed_kinds=MANAGED_KINDS,
            base=0, now=T0,
        )

    results = await asyncio.gather(write("a"), write("b"), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Published", "StaleRevision"]
    winner = next(r for r in results if not isinstance(r, Exception)).revision.author
    assert [r.author for r in await store.list_revisions()] == [winner]
    assert {o.name for o in await store.live_objects("PriorityClass")} == {f"pc-{winner}"}


async def test_a_failing_publish_leaves_no_revision_and_no_object(store):
    good = DesiredPut("PriorityClass", "ok", {"value": 1})
    bad = DesiredPut("PriorityClass", "zz-bad", {"value": {1, 2}})  # a set is not JSON: fails mid-transaction
    with pytest.raises(Exception):  # noqa: B017 - the driver's serialisation error, whichever it is
        await store.add_revision(author="a", message="", digest="d", bundle="[]", placement={}, summary={},
                                 objects=[good, bad], managed_kinds=MANAGED_KINDS, base=0, now=T0)
    assert await store.list_revisions() == []
    assert await store.live_objects() == []
    with pytest.raises(ValueError, match="may only publish"):
        await store.add_revision(author="a", message="", digest="d", bundle="[]", placement={}, summary={},
                                 objects=[DesiredPut("Config", "x", {})], managed_kinds=MANAGED_KINDS, base=0, now=T0)
    assert await store.list_revisions() == []


async def test_rollback_restores_the_old_placement_exactly(store, shipped):
    one = await apply_bundle(store, shipped, author="ana", message="", base=0, now=T0)
    objs_one = {k: o.spec for k, o in (await objects_by_key(store)).items()}
    await apply_bundle(store, without_service(shipped, "assistant-de"), author="bo", message="", base=1, now=T0)
    assert {k: o.spec for k, o in (await objects_by_key(store)).items()} != objs_one
    back = await rollback(store, 1, author="cy", message="", base=2, now=T0)
    assert (back.revision.number, back.revision.rollback_of) == (3, 1)
    assert back.revision.placement == one.revision.placement
    assert back.revision.digest == one.revision.digest
    assert {k: o.spec for k, o in (await objects_by_key(store)).items()} == objs_one
    with pytest.raises(LookupError):
        await rollback(store, 9, author="cy", message="", base=None, now=T0)


async def test_apply_leaves_out_a_node_its_agent_reports_cordoned(store, shipped):
    from hub.placement.api import plan

    free = plan(shipped, solver="greedy").placement
    site, node = next((a.site, a.node) for a in free.assignments if a.service == "assistant-de")
    await store.register_node(site, node, "test", {"unschedulable": True}, T0)
    out = await apply_bundle(store, shipped, author="ana", message="", base=0, now=T0, solver="greedy")
    placed = Placement.from_spec(out.revision.placement)
    assert all((a.site, a.node) != (site, node) for a in placed.assignments)
    targets = {(o.target_site, o.target_node) for (k, _), o in (await objects_by_key(store)).items() if k == "Placement"}
    assert (site, node) not in targets


async def test_a_revision_versions_policies_before_placements_and_locates_every_site(store, shipped):
    """Within one revision every policy object gets a lower version than any placement (the store used to
    number them in (kind, name) order, Placements first), and every site gets its SiteLocation."""
    await apply_bundle(store, shipped, author="ana", message="", base=0, now=T0)
    objs = await objects_by_key(store)
    policies = [o.version for (k, _), o in objs.items() if k in ("SiteLocation", "ResidencyPolicy", "PriorityClass")]
    placements = [o.version for (k, _), o in objs.items() if k == "Placement"]
    assert placements and max(policies) < min(placements)
    locations = {n: o for (k, n), o in objs.items() if k == "SiteLocation"}
    assert set(locations) == set(shipped.sites)  # sites without a placement too
    for name, o in locations.items():
        assert (o.target_site, o.target_node) == (name, "")
        assert o.spec["country"] == shipped.sites[name].spec.country
    # a tightened policy in a later revision also comes before the placements it changes
    items = json.loads(shipped.to_json())
    for r in items:
        if r["kind"] == "ResidencyPolicy" and r["metadata"]["name"] == "germany-only":
            r["spec"]["deny"] = {"sites": ["fra-1"]}
    await apply_bundle(store, Bundle.from_json(json.dumps(items)), author="bo", message="", base=1, now=T0)
    after = await objects_by_key(store)
    changed = {k: o.version for k, o in after.items() if k in objs and o.version != objs[k].version}
    assert ("ResidencyPolicy", "germany-only") in changed
    changed_placements = [o.version for (k, n), o in after.items() if k == "Placement"
                          and ((k, n) not in objs or o.version != objs[(k, n)].version)]
    assert changed_placements and changed[("ResidencyPolicy", "germany-only")] < min(changed_placements)
