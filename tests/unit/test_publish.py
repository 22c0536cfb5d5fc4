"""What revisions publish to agents: names, containment expansion, one placement per node."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.placement.api import plan
from hub.policy import load_bundle
from hub.publish import desired_objects, expand_jurisdictions, placement_object_name

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")  # the admin API's object-name rule


def test_eea_contains_the_eu_but_not_the_other_way():
    assert expand_jurisdictions(["EEA"]) == ["EEA", "EU"]
    assert expand_jurisdictions(["EU"]) == ["EU"]
    assert expand_jurisdictions(["US", "UK"]) == ["UK", "US"]
    assert expand_jurisdictions([]) == []


@pytest.mark.parametrize(("site", "node", "name"), [
    ("fra-1", "fra-1-gpu-a", "fra-1.fra-1-gpu-a"),
    ("fra-1", "gpu-a", "fra-1.gpu-a"),
    ("fra-1", "gpu_A", r"fra-1\.gpu-a-[0-9a-f]{12}"),
    ("x", "--", r"x\.node-[0-9a-f]{12}"),
])
def test_placement_names_follow_the_object_name_rule(site, node, name):
    got = placement_object_name(site, node)
    assert re.fullmatch(name, got), got
    assert NAME.fullmatch(got)


def test_placement_names_of_different_nodes_never_collide():
    # Sites fra and fra-1 both had a node whose placement was named fra-1-gpu-b.
    pairs = [("fra", "fra-1-gpu-b"), ("fra-1", "gpu-b"), ("fra-1", "fra-1-gpu-b"),
             ("a.b", "c"), ("a", "b.c"), ("a", "b-c"), ("fra-1", "gpu_A"), ("fra-1", "gpu-a"), ("fra-1", "GPU-A")]
    names = [placement_object_name(s, n) for s, n in pairs]
    assert len(set(names)) == len(pairs), dict(zip(pairs, names))


_NAMES = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,10}[a-z0-9])?\Z")


@settings(max_examples=300, deadline=None)
@given(a=st.tuples(_NAMES, _NAMES), b=st.tuples(_NAMES, _NAMES))
def test_placement_object_name_is_injective(a, b):
    if a != b:
        assert placement_object_name(*a) != placement_object_name(*b)
    assert NAME.fullmatch(placement_object_name(*a))


def test_shipped_fleet_publishes_every_node_only_its_own_assignments():
    bundle = load_bundle([ROOT / "fleet_configs", ROOT / "policies"])
    placement = plan(bundle, solver="greedy").placement
    objs = desired_objects(bundle, placement)
    by_kind: dict[str, list] = {}
    for o in objs:
        by_kind.setdefault(o.kind, []).append(o)
        assert NAME.match(o.name), o.name
    nodes = {(a.site, a.node) for a in placement.assignments}
    assert {(o.target_site, o.target_node) for o in by_kind["Placement"]} == nodes
    for o in by_kind["Placement"]:
        assert {(a["site"], a["node"]) for a in o.spec["assignments"]} == {(o.target_site, o.target_node)}
    eu = next(o for o in by_kind["ResidencyPolicy"] if o.name == "eu-gdpr")
    assert (eu.target_site, eu.target_node) == ("", "")  # every node enforces every policy
    assert "EU" in eu.spec["allow"]["jurisdictions"]
    assert {o.name for o in by_kind["PriorityClass"]} == set(bundle.priority_classes)


def test_carried_placement_keeps_what_the_new_bundle_can_describe_and_nothing_else():
    """The policy step of an apply carries the previous placement over to the new bundle: assignments
    of services or sites the bundle dropped go; those its new policies forbid stay (the door refuses
    their requests until the re-plan)."""
    import json

    from hub.policy import Bundle
    from hub.publish import carried_placement

    from dataclasses import replace

    shipped = load_bundle([ROOT / "fleet_configs", ROOT / "policies"])
    placed = plan(shipped, solver="greedy").placement
    de = next(a for a in placed.assignments if a.service == "assistant-de")
    # as if an older, looser policy had let assistant-de (personal-de) run in the US
    site = "iad-1"
    assert shipped.sites[site].spec.country == "US"
    previous = replace(placed, assignments=(*placed.assignments, replace(de, site=site, node="iad-1-gpu-z")))
    assert carried_placement(shipped, previous).assignments == previous.assignments  # forbidden ones kept
    smaller = Bundle.from_json(json.dumps([
        r for r in json.loads(shipped.to_json())
        if not (r["kind"] == "Service" and r["metadata"]["name"] == "assistant-us")]))
    kept = carried_placement(smaller, previous)
    assert kept.assignments == tuple(a for a in previous.assignments if a.service != "assistant-us")
    assert {o.target_node for o in desired_objects(smaller, kept) if o.kind == "Placement"} <= {
        a.node for a in kept.assignments}
    assert site in {a.site for a in kept.assignments}
