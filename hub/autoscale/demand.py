"""Measured demand: the agents' ``demand`` reports as a time series per (service, region of origin).

Agents count every finished request per service and region of origin in
windows that end on multiples of their interval (edge_agent.serving.demand
describes the payload). Here the hub decodes them (:func:`parse_payload`,
refusing a malformed one whole) and adds them up across sites and nodes into
fixed buckets (:func:`demand_series`): what the forecaster learns from and
what `fleet autoscale status` shows.

- **Merged**: every agent's counts for a (service, region) add up per bucket.
  A window that spans several buckets is spread over them in proportion to
  its overlap with each (the agents' windows line up with buckets of their
  interval, so normally a window falls in one bucket whole).
- **Duplicates**: the link stores each report once already; a window repeated
  by one agent (the same node and the same start and end) counts once anyway.
- **Gaps**: a bucket no agent reported on is a gap (``rate`` None), not zero
  demand. An agent that serves a model reports every interval, also when
  nothing arrived (an empty window), so zero is a measured zero. The rate of
  a bucket divides by the seconds of it that were covered (the first window of
  an agent may start mid-bucket).
- **Region of origin** "" (an agent that did not know its site's region yet)
  counts for the region of that site in the hub's own Site record.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hub.report import fields
from hub.report.fields import PayloadError

KIND = "demand"
SCHEMA = 1
COUNTS = ("arrivals", "measured", "promptTokens", "outputTokens", "shed", "refused", "errors")
UNKNOWN_REGION = "unknown"
"""Region of demand whose agent did not know its region and whose site the hub's Sites do not name."""

__all__ = ["COUNTS", "DemandBucket", "DemandGroup", "DemandReport", "DemandSeries", "KIND", "PayloadError",
           "demand_series", "parse_payload", "reports_from_rows"]


@dataclass(frozen=True)
class DemandGroup:
    service: str
    region: str
    """Region of origin; "" when the agent did not know its site's region."""
    counts: Mapping[str, int]
    """COUNTS -> value."""


@dataclass(frozen=True)
class DemandReport:
    site: str
    node: str
    start: datetime
    end: datetime
    groups: tuple[DemandGroup, ...]


def parse_payload(payload: object, *, site: str | None = None, node: str | None = None) -> DemandReport:
    """Validate one ``demand`` payload; raises PayloadError naming the path to the first problem.

    ``site``/``node``: the identity the hub verified (mTLS), which wins over what the payload says."""
    payload, start, end, groups = fields.window(payload, SCHEMA, "demand")
    out = []
    for i, g in enumerate(groups):
        where = f"groups[{i}]."
        if not isinstance(g, Mapping):
            raise PayloadError(f"groups[{i}]: expected an object, got {type(g).__name__}")
        counts = {k: fields.count(g, k, where) for k in COUNTS}
        for part in ("measured", "shed", "refused", "errors"):
            if counts[part] > counts["arrivals"]:
                raise PayloadError(f"{where}{part}: {counts[part]} is more than arrivals ({counts['arrivals']})")
        out.append(DemandGroup(fields.text(g, "service", where), fields.text(g, "region", where, empty=True), counts))
    return DemandReport(site if site is not None else fields.text(payload, "site", ""),
                        node if node is not None else fields.text(payload, "node", ""), start, end, tuple(out))


def reports_from_rows(rows: Iterable[tuple[str, str, object]]) -> tuple[list[DemandReport], list[str]]:
    """(site, node, stored report) rows of kind ``demand`` -> the reports, and why any were skipped."""
    reports, skipped = [], []
    for site, node, r in rows:
        try:
            reports.append(parse_payload(getattr(r, "payload", r), site=site, node=node))
        except PayloadError as exc:
            skipped.append(f"{site}/{node} seq {getattr(r, 'seq', '?')}: {exc}")
    return reports, skipped


@dataclass(frozen=True)
class DemandBucket:
    start: datetime
    seconds: float
    """Bucket length."""
    covered_s: float
    """Seconds of the bucket some agent reported on (the most any one agent covered); 0: a gap."""
    counts: Mapping[str, float]
    """COUNTS -> sum over agents (fractional where a window was spread over buckets)."""

    @property
    def rate(self) -> float | None:
        """Arrivals per second over the covered part; None for a gap."""
        return self.counts["arrivals"] / self.covered_s if self.covered_s > 0 else None


