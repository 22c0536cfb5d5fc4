"""Autoscaling decisions: hysteresis, scale-down delay, min/max replicas, residency kept by the engine."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from hub.autoscale.decide import (DecideConfig, ScalerState, ScalingSettings, decide, hpa_need, need_from_forecast,
                                  place_within_limits, replicas_by_service, retarget)
from hub.placement.build import problem_from_bundle
from hub.placement.model import Problem
from hub.placement.verify import violations
from hub.policy import load_bundle

ROOT = Path(__file__).resolve().parents[2]
KEY = ("assistant-eu", "eu-central")
CFG = DecideConfig(headroom=1.2, scale_in_below=0.7, max_runs=1)


@pytest.fixture(scope="module")
def problem() -> Problem:
    bundle = load_bundle([ROOT / "fleet_configs", ROOT / "policies"])
    return problem_from_bundle(bundle, at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))


def test_scale_out_at_once_with_headroom() -> None:
    planned, low, changes = retarget({KEY: 10.0}, {}, {KEY: 11.0}, 0.0, {}, CFG)
    assert planned[KEY] == pytest.approx(13.2)
    assert [c.key for c in changes] == [KEY] and "scale out" in changes[0].reason


def test_hysteresis_band_keeps_the_plan() -> None:
    """Need between scale_in_below x planned and planned: nothing changes, no timer runs."""
    planned, low, changes = retarget({KEY: 10.0}, {}, {KEY: 7.5}, 0.0, {}, CFG)
    assert planned[KEY] == 10.0 and not changes and KEY not in low


def test_scale_in_waits_for_the_delay_and_resets_on_a_rise() -> None:
    settings = {"assistant-eu": ScalingSettings(scale_down_delay_s=600)}
    planned, low = {KEY: 10.0}, {}
    planned, low, changes = retarget(planned, low, {KEY: 2.0}, 1000.0, settings, CFG)
    assert planned[KEY] == 10.0 and low[KEY] == 1000.0 and not changes
    planned, low, changes = retarget(planned, low, {KEY: 2.0}, 1599.0, settings, CFG)
    assert planned[KEY] == 10.0 and not changes
    # back inside the band: the timer resets
    planned, low, changes = retarget(planned, low, {KEY: 8.0}, 1650.0, settings, CFG)
    assert KEY not in low
    planned, low, changes = retarget(planned, low, {KEY: 2.0}, 1700.0, settings, CFG)
    planned, low, changes = retarget(planned, low, {KEY: 2.0}, 2299.0, settings, CFG)
    assert planned[KEY] == 10.0 and not changes
    planned, low, changes = retarget(planned, low, {KEY: 2.0}, 2300.0, settings, CFG)
    assert planned[KEY] == pytest.approx(2.4) and "scale in" in changes[0].reason and KEY not in low


def test_disabled_service_and_scale_to_zero() -> None:
    off = {"assistant-eu": ScalingSettings(enabled=False)}
    planned, _, changes = retarget({KEY: 10.0}, {}, {KEY: 50.0}, 0.0, off, CFG)
    assert planned[KEY] == 10.0 and not changes
    zero = {"assistant-eu": ScalingSettings(min_replicas=0, scale_down_delay_s=0)}
    planned, _, _ = retarget({KEY: 10.0}, {}, {KEY: 0.0}, 0.0, zero, CFG)
    assert planned[KEY] == 0.0
    keep = {"assistant-eu": ScalingSettings(min_replicas=1, scale_down_delay_s=0)}
    planned, _, _ = retarget({KEY: 10.0}, {}, {KEY: 0.0}, 0.0, keep, CFG)
    assert planned[KEY] == CFG.min_rate


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="autoscale.max"):
        ScalingSettings(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="targetQuantile"):
        ScalingSettings(target_quantile=1.0)
    with pytest.raises(ValueError, match="target utilisation"):
        hpa_need(5.0, 0.0)


def test_need_uses_the_quantile_for_critical_classes_only() -> None:
    assert need_from_forecast(10.0, 14.0, sheddable=False) == 14.0
    assert need_from_forecast(10.0, 14.0, sheddable=True) == 10.0


def _only(problem: Problem, rate: float) -> dict:
    return {**{(w.service, w.region): 0.0 for w in problem.workloads}, KEY: rate}


def test_max_replicas_caps_the_service(problem: Problem) -> None:
    free, _ = place_within_limits(problem, _only(problem, 60.0), None, {}, CFG)
    assert replicas_by_service(free)["assistant-eu"] > 3
    capped, planned = place_within_limits(problem, _only(problem, 60.0), None,
                                          {"assistant-eu": ScalingSettings(max_replicas=3)}, CFG)
    assert replicas_by_service(capped)["assistant-eu"] <= 3
    assert planned[KEY] < 60.0


def test_min_replicas_floor(problem: Problem) -> None:
    free, _ = place_within_limits(problem, _only(problem, 1.0), None, {}, CFG)
    assert replicas_by_service(free)["assistant-eu"] < 4
    floored, planned = place_within_limits(problem, _only(problem, 1.0), None,
                                           {"assistant-eu": ScalingSettings(min_replicas=4)}, CFG)
    assert replicas_by_service(floored)["assistant-eu"] >= 4
    assert planned[KEY] > 1.0


def test_decide_replans_only_on_change_and_stays_within_residency(problem: Problem) -> None:
    need = {(w.service, w.region): w.rate for w in problem.workloads}
    first = decide(problem, ScalerState(), need, 0.0, {}, CFG)
    assert first.replanned and first.state.placement is not None
    assert violations(problem, first.state.placement) == []
    # the data class of assistant-de is Germany-only: every replica in DE
    countries = {s.name: s.country for s in problem.sites}
    assert {countries[a.site] for a in first.state.placement.assignments if a.service == "assistant-de"} == {"DE"}
    same = decide(problem, first.state, need, 60.0, {}, CFG)
    assert not same.replanned and same.state.placement is first.state.placement
    surge = decide(problem, first.state, {**need, KEY: need[KEY] * 2}, 120.0, {}, CFG)
    assert surge.replanned and [c.key for c in surge.changes] == [KEY]
    before = replicas_by_service(first.state.placement)["assistant-eu"]
    assert replicas_by_service(surge.state.placement)["assistant-eu"] > before
    assert violations(problem, surge.state.placement) == []
