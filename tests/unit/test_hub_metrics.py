"""The hub's /metrics (hub.metrics): figures from store records, served over HTTP."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta

from hub.metrics import HubMetrics, serve_http, snapshot
from hub.store.repo import NodeRecord, RolloutRecord
from hub.sync import LivenessPolicy

NOW = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)


def node(i: int, site: str, age_s: float, connected: bool = True) -> NodeRecord:
    return NodeRecord(i, site, f"n{i}", "t", {}, NOW, NOW - timedelta(seconds=age_s), connected, [], 0, 0)


def rollout(rid: str, service: str, phase: str, wave: int, statuses: list[str]) -> RolloutRecord:
    return RolloutRecord(rid, service, "v1", "v2", phase,
                         {"wave": wave, "waves": [["a"], ["b"], ["c"]],
                          "sites": [{"site": s, "status": st} for s, st in zip("abc", statuses)]}, 1, "x", NOW, NOW)


def test_snapshot_counts_phases_and_takes_the_newest_rollout_per_service():
    nodes = [node(1, "fra", 1), node(2, "fra", 100), node(3, "ber", 30), node(4, "par", 600, connected=False)]
    rollouts = [rollout("new", "chat", "Progressing", 1, ["applied", "published", "pending"]),
                rollout("old", "chat", "Completed", 2, ["applied"] * 3),
                rollout("r2", "embed", "Paused", 0, ["failed", "pending", "pending"])]
    s = snapshot(nodes, rollouts, 12, 345, NOW, LivenessPolicy())
    assert s.nodes == {"Connected": 1, "Stale": 1, "Unreachable": 2}
    assert s.sites == {"Connected": 1, "Stale": 1, "Unreachable": 1}  # a site counts by its best node
    assert [(r.service, r.rollout, r.wave, r.waves, r.sites) for r in s.rollouts] == [
        ("chat", "new", 2, 3, {"applied": 1, "published": 1, "pending": 1}),
        ("embed", "r2", 1, 3, {"failed": 1, "pending": 2})]
    assert (s.revision, s.reports) == (12, 345)


def test_metrics_are_served_over_http():
    m = HubMetrics()
    m.set(snapshot([node(1, "fra", 1)], [rollout("new", "chat", "Progressing", 1, ["applied"] * 3)], 3, 9, NOW,
                   LivenessPolicy()))
    server, port = serve_http("127.0.0.1:0", m.registry)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'fleet_hub_nodes{phase="Connected"} 1.0' in text
    assert 'fleet_hub_rollout_wave{phase="Progressing",rollout="new",service="chat"} 2.0' in text
    assert "fleet_hub_revision 3.0" in text and "fleet_hub_reports_stored 9.0" in text
