"""What a rollout tells the operator: agentless sites at start, undo of a site that never had an agent,
and which wave the gate verdicts judged (issue 15)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

from hub.cli.output import console
from hub.cli.rollout_cmd import render
from hub.rollout import fleetview, synthetic
from hub.rollout.machine import Phase, SiteFacts, SiteStatus, command, start, step
from hub.rollout.plan import SiteState
from hub.store.repo import NodeRecord
from hub.sync import LivenessPolicy
from protos.fleet.v1 import rollout_pb2
from tests.unit.test_rollout_fleetview import _obj
from tests.unit.test_rollout_machine import T0, Fleet, begin, drive, spec


def test_start_warns_about_target_sites_without_an_agent():
    sites = [SiteState("fra-1"), *(SiteState(s, reachable=False, has_agent=False)
                                   for s in ("ber-1", "par-1", "ams-1", "mad-1"))]
    state = start(spec(), sites, "v1", T0)
    assert len(state.sites) == 5
    assert state.warnings == (
        "4 of 5 site(s) have no agent that has ever connected: ams-1, ber-1, mad-1, par-1; each fails after the "
        "30m progress deadline unless an agent connects and applies v2",)
    # Kept with the state, so `fleet rollout start` prints it from the hub's answer.
    assert type(state).from_dict(json.loads(json.dumps(state.to_dict()))).warnings == state.warnings


def test_start_warns_about_an_unreachable_agent_and_not_when_every_site_is_up():
    state = start(spec(), [SiteState("fra-1"), SiteState("ber-1", reachable=False)], "v1", T0)
    assert state.warnings == ("1 of 2 site(s) has no agent connected now: ber-1; each fails after the 30m "
                              "progress deadline unless an agent connects and applies v2",)
    assert start(spec(), [SiteState("fra-1"), SiteState("ber-1")], "v1", T0).warnings == ()


def test_undo_does_not_call_a_site_without_an_agent_reverted():
    fleet = Fleet(2)
    state = begin(fleet, waves="100%", max_unavailable="2", allow_full_unavailability=True)
    now = T0
    state, _, _ = step(state, fleet.observe(), now)  # publishes to both
    assert {r.site: r.status for r in state.sites} == {"s0": SiteStatus.PUBLISHED, "s1": SiteStatus.PUBLISHED}
    state, _, _ = command(state, "undo", now, "alice")
    assert state.phase is Phase.ROLLING_BACK
    # s0's agent acknowledges v1 again; s1 never had an agent at all.
    obs = replace(fleet.observe(), sites={"s0": SiteFacts(True, "v1"),
                                          "s1": SiteFacts(False, None, has_agent=False)})
    state, _, audit = step(state, obs, now + timedelta(minutes=1))
    by = {r.site: r for r in state.sites}
    assert by["s0"].status is SiteStatus.REVERTED
    assert by["s1"].status is SiteStatus.SKIPPED and "no agent has ever connected" in by["s1"].reason
    assert [e.event for e in audit] == ["site-reverted", "site-not-reverted", "rolled-back"]
    assert state.phase is Phase.ROLLED_BACK and state.reason.startswith("1 site(s) back on v1")


def test_site_facts_of_a_site_whose_agent_never_connected_claim_no_version():
    # Site "a" was given v2 and never had an agent; "b"'s agent has not applied v2 yet: it still runs v1.
    bundle = synthetic.fleet_bundle(["a", "b"])
    placement = synthetic.one_per_site(bundle)
    objects = [_obj(1, "a", 7, "v2"), _obj(2, "b", 8, "v2")]
    nodes = [NodeRecord(2, "b", synthetic.node_of("b"), "t", {}, T0, T0, True, [], 0, 0)]
    facts = fleetview.site_facts(bundle, placement, "chat", nodes=nodes, objects=objects, applied=[], now=T0,
                                 liveness=LivenessPolicy(), versions=("v1", "v2"))
    assert facts["a"].has_agent is False and facts["a"].applied_version is None
    assert facts["b"].has_agent is True and facts["b"].applied_version == "v1"


def test_gate_verdicts_are_labelled_with_the_wave_they_judged():
    fleet = Fleet(10)
    state = begin(fleet)
    state, _ = drive(state, fleet, until=lambda s: s.wave == 1)
    assert state.verdicts and state.verdicts_wave == 0
    r = rollout_pb2.Rollout(id="r1", service="chat", from_version="v1", to_version="v2", phase=state.phase.value,
                            status="", created_by="alice", state_json=json.dumps(state.to_dict()))
    c = console()
    with c.capture() as cap:
        c.print(render(r))
    out = cap.get()
    assert "Last gate verdicts (wave 1):" in out, out