@dataclass(frozen=True)
class DemandSeries:
    service: str
    region: str
    buckets: tuple[DemandBucket, ...]
    """Consecutive buckets from the first covered one to the last (gaps included, rate None)."""

    def observed(self) -> tuple[DemandBucket, ...]:
        return tuple(b for b in self.buckets if b.covered_s > 0)

    def mean_rate(self, since: datetime | None = None) -> float | None:
        """Arrivals per covered second over the buckets starting at or after ``since``; None if none covered."""
        seen = [b for b in self.observed() if since is None or b.start >= since]
        covered = sum(b.covered_s for b in seen)
        return sum(b.counts["arrivals"] for b in seen) / covered if covered > 0 else None

    def last_observed_end(self) -> datetime | None:
        seen = self.observed()
        return seen[-1].start + timedelta(seconds=seen[-1].seconds) if seen else None


def _floor(t: datetime, bucket_s: float) -> datetime:
    epoch = t.timestamp()
    return datetime.fromtimestamp(math.floor(epoch / bucket_s) * bucket_s, UTC)


def demand_series(reports: Iterable[DemandReport], bucket_s: float = 60.0, *,
                  site_regions: Mapping[str, str] | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> dict[tuple[str, str], DemandSeries]:
    """(service, region) -> its series in buckets of ``bucket_s`` seconds (aligned to the epoch).

    Only the parts of reports inside [since, until) count (a report straddling ``since`` counts its
    share). Every key shares the buckets every agent covered: a covered bucket without a key's
    requests is a measured zero for it."""
    if not bucket_s > 0:
        raise ValueError(f"bucket length must be positive, got {bucket_s}")
    regions = site_regions or {}
    step = timedelta(seconds=bucket_s)
    seen: set[tuple[str, str, datetime, datetime]] = set()
    sums: dict[tuple[str, str], dict[datetime, dict[str, float]]] = {}
    cover: dict[datetime, dict[tuple[str, str], float]] = {}  # bucket -> agent -> covered seconds
    for r in reports:
        ident = (r.site, r.node, r.start, r.end)
        if ident in seen:
            continue
        seen.add(ident)
        lo = max(r.start, since) if since else r.start
        hi = min(r.end, until) if until else r.end
        length = (r.end - r.start).total_seconds()
        if hi < lo or (hi == lo and length > 0):
            continue
        shares: list[tuple[datetime, float, float]] = []  # bucket, share of the counts, covered seconds
        if length == 0:
            shares.append((_floor(r.start, bucket_s), 1.0, 0.0))
        else:
            b = _floor(lo, bucket_s)
            while b < hi:
                overlap = (min(hi, b + step) - max(lo, b)).total_seconds()
                if overlap > 0:
                    shares.append((b, overlap / length, overlap))
                b += step
        for b, _, secs in shares:
            agents = cover.setdefault(b, {})
            agents[(r.site, r.node)] = agents.get((r.site, r.node), 0.0) + secs
        for g in r.groups:
            key = (g.service, g.region or regions.get(r.site) or UNKNOWN_REGION)
            per = sums.setdefault(key, {})
            for b, share, _ in shares:
                acc = per.setdefault(b, dict.fromkeys(COUNTS, 0.0))
                cover.setdefault(b, {})
                for k in COUNTS:
                    acc[k] += g.counts[k] * share
    if not cover:
        return {}
    first, last = min(cover), max(cover)
    out: dict[tuple[str, str], DemandSeries] = {}
    for key, per in sorted(sums.items()):
        buckets = []
        b = first
        while b <= last:
            covered = min(bucket_s, max(cover.get(b, {}).values(), default=0.0))
            counts = per.get(b, dict.fromkeys(COUNTS, 0.0))
            if covered == 0 and any(counts.values()):
                covered = bucket_s  # an instant-long window (a stop) with requests: its bucket was seen
            buckets.append(DemandBucket(b, bucket_s, covered, counts))
            b += step
        out[key] = DemandSeries(key[0], key[1], tuple(buckets))
    return out
