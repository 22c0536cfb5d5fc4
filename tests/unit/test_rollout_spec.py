"""RolloutSpec parsing (CLI strings, precise errors) and the wave plan."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from hub.rollout.plan import SiteState, plan, plan_waves
from hub.rollout.spec import RolloutSpec, Size, cli_errors, format_duration, parse_duration, parse_waves


def spec(**kw) -> RolloutSpec:
    return RolloutSpec(service="chat", to_version="v2", **kw)


def errors(**kw) -> list[str]:
    with pytest.raises(ValidationError) as e:
        spec(**kw)
    return cli_errors(e.value)


# ------------------------------------------------------------------ spec


def test_defaults_are_safe():
    s = spec()
    assert [str(w) for w in s.waves] == ["1", "10%", "50%", "100%"]
    assert s.max_unavailable == Size(count=1) and s.max_failures == 1
    assert (s.min_success_time, s.progress_deadline) == (600.0, 1800.0)
    assert s.strategy == "waves" and s.on_breach == "pause" and s.canary.on_breach == "rollback"


def test_cli_strings_parse():
    s = spec(waves="2,10%,50%,100%", max_unavailable="25%", max_failures=3, min_success_time="1h30m",
             progress_deadline="2h", schedule="0 2 * * 1-5", window="3h")
    assert s.waves == (Size(count=2), Size(percent=10), Size(percent=50), Size(percent=100))
    assert s.max_unavailable == Size(percent=25)
    assert (s.min_success_time, s.progress_deadline, s.window) == (5400.0, 7200.0, 10800.0)


@pytest.mark.parametrize(("text", "seconds"), [("10m", 600), ("2h", 7200), ("90s", 90), ("1h30m", 5400),
                                               ("1d", 86400), ("250ms", 0.25), ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(("kw", "message"), [
    ({"waves": "1,10%,5%,100%"}, "--waves: waves[2]: 5% is not larger than 10%; waves are cumulative"),
    ({"waves": "1,10%,50%"}, "--waves: waves: the last wave is 50%, it must be 100% so that every site is updated "
                             "(e.g. '1,10%,50%,100%')"),
    ({"waves": "3,2,100%"}, "--waves: waves[1]: 2 is not larger than 3"),
    ({"waves": "10%,5,100%"}, "--waves: waves[1]: 5 (a site count) after 10% (a percentage): write counts first"),
    ({"waves": "1,,100%"}, "--waves: waves[1]: empty entry"),
    ({"waves": "1,150%"}, "--waves: waves[1]: '150%' must be above 0% and at most 100%"),
    ({"waves": "one,100%"}, "--waves: waves[0]: 'one' is neither a site count (2) nor a percentage (25%)"),
    ({"max_unavailable": "0"}, "--max-unavailable: '0' must be at least 1 site"),
    ({"max_unavailable": "100%"}, "max_unavailable: 100% would let every site be updating at once; pass "
                                  "--allow-full-unavailability"),
    ({"min_success_time": "10"}, "--min-success-time: '10' is not a duration; write it like '10m'"),
    ({"min_success_time": 600}, "--min-success-time: expected a duration with its unit such as '10m' (bare number"),
    ({"progress_deadline": "0s"}, "--progress-deadline: '0s' must be longer than zero"),
    ({"schedule": "0 25 * * *", "window": "1h"}, "--schedule: '0 25 * * *' is not a crontab expression"),
    ({"schedule": "0 2 * *", "window": "1h"}, "Wrong number of fields"),
    ({"schedule": "0 2 * * *"}, "window: --schedule needs --window"),
    ({"window": "2h"}, "window: --window needs --schedule"),
    ({"strategy": "blue-green"}, "--strategy: Input should be 'waves' or 'canary'"),
    ({"canary": {"sites": 2}}, "canary: canary options need --strategy canary"),
    ({"strategy": "canary", "canary": {"sites": "0"}}, "--canary-sites: '0' must be at least 1 site"),
    ({"strategy": "canary", "canary": {"max_ttft_p95_ratio": 0.9}}, "--canary-max-ttft-p95-ratio"),
    ({"max_failures": -1}, "--max-failures"),
    ({"surge": 1}, "--surge: Extra inputs are not permitted"),
])
def test_precise_errors(kw, message):
    got = errors(**kw)
    assert any(message in line for line in got), got


def test_full_unavailability_only_when_asked():
    assert spec(max_unavailable="100%", allow_full_unavailability=True).max_unavailable.is_full


def test_round_trip_through_json():
    for s in (spec(), spec(waves="1,3,100%", max_unavailable="20%", schedule="30 1 * * *", window="90m"),
              spec(strategy="canary", canary={"sites": "10%", "max_ttft_p95_ratio": 1.5, "on_breach": "pause"},
                   min_success_time="0.25s")):
        d = json.loads(json.dumps(s.to_dict()))
        assert RolloutSpec.from_dict(d) == s
    assert spec().to_dict()["waves"] == "1,10%,50%,100%"


def test_schedule_window():
    s = spec(schedule="0 2 * * *", window="2h")
    day = datetime(2026, 11, 28, tzinfo=UTC)
    assert not s.in_window(day.replace(hour=1, minute=59))
    assert s.in_window(day.replace(hour=2)) and s.in_window(day.replace(hour=3, minute=59))
    assert not s.in_window(day.replace(hour=4))
    assert s.next_window(day.replace(hour=5)) == datetime(2026, 11, 29, 2, tzinfo=UTC)
    assert spec().in_window(day) and spec().next_window(day) is None


def test_parse_waves_accepts_lists():
    assert parse_waves(["1", "100%"]) == (Size(count=1), Size(percent=100))


# ------------------------------------------------------------------ plan


def sites(n: int, **kw) -> list[SiteState]:
    return [SiteState(f"site-{i:02d}", **kw) for i in range(n)]


def test_default_plan_first_wave_is_one_site():
    waves = plan_waves(sites(20), spec())
    assert [len(w) for w in waves] == [1, 1, 8, 10]
    assert waves[0] == ["site-00"] and sum(waves, []) == [f"site-{i:02d}" for i in range(20)]


def test_plan_is_deterministic_and_healthy_sites_go_first():
    fleet = sites(6) + [SiteState("aaa-down", reachable=False), SiteState("aab-maint", in_maintenance=True)]
    p1 = plan(fleet, spec())
    p2 = plan(list(reversed(fleet)), spec())
    assert p1 == p2
    assert p1.waves[0] == ("site-00",)
    assert p1.sites[-2:] == ("aaa-down", "aab-maint")


def test_opted_out_and_current_sites_are_excluded_and_listed():
    fleet = sites(4) + [SiteState("opt", opted_out=True), SiteState("done", current_version="v2")]
    p = plan(fleet, spec())
    assert "opt" not in p.sites and "done" not in p.sites
    assert p.excluded == (("done", "already runs v2"), ("opt", "opted out of rollouts"))


def test_small_fleets_drop_empty_waves():
    assert plan_waves(sites(3), spec()) == [["site-00"], ["site-01"], ["site-02"]]
    assert plan_waves(sites(1), spec()) == [["site-00"]]
    assert plan_waves([], spec()) == []
    assert [len(w) for w in plan_waves(sites(10), spec(waves="1,3,30%,100%"))] == [1, 2, 7]


def test_canary_wave_first():
    p = plan(sites(20), spec(strategy="canary", canary={"sites": "10%"}))
    assert [len(w) for w in p.waves] == [2, 8, 10]  # canary 2, then 50 %, 100 %
    assert [len(w) for w in plan_waves(sites(20), spec(strategy="canary"))] == [1, 1, 8, 10]


def test_max_unavailable_resolution():
    assert plan(sites(10), spec(max_unavailable="25%")).max_unavailable == 2  # rounds down
    assert plan(sites(3), spec(max_unavailable="10%")).max_unavailable == 1  # at least one
    assert plan(sites(3), spec(max_unavailable="5")).max_unavailable == 3


def test_duplicate_sites_refused():
    with pytest.raises(ValueError, match="more than once: a"):
        plan([SiteState("a"), SiteState("a")], spec())
