"""Rollouts end to end: a real Hub (gRPC, store, APScheduler controller) and real agents, on SQLite and PostgreSQL.

The agents are edge_agent.agent.Agent with their record-only appliers: they
receive the Placement objects each wave publishes and acknowledge them. The
traffic the gates judge is written by the same agents as ``telemetry``
reports (``agent.link.report``), built here from chosen latencies for the
version each agent currently holds: this stands in for the serving layer
(tested on its own in tests/serving), so that a "slow" version is slow by
construction and the tests are deterministic.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from hub.placement.model import Placement
from hub.rollout import synthetic
from hub.rollout.controller import RolloutController
from hub.rollout.spec import RolloutSpec
from protos.fleet.v1 import admin_pb2, rollout_pb2, rollout_pb2_grpc
from tests.harness.telemetry import Requests, telemetry_payload
from tests.integration.test_link import Fleet, RunningAgent, eventually, no_leaked_tasks, pki  # noqa: F401

SITES = ["s1", "s2", "s3", "s4"]
FAST = {"heartbeat_interval_s": 0.2, "stale_after_s": 0.8, "unreachable_after_s": 1.5,
        "rollout_tick_s": 0.2, "rollout_lease_s": 2.0}
SLOW_FACTOR = {"v1": 1.0, "v2": 1.0, "v2-slow": 2.0}
"""TTFT multiplier per version: v2-slow doubles the time to first token but stays within the 500 ms SLO, so only
the canary's comparison with v1 can catch it."""


# -- helpers ------------------------------------------------------------------


def telemetry(node: str, version: str, n: int, factor: float, rng: random.Random) -> dict:
    """One telemetry window of ``n`` requests, made by the agent's own telemetry code (tests/harness)."""
    end = datetime.now(UTC)
    ttft = [rng.lognormvariate(-2.3, 0.3) * factor for _ in range(n)]  # p95 ~ 0.16 s at factor 1
    itl = [rng.lognormvariate(-4.0, 0.2) for _ in range(n)]   # ~ 0.02 s
    return telemetry_payload("x", node, [Requests(synthetic.MODEL, version, ttft, itl=itl, output_tokens=50,
                                                  prompt_tokens=100)], end - timedelta(seconds=0.3), end)


def held_version(a: RunningAgent) -> str | None:
    for o in a.state.objects("Placement"):
        for asg in o.spec.get("assignments", ()):
            if asg.get("service") == synthetic.SERVICE:
                return asg["version"]
    return None


class Traffic:
    """Each running agent reports traffic of the version it holds, every 0.25 s."""

    def __init__(self, agents: list[RunningAgent], factor: dict[str, float] | None = None, n: int = 40) -> None:
        self.agents, self.factor, self.n = agents, factor or SLOW_FACTOR, n
        self.rng = random.Random(7)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for a in list(self.agents):
                v = held_version(a)
                if v is not None and not a.task.done():
                    a.link.report("telemetry", telemetry(a.cfg.node, v, self.n, self.factor.get(v, 1.0), self.rng))
            await asyncio.sleep(0.25)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class RolloutFleet(Fleet):
    @property
    def rollouts(self) -> rollout_pb2_grpc.RolloutsStub:
        return rollout_pb2_grpc.RolloutsStub(self.channel)

    async def start_rollout(self, **spec) -> rollout_pb2.Rollout:
        spec.setdefault("service", synthetic.SERVICE)
        s = RolloutSpec(**spec)
        req = rollout_pb2.StartRolloutRequest(spec_json=json.dumps(s.to_dict()), actor="tester")
        return await self.rollouts.Start(req, metadata=self.md, timeout=10)

    async def get(self) -> rollout_pb2.Rollout:
        return await self.rollouts.Get(rollout_pb2.GetRolloutRequest(service=synthetic.SERVICE), metadata=self.md,
                                       timeout=10)

    async def command(self, name: str) -> rollout_pb2.Rollout:
        req = rollout_pb2.RolloutCommandRequest(service=synthetic.SERVICE, actor="tester", note="test")
        return await getattr(self.rollouts, name)(req, metadata=self.md, timeout=30)

    async def wait_phase(self, *phases: str, timeout: float = 60.0) -> rollout_pb2.Rollout:
        async def done():
            r = await self.get()
            return r if r.phase in phases else None

        return await eventually(done, timeout=timeout, what=f"rollout to reach {phases}")

    async def audit(self, subject: str = "") -> list[rollout_pb2.AuditRecord]:
        resp = await self.rollouts.Audit(rollout_pb2.AuditRequest(subject=subject), metadata=self.md, timeout=10)
        return list(resp.records)


