"""Demand telemetry at the agent (issue 12): the region of origin read strictly, and aligned windows."""

from __future__ import annotations

import pytest

from edge_agent.runtime.request import RequestStats
from edge_agent.serving.demand import DemandWindow, origin_region
from edge_agent.serving.errors import BadRequest
from edge_agent.serving.headers import ORIGIN_REGION_HEADER, from_metadata, single
from edge_agent.serving.residency import SiteLocation
from edge_agent.serving.telemetry import Outcome, RequestRecord

FRA = SiteLocation.from_spec("fra-1", {"site": "fra-1", "country": "DE", "jurisdictions": ["EU", "EEA"],
                                       "region": "eu-central", "regions": ["eu-central", "eu-west"]})


def test_origin_header_names_a_region_the_site_serves() -> None:
    assert origin_region("eu-west", FRA) == "eu-west"
    assert origin_region(None, FRA) == "eu-central"  # no header: the site's own region
    assert origin_region(None, None) == ""  # nothing known yet: the hub attributes it to the Site's region


def test_unknown_origin_region_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(BadRequest) as err:
        origin_region("us-east", FRA)
    assert err.value.code == "unknown_origin_region" and err.value.status == 400
    assert "'us-east'" in err.value.message and "eu-central, eu-west" in err.value.message


def test_origin_region_before_the_site_location_is_refused() -> None:
    old_hub = SiteLocation.from_spec("fra-1", {"site": "fra-1", "country": "DE", "jurisdictions": ["EU"]})
    for loc in (None, old_hub):
        with pytest.raises(BadRequest, match="has not received its SiteLocation"):
            origin_region("eu-central", loc)


@pytest.mark.parametrize("values", [["eu-central", "eu-west"], ["eu-central", "eu-central"], ["eu-central,eu-west"]])
def test_repeated_or_joined_origin_header_is_refused(values: list[str]) -> None:
    with pytest.raises(BadRequest) as err:
        single(ORIGIN_REGION_HEADER, values)
    assert err.value.code == "ambiguous_origin_region"
    assert "exactly one region of origin" in err.value.message
    with pytest.raises(BadRequest):
        from_metadata(ORIGIN_REGION_HEADER, [(ORIGIN_REGION_HEADER, v) for v in values])


def _rec(service: str, origin: str, outcome: Outcome = Outcome.OK, prompt: int = 10, out: int = 5) -> RequestRecord:
    stats = None if outcome in (Outcome.REJECTED, Outcome.FORBIDDEN) else RequestStats(
        "r", 0, 0, prompt_tokens=prompt, output_tokens=out)
    return RequestRecord("m", "v1", "", outcome, stats, service=service, origin=origin)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_windows_end_on_interval_boundaries_and_count_per_service_and_region() -> None:
    clock = Clock(1000.0)  # boundaries every 60 s: 1020, 1080, ...
    w = DemandWindow("fra-1", "n", 60, clock=clock)
    w(_rec("chat", "eu-central"))
    w(_rec("chat", "eu-central", Outcome.REJECTED))
    w(_rec("chat", "eu-west", prompt=7, out=3))
    w(_rec("code", "eu-central", Outcome.FORBIDDEN))
    assert w.flush() == []  # the window has not ended
    clock.t = 1020.5
    w(_rec("chat", "eu-central"))  # lands in the next window
    [first] = w.flush()
    assert (first["windowStart"], first["windowEnd"]) == ("1970-01-01T00:16:40Z", "1970-01-01T00:17:00Z")
    groups = {(g["service"], g["region"]): g for g in first["groups"]}
    assert groups["chat", "eu-central"] == {
        "service": "chat", "region": "eu-central", "arrivals": 2, "measured": 1, "promptTokens": 10,
        "outputTokens": 5, "shed": 1, "refused": 0, "errors": 0}
    assert (groups["chat", "eu-west"]["arrivals"], groups["chat", "eu-west"]["promptTokens"]) == (1, 7)
    assert (groups["code", "eu-central"]["refused"], groups["code", "eu-central"]["measured"]) == (1, 0)
    clock.t = 1300.0  # idle from 1080 to 1260: one empty window covers it
    [second, idle] = w.flush()
    assert (second["windowStart"], second["windowEnd"]) == ("1970-01-01T00:17:00Z", "1970-01-01T00:18:00Z")
    assert [g["arrivals"] for g in second["groups"]] == [1]
    assert (idle["windowStart"], idle["windowEnd"], idle["groups"]) == (
        "1970-01-01T00:18:00Z", "1970-01-01T00:21:00Z", [])


def test_idle_node_without_models_sends_nothing_and_stop_sends_the_partial_window() -> None:
    clock = Clock(0.0)
    w = DemandWindow("fra-1", "n", 60, clock=clock)
    clock.t = 600.0
    assert w.flush(serving=False) == []
    clock.t = 610.0
    w(_rec("chat", "eu-central"))
    clock.t = 615.0
    [last] = w.flush(serving=False, final=True)
    assert (last["windowStart"], last["windowEnd"]) == ("1970-01-01T00:10:00Z", "1970-01-01T00:10:15Z")
    assert w.flush(final=True) == []
