"""What the rollout controller sees of the fleet (hub.rollout.fleetview): pure, on the synthetic fleet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hub.rollout import fleetview, synthetic
from hub.store.repo import AppliedRecord, NodeRecord, ObjectRecord
from hub.sync import LivenessPolicy
from tests.harness.telemetry import Requests, telemetry_payload

T0 = datetime(2026, 11, 27, 21, 0, tzinfo=UTC)
SITES = ["a", "b", "c"]


def fleet(**kw):
    bundle = synthetic.fleet_bundle(SITES, **kw)
    return bundle, synthetic.one_per_site(bundle)


def test_switch_changes_only_the_named_sites():
    bundle, placement = fleet()
    sw = fleetview.switch(bundle, placement, "chat", "v2", ["a", "c"], T0)
    assert sw.changed and not sw.refused
    assert fleetview.site_versions(sw.placement, "chat") == {"a": "v2", "b": "v1", "c": "v2"}
    again = fleetview.switch(bundle, sw.placement, "chat", "v2", ["a"], T0)
    assert not again.changed  # re-emitted after a crash: nothing new to publish


def test_switch_refuses_a_version_the_current_revision_forbids_there():
    bundle, placement = fleet()
    sw = fleetview.switch(bundle, placement, "chat", "v2-a100", ["a", "b"], T0)
    assert set(sw.refused) == {"a", "b"} and not sw.changed
    assert sw.refused["a"].startswith("model does not run on L4")
    # a revert is not checked (the old version ran there)
    assert fleetview.switch(bundle, placement, "chat", "v2-a100", ["a"], T0, check=False).changed


def test_bundle_moves_to_the_new_version():
    bundle, _ = fleet()
    assert fleetview.with_service_version(bundle, "chat", "v2").services["chat"].spec.version == "v2"
    assert bundle.services["chat"].spec.version == "v1"


def _node(i: int, site: str, last_seen: datetime, connected: bool = True) -> NodeRecord:
    return NodeRecord(i, site, synthetic.node_of(site), "t", {}, T0, last_seen, connected, [], 0, 0)


def _obj(i: int, site: str, version: int, chat: str) -> ObjectRecord:
    spec = {"assignments": [{"service": "chat", "version": chat}]}
    return ObjectRecord(f"o{i}", "Placement", f"p{i}", version, spec, site, synthetic.node_of(site), False, T0)


def test_site_facts_from_store_records():
    window = {"maintenanceWindows": [{"start": "2026-11-27T20:00:00Z", "end": "2026-11-27T22:00:00Z"}]}
    bundle, placement = fleet(site_extra={"b": {"spec": window}, "c": {"labels": {"fleet.edge/rollouts": "opt-out"}}})
    nodes = [_node(1, "a", T0), _node(2, "b", T0 - timedelta(minutes=5)), _node(3, "c", T0)]
    objects = [_obj(1, "a", 7, "v2"), _obj(2, "b", 5, "v1"), _obj(3, "c", 9, "v2")]
    applied = [AppliedRecord(1, "o1", 7, True), AppliedRecord(2, "o2", 5, True), AppliedRecord(3, "o3", 8, True)]
    facts = fleetview.site_facts(bundle, placement, "chat", nodes=nodes, objects=objects, applied=applied, now=T0,
                                 liveness=LivenessPolicy(), versions=("v1", "v2"))
    assert facts["a"].reachable and facts["a"].applied_version == "v2" and not facts["a"].in_maintenance
    assert not facts["b"].reachable and facts["b"].applied_version == "v1" and facts["b"].in_maintenance
    # c acknowledged an older object than its current one: it still runs the other version
    assert facts["c"].applied_version == "v1" and facts["c"].opted_out


def _payload(end: datetime, model: str, version: str, n: int) -> dict:
    """A window of ``n`` requests made by the agent's own telemetry code (tests/harness)."""
    return telemetry_payload("spoofed", "x", [Requests(model, version, [0.1] * n, itl=0.01, output_tokens=1,
                                                       prompt_tokens=1)], end - timedelta(seconds=1), end)


def test_telemetry_selects_the_model_and_each_versions_window():
    soak = T0
    rows = [
        ("a", "a-gpu", _payload(soak - timedelta(seconds=30), "assistant", "v1", 10)),  # old, before the soak
        ("a", "a-gpu", _payload(soak + timedelta(seconds=5), "assistant", "v2", 7)),
        ("a", "a-gpu", _payload(soak - timedelta(seconds=30), "assistant", "v2", 100)),  # new, before: ignored
        ("a", "a-gpu", _payload(soak + timedelta(seconds=5), "other-model", "v2", 50)),  # another model
        ("b", "b-gpu", _payload(soak + timedelta(seconds=5), "assistant", "v2", 3)),
    ]
    out = fleetview.telemetry(rows, "assistant", "v2", "v1", soak, soak - timedelta(minutes=1), {"a"})
    assert set(out) == {"a"}  # b is not one of the rollout's sites here; the verified site wins over "spoofed"
    assert out["a"]["v2"].requests == 7 and out["a"]["v1"].requests == 10


def test_telemetry_agrees_with_the_hub_report():
    from hub.report import build_report
    from hub.rollout.gates import traffic_from_report

    soak = T0
    rows = [(site, f"{site}-gpu", _payload(soak + timedelta(seconds=i), "assistant", "v2", 5 + i))
            for i, site in enumerate(["a", "b", "a", "c"])]
    rows.append(("a", "a-gpu", {"schema": 1, "windowEnd": "junk"}))  # skipped whole by both
    mine = fleetview.telemetry(rows, "assistant", "v2", "v1", soak, soak)
    payloads = [{**p, "site": s, "node": n} for s, n, p in rows]
    theirs = traffic_from_report(build_report(payloads, ("site", "version"), soak))
    assert set(mine) == set(theirs)
    for site in mine:
        m, t = mine[site]["v2"], theirs[site]["v2"]
        assert (m.requests, m.errors) == (t.requests, t.errors)
        assert m.p("ttft", 0.95) == t.p("ttft", 0.95) and m.p("itl", 0.5) == t.p("itl", 0.5)


def test_an_unacknowledged_old_placement_is_not_taken_for_the_new_version():
    bundle, placement = fleet()
    nodes = [_node(1, "a", T0), _node(2, "b", T0), _node(3, "c", T0)]
    objects = [_obj(1, "a", 4, "v1"), _obj(2, "b", 5, "v2"), _obj(3, "c", 6, "v1")]
    applied = [AppliedRecord(1, "o1", 3, True), AppliedRecord(2, "o2", 4, True), AppliedRecord(3, "o3", 6, False)]
    facts = fleetview.site_facts(bundle, placement, "chat", nodes=nodes, objects=objects, applied=applied, now=T0,
                                 liveness=LivenessPolicy(), versions=("v1", "v2"))
    assert facts["a"].applied_version is None  # never acknowledged its current v1 object: unknown, not v2
    assert facts["b"].applied_version == "v1"  # given v2, not applied yet
    assert facts["c"].applied_version is None  # the agent reported a failure applying it
