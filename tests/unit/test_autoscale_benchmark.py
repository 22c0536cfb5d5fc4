"""benchmarks.autoscale runs end to end on tiny traces of both shapes and prints its JSON keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import autoscale as bench
from benchmarks import autoscale_dataplane as dp

ROOT = Path(__file__).resolve().parents[2]
FLEET = ["--fleet", str(ROOT / "fleet_configs"), "--fleet", str(ROOT / "policies")]
POLICY_KEYS = {"slo_attainment", "gpu_hours", "gpu_hours_vs_static", "cost_usd", "carbon_kg",
               "residency_violations", "shed_requests", "scale_events"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert bench.main([*FLEET, *argv]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_per_interval_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["TIMESTAMP,service,region,requests,ContextTokens,GeneratedTokens"]
    for i in range(40):
        surge = 10 if 20 <= i < 24 else 1
        rows.append(f"{i * 60},assistant-eu,eu-central,{300 * surge},600,200")
        rows.append(f"{i * 60},summarise-batch,eu-central,{60 * surge},3000,400")
    trace = tmp_path / "tiny.csv"
    trace.write_text("\n".join(rows) + "\n")
    out = run(capsys, "--trace", str(trace), "--lead-time", "120")
    assert out["benchmark"] == "autoscale" and out["trace"] == "tiny.csv"
    assert out["requests"] == sum(360 * (10 if 20 <= i < 24 else 1) for i in range(40))
    assert out["lead_time_s"] == 120 and out["interval_s"] == 60 and out["series"] == 2
    assert set(out["policies"]) == {"static", "reactive", "predictive"}
    for name, p in out["policies"].items():
        assert POLICY_KEYS <= set(p), name
        assert p["residency_violations"] == 0
        assert 0 <= p["slo_attainment"] <= 1 and p["gpu_hours"] > 0
    assert out["policies"]["static"]["gpu_hours_vs_static"] == 1.0
    assert out["policies"]["static"]["scale_events"] == 0
    assert out["policies"]["reactive"]["scale_events"] >= 1  # the surge moved it
    assert {"holt_winters", "seasonal_naive"} <= set(out["forecasters"])
    assert out["forecasters"]["holt_winters"]["points"] == 2 * (40 - 30)  # 30-minute horizon: 10 points a series
    assert "MBU" in out["calibration"]


def test_per_request_trace_with_iso_timestamps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for i in range(400):
        rows.append(f"2023-11-16 18:{15 + i // 100:02d}:{(i % 100) * 0.6:09.6f},500,120")
    trace = tmp_path / "requests.csv"
    trace.write_text("\n".join(rows) + "\n")
    out = run(capsys, "--trace", str(trace), "--service", "assistant-us", "--region", "us-east",
              "--policies", "static,predictive")
    assert out["requests"] == 400 and out["series"] == 1 and out["hours"] == pytest.approx(4 / 60, abs=0.01)
    assert set(out["policies"]) == {"static", "predictive"}
    only = run(capsys, "--trace", str(trace), "--service", "assistant-us", "--region", "us-east", "--policies", "none")
    assert only["policies"] == {} and only["forecasters"]["seasonal_naive"]["points"] == 0  # 4 minutes: nothing 30 min ahead


def test_bad_traces_say_what_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "bad.csv"
    trace.write_text("TIMESTAMP,service,region,requests,ContextTokens,GeneratedTokens\n0,nosuch,eu-central,5,100,10\n")
    assert bench.main([*FLEET, "--trace", str(trace)]) == 2
    err = capsys.readouterr().err
    assert "nosuch/eu-central" in err and "not among the fleet" in err
    trace.write_text("TIMESTAMP,requests\n0,5\n")
    assert bench.main([*FLEET, "--trace", str(trace)]) == 2
    assert "missing service, region" in capsys.readouterr().err


def test_dataplane_queue_and_capacity() -> None:
    """Faster GPUs serve more; a growing backlog fails requests, a draining one recovers."""
    gib = 1024 ** 3
    slow = dp.timing(dp.ReplicaSpec("L4", 1, 8 * gib, 12 * gib), 600, 250)
    fast = dp.timing(dp.ReplicaSpec("H100-PCIE", 1, 8 * gib, 12 * gib), 600, 250)
    assert dp.capacity(fast, 250) > 3 * dp.capacity(slow, 250)
    assert dp.steady(fast, 1.0, 250)[1] < dp.steady(fast, 8.0, 250)[1]  # TPOT grows with load
    frac, q = dp.fluid_met_fraction(0.0, 20.0, 10.0, 60.0, 0.3, 1.0)
    assert q == pytest.approx(600.0) and frac < 0.01
    frac, q = dp.fluid_met_fraction(600.0, 5.0, 10.0, 60.0, 0.3, 1.0)
    assert q == pytest.approx(300.0) and frac == 0.0
    frac, q = dp.fluid_met_fraction(100.0, 5.0, 10.0, 60.0, 0.3, 1.0)
    assert q == 0.0 and 0.6 < frac < 1.0
    with pytest.raises(ValueError, match="no datasheet"):
        dp.timing(dp.ReplicaSpec("X9000", 1, gib, 2 * gib), 10, 10)
