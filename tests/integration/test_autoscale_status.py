"""Measured demand end to end (issue 12): a real agent serves requests, its demand reports reach a
real hub through the durable outbox, and `fleet autoscale status` shows the observed rate."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from edge_agent.runtime.make_model import make_model
from tests.integration.cliharness import Hub, assert_clean_error, fleet

ROOT = Path(__file__).resolve().parents[2]
FILES = ("-f", str(ROOT / "fleet_configs"), "-f", str(ROOT / "policies"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = Hub(tmp_path_factory.mktemp("autoscale"))
    try:
        h.wait_ready()
        yield h
    finally:
        h.close()


def status(hub: Hub, *args: str) -> list[dict]:
    proc = fleet(hub, "autoscale", "status", *args, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_before_any_revision_and_unknown_services(hub) -> None:
    proc = fleet(hub, "autoscale", "status")
    assert proc.returncode == 0 and "no services yet" in proc.stdout, proc.stdout + proc.stderr
    bad = fleet(hub, "autoscale", "status", "--window", "soon")
    assert bad.returncode == 2 and "--window" in bad.stderr


def test_agent_demand_reaches_fleet_autoscale_status(hub, tmp_path: Path) -> None:
    assert fleet(hub, "apply", *FILES).returncode == 0
    assert_clean_error(fleet(hub, "autoscale", "status", "assistant-eux"))
    missing = fleet(hub, "autoscale", "status", "assistant-eux")
    assert "did you mean 'assistant-eu'" in missing.stderr, missing.stderr

    objs = json.loads(fleet(hub, "get", "objects", "--kind", "Placement", "-o", "json").stdout)
    mine = next(o for o in objs if o["target"].startswith("fra-1/"))
    site, node = mine["target"].split("/")
    assignments = mine["spec"]["assignments"]
    tiny = tmp_path / "tiny"
    make_model("tiny", tiny, seed=0)
    models = tmp_path / "models"
    for a in assignments:  # every placed (model, version) is the tiny model here
        target = models / a["model"] / a["version"]
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(tiny, target_is_directory=True)
    a = assignments[0]
    service = a["service"]
    agent = hub.start_agent(site, node, region="eu-central", country="DE", jurisdiction="EU", extra=(
        "--serve-port", "0", "--models-dir", str(models), "--demand-interval", "1", "--telemetry-interval", "1"))
    serve = hub.agent_dir(site, node) / "serve.json"
    deadline = time.monotonic() + 120
    while not serve.exists():
        assert agent.poll() is None and time.monotonic() < deadline, (hub.tmp / "hub.log").read_text()[-3000:]
        time.sleep(0.2)
    url = f"http://127.0.0.1:{json.loads(serve.read_text())['http']}"
    head = {"X-Fleet-Data-Class": a["dataClass"]}
    body = {"model": service, "prompt": "hello", "max_tokens": 2}
    with httpx.Client(base_url=url, timeout=60) as c:
        while True:  # until the placement is loaded and the SiteLocation (the regions fra-1 serves) is held
            r = c.post("/v1/completions", json=body, headers={**head, "X-Fleet-Origin-Region": "eu-west"})
            if r.status_code == 200:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.3)
        sent = 1
        for _ in range(7):
            r = c.post("/v1/completions", json=body, headers={**head, "X-Fleet-Origin-Region": "eu-west"})
            assert r.status_code == 200, r.text
            sent += 1
        for _ in range(3):  # no header: the serving site's own region
            assert c.post("/v1/completions", json=body, headers=head).status_code == 200
        unknown = c.post("/v1/completions", json=body, headers={**head, "X-Fleet-Origin-Region": "ap-south"})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_origin_region"
        twice = c.post("/v1/completions", json=body,
                       headers=[*head.items(), ("X-Fleet-Origin-Region", "eu-west"),
                                ("X-Fleet-Origin-Region", "eu-central")])
        assert twice.status_code == 400 and twice.json()["error"]["code"] == "ambiguous_origin_region"

    deadline = time.monotonic() + 60
    while True:
        rows = {r["region"]: r for r in status(hub, service, "--window", "10min")}
        west, central = rows.get("eu-west", {}), rows.get("eu-central", {})
        # The refused-as-bad requests never reached a model: counted as errors, not as demand elsewhere.
        if west.get("arrivals", 0) >= sent and central.get("arrivals", 0) >= 3:
            break
        assert agent.poll() is None and time.monotonic() < deadline, rows
        time.sleep(0.5)
    assert west["arrivals"] == sent and west["observedRps"] > 0
    assert central["observedRps"] > 0 and central["meanPromptTokens"] > 0
    assert all(r["service"] == service for r in rows.values())
    placed = {x["region"] for x in assignments if x["service"] == service}
    assert all(rows[region]["replicasNow"] >= 1 for region in placed if region in rows)
    assert "forecastRps" not in west and "plannedReplicas" not in west  # no autoscaler has run: shown as "-"
    assert west["reason"].startswith("no forecast yet")

    table = fleet(hub, "autoscale", "status", service)
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith(service) and " eu-west " in ln)
    assert " rps " in line and "no forecast yet" in line
    assert fleet(hub, "autoscale", "status", "-o", "yaml").returncode == 0
    agent.terminate()
    agent.wait(30)
