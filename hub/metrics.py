"""The hub's Prometheus metrics: fleet liveness, rollouts, revisions and reports, on ``--metrics-listen``.

Stats are data, exporters separate: :func:`snapshot` turns store records into
a :class:`Snapshot` (pure); :class:`HubMetrics` is a collector that exposes the
last snapshot, refreshed by a loop that never dies (a failed refresh is logged
and the previous figures stay). Metrics (all gauges, read at scrape time):

- ``fleet_hub_nodes{phase}``: nodes Connected, Stale or Unreachable (the
  same liveness rule as ``fleet get nodes``);
- ``fleet_hub_sites{phase}``: sites by their best node's phase;
- ``fleet_hub_rollouts{phase}``: the newest rollout of each service, by phase;
- ``fleet_hub_rollout_wave{service,rollout}`` and ``fleet_hub_rollout_waves``:
  the current wave (1-based) and the number of waves of those rollouts;
- ``fleet_hub_rollout_sites{service,rollout,status}``: their sites by status;
- ``fleet_hub_revision``: the newest policy revision's number;
- ``fleet_hub_reports_stored``: agent reports stored (exactly once each);
- ``fleet_hub_metrics_refresh_timestamp_seconds``: when the figures were read;
- ``fleet_hub_drift{service,model,version,site,signal}`` (1 while drifted) and
  ``fleet_hub_drift_psi{...}``: the drift monitor's last verdicts (hub.drift.monitor).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hub.store.repo import NodeRecord, RolloutRecord
from hub.sync import LivenessPolicy, Phase, phase

log = logging.getLogger(__name__)

PHASES = tuple(p.value for p in Phase)


@dataclass(frozen=True)
class RolloutFigures:
    service: str
    rollout: str
    phase: str
    wave: int
    """Current wave, 1-based."""
    waves: int
    sites: dict[str, int]
    """Site status -> sites."""


@dataclass(frozen=True)
class Snapshot:
    nodes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    sites: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    rollouts: tuple[RolloutFigures, ...] = ()
    revision: int = 0
    reports: int = 0
    at: float = 0.0


def snapshot(nodes: Iterable[NodeRecord], rollouts: Sequence[RolloutRecord], revision: int, reports: int,
             now: datetime, liveness: LivenessPolicy) -> Snapshot:
    """The figures of one scrape from store records (pure). ``rollouts`` newest first."""
    node_phase = Counter()
    best: dict[str, int] = {}
    for n in nodes:
        p = phase(n.last_seen, now, n.connected, liveness)
        node_phase[p.value] += 1
        best[n.site] = min(best.get(n.site, len(PHASES)), PHASES.index(p.value))
    site_phase = Counter(PHASES[i] for i in best.values())
    figures, seen = [], set()
    for r in rollouts:
        if r.service in seen:
            continue
        seen.add(r.service)
        st = r.state or {}
        waves = len(st.get("waves", []))
        statuses = Counter(s.get("status", "") for s in st.get("sites", []))
        figures.append(RolloutFigures(r.service, r.id, r.phase, min(int(st.get("wave", 0)), max(waves - 1, 0)) + 1,
                                      waves, dict(statuses)))
    return Snapshot({p: node_phase.get(p, 0) for p in PHASES}, {p: site_phase.get(p, 0) for p in PHASES},
                    tuple(figures), revision, reports, now.timestamp())


class HubMetrics(Collector):
    """A registry with the hub's gauges, exposing the last :class:`Snapshot`."""

    def __init__(self, drift=None) -> None:  # noqa: ANN001 - hub.drift.monitor.DriftMonitor, whose rows it exposes
        self.registry = CollectorRegistry()
        self.last = Snapshot()
        self.drift = drift
        self.registry.register(self)

    def set(self, snap: Snapshot) -> None:
        self.last = snap

    def collect(self) -> Iterable[GaugeMetricFamily]:
        s = self.last
        nodes = GaugeMetricFamily("fleet_hub_nodes", "Nodes by liveness phase.", labels=["phase"])
        sites = GaugeMetricFamily("fleet_hub_sites", "Sites by their best node's liveness phase.", labels=["phase"])
        for p in PHASES:
            nodes.add_metric([p], s.nodes.get(p, 0))
            sites.add_metric([p], s.sites.get(p, 0))
        by_phase = Counter(r.phase for r in s.rollouts)
        rollouts = GaugeMetricFamily("fleet_hub_rollouts", "The newest rollout of each service, by phase.",
                                     labels=["phase"])
        for p, n in sorted(by_phase.items()):
            rollouts.add_metric([p], n)
        wave = GaugeMetricFamily("fleet_hub_rollout_wave", "Current wave (1-based) of the newest rollout of a "
                                 "service.", labels=["service", "rollout", "phase"])
        waves = GaugeMetricFamily("fleet_hub_rollout_waves", "Waves of the newest rollout of a service.",
                                  labels=["service", "rollout"])
        rsites = GaugeMetricFamily("fleet_hub_rollout_sites", "Sites of the newest rollout of a service by status.",
                                   labels=["service", "rollout", "status"])
        for r in s.rollouts:
            wave.add_metric([r.service, r.rollout, r.phase], r.wave)
            waves.add_metric([r.service, r.rollout], r.waves)
            for status, n in sorted(r.sites.items()):
                rsites.add_metric([r.service, r.rollout, status], n)
        revision = GaugeMetricFamily("fleet_hub_revision", "Number of the newest policy revision (0: none).",
                                     value=s.revision)
        reports = GaugeMetricFamily("fleet_hub_reports_stored", "Agent reports stored (each exactly once).",
                                    value=s.reports)
        at = GaugeMetricFamily("fleet_hub_metrics_refresh_timestamp_seconds",
                               "When these figures were read from the store (Unix time).", value=s.at)
        return [nodes, sites, rollouts, wave, waves, rsites, revision, reports, at, *self._drift()]

    def _drift(self) -> list[GaugeMetricFamily]:
        if self.drift is None:
            return []
        from hub.drift.monitor import gauges

        labels = ["service", "model", "version", "site", "signal"]
        active = GaugeMetricFamily("fleet_hub_drift", "1 while a signal of a version has drifted (site 'fleet': "
                                   "against its reference; a site: against the rest of the fleet).", labels=labels)
        psi = GaugeMetricFamily("fleet_hub_drift_psi", "Population stability index of the signal's latest window.",
                                labels=labels)
        for key, (drifted, p) in sorted(gauges(self.drift.rows).items()):
            active.add_metric(list(key), drifted)
            psi.add_metric(list(key), p)
        return [active, psi]

    async def refresh(self, store, liveness: LivenessPolicy, now: datetime | None = None) -> Snapshot:
        """Read the store once and expose the figures."""
        nodes = await store.node_liveness()
        rollouts = await store.list_rollouts(limit=1000)
        revisions = await store.list_revisions(limit=1)
        counts = await store.report_counts()
        snap = snapshot(nodes, rollouts, revisions[0].number if revisions else 0,
                        sum(c for c, _ in counts.values()), now or datetime.now(UTC), liveness)
        self.set(snap)
        return snap

    async def run(self, store, liveness: LivenessPolicy, interval_s: float) -> None:
        """Refresh every ``interval_s`` until cancelled; a failed refresh keeps the last figures."""
        while True:
            try:
                await self.refresh(store, liveness)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop never dies; the timestamp metric shows staleness
                log.exception("refreshing the hub's metrics failed")
            await asyncio.sleep(interval_s)


def serve_http(listen: str, registry: CollectorRegistry):
    """Serve ``/metrics`` on HOST:PORT (port 0: any free port) in a thread; returns (server, port)."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    return server, server.server_port
