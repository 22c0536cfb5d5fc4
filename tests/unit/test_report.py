"""fleet report's pure core: payload validation, exact sketch merging, per-row arithmetic, rendering."""

from __future__ import annotations

import base64
import json
import random
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import numpy as np
import pytest
from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.report import build_report, parse_payload, render_html, table_rows, to_json
from hub.report.aggregate import union
from hub.report.render import cdf_points
from hub.report.telemetry import SKETCH_KEYS, PayloadError, decode_sketch, encode_sketch, sketch_bins

T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def sketch(values) -> DDSketch:
    s = DDSketch(0.01)
    for v in values:
        s.add(v)
    return s


def payload(site="fra-1", node="n1", start=T0, minutes=1, model="llama", version="v1", priority="standard",
            values=None, **counts):
    values = values or {}
    group = {"model": model, "version": version, "priority": priority,
             "requests": 100, "errors": 0, "rejected": 0, "cancelled": 0, "forbidden": 0,
             "promptTokens": 0, "outputTokens": 0, "gpuSeconds": 0.0, "costUsd": 0.0, "energyJ": 0.0, "carbonG": 0.0,
             "sketches": {k: encode_sketch(sketch(v)) for k, v in values.items()}}
    group.update(counts)
    return {"schema": 1, "site": site, "node": node, "windowStart": iso(start),
            "windowEnd": iso(start + timedelta(minutes=minutes)), "groups": [group]}


# ------------------------------------------------------------ exact merge


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-4, 100.0, allow_nan=False), max_size=300),
       st.lists(st.floats(1e-4, 100.0, allow_nan=False), max_size=300),
       st.lists(st.sampled_from([0.0]), max_size=3))
def test_merging_two_payloads_equals_one_sketch_of_the_union(a, b, zeros):
    """Bins (and so every quantile) of the merged report equal one sketch fed all values."""
    a = a + zeros
    report = build_report([payload(node="n1", values={"ttftS": a}), payload(node="n2", values={"ttftS": b})],
                          by=("site",))
    merged = report.rows[0].sketches["ttftS"]
    direct = sketch(a + b)
    assert sketch_bins(merged) == sketch_bins(direct)
    assert merged.count == direct.count
    for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        assert merged.get_quantile_value(q) == direct.get_quantile_value(q)
    assert sketch_bins(report.total.sketches["ttftS"]) == sketch_bins(direct)


def test_merge_of_many_payloads_seeded():
    rng = random.Random(7)
    chunks = [[rng.lognormvariate(-2, 1) for _ in range(rng.randint(0, 500))] for _ in range(25)]
    payloads = [payload(node=f"n{i}", values={"itlS": c}) for i, c in enumerate(chunks)]
    report = build_report(payloads, by=("model",))
    everything = [v for c in chunks for v in c]
    assert sketch_bins(report.rows[0].sketches["itlS"]) == sketch_bins(sketch(everything))


def test_sketch_round_trip():
    s = sketch([0.0, 0.001, 0.5, 3.0, 3.0])
    assert sketch_bins(decode_sketch(encode_sketch(s))) == sketch_bins(s)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-9, 1e3), st.floats(-1e3, -1e-9)), max_size=200),
       st.lists(st.floats(1e-6, 1e6, allow_nan=False), max_size=200))
def test_fast_decode_matches_the_library_decoder(values, more):
    """decode_sketch builds stores directly; it must hold what DDSketchProto.from_proto holds, answer quantiles
    exactly like the agent's sketch, and behave alike in merges."""
    from ddsketch.pb.proto import DDSketchProto, pb

    original = sketch(values)
    wire = encode_sketch(original)
    ours = decode_sketch(wire)
    theirs = DDSketchProto.from_proto(pb.DDSketch.FromString(base64.b64decode(wire)))
    assert sketch_bins(ours) == sketch_bins(theirs) == sketch_bins(original)
    assert ours.count == theirs.count == original.count
    for q in (0.0, 0.1, 0.5, 0.95, 1.0):
        # (the library's decoder rebuilds gamma from the wire and can differ in the last digit)
        assert ours.get_quantile_value(q) == original.get_quantile_value(q)
    # merging in both directions, and adding after decoding, keep working on the directly built stores
    a, b = sketch(more), decode_sketch(wire)
    a.merge(decode_sketch(wire))
    b.merge(sketch(more))
    for v in more[:20]:
        b.add(v)
        a.add(v)
    assert sketch_bins(a) == sketch_bins(b)