@pytest.fixture
async def fleet(db_url, tmp_path):
    f = RolloutFleet(db_url, tmp_path, None, **FAST)
    await f.start_hub()
    try:
        yield f
    finally:
        await f.close()


async def seeded(fleet: RolloutFleet, sites=SITES, **kw) -> list[RunningAgent]:
    await synthetic.seed(fleet.hub.store, synthetic.fleet_bundle(sites, **kw), datetime.now(UTC))
    fleet.hub.broker.poke()
    agents = [fleet.start_agent(s, synthetic.node_of(s)) for s in sites]
    for a in agents:
        await eventually(lambda a=a: held_version(a) == "v1", what=f"{a.site_node} to hold v1")
    return agents


async def publishes_per_site(fleet: RolloutFleet, version: str) -> Counter:
    """How many revisions switched each site to ``version`` (a site updated twice would count 2)."""
    revs = sorted(await fleet.hub.store.list_revisions(500), key=lambda r: r.number)
    count: Counter = Counter()
    prev: dict[str, str] = {}
    for r in revs:
        now = {a.site: a.version for a in Placement.from_spec(r.placement).assignments}
        for site, v in now.items():
            if v == version and prev.get(site) != version:
                count[site] += 1
        prev = now
    return count


# -- tests --------------------------------------------------------------------


async def test_waves_advance_after_acks_soak_and_slo_gate(fleet):
    agents = await seeded(fleet)
    traffic = Traffic(agents)
    try:
        r = await fleet.start_rollout(to_version="v2", waves="1,50%,100%", max_unavailable=2,
                                      min_success_time="1s", progress_deadline="30s", min_requests=30)
        assert r.phase == "Pending" and r.from_version == "v1" and r.created_by == "tester"
        state = json.loads(r.state_json)
        assert [len(w) for w in state["waves"]] == [1, 1, 2]  # a first wave of one site
        done = await fleet.wait_phase("Completed")
    finally:
        await traffic.stop()
    assert done.status.startswith("Completed") and "4 of 4 site(s) run v2" in done.status
    for a in agents:
        await eventually(lambda a=a: held_version(a) == "v2", what=f"{a.site_node} on v2")
    assert await publishes_per_site(fleet, "v2") == Counter(dict.fromkeys(SITES, 1))
    revs = await fleet.hub.store.list_revisions()
    assert {r.author for r in revs[:-1]} == {f"rollout/{r.id}"}
    latest = await fleet.hub.store.get_revision()
    assert '"version":"v2"' in latest.bundle  # the final revision plans from v2
    records = await fleet.audit(f"rollout/{r.id}")
    actions = [x.action for x in records]
    assert actions[0] == "rollout.start" and actions[-1] == "rollout.completed"
    passed = [json.loads(x.details_json) for x in records if x.action == "rollout.wave-passed"]
    assert len(passed) == 3
    for p in passed:
        slo = next(g for g in p["gates"] if g["gate"] == "slo")
        assert slo["outcome"] == "pass" and slo["numbers"]["requests"] >= 30 and "p95 TTFT" in slo["sentence"]
    # each wave soaked >= min-success-time after it applied, before the next wave was published
    times = [(x.action, x.at.ToDatetime(tzinfo=UTC)) for x in records]
    soaks = [t for a, t in times if a == "rollout.soaking"]
    gates = [t for a, t in times if a == "rollout.wave-passed"]
    assert all(g - s >= timedelta(seconds=1) for s, g in zip(soaks, gates))


async def test_canary_to_slower_version_is_rolled_back_with_the_numbers(fleet):
    agents = await seeded(fleet)
    traffic = Traffic(agents)
    await asyncio.sleep(1.5)  # the old version's baseline on the canary site
    try:
        r = await fleet.start_rollout(to_version="v2-slow", strategy="canary", waves="50%,100%",
                                      min_success_time="1s", progress_deadline="30s", min_requests=30,
                                      canary={"sites": 1, "min_requests": 60})
        done = await fleet.wait_phase("RolledBack", "Failed")
    finally:
        await traffic.stop()
    assert done.phase == "RolledBack", done.status
    assert "1 site(s) back on v1 after: " in done.status and "slower than allowed" in done.status
    state = json.loads(done.state_json)  # the verdicts behind the rollback stay in the state (and the audit)
    ttft = next(v for v in state["verdicts"] if v["gate"] == "ttft-comparison")
    assert ttft["outcome"] == "fail" and ttft["numbers"]["pValue"] < 0.05
    canary = state["waves"][0][0]
    assert [s["status"] for s in state["sites"] if s["site"] == canary] == ["reverted"]
    for a in agents:
        await eventually(lambda a=a: held_version(a) == "v1", what=f"{a.site_node} back on v1")
    records = await fleet.audit(f"rollout/{r.id}")
    back = next(json.loads(x.details_json) for x in records if x.action == "rollout.rolling-back")
    assert any(g["gate"] == "ttft-comparison" and g["outcome"] == "fail" for g in back["gates"])
    assert await publishes_per_site(fleet, "v2-slow") == Counter({canary: 1})  # only the canary ever got it
    assert '"version":"v1"' in (await fleet.hub.store.get_revision()).bundle


