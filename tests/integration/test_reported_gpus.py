"""The planner caps a node's pools at the GPUs its agent reports (issue 11, item 3).

A Site that declares 8 GPUs on a node whose agent sees 2 must not get replicas on the 6
nobody has seen: `fleet apply` plans with the reported count, the plan says so, and
`fleet explain` names the cap. The inventory is the agent's own (`Inventory.as_dict`) through
the hub's proto conversion, as the link stores it from a Hello.
"""

from __future__ import annotations

from datetime import UTC, datetime

from edge_agent.inventory import Gpu, Inventory
from hub import convert
from hub.placement.api import explain, plan
from hub.placement.model import Placement
from hub.policy import load_bundle_text
from hub.revisions import apply_bundle
from tests.harness.bundles import ONE_NODE as BUNDLE

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
GIB = 2**30



def _inventory(count: int) -> dict:
    """What the hub stores from an agent's Hello that reports ``count`` L4s found by NVML."""
    inv = Inventory((Gpu("NVIDIA L4", 24 * GIB, count),), "nvml", "eu-central", "DE", "EU")
    return convert.inventory_from_proto(convert.inventory_to_proto(inv.as_dict()))


def _gpus_on(placement: Placement, site: str, node: str) -> set[int]:
    return {g for a in placement.assignments if (a.site, a.node) == (site, node) for grp in a.gpus for g in grp}


async def test_a_site_declaring_8_gpus_whose_agent_reports_2_gets_at_most_2(store):
    bundle = load_bundle_text(BUNDLE, "fleet.yaml")
    uncapped = plan(bundle, solver="greedy").placement
    assert len(_gpus_on(uncapped, "fra-1", "gpu-a")) > 2  # the demand wants more than the 2 that exist

    await store.register_node("fra-1", "gpu-a", "test", _inventory(2), T0)
    out = await apply_bundle(store, bundle, author="ana", message="", base=0, now=T0, solver="greedy")
    placed = Placement.from_spec(out.revision.placement)
    assert _gpus_on(placed, "fra-1", "gpu-a") <= {0, 1}
    assert _gpus_on(placed, "fra-1", "gpu-a")
    capped = [line for line in out.plan.lines() if line.startswith("! capped")]
    assert capped == ["! capped fra-1/l4: capped at 2 of the 8 GPUs the Site declares: "
                      "its agent on node gpu-a reports 2"]
    assert placed.reported_gpus == {("fra-1", "gpu-a"): 2}  # kept in the revision for `fleet explain`
    chosen = [v for e in explain(bundle, placed, "chat") for v in e.sites if v.status == "chosen"]
    assert chosen and all("capped at 2 of the 8 GPUs" in v.reason for v in chosen)


async def test_an_agent_reporting_all_declared_gpus_changes_nothing(store):
    bundle = load_bundle_text(BUNDLE, "fleet.yaml")
    await store.register_node("fra-1", "gpu-a", "test", _inventory(8), T0)
    out = await apply_bundle(store, bundle, author="ana", message="", base=0, now=T0, solver="greedy")
    placed = Placement.from_spec(out.revision.placement)
    assert len(_gpus_on(placed, "fra-1", "gpu-a")) > 2
    assert placed.reported_gpus == {} and "reportedGpus" not in out.revision.placement
    assert not [line for line in out.plan.lines() if line.startswith("! capped")]


async def test_an_agent_reporting_no_gpus_leaves_the_pool_out(store):
    bundle = load_bundle_text(BUNDLE, "fleet.yaml")
    await store.register_node("fra-1", "gpu-a", "test", _inventory(0) | {"gpus": [], "gpu_source": "kubernetes"}, T0)
    out = await apply_bundle(store, bundle, author="ana", message="", base=0, now=T0, solver="greedy")
    placed = Placement.from_spec(out.revision.placement)
    assert not placed.assignments and placed.unplaced
    assert any("its agent on node gpu-a reports no GPUs for this pool (the Site declares 8)" in line
               for line in out.plan.lines())