@pytest.mark.parametrize("dist", ["lognormal", "uniform", "exponential"])
def test_quantiles_within_relative_accuracy_of_numpy(dist):
    rng = np.random.default_rng(42)
    data = {"lognormal": rng.lognormal(-2.0, 0.8, 20_000), "uniform": rng.uniform(0.01, 2.0, 20_000),
            "exponential": rng.exponential(0.2, 20_000) + 1e-3}[dist]
    parts = np.array_split(data, 7)
    report = build_report([payload(node=f"n{i}", values={"ttftS": p.tolist()}) for i, p in enumerate(parts)],
                          by=())
    row = report.total
    for q in (0.5, 0.95, 0.99):
        # DDSketch's rank is q * (n - 1) on the lower value: numpy's 'lower' method.
        exact = float(np.quantile(data, q, method="lower"))
        got = row.quantile("ttftS", q)
        assert abs(got - exact) <= 0.01 * exact + 1e-12, (q, got, exact)


# ------------------------------------------------------------ arithmetic


def test_per_row_arithmetic_against_hand_computed_values():
    a = payload(site="fra-1", node="n1", minutes=1, requests=1000, errors=20, rejected=3, forbidden=2,
                outputTokens=60_000, promptTokens=10_000, costUsd=1.5, carbonG=40.0, energyJ=7_200_000.0)
    # same minute on another node (overlap counts once), then the next minute
    b = payload(site="fra-1", node="n2", minutes=1, requests=500, errors=5, outputTokens=30_000, costUsd=0.5,
                carbonG=10.0, energyJ=1_800_000.0)
    c = payload(site="fra-1", node="n1", start=T0 + timedelta(minutes=1), minutes=1, requests=500, errors=0,
                outputTokens=30_000, costUsd=1.0, carbonG=10.0)
    d = payload(site="ams-1", node="n1", start=T0 + timedelta(minutes=10), minutes=2, requests=0)
    report = build_report([a, b, c, d], by=("site",))
    fra = next(r for r in report.rows if r.value("site") == "fra-1")
    assert (fra.requests, fra.errors, fra.rejected, fra.forbidden) == (2000, 25, 3, 2)
    assert fra.error_rate == pytest.approx(25 / 2000)
    assert fra.covered_s == 120.0
    assert fra.tokens_per_s == pytest.approx(120_000 / 120)
    assert fra.cost_per_1m_output_tokens == pytest.approx(3.0 / 120_000 * 1e6)  # 25 USD
    assert fra.cost_per_1k_requests == pytest.approx(3.0 / 2000 * 1e3)  # 1.5 USD
    assert fra.carbon_g_per_1k_requests == pytest.approx(60.0 / 2000 * 1e3)  # 30 g
    assert fra.energy_kwh == pytest.approx(2.5)
    ams = next(r for r in report.rows if r.value("site") == "ams-1")
    assert ams.error_rate is None and ams.cost_per_1k_requests is None and ams.cost_per_1m_output_tokens is None
    total = report.total
    assert total.requests == 2000 and total.covered_s == 240.0  # 2 min fra + 2 min ams
    assert total.tokens_per_s == pytest.approx(120_000 / 240)
    rows, columns = table_rows(report)
    assert rows[-1]["site"] == "TOTAL" and rows[-1]["requests"] == 2000
    assert [h for h, _ in columns][:2] == ["SITE", "REQS"]
    fra_row = next(r for r in rows if r["site"] == "fra-1")
    assert fra_row["usdPer1MOutputTokens"] == 25.0 and fra_row["gco2ePer1kRequests"] == 30.0
    assert fra_row["errorPct"] == 1.25
    json.dumps(to_json(report))  # plain data


def test_union_of_windows():
    t = [T0 + timedelta(seconds=s) for s in range(10)]
    assert union([(t[3], t[5]), (t[0], t[2]), (t[1], t[3]), (t[7], t[8])]) == ((t[0], t[5]), (t[7], t[8]))


def test_group_by_any_subset_and_regroup_are_the_same():
    ps = [payload(site=s, model=m, version=v, values={"ttftS": [0.1 * (i + 1)] * (i + 1)}, requests=i + 1)
          for i, (s, m, v) in enumerate([("a", "x", "1"), ("a", "y", "1"), ("b", "x", "2"), ("b", "x", "1")])]
    full = build_report(ps)
    by_site = build_report(ps, by=("site",))
    assert [r.label for r in by_site.rows] == ["a", "b"]
    assert [r.requests for r in by_site.rows] == [3, 7]
    regrouped = full.regroup(("site",))
    for r1, r2 in zip(by_site.rows, regrouped.rows, strict=True):
        assert r1.key == r2.key and r1.requests == r2.requests
        assert sketch_bins(r1.sketches["ttftS"]) == sketch_bins(r2.sketches["ttftS"])
    assert len(build_report(ps, by=("version", "model")).rows) == 3
    with pytest.raises(ValueError, match="did you mean 'site'"):
        build_report(ps, by=("sites",))
    with pytest.raises(ValueError, match="cannot regroup"):
        by_site.regroup(("model",))


