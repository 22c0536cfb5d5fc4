"""The rollout state machine, driven against a simulated fleet.

``Fleet`` stands in for the outside world only (agents that apply whatever
desired version the hub set, when they are reachable, and report traffic);
the machine, plan, gates and spec are the real ones.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import numpy as np
import pytest
from ddsketch import DDSketch
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from hub.rollout.gates import TrafficStats
from hub.rollout.machine import (
    Action,
    IllegalCommand,
    Observation,
    Phase,
    RolloutState,
    SiteFacts,
    SiteStatus,
    Stage,
    command,
    display_status,
    start,
    step,
)
from hub.rollout.plan import SiteState
from hub.rollout.spec import RolloutSpec
from tests.props import examples

T0 = datetime(2026, 11, 27, 21, 0, tzinfo=UTC)
TICK = timedelta(minutes=5)
SLO_TTFT, SLO_TPOT = 1.0, 0.1


@lru_cache(maxsize=None)
def traffic(speed: float, requests: int, errors: int) -> TrafficStats:
    """One tick of a site's traffic on a version `speed` times slower than the baseline (read-only, cached)."""
    rng = np.random.default_rng(int(speed * 1000) + requests)
    ttft, itl = DDSketch(0.01), DDSketch(0.01)
    for v in rng.lognormal(-2.0, 0.4, requests) * speed:  # p95 ~ 0.26 s at speed 1
        ttft.add(float(v))
    for v in rng.lognormal(-4.0, 0.3, requests) * speed:  # ~ 0.03 s
        itl.add(float(v))
    return TrafficStats(requests, errors, ttft, itl, itl)


class Fleet:
    def __init__(self, n: int, *, speed: dict | None = None, requests: int = 300, errors: dict | None = None):
        self.names = [f"s{i}" for i in range(n)]
        self.applied = dict.fromkeys(self.names, "v1")
        self.desired = dict.fromkeys(self.names, "v1")
        self.reachable = dict.fromkeys(self.names, True)
        self.maintenance = dict.fromkeys(self.names, False)
        self.opted_out = dict.fromkeys(self.names, False)
        self.broken = dict.fromkeys(self.names, False)
        """The site's agent is reachable but fails to apply what it is sent (it keeps running what it ran)."""
        self.speed = speed or {"v1": 1.0, "v2": 1.0}
        self.errors = errors or {"v1": 0, "v2": 0}
        self.requests = requests
        self.publishes: Counter = Counter()
        self.reverts: Counter = Counter()
        self.actions: list[tuple[datetime, Action]] = []

    def sites(self) -> list[SiteState]:
        return [SiteState(n, self.reachable[n], self.opted_out[n], self.maintenance[n], self.applied[n])
                for n in self.names]

    def observe(self) -> Observation:
        for n in self.names:  # agents apply their desired version when they can reach the hub
            if self.reachable[n] and not self.broken[n]:
                self.applied[n] = self.desired[n]
        telemetry = {}
        for n in self.names:
            if not self.reachable[n]:
                continue
            # Each reachable site reports its running version, and old-version traffic for the canary
            # comparison (in the real controller: the same sites' old-version window).
            versions = {"v1", self.applied[n]}
            telemetry[n] = {v: traffic(self.speed[v], self.requests, self.errors[v]) for v in versions}
        facts = {n: SiteFacts(self.reachable[n], self.applied[n] if self.reachable[n] else None,
                              self.maintenance[n], self.opted_out[n]) for n in self.names}
        return Observation(facts, telemetry, SLO_TTFT, SLO_TPOT)

    def carry_out(self, now: datetime, actions: list[Action]) -> None:
        for a in actions:
            self.actions.append((now, a))
            for s in a.sites:
                self.desired[s] = a.version
                (self.publishes if a.kind == "publish" else self.reverts)[s] += 1


def spec(**kw) -> RolloutSpec:
    kw.setdefault("min_requests", 100)
    return RolloutSpec(service="chat", to_version="v2", **kw)


def begin(fleet: Fleet, **kw) -> RolloutState:
    return start(spec(**kw), fleet.sites(), "v1", T0)


