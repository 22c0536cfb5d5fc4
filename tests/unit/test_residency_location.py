"""Where the door thinks it is comes from the hub's Site record, not the agent's flags (issue 10, item 3).

The bug: an agent started with `--country DE --jurisdiction EU` at a site the hub records as US
served German personal data. Now the hub publishes a SiteLocation per site; flags may only narrow
(a contradiction refuses every restricted class and is reported), and before the hub's location is
known restricted classes are refused.
"""

from __future__ import annotations

import pytest

from edge_agent.serving.residency import Location, ResidencyRule, SiteLocation, evaluate, locate, rules_by_class
from tests.residency_kit import Hub, Node, location, policy

US = SiteLocation("iad-1", "US", ("US",))
RULES = rules_by_class([ResidencyRule.from_spec("de", {"dataClass": "personal-de", "allow": {"countries": ["DE"]}}),
                        ResidencyRule.from_spec("eu", {"dataClass": "personal-eu", "allow": {"jurisdictions": ["EU"]}}),
                        ResidencyRule.from_spec("us", {"dataClass": "personal-us", "allow": {"countries": ["US"]}}),
                        ResidencyRule.from_spec("pub", {"dataClass": "public", "allow": {"anywhere": True}}),
                        ResidencyRule.from_spec("nofra", {"dataClass": "no-fra", "allow": {"anywhere": True},
                                                          "deny": {"countries": ["FR"]}})])


@pytest.mark.parametrize(("declared", "conflict"), [
    (Location("iad-1"), False), (Location("iad-1", "US", "US"), False), (Location("iad-1", "US"), False),
    (Location("iad-1", "DE", "EU"), True), (Location("iad-1", "", "EU"), True), (Location("fra-1"), True),
])
def test_flags_only_narrow_never_widen(declared, conflict):
    located = locate(declared, US)
    assert located.conflict == conflict
    for dc, where_hub_allows in (("personal-de", False), ("personal-eu", False), ("personal-us", True),
                                 ("no-fra", True)):
        # a restricted class is allowed only where the hub's record allows it, and never on a conflict
        assert evaluate(RULES, dc, located).allowed == (where_hub_allows and not conflict), dc
    assert evaluate(RULES, "public", located).allowed  # `anywhere` needs no location


def test_before_the_hub_sends_the_location_restricted_classes_are_refused():
    located = locate(Location("iad-1", "DE", "EU"), None)
    v = evaluate(RULES, "personal-de", located)
    assert not v.allowed and v.rule == "location unknown" and "has not sent the location" in v.message
    assert not evaluate(RULES, "no-fra", located).allowed  # a deny entry makes a class restricted
    assert evaluate(RULES, "public", located).allowed


async def test_an_agent_whose_flags_contradict_the_hub_refuses_and_reports_it(tmp_path):
    hub = Hub()
    n = Node(tmp_path, site="iad-1", country="DE", jurisdiction="EU").start()
    try:
        n.send(hub.upsert("ResidencyPolicy", "de", policy("personal-de", countries=["DE"])))
        n.send(hub.upsert("ResidencyPolicy", "pub", policy("public", anywhere=True)))
        last = hub.upsert("ResidencyPolicy", "us", policy("personal-us", countries=["US"]))
        n.send(last)
        await n.acked(last.upserts[0].id)
        assert not n.admits("personal-de")  # old code: the flags said DE, so German data was served
        assert not n.admits("personal-us") and n.admits("public")  # fail-closed until the hub says where
        where = hub.upsert("SiteLocation", "iad-1", location("iad-1", "US", "US"))
        n.send(where)
        assert (await n.acked(where.upserts[0].id)).ok
        assert not n.admits("personal-de") and not n.admits("personal-us") and n.admits("public")
        (event,) = [p for k, p in n.reports if k == "event" and p.get("reason") == "LocationConflict"]
        assert "--country DE" in event["message"] and "iad-1 is in US" in event["message"]
        assert any("location conflict" in e for e in n.link.status.recent_errors)
        audits = [p for k, p in n.reports if k == "audit" and p["dataClass"] == "personal-de"]
        assert audits and audits[-1]["rule"] == "location conflict"
    finally:
        await n.stop()


async def test_an_agent_without_location_flags_takes_the_hubs(tmp_path):
    hub = Hub()
    n = Node(tmp_path, site="iad-1").start()
    try:
        n.send(hub.upsert("ResidencyPolicy", "us", policy("personal-us", countries=["US"])))
        where = hub.upsert("SiteLocation", "iad-1", location("iad-1", "US", "US"))
        n.send(where)
        await n.acked(where.upserts[0].id)
        assert n.admits("personal-us")
        n.acks.clear()
        n.send(hub.delete("SiteLocation", "iad-1"))  # withdrawn: fail-closed again
        assert (await n.acked(where.upserts[0].id)).deleted
        assert not n.admits("personal-us")
        other = hub.upsert("SiteLocation", "fra-1", location("fra-1", "DE", "EU", "EEA"))
        n.send(other)  # not this site's record: refused, nothing changes
        ack = await n.acked(other.upserts[0].id)
        assert not ack.ok and "for site 'fra-1'" in ack.error and not n.admits("personal-us")
    finally:
        await n.stop()
