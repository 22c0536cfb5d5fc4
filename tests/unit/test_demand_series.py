"""The hub's demand series (issue 12): agents' windows merged per (service, region), duplicates once, gaps kept."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.runtime.request import RequestStats
from edge_agent.serving.demand import DemandWindow
from edge_agent.serving.telemetry import Outcome, RequestRecord
from hub.autoscale.demand import PayloadError, demand_series, parse_payload, reports_from_rows

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def payload(start_s: float, end_s: float, groups: list[tuple[str, str, int]], site: str = "fra-1") -> dict:
    iso = lambda s: (T0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")  # noqa: E731
    return {"schema": 1, "site": site, "node": "n", "intervalS": 60.0, "windowStart": iso(start_s),
            "windowEnd": iso(end_s), "groups": [
                {"service": s, "region": r, "arrivals": float(n), "measured": n, "promptTokens": 10 * n,
                 "outputTokens": 5 * n, "shed": 0, "refused": 0, "errors": 0} for s, r, n in groups]}


def test_sites_merge_and_a_repeated_window_counts_once() -> None:
    a = parse_payload(payload(0, 60, [("chat", "eu-central", 30)]), site="fra-1", node="n")
    b = parse_payload(payload(0, 60, [("chat", "eu-central", 12), ("chat", "eu-west", 6)]), site="par-1",
                      node="n")
    series = demand_series([a, b, a], 60)
    [bucket] = series["chat", "eu-central"].buckets
    assert bucket.counts["arrivals"] == 42 and bucket.rate == pytest.approx(42 / 60)
    assert series["chat", "eu-west"].buckets[0].rate == pytest.approx(0.1)


def test_gaps_are_unknown_and_empty_windows_are_measured_zeros() -> None:
    reports = [parse_payload(p, site=p["site"], node="n") for p in (
        payload(0, 60, [("chat", "eu-central", 60)]),
        payload(60, 180, []),  # an agent serving a model, nothing arrived for two intervals
        payload(300, 360, [("chat", "eu-central", 6)]),  # 180..300: no report at all
    )]
    rates = [b.rate for b in demand_series(reports, 60)["chat", "eu-central"].buckets]
    assert rates == [1.0, 0.0, 0.0, None, None, pytest.approx(0.1)]


def test_a_partial_window_divides_by_the_seconds_covered_and_empty_region_means_the_sites() -> None:
    r = parse_payload(payload(30, 60, [("chat", "", 15)]), site="fra-1", node="n")
    series = demand_series([r], 60, site_regions={"fra-1": "eu-central"})
    [bucket] = series["chat", "eu-central"].buckets
    assert (bucket.covered_s, bucket.rate) == (30.0, 0.5)
    assert list(demand_series([r], 60)) == [("chat", "unknown")]


def test_a_window_longer_than_a_bucket_is_spread_by_overlap() -> None:
    r = parse_payload(payload(0, 120, [("chat", "eu-central", 120)]), site="fra-1", node="n")
    assert [b.counts["arrivals"] for b in demand_series([r], 60)["chat", "eu-central"].buckets] == [60, 60]
    cut = demand_series([r], 60, since=T0 + timedelta(seconds=60))["chat", "eu-central"]
    assert [b.counts["arrivals"] for b in cut.buckets] == [60]


@pytest.mark.parametrize(("change", "where"), [
    ({"schema": 2}, "schema"), ({"windowEnd": "2026-11-30T07:00:00Z"}, "windowEnd"),
    ({"windowStart": "yesterday"}, "windowStart"), ({"groups": {}}, "groups"),
    ({"groups": [{"service": "chat", "region": "x", "arrivals": 1, "shed": 2}]}, "groups[0].shed"),
    ({"groups": [{"service": "", "region": "x", "arrivals": 1}]}, "groups[0].service"),
    ({"groups": [{"service": "chat", "region": "x", "arrivals": -1}]}, "groups[0].arrivals"),
])
def test_malformed_payloads_are_refused_naming_the_field(change: dict, where: str) -> None:
    with pytest.raises(PayloadError, match="^" + re.escape(where)):
        parse_payload({**payload(0, 60, []), **change})
    reports, skipped = reports_from_rows([("fra-1", "n", {**payload(0, 60, []), **change})])
    assert reports == [] and len(skipped) == 1 and skipped[0].startswith("fra-1/n")


class Clock:
    def __init__(self) -> None:
        self.t = T0.timestamp()

    def __call__(self) -> float:
        return self.t


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 600), st.sampled_from(["eu-central", "eu-west"])), max_size=60),
       st.sampled_from([10.0, 60.0]))
def test_no_request_lost_or_double_counted_from_agent_to_series(arrivals, interval) -> None:
    """Whatever the timing, the series sums to exactly the requests the agents' windows counted."""
    clocks, windows, sent = [], [], []
    for site in ("fra-1", "par-1"):
        clock = Clock()
        clocks.append(clock)
        windows.append((site, DemandWindow(site, "n", interval, clock=clock)))
    for i, (t, region) in enumerate(sorted(arrivals)):
        site, w = windows[i % 2]
        clocks[i % 2].t = T0.timestamp() + t
        w(RequestRecord("m", "v", "", Outcome.OK, RequestStats("r", 0, 0, prompt_tokens=3), service="chat",
                        origin=region))
        sent.extend((site, p) for p in w.flush())
    for clock, (site, w) in zip(clocks, windows):
        clock.t = T0.timestamp() + 700
        sent.extend((site, p) for p in w.flush(final=True))
    reports, skipped = reports_from_rows([(site, "n", p) for site, p in sent + sent[:3]])  # some re-sent
    assert skipped == []
    series = demand_series(reports, 60)
    for region in ("eu-central", "eu-west"):
        want = sum(1 for _, r in arrivals if r == region)
        got = sum(b.counts["arrivals"] for b in series["chat", region].buckets) if ("chat", region) in series else 0
        assert got == pytest.approx(want)