def drive(state: RolloutState, fleet: Fleet, now: datetime = T0, ticks: int = 60, until=None,
          audit: list | None = None) -> tuple[RolloutState, datetime]:
    """Observe, step, carry out, every TICK, until a terminal phase (or `until(state)`)."""
    for _ in range(ticks):
        state, actions, entries = step(state, fleet.observe(), now)
        fleet.carry_out(now, actions)
        if audit is not None:
            audit.extend(entries)
        assert state.count(SiteStatus.PUBLISHED) <= state.max_unavailable
        if state.phase in Phase.terminal() or (until and until(state)):
            return state, now
        now += TICK
    return state, now


# ------------------------------------------------------------- waves


def test_waves_happy_path_updates_every_site_once():
    fleet = Fleet(10)
    state = begin(fleet)
    assert [len(w) for w in state.waves] == [1, 4, 5]  # 10 % of 10 is 1 site: that wave is empty
    audit: list = []
    state, now = drive(state, fleet, audit=audit)
    assert state.phase is Phase.COMPLETED and state.reason == "10 of 10 site(s) run v2"
    assert all(v == "v2" for v in fleet.applied.values())
    assert set(fleet.publishes.values()) == {1} and len(fleet.publishes) == 10
    events = [e.event for e in audit]
    assert events.count("wave-passed") == 3 and events[0] == "started" and events[-1] == "completed"
    assert all("meets the SLO: p95 TTFT" in e.message for e in audit if e.event == "wave-passed")
    # every wave soaked at least min-success-time before the next wave was published
    first_publish = {}
    for at, a in fleet.actions:
        for s in a.sites:
            first_publish[s] = at
    wave_start = [min(first_publish[s] for s in w) for w in state.waves]
    assert all(b - a >= timedelta(minutes=10) for a, b in zip(wave_start, wave_start[1:]))
    assert display_status(state).startswith("Completed: chat v1 -> v2, 10 site(s): 10 applied")


def test_max_unavailable_bounds_sites_in_flight():
    fleet = Fleet(8)
    state = begin(fleet, waves="1,100%", max_unavailable="3")
    fleet.reachable["s1"] = fleet.reachable["s2"] = False  # they hold two slots until their deadline
    state, _ = drive(state, fleet, until=lambda s: s.wave == 1)
    for _ in range(3):
        state, actions, _ = step(state, fleet.observe(), T0 + timedelta(hours=1))
        assert sum(len(a.sites) for a in actions if a.kind == "publish") <= 1
        assert state.count(SiteStatus.PUBLISHED) <= 3


def test_unreachable_site_hits_the_deadline_counts_as_failure_and_catches_up():
    fleet = Fleet(4)
    fleet.reachable["s3"] = False
    state = begin(fleet, waves="1,100%", max_unavailable="4", max_failures=1)
    assert state.waves[-1][-1] == "s3"  # unhealthy sites are planned last
    audit: list = []
    state, now = drive(state, fleet, audit=audit)
    assert state.phase is Phase.COMPLETED
    rec = state.record("s3")
    assert rec.status is SiteStatus.FAILED
    assert rec.reason == "did not apply v2 within the 30m progress deadline (unreachable)"
    assert rec.since - rec.published_at == timedelta(minutes=30)
    assert "not updated: s3 (failed)" in state.reason
    # it comes back: its desired version was published once and it catches up without a second publish
    fleet.reachable["s3"] = True
    state, actions, entries = step(state, fleet.observe(), now + TICK)
    assert actions == [] and state.record("s3").status is SiteStatus.APPLIED
    assert [e.event for e in entries] == ["site-caught-up"]
    assert fleet.publishes["s3"] == 1


def test_too_many_failures_pause_with_the_reason_then_resume_accepts_them():
    fleet = Fleet(4)
    fleet.reachable["s3"] = False
    state = begin(fleet, waves="1,100%", max_unavailable="4", max_failures=0)
    state, now = drive(state, fleet, until=lambda s: s.phase is Phase.PAUSED)
    assert state.phase is Phase.PAUSED
    assert state.reason == ("1 site(s) failed, more than --max-failures 0 (s3: did not apply v2 within the 30m "
                            "progress deadline (unreachable)); paused (on breach: pause)")
    state, _, entries = command(state, "resume", now, actor="ops")
    assert state.phase is Phase.PROGRESSING and state.accepted_failures == ("s3",)
    assert "failed site(s) accepted: s3" in entries[0].message
    state, _ = drive(state, fleet, now)
    assert state.phase is Phase.COMPLETED