def test_time_range_counts_windows_by_their_end():
    ps = [payload(start=T0 + timedelta(minutes=i), requests=1) for i in range(10)]  # ends at T0+1..T0+10
    mid = T0 + timedelta(minutes=5)
    first = build_report(ps, by=(), until=mid)
    second = build_report(ps, by=(), since=mid)
    assert (first.total.requests, second.total.requests) == (5, 5)
    assert first.outside == 5 and first.payloads == 5
    with pytest.raises(ValueError, match="time zone"):
        build_report(ps, since=datetime(2026, 1, 1))


# ------------------------------------------------------------ bad payloads


def _bad_sketch_other_accuracy() -> str:
    return encode_sketch(DDSketch(0.02))


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda p: p.update(schema=2), "schema: 2 is not a schema"),
    (lambda p: p.pop("schema"), "schema: None"),
    (lambda p: p.update(schema=True), "schema: True"),
    (lambda p: p.update(site=""), "site: expected a non-empty string"),
    (lambda p: p.pop("node"), r"node: expected a non-empty string \(missing\)"),
    (lambda p: p.update(windowStart="yesterday"), "windowStart: 'yesterday' is not an ISO 8601 time"),
    (lambda p: p.update(windowEnd="2026-11-27T20:01:00"), "windowEnd: .* has no time zone"),
    (lambda p: p.update(windowEnd=p["windowStart"]), "windowEnd: .* is not after windowStart"),
    (lambda p: p.update(groups={}), "groups: expected a list"),
    (lambda p: p["groups"].append(3), r"groups\[1\]: expected an object"),
    (lambda p: p["groups"][0].update(requests=-1), r"groups\[0\].requests: expected an integer >= 0"),
    (lambda p: p["groups"][0].update(requests=1.5), r"groups\[0\].requests"),
    (lambda p: p["groups"][0].update(costUsd=float("nan")), r"groups\[0\].costUsd: expected a finite number"),
    (lambda p: p["groups"][0].update(model=None), r"groups\[0\].model"),
    (lambda p: p["groups"][0]["sketches"].update(ttftS="***"), r"groups\[0\].sketches.ttftS: not valid base64"),
    (lambda p: p["groups"][0]["sketches"].update(ttftS=base64.b64encode(b"\xff\xff\xff").decode()),
     r"sketches.ttftS: not a serialised DDSketch"),
    (lambda p: p["groups"][0]["sketches"].update(itlS=_bad_sketch_other_accuracy()),
     r"sketches.itlS: sketch made with relative accuracy 0.02"),
    (lambda p: p["groups"][0]["sketches"].update(e2eS=7), r"sketches.e2eS: expected a base64 string"),
    (lambda p: p["groups"][0].update(sketches=[]), r"groups\[0\].sketches: expected an object"),
])
def test_bad_payloads_are_skipped_with_a_reason(mutate, reason):
    good = payload(node="ok", values={"ttftS": [0.1, 0.2]}, requests=10)
    bad = payload(node="bad", values={"ttftS": [5.0]}, requests=99)
    mutate(bad)
    report = build_report([good, bad], by=("site",))
    assert report.total.requests == 10 and report.payloads == 1
    assert len(report.skipped) == 1
    skipped = report.skipped[0]
    assert skipped.index == 1
    assert re.search(reason, skipped.reason), skipped.reason
    assert report.total.sketches["ttftS"].count == 2  # nothing of the bad payload leaked in


def test_non_object_payloads_and_hostile_bins_are_skipped():
    from ddsketch.pb.proto import DDSketchProto
    proto = DDSketchProto.to_proto(sketch([1.0]))
    proto.positiveValues.contiguousBinIndexOffset = 10**9  # would make the merge allocate 1e9 bins
    huge = base64.b64encode(proto.SerializeToString()).decode()
    p = payload()
    p["groups"][0]["sketches"]["ttftS"] = huge
    report = build_report([None, "x", [], p, payload(requests=1)], by=())
    assert [s.index for s in report.skipped] == [0, 1, 2, 3]
    assert "bin index out of range" in report.skipped[3].reason
    assert report.total.requests == 1


@pytest.mark.parametrize("count", [float("nan"), float("inf"), -1.0])
def test_sketches_with_impossible_counts_are_refused(count):
    from ddsketch.pb.proto import DDSketchProto

    proto = DDSketchProto.to_proto(sketch([1.0]))
    proto.negativeValues.contiguousBinCounts.extend([1.0, count])
    with pytest.raises(PayloadError, match="negative bin counts must be finite and >= 0"):
        decode_sketch(base64.b64encode(proto.SerializeToString()).decode())


