"""plan / explain / diff / agents / consolidation on the shipped examples and toy pools."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from hub.placement.api import explain, plan
from hub.placement.consolidate import consolidate_pool
from hub.placement.model import Placement, Weights
from hub.placement.packing import PoolState
from hub.placement.verify import violations
from hub.policy import load_bundle

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def bundle():
    return load_bundle([ROOT / "fleet_configs", ROOT / "policies"])


@pytest.fixture(scope="module")
def first(bundle):
    return plan(bundle, at=NOW, solver="greedy")


def test_examples_plan_is_valid_complete_and_legal(bundle, first) -> None:
    assert violations(first.problem, first.placement) == []
    assert not first.placement.unplaced
    assert first.diff.after.slo_attainment == pytest.approx(1.0)
    assert first.diff.before.gpus == 0 and first.diff.after.gpus == first.placement.stats["gpus"] > 0
    for a in first.placement.assignments:
        site = bundle.sites[a.site].spec
        data_class = bundle.services[a.service].spec.data_class
        if data_class == "personal-de":
            assert site.country == "DE" and "allow.countries lists DE" in a.residency
        if data_class == "personal-eu":
            assert "EEA" in site.jurisdictions and site.country != "GB"
        assert a.site not in ("krk-1",)  # cordoned
    assert len(first.diff.justifications) == len({(a.service, a.region, a.site) for a in first.placement.assignments})


def test_exact_and_fast_on_examples(bundle, first) -> None:
    exact = plan(bundle, at=NOW, solver="exact")
    assert violations(exact.problem, exact.placement) == []
    assert exact.placement.objective <= first.placement.objective * 1.02


def test_each_agent_gets_only_its_own(first) -> None:
    by_agent = first.placement.by_agent()
    assert sum(len(v) for v in by_agent.values()) == len(first.placement.assignments)
    for (site, node), items in by_agent.items():
        assert all(a.site == site and a.node == node for a in items)
        assert first.placement.for_agent(site, node) == items
    spec = first.placement.to_spec()
    assert spec["assignments"][0]["gpus"] and "residency" in spec["assignments"][0]
    specs = first.placement.agent_specs()
    assert set(specs) == set(by_agent)
    for (site, node), agent_spec in specs.items():
        assert {(a["site"], a["node"]) for a in agent_spec["assignments"]} == {(site, node)}
    restored = Placement.from_spec(json.loads(json.dumps(spec)))
    assert restored.assignments == first.placement.assignments and restored.unplaced == first.placement.unplaced


def test_replan_without_change_moves_nothing(bundle, first) -> None:
    again = plan(bundle, previous=first.placement, at=NOW, solver="greedy")
    assert again.diff.changes == [] and again.diff.moves == []
    assert again.diff.after.cost_usd_h == pytest.approx(again.diff.before.cost_usd_h)


def test_maintenance_window_and_cordon_are_respected(bundle) -> None:
    inside = dt.datetime(2027, 3, 1, 2, 0, tzinfo=dt.timezone.utc)
    result = plan(bundle, at=inside, solver="greedy")
    assert all(a.site not in ("dus-1", "krk-1") for a in result.placement.assignments)
    lines = "\n".join(line for e in explain(bundle, result.placement, "assistant-de", at=inside) for line in e.lines())
    assert "dus-1/l4: availability: in maintenance 2027-03-01T01:00:00+00:00 to 2027-03-01T05:00:00+00:00" in lines


def test_explain_says_why_per_site(bundle, first) -> None:
    [exp] = explain(bundle, first.placement, "assistant-de", at=NOW)
    by_site = {v.site: v for v in exp.sites}
    assert len(by_site) == len(bundle.sites)
    chosen = [v for v in exp.sites if v.status == "chosen"]
    assert chosen and all(bundle.sites[v.site].spec.country == "DE" for v in chosen)
    assert by_site["par-1"].constraint == "residency"
    assert "ResidencyPolicy 'germany-only' allows only countries [DE]; site is in FR" in by_site["par-1"].reason
    assert by_site["sin-1"].constraint == "residency"
    assert exp.summary.startswith(f"{len(chosen)}/{len(bundle.sites)} sites chosen")
    assert "residency" in exp.summary
    [emb] = [e for e in explain(bundle, first.placement, "embed-public", at=NOW) if e.region == "ap-southeast"]
    reasons = {v.site: v for v in emb.sites}
    assert reasons["fra-1"].constraint == "network"  # no latency listed from ap-southeast
    [big] = explain(bundle, first.placement, "reasoner-eu", at=NOW)
    t4_site = {v.site: v for v in big.sites}["vlc-1"]  # T4 only: the 70B model does not run there
    assert t4_site.constraint == "gpu-type" and "does not run on T4" in t4_site.reason
    for e in explain(bundle, first.placement, "assistant-eu", at=NOW):
        for v in e.sites:
            if v.constraint == "not-chosen":
                assert "USD/h-eq" in v.reason and "p95 TTFT" in v.reason
    with pytest.raises(KeyError):
        explain(bundle, first.placement, "nope")


def test_churn_penalty_keeps_replicas_in_place(bundle, first) -> None:
    spec = bundle.services["assistant-eu"].spec
    bumped = spec.demand[0].model_copy(update={"rate": spec.demand[0].rate * 1.3})
    changed = dataclasses.replace(bundle)
    changed.services = dict(bundle.services)
    changed.services["assistant-eu"] = bundle.services["assistant-eu"].model_copy(
        update={"spec": spec.model_copy(update={"demand": [bumped, *spec.demand[1:]]})})
    sticky = plan(changed, previous=first.placement, at=NOW, solver="greedy",
                  weights=Weights(churn_usd_per_replica=50.0))
    loose = plan(changed, previous=first.placement, at=NOW, solver="greedy", weights=Weights(churn_usd_per_replica=0.0))
    moved = lambda r: r.diff.added + r.diff.removed  # noqa: E731
    assert moved(sticky) <= moved(loose)
    assert violations(sticky.problem, sticky.placement) == []
    text = "\n".join(sticky.diff.lines())
    assert "USD/h (price estimates)" in text and "predicted SLO attainment" in text


def test_plan_diff_counts_moves() -> None:
    from hub.placement.diff import plan_diff
    from hub.placement.model import Assignment, Placement
    from hub.placement.synthetic import synthetic_problem

    problem = synthetic_problem(5, 1, seed=2)
    w = problem.workloads[0]
    pools = [s.pools[0] for s in problem.sites]  # one pool per site

    def at(pool, replicas):
        return Assignment(w.service, w.region, 0, 1, w.model, w.version, pool.site, pool.name, pool.node,
                          pool.gpu_type, replicas, 1, w.memory, tuple((i,) for i in range(replicas)), 0.5,
                          w.rate, 0.01, 0.1, 0.02, "test")

    before = Placement((at(pools[0], 2),))
    after = Placement((at(pools[1], 3),))
    d = plan_diff(before, after, problem)
    assert d.added == 3 and d.removed == 2
    assert [(m.from_site, m.to_site, m.replicas) for m in d.moves] == [(pools[0].site, pools[1].site, 2)]
    assert d.before.gpus == 2 and d.after.gpus == 3
    assert d.before.cost_usd_h == pytest.approx(2 * pools[0].price)


def test_consolidation_frees_gpus_with_fewest_moves() -> None:
    pool = PoolState(memory=24.0, count=4)
    pool.commit("a", [(0,)], 10.0, 0.3)
    pool.commit("b", [(1,)], 10.0, 0.3)
    pool.commit("c", [(2,)], 4.0, 0.1)
    pool.commit("d", [(3,)], 4.0, 0.1)
    pool.commit("e", [(3,)], 4.0, 0.1)
    moves = consolidate_pool(pool)
    assert pool.used == 2
    # fewest moves: c (one move) then b (one move) both into GPU 0 (10 + 4 + 10 = 24)
    assert [(m.key, m.from_gpu, m.to_gpu) for m in moves] == [("c", 2, 0), ("b", 1, 0)]
    assert all(f <= 24.0 for f in pool.free) and min(pool.free) >= -1e-9
    assert all(c >= -1e-9 for c in pool.compute)


def test_consolidation_respects_compute_and_big_replicas() -> None:
    pool = PoolState(memory=80.0, count=3)
    pool.commit("busy1", [(0,)], 10.0, 0.7)
    pool.commit("busy2", [(1,)], 10.0, 0.7)  # memory fits together, compute does not
    pool.commit("big", [(2,)], 80.0, 1.0)
    assert consolidate_pool(pool) == []
    assert pool.used == 3


def test_policy_and_placement_stay_pure() -> None:
    """No I/O layers: nothing from edge_agent, protos or the hub store."""
    forbidden = ("edge_agent", "protos", "hub.store", "grpc", "sqlalchemy")
    for package in ("policy", "placement"):
        for path in (ROOT / "hub" / package).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                for name in names:
                    assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_an_unschedulable_node_gets_nothing_and_explain_says_why():
    from pathlib import Path

    from hub.placement.api import plan as plan_
    from hub.placement.verify import violations
    from hub.policy import load_bundle

    root = Path(__file__).resolve().parents[2]
    bundle = load_bundle([root / "fleet_configs", root / "policies"])
    first = plan_(bundle, solver="greedy")
    site, node = next((a.site, a.node) for a in first.placement.assignments if a.service == "assistant-de")
    cordoned = {(site, node): "node cordoned in Kubernetes (agent inventory)"}
    second = plan_(bundle, first.placement, solver="greedy", unschedulable=cordoned)
    assert all((a.site, a.node) != (site, node) for a in second.placement.assignments)
    assert violations(second.problem, second.placement) == []
    # The same placement is a violation once the node is known to be unschedulable.
    assert any("unavailable" in v for v in violations(second.problem, first.placement))