def test_too_many_failures_roll_back_when_asked():
    fleet = Fleet(3)
    fleet.reachable["s2"] = False
    state = begin(fleet, waves="1,100%", max_unavailable="3", max_failures=0, on_breach="rollback")
    state, _ = drive(state, fleet)
    # s0 and s1 went back to v1; s2 never applied v2 and its desired state is v1 again
    assert state.phase is Phase.FAILED  # s2 is still unreachable, so the rollback cannot be confirmed
    assert "did not return to v1" in state.reason and "s2 (unreachable)" in state.reason
    fleet.reachable["s2"] = True
    state, _, _ = step(state, fleet.observe(), T0 + timedelta(days=1))
    assert state.record("s2").status is SiteStatus.REVERTED
    assert fleet.applied == {"s0": "v1", "s1": "v1", "s2": "v1"}


# ------------------------------------------------------------- gates


def test_canary_with_a_2x_slower_version_is_caught_and_rolled_back():
    fleet = Fleet(6, speed={"v1": 1.0, "v2": 2.0})
    state = begin(fleet, strategy="canary")
    assert state.waves[0] == ("s0",)
    audit: list = []
    state, _ = drive(state, fleet, audit=audit)
    assert state.phase is Phase.ROLLED_BACK
    assert fleet.publishes == Counter({"s0": 1}) and fleet.reverts == Counter({"s0": 1})
    assert fleet.applied["s0"] == "v1"
    breach = next(e for e in audit if e.event == "rolling-back")
    assert "wave 1/3 gate failed: TTFT p95 new" in breach.message and "(ratio 2.0" in breach.message
    assert "one-sided binomial test p = " in breach.message and "rolling back (on breach: rollback)" in breach.message
    assert any(v.gate == "ttft-comparison" and not v.passed for v in state.verdicts)


def test_canary_of_an_equal_version_passes_with_stated_tests():
    fleet = Fleet(4, speed={"v1": 1.0, "v2": 1.0})
    audit: list = []
    state, _ = drive(begin(fleet, strategy="canary"), fleet, audit=audit)
    assert state.phase is Phase.COMPLETED
    canary = next(e for e in audit if e.event == "wave-passed")
    assert "no significant slowdown beyond the limit" in canary.message
    assert "two-proportion z" in canary.message


def test_canary_error_rate_rise_pauses_when_policy_says_pause():
    fleet = Fleet(4, errors={"v1": 3, "v2": 30})  # 1 % -> 10 % of 300 requests a tick
    state, _ = drive(begin(fleet, strategy="canary", canary={"on_breach": "pause"}), fleet,
                     until=lambda s: s.phase is Phase.PAUSED)
    assert state.phase is Phase.PAUSED
    assert "errors rose beyond the allowance" in state.reason and "error rate new 10.00%" in state.reason


def test_slo_breach_pauses_with_numbers():
    fleet = Fleet(4, speed={"v1": 1.0, "v2": 5.0})
    state, _ = drive(begin(fleet), fleet, until=lambda s: s.phase is Phase.PAUSED)
    assert state.phase is Phase.PAUSED and state.wave == 0
    assert "v2 breaches the TTFT and TPOT SLO: p95 TTFT" in state.reason and "> SLO 1000 ms" in state.reason
    assert fleet.publishes == Counter({"s0": 1})


def test_slo_breach_rolls_back_when_asked():
    fleet = Fleet(4, speed={"v1": 1.0, "v2": 5.0})
    state, _ = drive(begin(fleet, on_breach="rollback"), fleet)
    assert state.phase is Phase.ROLLED_BACK and fleet.applied["s0"] == "v1"


def test_not_enough_traffic_pauses_at_the_deadline():
    fleet = Fleet(3, requests=5)
    state, now = drive(begin(fleet, min_requests=10_000), fleet, until=lambda s: s.phase is Phase.PAUSED)
    assert state.phase is Phase.PAUSED
    assert state.reason.startswith("not enough traffic to judge wave 1/3 within the 30m progress deadline: "
                                   "v2 served ")
    state, _, _ = command(state, "resume", now)
    assert state.stage is Stage.SOAKING and state.soak_since == now


# ------------------------------------------------------ maintenance, opt-out, schedule


