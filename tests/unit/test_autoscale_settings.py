"""Service `autoscale:` settings (issue 12): validated at load with the file, line and path to the problem,
and `fleet autoscale status` rows from a revision and measured demand."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hub.autoscale.demand import parse_payload
from hub.autoscale.status import NO_DEMAND, NO_FORECAST, UnknownService, region_status
from hub.placement.api import plan
from hub.policy import Bundle, PolicyError
from hub.policy.loader import load_bundle

ROOT = Path(__file__).resolve().parents[2]
SERVICES = (ROOT / "fleet_configs" / "services.yaml").read_text()
SHIPPED = "    minReplicas: 2\n    maxReplicas: 24\n"


def load_with(tmp_path: Path, old: str, new: str) -> Bundle:
    assert old in SERVICES
    shutil.copytree(ROOT / "fleet_configs", tmp_path / "f")
    (tmp_path / "f" / "services.yaml").write_text(SERVICES.replace(old, new, 1))
    return load_bundle([tmp_path / "f", ROOT / "policies"])


def test_shipped_example_loads_and_a_service_without_the_block_serialises_as_before() -> None:
    b = load_bundle([ROOT / "fleet_configs", ROOT / "policies"])
    auto = b.services["assistant-eu"].spec.autoscale
    assert auto is not None and (auto.enabled, auto.min_replicas, auto.max_replicas) == (True, 2, 24)
    assert (auto.target_quantile, auto.scale_down_delay, auto.lead_time) == (0.95, 600.0, None)
    assert b.services["assistant-de"].spec.autoscale is None
    canonical = {r["metadata"]["name"]: r["spec"] for r in b.to_canonical() if r["kind"] == "Service"}
    assert "autoscale" not in canonical["assistant-de"] and canonical["assistant-eu"]["autoscale"]["enabled"]
    assert Bundle.from_json(b.to_json()).digest() == b.digest()


@pytest.mark.parametrize(("old", "new", "message"), [
    ("    minReplicas: 2\n", "    minReplica: 2\n",
     "spec.autoscale.minReplica: unknown field 'minReplica' (did you mean 'minReplicas'?)"),
    (SHIPPED, "    minReplicas: 30\n    maxReplicas: 24\n",
     "spec.autoscale: minReplicas (30) is more than maxReplicas (24): lower minReplicas or raise maxReplicas"),
    ("    targetQuantile: 0.95", "    targetQuantile: 1.5", "spec.autoscale.targetQuantile: "),
    ("    maxReplicas: 24\n", "    maxReplicas: 0\n", "spec.autoscale.maxReplicas: "),
    ("    scaleDownDelay: 10min\n", "    scaleDownDelay: soon\n",
     "spec.autoscale.scaleDownDelay: 'soon' is not a duration"),
    ("    enabled: true\n", "    enabled: maybe\n", "spec.autoscale.enabled: "),
    ("    scaleDownDelay: 10min\n", "    scaleDownDelay: 10min\n    leadTime: -2min\n", "spec.autoscale.leadTime: "),
])
def test_bad_settings_are_refused_with_file_line_and_path(tmp_path: Path, old: str, new: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_with(tmp_path, old, new)
    text = str(err.value)
    assert "services.yaml:" in text and message in text, text


NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def demand(start: int, end: int, groups: list[tuple[str, str, int]], site: str = "fra-1"):
    iso = lambda s: (NOW + timedelta(seconds=s)).isoformat()  # noqa: E731
    return parse_payload({"schema": 1, "windowStart": iso(start), "windowEnd": iso(end), "groups": [
        {"service": s, "region": r, "arrivals": n, "measured": n, "promptTokens": 100 * n, "outputTokens": 20 * n}
        for s, r, n in groups]}, site=site, node="n")


def test_status_rows_join_the_plan_the_yaml_and_measured_demand() -> None:
    b = load_bundle([ROOT / "fleet_configs", ROOT / "policies"])
    placement = plan(b, None).placement
    reports = [demand(-120, -60, [("assistant-eu", "eu-west", 120)]),
               demand(-60, 0, [("assistant-eu", "eu-west", 60), ("assistant-eu", "ap-east", 6)]),
               demand(-60, 0, [], site="par-1")]
    rows = {r.region: r for r in region_status(b, placement, reports, NOW, window_s=120, service="assistant-eu")}
    west = rows["eu-west"]
    assert west.observed_rps == pytest.approx(1.5) and west.arrivals == 180 and west.mean_prompt_tokens == 100
    assert west.declared_rps == 25.0 and west.replicas_now >= 1 and west.planned_rps > 0
    assert (west.autoscale_enabled, west.min_replicas, west.max_replicas) == (True, 2, 24)
    assert west.forecast_rps is None and west.planned_replicas is None and west.reason == NO_FORECAST
    assert rows["eu-central"].observed_rps == 0.0  # covered by reports, none from there: a measured zero
    assert rows["ap-east"].declared_rps is None and rows["ap-east"].observed_rps == pytest.approx(6 / 120)
    assert rows["ap-east"].replicas_now == 0  # demand the YAML does not list still shows
    quiet = region_status(b, placement, [], NOW, service="assistant-de")
    assert quiet and all(r.observed_rps is None and r.reason == f"{NO_FORECAST}; {NO_DEMAND}" for r in quiet)
    with pytest.raises(UnknownService, match="did you mean 'assistant-eu'"):
        region_status(b, placement, reports, NOW, service="assistant-eux")
    assert region_status(Bundle(), None, [], NOW) == []
