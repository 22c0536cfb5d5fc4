"""The hub's planner and the agent's door decide residency alike (one function, `fleet_contract.residency`).

For every site and policy the shipped YAML publishes, the verdict an agent at that site reaches at its
door (from the published SiteLocation and ResidencyPolicy objects, as it applies them) equals the
verdict the hub's planner reaches for the same site and data class; and likewise for random policies
over every country the fleet knows, so jurisdiction expansion at publish time cannot drift from the
planner's containment either.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.serving.residency import Location, ResidencyRule, SiteLocation, evaluate, locate, rules_by_class
from hub.placement.api import plan
from hub.placement.residency import ResidencyRule as HubRule
from hub.policy import load_bundle
from hub.policy.validate import rule_of
from hub.policy.vocab import COUNTRY_JURISDICTIONS, KNOWN_JURISDICTIONS
from hub.publish import desired_objects, expand_jurisdictions

ROOT = Path(__file__).resolve().parents[2]


def door(site: str, location_spec: dict, policy_name: str, policy_spec: dict) -> bool:
    """The agent's verdict, through the same parsing and functions its appliers and door use."""
    rule = ResidencyRule.from_spec(policy_name, policy_spec)
    here = locate(Location(site), SiteLocation.from_spec(site, location_spec))
    assert here.here is not None
    return evaluate(rules_by_class([rule]), rule.data_class, here).allowed


@pytest.fixture(scope="module")
def published():
    bundle = load_bundle([ROOT / "fleet_configs", ROOT / "policies"])
    objs = desired_objects(bundle, plan(bundle, solver="greedy").placement)
    return bundle, objs


def test_every_shipped_site_and_policy_gets_the_same_verdict_at_the_door_as_in_the_planner(published):
    bundle, objs = published
    locations = {o.name: o for o in objs if o.kind == "SiteLocation"}
    policies = [o for o in objs if o.kind == "ResidencyPolicy"]
    assert set(locations) == set(bundle.sites) and policies  # every site, placed or not
    checked = {True: 0, False: 0}
    for site_name, site in bundle.sites.items():
        loc = locations[site_name]
        assert (loc.target_site, loc.target_node) == (site_name, "")  # each site hears only its own
        for p in policies:
            hub_rule = rule_of(bundle.residency_policies[p.name])
            hub_ok, why = hub_rule.verdict(site_name, site.spec.country, site.spec.jurisdictions)
            assert door(site_name, loc.spec, p.name, p.spec) == hub_ok, (site_name, p.name, why)
            checked[hub_ok] += 1
    assert checked[True] and checked[False]  # both verdicts occur in the shipped fleet


def test_policies_come_before_placements_in_a_revision(published):
    _, objs = published
    kinds = [o.kind for o in objs]
    assert "Placement" in kinds and kinds.index("Placement") > max(
        i for i, k in enumerate(kinds) if k in ("SiteLocation", "ResidencyPolicy", "PriorityClass"))


countries = st.sampled_from(sorted(COUNTRY_JURISDICTIONS))
jurisdictions = st.lists(st.sampled_from(sorted(KNOWN_JURISDICTIONS)), max_size=3, unique=True)
some_countries = st.lists(countries, max_size=3, unique=True)
sites = st.lists(st.sampled_from(["fra-1", "iad-1", "osl-1"]), max_size=2, unique=True)


@settings(max_examples=300, deadline=None)
@given(site=st.sampled_from(["fra-1", "iad-1", "osl-1"]), country=countries, anywhere=st.booleans(),
       aj=jurisdictions, ac=some_countries, asites=sites, dj=jurisdictions, dc=some_countries, ds=sites)
def test_door_and_planner_agree_on_random_policies(site, country, anywhere, aj, ac, asites, dj, dc, ds):
    hub_rule = HubRule("p", "c", anywhere, frozenset(aj), frozenset(ac), frozenset(asites),
                       frozenset(dj), frozenset(dc), frozenset(ds))
    site_jurisdictions = COUNTRY_JURISDICTIONS[country]
    hub_ok, _ = hub_rule.verdict(site, country, site_jurisdictions)
    # published as hub.publish does: containment expanded, the site's record as its SiteLocation
    spec = {"dataClass": "c",
            "allow": {"anywhere": anywhere, "jurisdictions": expand_jurisdictions(aj), "countries": ac, "sites": asites},
            "deny": {"jurisdictions": expand_jurisdictions(dj), "countries": dc, "sites": ds}}
    location = {"site": site, "country": country, "jurisdictions": list(site_jurisdictions)}
    assert door(site, location, "p", spec) == hub_ok