def test_site_in_maintenance_is_deferred_and_caught_up():
    fleet = Fleet(5)
    state = begin(fleet, waves="1,100%", max_unavailable="5")
    fleet.maintenance["s3"] = True
    audit: list = []
    state, now = drive(state, fleet, until=lambda s: s.stage is Stage.CATCHING_UP, audit=audit)
    assert state.record("s3").status is SiteStatus.DEFERRED
    assert any(e.event == "site-deferred" for e in audit)
    fleet.maintenance["s3"] = False
    state, _ = drive(state, fleet, now + TICK)
    assert state.phase is Phase.COMPLETED and state.reason == "5 of 5 site(s) run v2"
    assert fleet.publishes["s3"] == 1


def test_site_still_in_maintenance_is_listed_as_not_updated():
    fleet = Fleet(3)
    state = begin(fleet, waves="1,100%")
    fleet.maintenance["s2"] = True
    state, _ = drive(state, fleet)
    assert state.phase is Phase.COMPLETED
    assert state.reason == "2 of 3 site(s) run v2; not updated: s2 (skipped)"
    assert "s2" not in fleet.publishes


def test_site_opting_out_before_its_turn_is_skipped():
    fleet = Fleet(3)
    state = begin(fleet)
    fleet.opted_out["s2"] = True
    state, _ = drive(state, fleet)
    assert state.phase is Phase.COMPLETED and state.record("s2").status is SiteStatus.SKIPPED
    assert "s2" not in fleet.publishes and fleet.applied["s2"] == "v1"


def test_schedule_holds_publishing_outside_the_window():
    fleet = Fleet(4)
    state = begin(fleet, waves="1,100%", schedule="0 22 * * *", window="30m", min_success_time="5m")
    state, actions, entries = step(state, fleet.observe(), T0)  # 21:00
    assert state.phase is Phase.SCHEDULED and actions == []
    assert "next opens 2026-11-27T22:00:00+00:00" in state.reason
    state, _ = drive(state, fleet, T0, ticks=60)
    assert state.phase is Phase.COMPLETED
    for at, a in fleet.actions:
        assert state.spec.in_window(at), at
    assert min(at for at, _ in fleet.actions).hour == 22


# ------------------------------------------------------------- commands


def _in_phase(phase: Phase) -> tuple[RolloutState, datetime]:
    fleet = Fleet(3)
    if phase is Phase.PENDING:
        return begin(fleet), T0
    if phase is Phase.SCHEDULED:
        s = begin(fleet, schedule="0 23 * * *", window="1h")
        return step(s, fleet.observe(), T0)[0], T0
    if phase is Phase.PROGRESSING:
        s = step(begin(fleet), fleet.observe(), T0)[0]
        fleet.carry_out(T0, [Action("publish", "v2", ("s0",))])
        return s, T0
    if phase is Phase.PAUSED:
        s, now = _in_phase(Phase.PROGRESSING)
        return command(s, "pause", now)[0], now
    if phase is Phase.ROLLING_BACK:
        s, now = _in_phase(Phase.PROGRESSING)
        return command(s, "undo", now)[0], now
    if phase is Phase.ABORTED:
        s, now = _in_phase(Phase.PROGRESSING)
        return command(s, "abort", now)[0], now
    if phase is Phase.COMPLETED:
        return drive(begin(fleet), fleet)
    if phase is Phase.ROLLED_BACK:
        fleet.speed["v2"] = 5.0
        return drive(begin(fleet, on_breach="rollback"), fleet)
    if phase is Phase.FAILED:
        s, now = _in_phase(Phase.ROLLING_BACK)
        fleet.reachable["s0"] = False
        return drive(s, fleet, now)
    raise AssertionError(phase)


LEGAL = {
    "pause": {Phase.PENDING, Phase.SCHEDULED, Phase.PROGRESSING},
    "resume": {Phase.PAUSED},
    "abort": {Phase.PENDING, Phase.SCHEDULED, Phase.PROGRESSING, Phase.PAUSED},
    "undo": {Phase.PROGRESSING, Phase.PAUSED, Phase.COMPLETED, Phase.ABORTED, Phase.FAILED},
}
AFTER = {"pause": Phase.PAUSED, "abort": Phase.ABORTED, "undo": Phase.ROLLING_BACK}


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("name", ["pause", "resume", "abort", "undo"])
def test_every_command_in_every_phase(phase, name):
    state, now = _in_phase(phase)
    assert state.phase is phase
    if phase in LEGAL[name]:
        new, actions, audit = command(state, name, now + TICK, actor="ops")
        expected = state.paused_phase if name == "resume" else AFTER[name]
        assert new.phase is expected and new.revision == state.revision + 1
        assert audit and audit[0].actor == "ops"
        if name == "undo":
            assert [a.kind for a in actions] == ["revert"] and "s0" in actions[0].sites
        else:
            assert actions == []
    else:
        with pytest.raises(IllegalCommand) as e:
            command(state, name, now + TICK)
        assert "fleet rollout" in e.value.hint, str(e.value)
        assert state.service in str(e.value)


