"""The rollout gates read telemetry per report stream: an agent that lost its state sends seq 1 again
under a new incarnation, and the controller's incremental reader must count it, not take it for seq 1
of the old stream, which it has already seen (issue 10, item 1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from hub.rollout.controller import RolloutController
from hub.store.repo import IncomingReport
from hub.sync import LivenessPolicy

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def window(requests: int) -> dict:
    """A telemetry payload (edge_agent.serving.telemetry's shape) with no sketches: counts only."""
    return {"schema": 1, "site": "", "node": "n1", "windowStart": (T0 - timedelta(seconds=5)).isoformat(),
            "windowEnd": T0.isoformat(), "groups": [{"model": "chat", "version": "v2", "requests": requests,
                                                     "errors": 0, "sketches": {}}]}


async def test_the_gates_count_a_new_incarnations_telemetry_with_the_same_seqs(store):
    node = await store.register_node("fra", "n1", "1", {}, T0)
    now = [T0 + timedelta(minutes=1)]
    controller = RolloutController(store, liveness=LivenessPolicy(), clock=lambda: now[0])
    # Only what the gate reads of a rollout: a soaking wave of v1 -> v2 of "chat" on site fra.
    state = SimpleNamespace(
        spec=SimpleNamespace(strategy="waves", progress_deadline=600, min_success_time=0),
        wave=1, service="chat", to_version="v2", from_version="v1",
        sites=(SimpleNamespace(site="fra", status="applied"),))  # the gates read sites given the new version
    soak = T0 - timedelta(minutes=1)

    await store.store_reports(node.id, [IncomingReport(1, "telemetry", T0, window(10))], T0, incarnation="before")
    first = await controller._telemetry(state, "chat", soak, now[0])
    assert first["fra"]["v2"].requests == 10
    # The agent's disk is replaced: a new stream, seq 1 again, received after that read.
    later = T0 + timedelta(minutes=2)
    await store.store_reports(node.id, [IncomingReport(1, "telemetry", T0, window(7))], later, incarnation="after")
    now[0] = T0 + timedelta(minutes=3)
    second = await controller._telemetry(state, "chat", soak, now[0])
    assert second["fra"]["v2"].requests == 17


async def test_the_gates_read_only_the_sites_given_the_new_version(store):
    """A wave's gate judges the sites given the new version; the controller neither reads nor decodes
    the telemetry of the others (at 1000 sites that was most of a gating tick)."""
    fra = await store.register_node("fra", "n1", "1", {}, T0)
    par = await store.register_node("par", "n1", "1", {}, T0)
    now = T0 + timedelta(minutes=1)
    controller = RolloutController(store, liveness=LivenessPolicy(), clock=lambda: now)
    state = SimpleNamespace(
        spec=SimpleNamespace(strategy="waves", progress_deadline=600, min_success_time=0),
        wave=0, service="chat", to_version="v2", from_version="v1",
        sites=(SimpleNamespace(site="fra", status="applied"), SimpleNamespace(site="par", status="pending")))
    await store.store_reports(fra.id, [IncomingReport(1, "telemetry", T0, window(10))], T0, incarnation="i")
    await store.store_reports(par.id, [IncomingReport(1, "telemetry", T0, window(4))], T0, incarnation="i")
    got = await controller._telemetry(state, "chat", T0 - timedelta(minutes=1), now)
    assert {site: stats["v2"].requests for site, stats in got.items()} == {"fra": 10}