async def test_unreachable_site_fails_by_deadline_and_catches_up(fleet):
    agents = await seeded(fleet)
    gone = agents[-1]
    await fleet.stop_agent(gone)  # s4 goes away before the rollout starts
    live = agents[:-1]
    traffic = Traffic(live)
    try:
        await eventually(lambda: _site_unreachable(fleet, "s4"), what="s4 unreachable")
        await fleet.start_rollout(to_version="v2", waves="1,100%", max_unavailable=3, max_failures=1,
                                  min_success_time="1s", progress_deadline="3s", min_requests=20)
        done = await fleet.wait_phase("Completed", "Paused")
    finally:
        await traffic.stop()
    assert done.phase == "Completed", done.status
    assert "not updated: s4 (failed)" in done.status
    state = json.loads(done.state_json)
    s4 = next(s for s in state["sites"] if s["site"] == "s4")
    assert s4["status"] == "failed" and "unreachable" in s4["reason"]
    back = fleet.start_agent("s4", synthetic.node_of("s4"), data_dir=gone.cfg.data_dir)
    await eventually(lambda: held_version(back) == "v2", what="s4 to catch up on return")


async def _site_unreachable(fleet: RolloutFleet, site: str) -> bool:
    nodes = await fleet.nodes()
    return nodes[(site, synthetic.node_of(site))].phase == admin_pb2.NODE_PHASE_UNREACHABLE


async def test_hub_restart_mid_rollout_resumes_where_it_was(fleet):
    agents = await seeded(fleet)
    traffic = Traffic(agents)
    try:
        r = await fleet.start_rollout(to_version="v2", waves="1,50%,100%", max_unavailable=2,
                                      min_success_time="1s", progress_deadline="30s", min_requests=20)

        async def in_wave_two():
            st = json.loads((await fleet.get()).state_json)
            return st["wave"] >= 1

        await eventually(in_wave_two, timeout=30, what="wave 2")
        await fleet.stop_hub()
        await asyncio.sleep(0.5)
        await fleet.start_hub()  # same database: the job store still holds the rollout's job
        assert fleet.hub.rollouts.scheduler.get_job(f"rollout:{r.id}") is not None
        await fleet.wait_phase("Completed")
    finally:
        await traffic.stop()
    assert await publishes_per_site(fleet, "v2") == Counter(dict.fromkeys(SITES, 1))


@pytest.fixture
async def long_lease_fleet(db_url, tmp_path):
    """A fleet whose controller holds its lease for 30 s: on a loaded CI machine an event loop can stall
    for more than the 2 s lease of `fleet`, and a lease that expires is rightly taken over, which is not
    what the test below is about (the kill-and-take-over tests are)."""
    f = RolloutFleet(db_url, tmp_path, None, **{**FAST, "rollout_lease_s": 30.0})
    await f.start_hub()
    try:
        yield f
    finally:
        await f.close()


async def test_two_controllers_on_one_store_one_drives(long_lease_fleet):
    fleet = long_lease_fleet
    await seeded(fleet)
    other = RolloutController(fleet.hub.store, liveness=fleet.hub.cfg.liveness, tick_s=0.2, lease_s=30.0,
                              owner="second-hub")
    await other.start()
    agents = fleet.agents
    traffic = Traffic(agents)
    try:
        r = await fleet.start_rollout(to_version="v2", waves="1,100%", max_unavailable=3,
                                      min_success_time="1s", progress_deadline="30s", min_requests=20)
        other.ensure_job(r.id)
        await fleet.wait_phase("Completed")
    finally:
        await traffic.stop()
        await other.stop()
    drivers = {x.actor for x in await fleet.audit(f"rollout/{r.id}") if x.actor.startswith("rollout-controller")}
    assert len(drivers) == 1, drivers
    assert await publishes_per_site(fleet, "v2") == Counter(dict.fromkeys(SITES, 1))


