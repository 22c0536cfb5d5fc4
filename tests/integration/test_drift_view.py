"""Drift end to end: real agents' drift reports (made by the agent's own DriftSignals) through a real hub
to `fleet drift` (the CLI as a subprocess), the audit trail and the Prometheus gauges."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta

import numpy as np

from edge_agent.runtime.request import FinishReason, RequestStats
from edge_agent.serving.drift_signals import DriftSignals
from edge_agent.serving.telemetry import Outcome, RequestRecord
from hub.drift.monitor import ACTION
from hub.metrics import HubMetrics
from protos.fleet.v1 import admin_pb2
from tests.integration.test_link import TOKEN, WAIT, eventually, make_fleet, no_leaked_tasks, pki  # noqa: F401

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def stats(prompt: int, output: int, nll: float) -> RequestStats:
    s = RequestStats("r", 0, arrival_ns=0, prompt_tokens=prompt, admitted_ns=1, first_token_ns=30_000_000,
                     token_ns=[30_000_000], finished_ns=40_000_000, output_tokens=output,
                     finish_reason=FinishReason.STOP, logprob_sum=-nll * output, logprob_tokens=output)
    return s


def windows(site: str, rng: np.random.Generator, shifted_from: int, *, corrupt: bool) -> list[dict]:
    """Ten one-minute drift payloads of 200 requests from one node; from window ``shifted_from`` on, outputs
    are halved everywhere and (if ``corrupt``) the log-probabilities at this site drop."""
    t = [T0]
    sig = DriftSignals(site, "a", clock=lambda: t[0])
    out = []
    for i in range(10):
        for _ in range(200):
            output = max(int(rng.lognormal(4.5, 0.6)), 1)
            nll = rng.normal(4.2, 0.5)
            if i >= shifted_from:
                output = max(output // 2, 1)
                nll += 1.0 if corrupt else 0.0
            sig(RequestRecord("chat", "v1", "", Outcome.OK, stats(int(rng.lognormal(6.5, 0.9)), output, max(nll, 0.0))))
        t[0] += timedelta(minutes=1)
        out.append(sig.flush())
    return out


async def test_a_fleet_wide_output_collapse_and_one_corrupted_site_reach_fleet_drift(make_fleet):  # noqa: F811
    fleet = await make_fleet(drift_interval_s=0.2)
    rng = np.random.default_rng(5)
    sites = ("fra", "par", "ber")
    agents = {s: fleet.start_agent(s, "a") for s in sites}
    await asyncio.gather(*(a.resynced() for a in agents.values()))
    # 3 sites x 5 windows x 200 = the 3000-request reference; then 5 windows each of shifted traffic
    for site, a in agents.items():
        for p in windows(site, rng, shifted_from=5, corrupt=site == "par"):
            a.link.report("drift", p)
    await eventually(lambda: all(a.state.outbox_size() == 0 for a in agents.values()), what="drift reports acked")

    resp = await fleet.admin.GetDrift(admin_pb2.GetDriftRequest(), metadata=fleet.md, timeout=WAIT * 3)
    rows = json.loads(resp.drift_json)["rows"]
    drifted = {(r["site"], r["signal"]) for r in rows if r["status"] == "Drifted"}
    assert ("fleet", "outputTokens") in drifted
    assert ("par", "nll") in drifted
    assert ("fra", "nll") not in drifted and ("ber", "nll") not in drifted
    assert ("fleet", "promptTokens") not in drifted
    par = next(r for r in rows if (r["site"], r["signal"]) == ("par", "nll"))
    assert par["reference"]["against"] == "rest of fleet" and par["currentMean"] > par["referenceMean"]
    fra = next(r for r in rows if (r["site"], r["signal"]) == ("fra", "nll"))
    assert fra["status"] == "OK" and "other sites" in fra["note"]  # differs from a rest that holds par, not from ber
    fleet_out = next(r for r in rows if (r["site"], r["signal"]) == ("fleet", "outputTokens"))
    assert fleet_out["reference"]["requests"] == 3000 and fleet_out["since"] >= "2026-11-30T06:05"

    # the real CLI, as an operator runs it
    env = {**os.environ, "FLEET_INSECURE": "1"}
    base = [sys.executable, "-m", "hub.cli.main", "drift", "--hub", f"127.0.0.1:{fleet.admin_port}", "--token", TOKEN]
    proc = await asyncio.create_subprocess_exec(*base, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    table = out.decode().splitlines()
    assert table[0].split()[:5] == ["SERVICE", "VERSION", "WHERE", "SIGNAL", "STATUS"]
    drifted_lines = [ln.split() for ln in table[1:] if "Drifted" in ln.split()]
    assert {(ln[2], ln[3]) for ln in drifted_lines} >= {("fleet", "outputTokens"), ("par", "nll")}
    assert "drifted of" in err.decode()
    async def json_since(since: str) -> list[dict]:
        proc = await asyncio.create_subprocess_exec(*base, "-o", "json", "--since", since, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        return json.loads(out)

    # the drifts were raised between 06:05 and 06:10 (report time): --since after that leaves them out
    assert {(r["site"], r["signal"]) for r in await json_since("2026-11-30T06:00:00Z")
            if r["status"] == "Drifted"} == drifted
    later = await json_since("2026-11-30T06:10:01Z")
    assert later and all(r["status"] == "OK" for r in later)

    # the monitor audits each new drift once, and its verdicts are on /metrics
    audits = await eventually(
        lambda: _drift_audits(fleet), what="drift audit records")
    assert {(a.details["site"], a.details["signal"]) for a in audits} >= {("fleet", "outputTokens"), ("par", "nll")}
    await asyncio.sleep(0.5)  # a few more monitor ticks: nothing audited twice
    again = await _drift_audits(fleet)
    assert len(again) == len(audits)
    metrics = HubMetrics(fleet.hub.drift)
    families = {f.name: f for f in metrics.collect()}
    values = {(s.labels["site"], s.labels["signal"]): s.value for s in families["fleet_hub_drift"].samples}
    assert values[("par", "nll")] == 1.0 and values[("fra", "nll")] == 0.0


async def _drift_audits(fleet):
    return [a for a in await fleet.hub.store.list_audit() if a.action == ACTION]