def test_missing_sketches_are_empty_and_unknown_keys_ignored():
    p = payload(values={"ttftS": [0.1]})
    p["extra"] = {"future": True}
    p["groups"][0]["sketches"]["newMetricS"] = "whatever"
    t = parse_payload(p)
    assert set(t.groups[0].sketches) == set(SKETCH_KEYS)
    assert t.groups[0].sketches["itlS"].count == 0
    row = build_report([p]).rows[0]
    assert row.quantile("itlS", 0.95) is None and row.quantile("ttftS", 0.5) == pytest.approx(0.1, rel=0.01)
    with pytest.raises(PayloadError):
        parse_payload({"schema": 1})


# ------------------------------------------------------------ rendering


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)


def test_html_has_charts_and_escapes_hostile_names():
    hostile = '<script>alert("x")</script>&"\''
    ps = [payload(site=hostile, values={"ttftS": [0.1, 0.2, 0.3], "itlS": [0.01, 0.02]}, requests=3,
                  costUsd=0.3, carbonG=2.0),
          payload(site="fra-1", values={"ttftS": [0.5, 0.9], "itlS": [0.03]}, requests=2, costUsd=0.1),
          {"schema": 1, "site": '<img src=x onerror=alert(1)>', "node": "n"}]
    html = render_html(build_report(ps), title="Fleet <report>", slo_ttft_p95_s=0.4)
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "&lt;script&gt;" in html and "&lt;img src=x" in html
    assert "Fleet &lt;report&gt;" in html
    assert html.count("<svg") == 5  # TTFT, ITL, p95 TTFT per site, cost, carbon
    for needed in ("Time to first token", "Inter-token latency", "SLO p95 TTFT", "Cost per 1,000 requests",
                   "Carbon per 1,000 requests", "p95 TTFT (ms)", "gCO2e", "<table", "Skipped payloads"):
        assert needed in html, needed
    assert "▲ over" in html  # fra-1's p95 is above the 400 ms SLO line
    parser = _Collector()
    parser.feed(html)
    assert "script" not in parser.tags
    assert not any(k.startswith("on") for k, _ in parser.attrs)
    assert not any(v and re.search(r"(https?:)?//", v) and "w3.org/2000/svg" not in v for _, v in parser.attrs)
    assert parser.tags.count("title") >= 6  # the page and every chart


def test_html_without_site_grouping_and_empty_report():
    html = render_html(build_report([payload(values={"ttftS": [0.1]})], by=("model",)))
    assert "not grouped by site" in html and html.count("<svg") == 1  # TTFT only, no ITL values
    empty = render_html(build_report([]))
    assert "no traffic" in empty and "<svg" not in empty


def test_cdf_points_end_at_one():
    s = sketch([0.0, 0.1, 0.1, 0.2, 5.0])
    pts = cdf_points(s)
    assert pts[-1][1] == 1.0 and pts[0][1] == pytest.approx(3 / 5)
    assert all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(pts, pts[1:]))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["fra-1", "ams-1", "waw-2"]), st.sampled_from(["n1", "n2"]),
                       st.sampled_from(["llama", "qwen"]), st.sampled_from(["v1", "v2"]), st.integers(0, 30),
                       st.integers(0, 500), st.booleans()), max_size=25),
    st.lists(st.sampled_from(["site", "node", "model", "version", "priority"]), unique=True, max_size=5),
)
def test_nothing_lost_or_counted_twice_whatever_the_grouping(specs, by):
    payloads, valid_requests, valid_values = [], 0, 0
    for i, (site, node, model, version, minute, requests, broken) in enumerate(specs):
        p = payload(site=site, node=node, model=model, version=version, start=T0 + timedelta(minutes=minute),
                    values={"ttftS": [0.1] * (requests % 7)}, requests=requests)
        if broken:
            p["groups"][0]["errors"] = -1
        else:
            valid_requests += requests
            valid_values += requests % 7
        payloads.append(p)
    report = build_report(payloads, by=by)
    assert report.total.requests == valid_requests == sum(r.requests for r in report.rows)
    assert report.total.count("ttftS") == valid_values == sum(r.count("ttftS") for r in report.rows)
    assert len(report.skipped) == sum(1 for s in specs if s[-1])
    assert report.total.covered_s <= sum(r.covered_s for r in report.rows) or not report.rows
    if by:
        assert len({r.key for r in report.rows}) == len(report.rows)
