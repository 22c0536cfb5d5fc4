"""What `fleet autoscale status` shows, per service and region (pure: revision + demand in, rows out).

For each (service, region of origin): the service's autoscale settings, the
demand observed by the agents over a recent window (rate, shed, refused, mean
token counts), the demand the YAML declares, and the replicas the current
plan gives the region. Forecast, planned replicas and the next change come
from the autoscaler; where none has run, they are None and ``reason`` says why.

Rows are the union of what the latest revision declares and places and what
the agents measured: demand from a region the YAML does not list still shows
(that is what an operator must see first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from hub.autoscale.demand import DemandReport, DemandSeries, demand_series
from hub.placement.model import Placement
from hub.policy import Bundle
from hub.policy.vocab import did_you_mean

NO_FORECAST = "no forecast yet: the autoscaler has not run on this hub"
NO_DEMAND = "no demand measured in the window"


class UnknownService(LookupError):
    """The service asked for is neither in the latest revision nor in the measured demand."""


@dataclass(frozen=True)
class RegionStatus:
    service: str
    region: str
    autoscale_enabled: bool
    min_replicas: int | None
    max_replicas: int | None
    target_quantile: float | None
    declared_rps: float | None
    """The rate the Service YAML declares for this region (None: the YAML does not list it)."""
    observed_rps: float | None
    """Arrivals per second measured over the window's covered buckets (None: nothing covered)."""
    observed_until: datetime | None
    window_s: float
    arrivals: float
    shed: float
    refused: float
    mean_prompt_tokens: float | None
    mean_output_tokens: float | None
    replicas_now: int
    """Replicas the current plan gives this service for this region's demand."""
    planned_rps: float
    """The rate the current plan carries for this region (what its replicas were sized for)."""
    forecast_rps: float | None = None
    planned_replicas: int | None = None
    next_change: str = ""
    reason: str = ""

    def to_dict(self) -> dict:
        return {
            "service": self.service, "region": self.region,
            "autoscale": {"enabled": self.autoscale_enabled, "minReplicas": self.min_replicas,
                          "maxReplicas": self.max_replicas, "targetQuantile": self.target_quantile},
            "declaredRps": self.declared_rps, "observedRps": self.observed_rps,
            "observedUntil": self.observed_until.isoformat().replace("+00:00", "Z") if self.observed_until else None,
            "windowS": self.window_s, "arrivals": self.arrivals, "shed": self.shed, "refused": self.refused,
            "meanPromptTokens": self.mean_prompt_tokens, "meanOutputTokens": self.mean_output_tokens,
            "replicasNow": self.replicas_now, "plannedRps": self.planned_rps, "forecastRps": self.forecast_rps,
            "plannedReplicas": self.planned_replicas, "nextChange": self.next_change, "reason": self.reason,
        }


def site_regions(bundle: Bundle) -> dict[str, str]:
    """Site name -> the demand region its Site record puts it in."""
    return {name: site.spec.region for name, site in bundle.sites.items()}


def _window_sums(series: DemandSeries | None, since: datetime) -> dict[str, float]:
    sums = {"arrivals": 0.0, "measured": 0.0, "promptTokens": 0.0, "outputTokens": 0.0, "shed": 0.0,
            "refused": 0.0}
    for b in series.observed() if series else ():
        if b.start >= since:
            for k in sums:
                sums[k] += b.counts[k]
    return sums


def region_status(bundle: Bundle, placement: Placement | None, reports: Iterable[DemandReport], now: datetime, *,
                  window_s: float = 300.0, bucket_s: float = 60.0, service: str = "") -> list[RegionStatus]:
    """Rows sorted by (service, region); raises UnknownService when ``service`` appears nowhere.

    The window covers the last ``window_s`` seconds of whole buckets before ``now``."""
    since = now - timedelta(seconds=window_s)
    aligned_since = datetime.fromtimestamp((since.timestamp() // bucket_s) * bucket_s, since.tzinfo)
    series = demand_series(reports, bucket_s, site_regions=site_regions(bundle), since=aligned_since, until=now)
    declared: dict[tuple[str, str], float] = {
        (name, d.region): d.rate for name, svc in bundle.services.items() for d in svc.spec.demand}
    replicas: dict[tuple[str, str], int] = {}
    planned: dict[tuple[str, str], float] = {}
    for a in placement.assignments if placement else ():
        replicas[(a.service, a.region)] = replicas.get((a.service, a.region), 0) + a.replicas
        planned[(a.service, a.region)] = planned.get((a.service, a.region), 0.0) + a.rate
    keys = set(declared) | set(replicas) | set(series)
    if service:
        known = {s for s, _ in keys} | set(bundle.services)
        if service not in known:
            raise UnknownService(f"service {service!r} is neither in the latest revision nor in measured demand"
                                 f"{did_you_mean(service, known)}")
        keys = {k for k in keys if k[0] == service} or {(service, d.region) for d in
                                                        bundle.services[service].spec.demand}
    rows = []
    for key in sorted(keys):
        svc = bundle.services.get(key[0])
        auto = svc.spec.autoscale if svc else None
        s = series.get(key)
        sums = _window_sums(s, aligned_since)
        observed = s.mean_rate(aligned_since) if s else None
        if observed is None:
            # A covered window without this key's requests is a measured zero for it.
            others = [o.mean_rate(aligned_since) for o in series.values()]
            observed = 0.0 if any(r is not None for r in others) else None
        measured = sums["measured"]
        reason = NO_FORECAST if observed is not None else f"{NO_FORECAST}; {NO_DEMAND}"
        rows.append(RegionStatus(
            service=key[0], region=key[1], autoscale_enabled=bool(auto and auto.enabled),
            min_replicas=auto.min_replicas if auto else None, max_replicas=auto.max_replicas if auto else None,
            target_quantile=auto.target_quantile if auto else None, declared_rps=declared.get(key),
            observed_rps=observed,
            observed_until=max((o.last_observed_end() for o in series.values() if o.last_observed_end()),
                               default=None),
            window_s=window_s, arrivals=sums["arrivals"], shed=sums["shed"], refused=sums["refused"],
            mean_prompt_tokens=sums["promptTokens"] / measured if measured else None,
            mean_output_tokens=sums["outputTokens"] / measured if measured else None,
            replicas_now=replicas.get(key, 0), planned_rps=planned.get(key, 0.0), reason=reason,
        ))
    return rows


def from_revision(bundle_json: str | None, placement_spec: Mapping | None) -> tuple[Bundle, Placement | None]:
    """The bundle and placement of a stored revision (an empty bundle before the first)."""
    if bundle_json is None:
        return Bundle(), None
    return Bundle.from_json(bundle_json), Placement.from_spec(placement_spec or {})