async def test_pause_resume_abort_undo(fleet):
    agents = await seeded(fleet)
    traffic = Traffic(agents)
    try:
        await fleet.start_rollout(to_version="v2", waves="1,50%,100%", min_success_time="2s",
                                  progress_deadline="30s", min_requests=20)
        paused = await fleet.command("Pause")
        assert paused.phase == "Paused"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fleet.command("Pause")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "next: resume it with `fleet rollout resume chat`" in err.value.details()
        assert (await fleet.command("Resume")).phase == "Progressing"

        async def some_applied():
            st = json.loads((await fleet.get()).state_json)
            return any(s["status"] == "applied" for s in st["sites"])

        await eventually(some_applied, timeout=30, what="a site on v2")
        aborted = await fleet.command("Abort")
        assert aborted.phase == "Aborted"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fleet.command("Pause")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "nothing to pause" in err.value.details()
        await fleet.command("Undo")
        await fleet.wait_phase("RolledBack")
    finally:
        await traffic.stop()
    for a in agents:
        await eventually(lambda a=a: held_version(a) == "v1", what=f"{a.site_node} back on v1")
    actions = [(x.action, x.actor) for x in await fleet.audit()]
    assert ("rollout.paused", "tester") in actions and ("rollout.aborted", "tester") in actions


async def test_bad_input_is_refused_with_the_next_command(fleet):
    await seeded(fleet, site_extra={"s3": {"labels": {"fleet.edge/rollouts": "opt-out"}}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.start_rollout(to_version="v9")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no version 'v9' (versions: v1, v2, v2-slow, v2-a100)" in err.value.details()
    assert "\nnext: " in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.rollouts.Start(rollout_pb2.StartRolloutRequest(spec_json=json.dumps(
            {"service": "chat", "toVersion": "v2", "schedule": "61 * * * *", "window": "1h"})), metadata=fleet.md)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("--schedule:")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.start_rollout(to_version="v2-a100")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "forbids v2-a100" in err.value.details() and "does not run on L4" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.start_rollout(service="nope", to_version="v2")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    r = await fleet.start_rollout(to_version="v2", min_success_time="1h")
    assert ["s3", "opted out of rollouts"] in json.loads(r.state_json)["excluded"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.start_rollout(to_version="v2-slow")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already" in err.value.details()
    assert "fleet rollout abort chat" in err.value.details()
    # `fleet apply` would undo the rollout's progress: refused while it runs
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.admin.Apply(admin_pb2.ApplyRequest(bundle_json=synthetic.fleet_bundle(SITES).to_json(),
                                                       author="ana"), metadata=fleet.md, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "chat -> v2" in err.value.details()
    await fleet.command("Abort")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.command("Resume")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "next: start a new one with `fleet rollout start chat --to VERSION`" in err.value.details()


async def test_maintenance_site_is_deferred_and_schedule_waits_for_its_window(fleet):
    now = datetime.now(UTC)
    window = {"maintenanceWindows": [{"start": (now - timedelta(minutes=5)).isoformat(),
                                      "end": (now + timedelta(hours=1)).isoformat(), "reason": "firmware"}]}
    agents = await seeded(fleet, site_extra={"s2": {"spec": window}})
    traffic = Traffic(agents)
    try:
        await fleet.start_rollout(to_version="v2", waves="1,100%", max_unavailable=3, min_success_time="1s",
                                  progress_deadline="3s", min_requests=20)
        done = await fleet.wait_phase("Completed", "Paused")
    finally:
        await traffic.stop()
    assert done.phase == "Completed", done.status
    state = json.loads(done.state_json)
    s2 = next(s for s in state["sites"] if s["site"] == "s2")
    assert s2["status"] == "skipped" and "in maintenance" in s2["reason"]
    assert held_version(agents[1]) == "v1"  # never touched during its maintenance
    assert "not updated: s2 (skipped)" in done.status
    # A schedule whose window is not open: the rollout waits, and says when the window opens.
    later = (now + timedelta(hours=3)).hour
    r = await fleet.start_rollout(to_version="v2-slow", schedule=f"0 {later} * * *", window="1h")
    sched = await fleet.wait_phase("Scheduled")
    assert "waiting for the next window" in sched.status and f"T{later:02d}:00:00" in sched.status
    assert fleet.hub.rollouts.scheduler.get_job(f"rollout-window:{r.id}") is not None
    assert all(held_version(a) == ("v1" if a is agents[1] else "v2") for a in agents)


async def test_apply_and_rollback_are_in_the_audit_trail(fleet):
    bundle = synthetic.fleet_bundle(SITES)
    resp = await fleet.admin.Apply(admin_pb2.ApplyRequest(bundle_json=bundle.to_json(), author="ana", message="m1"),
                                   metadata=fleet.md, timeout=60)
    assert resp.revision.number == 1
    records = await fleet.audit("revision/1")
    assert [(r.actor, r.action) for r in records] == [("ana", "revision.apply")]
    details = json.loads(records[0].details_json)
    assert details["message"] == "m1" and details["objectsPublished"] > 0