def test_illegal_command_messages():
    done, now = _in_phase(Phase.COMPLETED)
    with pytest.raises(IllegalCommand, match=r"^the rollout of chat to v2 is Completed; nothing to pause; revert it "
                                             r"with `fleet rollout undo chat`$"):
        command(done, "pause", now)
    fresh, _ = _in_phase(Phase.PENDING)
    with pytest.raises(IllegalCommand, match="nothing to undo: no site of chat was given v2; cancel the rollout with "
                                             "`fleet rollout abort chat`"):
        command(fresh, "undo", now)
    with pytest.raises(IllegalCommand, match="unknown command 'restart'"):
        command(fresh, "restart", now)


def test_pause_holds_then_resume_continues():
    fleet = Fleet(3)
    state, now = drive(begin(fleet), fleet, until=lambda s: s.wave == 1)
    state, _, _ = command(state, "pause", now, actor="ops", note="investigating")
    assert state.reason == "paused by ops: investigating"
    before = dict(fleet.publishes)
    state, now = drive(state, fleet, now + TICK, ticks=20, until=lambda s: False)
    assert state.phase is Phase.PAUSED and dict(fleet.publishes) == before
    state, _, _ = command(state, "resume", now)
    state, _ = drive(state, fleet, now)
    assert state.phase is Phase.COMPLETED


def test_abort_leaves_sites_and_says_how_to_revert():
    state, now = _in_phase(Phase.PROGRESSING)
    state, actions, audit = command(state, "abort", now)
    assert actions == [] and state.phase is Phase.ABORTED
    assert "1 site(s) keep v2: revert them with `fleet rollout undo chat`" in audit[0].message


# ------------------------------------------------------------- idempotence and resume


def test_same_observation_twice_changes_nothing():
    fleet = Fleet(6)
    state, now = begin(fleet), T0
    for _ in range(40):
        obs = fleet.observe()
        state, actions, _ = step(state, obs, now)
        fleet.carry_out(now, actions)
        again, actions2, audit2 = step(state, obs, now)
        assert again is state and actions2 == [] and audit2 == []
        if state.phase in Phase.terminal():
            break
        now += TICK
    assert state.phase is Phase.COMPLETED and set(fleet.publishes.values()) == {1}


def test_state_is_plain_json_and_round_trips():
    fleet = Fleet(5, speed={"v1": 1.0, "v2": 2.0})
    state, now = begin(fleet, strategy="canary"), T0
    while state.phase not in Phase.terminal():
        d = state.to_dict()
        assert RolloutState.from_dict(json.loads(json.dumps(d, allow_nan=False))) == state
        state, actions, _ = step(state, fleet.observe(), now)
        fleet.carry_out(now, actions)
        now += TICK
    assert RolloutState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


