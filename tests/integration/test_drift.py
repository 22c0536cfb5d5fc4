"""Revision-managed objects change only through revisions; drift is found and repaired, and a revision's
audit record is written in the revision's own transaction (issue 10, items 4 and 8). SQLite and PostgreSQL."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.policy import Bundle, load_bundle
from hub.publish import MANAGED_KINDS
from hub.revisions import apply_bundle, drift, live_drift, published_objects, rollback
from hub.store.repo import AuditRecord, DesiredPut

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def shipped() -> Bundle:
    return load_bundle([ROOT / "fleet_configs", ROOT / "policies"])


async def managed(store) -> dict[tuple[str, str], object]:
    return {(o.kind, o.name): o for o in await store.live_objects() if o.kind in MANAGED_KINDS}


async def test_a_fresh_revision_has_no_drift(store, shipped) -> None:
    out = await apply_bundle(store, shipped, author="ana", message="", base=0, now=T0)
    assert out.drift == ()
    assert await live_drift(store, out.revision) == []


async def test_drift_written_behind_the_revisions_back_is_shown_and_apply_republishes_it(store, shipped) -> None:
    first = await apply_bundle(store, shipped, author="ana", message="", base=0, now=T0)
    want = await managed(store)
    victim = next(n for k, n in want if k == "Placement")
    opened = copy.deepcopy(want[("ResidencyPolicy", "germany-only")].spec)
    opened["allow"]["anywhere"] = True
    # What `fleet set` did before, and what any row written straight into the store does:
    await store.put_object("ResidencyPolicy", "germany-only", opened, "", "", now=T0)
    await store.put_object("PriorityClass", "rogue", {"value": 10**6}, "", "", now=T0)
    await store.delete_object("Placement", victim, now=T0)
    lines = await live_drift(store, first.revision)
    assert lines == [
        f"- Placement/{victim}: in the revision but missing live (removed outside revisions)",
        "+ PriorityClass/rogue: exists live but not in the revision (added outside revisions)",
        "~ ResidencyPolicy/germany-only: changed outside revisions (allow.anywhere)",
    ]

    plan = await apply_bundle(store, shipped, author="bo", message="", base=None, now=T0, dry_run=True)
    assert not plan.unchanged and list(plan.drift) == lines and plan.published is None  # `fleet plan`: no "no change"
    assert (await managed(store))[("ResidencyPolicy", "germany-only")].spec == opened

    out = await apply_bundle(store, shipped, author="bo", message="", base=None, now=T0)
    assert not out.unchanged and out.revision.number == 2 and list(out.drift) == lines
    after = await managed(store)
    assert {k: o.spec for k, o in after.items()} == {k: o.spec for k, o in want.items()}
    assert after[("ResidencyPolicy", "germany-only")].spec["allow"]["anywhere"] is False
    assert await live_drift(store, out.revision) == []
    (record,) = await store.list_audit(subject="revision/2")
    assert record.actor == "bo" and record.details["driftRepaired"] == lines
    again = await apply_bundle(store, shipped, author="bo", message="", base=None, now=T0)
    assert again.unchanged and again.revision.number == 2


def test_drift_compares_targets_and_ignores_other_kinds() -> None:
    a = DesiredPut("Placement", "p", {"x": 1}, "fra", "n1")
    assert drift([a], [DesiredPut("Placement", "p", {"x": 1.0}, "fra", "n1"), DesiredPut("Config", "c", {})]) == []
    assert drift([a], [DesiredPut("Placement", "p", {"x": 1}, "fra", "n2")]) == [
        "~ Placement/p: changed outside revisions (target)"]


async def test_apply_and_rollback_write_their_audit_record_with_the_revision(store, shipped) -> None:
    await apply_bundle(store, shipped, author="ana", message="m1", base=0, now=T0)
    rev = await store.get_revision(1)
    (record,) = await store.list_audit(subject="revision/1")
    assert (record.actor, record.action, record.details["digest"]) == ("ana", "revision.apply", rev.digest)
    back = await rollback(store, 1, author="cy", message="", base=1, now=T0)
    assert back.revision.number == 2
    assert [(r.actor, r.action) for r in await store.list_audit(subject="revision/2")] == [("cy", "revision.rollback")]
    assert drift(published_objects(back.revision), await store.live_objects()) == []


async def test_a_failing_audit_write_leaves_no_revision_and_no_object(store) -> None:
    def broken(published):
        # Not JSON-serialisable: the audit row fails as it is written, inside the transaction.
        return [AuditRecord(at=T0, actor="ana", action="revision.apply", subject=f"revision/{published.revision.number}",
                            details={"oops": object()})]

    with pytest.raises(Exception) as info:  # noqa: PT011 - the driver's own error type differs per database
        await store.add_revision(
            author="ana", message="", digest="d", bundle="[]", placement={}, summary={},
            objects=[DesiredPut("PriorityClass", "x", {"value": 1})], managed_kinds=MANAGED_KINDS, base=0, now=T0,
            audit=broken)
    assert "StaleRevision" not in type(info.value).__name__
    assert await store.get_revision() is None
    assert await store.live_objects() == [] and await store.current_version() == 0
    assert await store.list_audit() == []