EVENTS = st.sampled_from(["tick", "tick", "tick", "tick", "down", "up", "maint", "unmaint", "pause", "resume",
                          "abort", "undo", "optout", "slow", "fail", "heal", "errors"])


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    waves=st.sampled_from(["1,10%,50%,100%", "1,100%", "2,50%,100%", "100%"]),
    max_unavailable=st.sampled_from(["1", "2", "50%"]),
    max_failures=st.integers(0, 2),
    strategy=st.sampled_from(["waves", "canary"]),
    on_breach=st.sampled_from(["pause", "rollback"]),
    script=st.lists(st.tuples(EVENTS, st.integers(0, 39)), min_size=5, max_size=80),
)
def test_resume_from_serialised_state_is_equivalent(n, waves, max_unavailable, max_failures, strategy, on_breach,
                                                    script):
    """A controller that crashes and restores the state from JSON before every step acts exactly the same;
    and whatever happens, no site is published to twice and the max-unavailable budget holds."""
    kw = dict(waves=waves, max_unavailable=max_unavailable, max_failures=max_failures, strategy=strategy,
              on_breach=on_breach, min_success_time="10m", progress_deadline="20m")
    fleet = Fleet(n)
    live = begin(fleet, **kw)
    restored_state = RolloutState.from_dict(json.loads(json.dumps(live.to_dict())))
    now = T0
    for event, k in script:
        site = fleet.names[k % n]
        if event == "down":
            fleet.reachable[site] = False
        elif event == "up":
            fleet.reachable[site] = True
        elif event == "maint":
            fleet.maintenance[site] = True
        elif event == "unmaint":
            fleet.maintenance[site] = False
        elif event == "optout":
            fleet.opted_out[site] = True
        elif event == "slow":
            fleet.speed["v2"] = 5.0
        elif event == "fail":  # the agent stays connected but its applies fail
            fleet.broken[site] = True
        elif event == "heal":
            fleet.broken[site] = False
        elif event == "errors":  # the new version starts failing requests
            fleet.errors["v2"] = fleet.requests // 4
        elif event in ("pause", "resume", "abort", "undo"):
            outcomes = []
            for s in (live, restored_state):
                try:
                    outcomes.append(command(s, event, now))
                except IllegalCommand as e:
                    outcomes.append(str(e))
            assert outcomes[0] == outcomes[1]
            if not isinstance(outcomes[0], str):
                live, actions, _ = outcomes[0]
                fleet.carry_out(now, actions)
                restored_state = RolloutState.from_dict(json.loads(json.dumps(live.to_dict())))
            continue
        obs = fleet.observe()
        a = step(live, obs, now)
        b = step(restored_state, obs, now)
        assert a == b
        live = a[0]
        fleet.carry_out(now, a[1])
        restored_state = RolloutState.from_dict(json.loads(json.dumps(live.to_dict())))
        assert restored_state == live
        assert live.count(SiteStatus.PUBLISHED) <= live.max_unavailable
        now += TICK
    assert max(fleet.publishes.values(), default=0) <= 1
    note_event(f"ended {live.phase.value}")


def test_display_status_is_derived_from_the_facts():
    fleet = Fleet(3, requests=5)
    state = begin(fleet, min_requests=10_000)
    assert display_status(state, T0) == "Pending: chat v1 -> v2, 3 site(s): 3 pending. created"
    state, now = drive(state, fleet, until=lambda s: s.stage is Stage.SOAKING)
    assert display_status(state, now).startswith("Progressing (wave 1/3 soaking, 10m left): chat v1 -> v2, "
                                                 "3 site(s): 2 pending, 1 applied")
    state, now = drive(state, fleet, now, until=lambda s: s.stage is Stage.GATING)
    assert "Progressing (wave 1/3 gating); waiting for traffic: v2 served 5 of the 10,000 requests" \
        in display_status(state, now)
    state, now = drive(state, fleet, now)  # ... until the deadline pauses it
    assert display_status(state, now).startswith("Paused: chat v1 -> v2")


def test_audit_entries_round_trip():
    from hub.rollout.machine import AuditEntry

    fleet = Fleet(2)
    audit: list = []
    drive(begin(fleet), fleet, audit=audit)
    assert audit and all(AuditEntry.from_dict(json.loads(json.dumps(e.to_dict()))) == e for e in audit)


def test_catch_up_in_the_step_that_breaches_emits_no_publish():
    fleet = Fleet(4, speed={"v1": 1.0, "v2": 5.0})
    state = begin(fleet, waves="2,100%", on_breach="rollback")
    fleet.maintenance["s1"] = True
    state, now = drive(state, fleet, until=lambda s: s.stage is Stage.SOAKING)
    assert state.record("s1").status is SiteStatus.DEFERRED
    fleet.maintenance["s1"] = False  # its maintenance ends in the very step whose gate fails
    state, actions, _ = step(state, fleet.observe(), now + timedelta(minutes=10))
    assert state.phase is Phase.ROLLING_BACK
    assert [(a.kind, a.sites) for a in actions] == [("revert", ("s0",))]
    fleet.carry_out(now, actions)
    state, _, _ = step(state, fleet.observe(), now + timedelta(minutes=15))
    assert state.phase is Phase.ROLLED_BACK and "s1" not in fleet.publishes
