"""Autoscale benchmark: ``python -m benchmarks.autoscale --fleet DIR [--fleet DIR ...] --trace FILE [--lead-time S]``.

A trace-driven simulation of the fleet on a simulated clock. Three policies run on the same
trace and the same fleet, each through the hub's own code: ``hub.policy.load_bundle`` ->
``hub.placement.build.problem_from_bundle`` -> ``hub.autoscale.decide`` (which calls
``hub.placement.api.solve``/the greedy solver) and, for ``predictive``, ``hub.autoscale.forecast``:

- ``static``: one plan for the trace's peak rate of each (service, region) (x the same headroom).
- ``reactive``: HPA-like; each interval, need = observed rate / target utilisation (0.8), the
  same hysteresis, scale-down delay and lead time as predictive.
- ``predictive``: need = the forecaster's upper quantile (mean for sheddable classes) at
  now + lead time + one interval, at least the observed rate.

Every policy starts warm with a plan for the first interval (static: for the peak). A published
plan's new replicas serve after the lead time (cold start); replicas it removes keep serving
until then (make-before-break) and count GPU time until they go.

The data plane (``benchmarks.autoscale_dataplane``) is independent of the planner's performance
model: continuous batching from GPU datasheets (calibration in the output), queueing carried
across intervals, shedding for sheddable priority classes only (shed requests count as not met).

Trace CSV (header), one of two shapes:

- per request: ``TIMESTAMP,ContextTokens,GeneratedTokens[,service,region]`` (TIMESTAMP in seconds
  or ISO date-time; without service/region, ``--service``/``--region`` or the fleet's first
  workload); binned into ``--interval`` seconds;
- per interval: ``TIMESTAMP,service,region,requests,ContextTokens,GeneratedTokens`` (requests
  arriving in the interval starting at TIMESTAMP; token columns are means).

Prints one JSON line: ``benchmark, trace, requests, lead_time_s, policies{static, reactive,
predictive}`` each with ``slo_attainment, gpu_hours, gpu_hours_vs_static, cost_usd, carbon_kg,
residency_violations, shed_requests, scale_events`` (and more), plus ``forecasters`` (accuracy of
each forecaster at the lead time on this trace), ``calibration`` and timings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks import autoscale_dataplane as dp
from hub.autoscale.decide import (DecideConfig, Key, ScalerState, ScalingSettings, decide, hpa_need,
                                  need_from_forecast, place_within_limits)
from hub.autoscale.forecast import METHODS, ForecastConfig, SeriesForecaster
from hub.placement.build import problem_from_bundle
from hub.placement.model import Placement, Problem

POLICIES = ("static", "reactive", "predictive")
PER_INTERVAL = ("TIMESTAMP", "service", "region", "requests", "ContextTokens", "GeneratedTokens")
PER_REQUEST = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
HPA_TARGET = 0.8
BACKLOG_CAP_S = 60.0
"""Clients give up after this long in a queue (a chat client's timeout): the backlog is capped at capacity x this."""


class TraceError(ValueError):
    """A trace file that cannot be read; the message says where and what to fix."""


@dataclass(frozen=True)
class Trace:
    name: str
    interval_s: float
    start: float
    keys: tuple[Key, ...]
    requests: np.ndarray
    """[key, interval] request counts."""
    prompt: np.ndarray
    """[key, interval] mean prompt tokens."""
    output: np.ndarray
    """[key, interval] mean generated tokens."""

    @property
    def intervals(self) -> int:
        return int(self.requests.shape[1])


def _seconds(column, path: str):
    import pandas as pd

    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all():
        return numeric.to_numpy(dtype=float)
    try:
        stamps = pd.to_datetime(column, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise TraceError(f"{path}: TIMESTAMP is neither seconds nor an ISO date-time ({exc})") from None
    return (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=float)


def load_trace(path: str, interval_s: Optional[float] = None, service: Optional[str] = None,
               region: Optional[str] = None) -> Trace:
    """Read either trace shape (module docstring) into per-interval arrays."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise TraceError(f"{path}: cannot read the trace ({exc})") from None
    cols = set(df.columns)
    if "requests" in cols:
        missing = [c for c in PER_INTERVAL if c not in cols]
        if missing:
            raise TraceError(f"{path}: a per-interval trace needs columns {', '.join(PER_INTERVAL)}; missing {', '.join(missing)}")
        df = df.assign(t=_seconds(df["TIMESTAMP"], path))
        if df[["requests", "ContextTokens", "GeneratedTokens"]].isna().any().any() or (df["requests"] < 0).any():
            raise TraceError(f"{path}: requests and token columns must be numbers >= 0 on every row")
        starts = np.unique(df["t"].to_numpy())
        step = float(np.min(np.diff(starts))) if len(starts) > 1 else float(interval_s or 60.0)
        interval = float(interval_s or step)
        df = df.assign(n=df["requests"].astype(float))
    else:
        missing = [c for c in PER_REQUEST if c not in cols]
        if missing:
            raise TraceError(f"{path}: a per-request trace needs columns {', '.join(PER_REQUEST)} "
                             f"(or a per-interval trace {', '.join(PER_INTERVAL)}); missing {', '.join(missing)}")
        if ("service" in cols) != ("region" in cols):
            raise TraceError(f"{path}: give both service and region columns, or neither")
        if "service" not in cols:
            if not service or not region:
                raise TraceError(f"{path}: no service/region columns; pass --service and --region")
            df = df.assign(service=service, region=region)
        interval = float(interval_s or 60.0)
        df = df.assign(t=_seconds(df["TIMESTAMP"], path), n=1.0)
    if interval <= 0:
        raise TraceError(f"{path}: the interval must be > 0 s")
    t0 = float(df["t"].min())
    df = df.assign(bin=((df["t"] - t0) // interval).astype(int), service=df["service"].astype(str),
                   region=df["region"].astype(str))
    df = df.assign(pt=df["ContextTokens"] * df["n"], ot=df["GeneratedTokens"] * df["n"])
    g = df.groupby(["service", "region", "bin"], sort=True)[["n", "pt", "ot"]].sum().reset_index()
    keys = tuple(sorted({(s, r) for s, r in zip(g["service"], g["region"])}))
    kidx = {k: i for i, k in enumerate(keys)}
    n_int = int(g["bin"].max()) + 1
    req = np.zeros((len(keys), n_int))
    pt = np.zeros_like(req)
    ot = np.zeros_like(req)
    rows = np.array([kidx[(s, r)] for s, r in zip(g["service"], g["region"])])
    cols_ = g["bin"].to_numpy()
    req[rows, cols_] = g["n"].to_numpy()
    pt[rows, cols_] = g["pt"].to_numpy()
    ot[rows, cols_] = g["ot"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        prompt = np.where(req > 0, pt / np.maximum(req, 1e-12), np.nan)
        output = np.where(req > 0, ot / np.maximum(req, 1e-12), np.nan)
    for arr in (prompt, output):  # intervals without requests: carry the series' mean mix
        for i in range(len(keys)):
            row = arr[i]
            mean = np.nanmean(row) if np.isfinite(row).any() else 1.0
            row[~np.isfinite(row)] = mean
    return Trace(Path(path).name, interval, t0, keys, req, prompt, output)


# --- the simulated fleet ---------------------------------------------------------------------


@dataclass
class Slot:
    """One replica on the simulated fleet."""

    key: Key
    site: str
    pool: str
    node: str
    gpus: tuple[int, ...]
    spec: dp.ReplicaSpec
    rtt: float
    allowed: bool
    ready_at: float
    retire_at: float = math.inf


@dataclass
class Fleet:
    """Replicas of one policy's published plans, with cold starts and make-before-break."""

    problem: Problem
    weights: dict[tuple[str, str], tuple[float, float]]
    """(model, version) -> (weight bytes, parameter count or 0)."""
    lead_time_s: float
    slots: list[Slot] = field(default_factory=list)
    scale_events: int = 0
    replicas_started: int = 0

    def apply(self, placement: Placement, now: float, warm: bool = False) -> None:
        """Move to ``placement``: new replicas ready after the lead time, removed ones retire then."""
        sites = {s.name: s for s in self.problem.sites}
        classes = {(w.service, w.region): w.data_class for w in self.problem.workloads}
        want: dict[tuple, list] = defaultdict(list)
        for a in placement.assignments:
            for g in a.gpus:
                want[((a.service, a.region), a.site, a.pool, a.node)].append((a, g))
        live: dict[tuple, list[Slot]] = defaultdict(list)
        for s in self.slots:
            if s.retire_at == math.inf:
                live[(s.key, s.site, s.pool, s.node)].append(s)
        ready = now if warm else now + self.lead_time_s
        changed = False
        for group in set(want) | set(live):
            have = sorted(live.get(group, []), key=lambda s: s.ready_at)
            need = want.get(group, [])
            for s in have[len(need):]:
                s.retire_at = ready
                changed = True
            for a, g in need[len(have):]:
                site = sites[a.site]
                rule = self.problem.rules.get(classes.get((a.service, a.region), ""))
                allowed = bool(rule is not None and rule.verdict(site.name, site.country, site.jurisdictions)[0])
                self.slots.append(Slot(
                    (a.service, a.region), a.site, a.pool, a.node, tuple(g),
                    dp.ReplicaSpec(a.gpu_type, a.gpus_per_replica, self.weights[(a.model, a.version)][0],
                                   a.memory_per_replica, self.weights[(a.model, a.version)][1]),
                    float(site.latency.get(a.region, a.rtt)), allowed, ready))
                self.replicas_started += 1
                changed = True
        if changed and not warm:
            self.scale_events += 1

    def prune(self, now: float) -> None:
        self.slots = [s for s in self.slots if s.retire_at > now]


@dataclass
class Tally:
    requests: float = 0.0
    met: float = 0.0
    shed: float = 0.0
    residency_violations: float = 0.0
    gpu_hours: float = 0.0
    cost_usd: float = 0.0
    carbon_kg: float = 0.0
    plans: int = 0
    plan_cpu_s: float = 0.0
    missed_by_key: dict = field(default_factory=lambda: defaultdict(float))
    missed_by_gpu: dict = field(default_factory=lambda: defaultdict(float))
    """Requests missed below capacity, by the GPU type of the replica that served them."""


@dataclass(frozen=True)
class KeyInfo:
    ttft_slo: float
    tpot_slo: float
    sheddable: bool


def serve_interval(fleet: Fleet, t: float, dt: float, trace: Trace, i: int, infos: dict[Key, KeyInfo],
                   backlog: dict[Key, float], tally: Tally, pool_info: dict) -> None:
    """Serve interval ``i`` of the trace on ``fleet``'s ready replicas (see the data plane)."""
    mid = t + dt / 2
    ready = [s for s in fleet.slots if s.ready_at <= mid and s.retire_at > mid]
    by_key: dict[Key, list[Slot]] = defaultdict(list)
    for s in ready:
        by_key[s.key].append(s)
    timing_cache: dict = {}
    # pass 1: full-speed capacity and utilisation per replica, summed per GPU
    gpu_util: dict[tuple, float] = defaultdict(float)
    for k, key in enumerate(trace.keys):
        lam = trace.requests[k, i] / dt
        slots = by_key.get(key, [])
        if not slots:
            continue
        P, O = float(trace.prompt[k, i]), float(trace.output[k, i])
        mus = []
        for s in slots:
            ck = (s.spec, round(P), round(O))
            tm = timing_cache.get(ck)
            if tm is None:
                tm = timing_cache[ck] = dp.timing(s.spec, P, O)
            mus.append(dp.capacity(tm, O))
        u = lam / sum(mus) if mus else 0.0
        for s in slots:
            for g in s.gpus:
                gpu_util[(s.site, s.pool, g)] += min(u, 1.0)
    # pass 2: per key, with sharing slowdowns
    for k, key in enumerate(trace.keys):
        n = float(trace.requests[k, i])
        info = infos[key]
        tally.requests += n
        if n <= 0 and backlog.get(key, 0.0) <= 0:
            continue
        lam = n / dt
        slots = by_key.get(key, [])
        if not slots:  # no replica: the gateway has nowhere to send them
            if info.sheddable:
                tally.shed += n
            tally.missed_by_key[key] += n
            continue
        P, O = float(trace.prompt[k, i]), float(trace.output[k, i])
        parts = []
        for s in slots:
            tm = timing_cache[(s.spec, round(P), round(O))]
            slow = max(1.0, max(gpu_util[(s.site, s.pool, g)] for g in s.gpus))
            parts.append((s, tm, slow, dp.capacity(tm, O, slow)))
        mu = sum(p[3] for p in parts)
        served_lam = lam
        if info.sheddable and lam > mu:
            served_lam = mu * 0.95
            tally.shed += (lam - served_lam) * dt
        u = served_lam / mu if mu > 0 else math.inf
        p_idle = 0.0
        slack_w = 0.0
        for s, tm, slow, mu_s in parts:
            w = mu_s / mu
            lam_s = served_lam * w
            sat = lam_s >= mu_s * 0.999
            batch, tpot = dp.steady(tm, min(lam_s, mu_s * 0.999), O, slow)
            rho_p = min(lam_s * tm.t_prefill * slow, 0.99)
            fixed = s.rtt + tm.t_prefill * slow + rho_p * tm.t_prefill * slow / (2 * (1 - rho_p))
            slack = info.ttft_slo - fixed
            ok_tpot = tpot <= info.tpot_slo
            p_ok = 0.0 if sat else 1.0 - dp.wait_tail(min(u, 0.999), tm.max_batch, mu_s, lam_s, slack)
            p_idle += w * p_ok * ok_tpot
            tally.missed_by_gpu[s.spec.gpu_type] += lam_s * dt * (1 - p_ok * ok_tpot)
            slack_w += w * max(slack, 0.0) * ok_tpot
            if not s.allowed:
                tally.residency_violations += lam_s * dt
        q0 = 0.0 if info.sheddable else backlog.get(key, 0.0)
        frac, q1 = dp.fluid_met_fraction(q0, served_lam, mu, dt, slack_w, p_idle)
        if not info.sheddable:
            backlog[key] = min(q1, mu * BACKLOG_CAP_S)
        met = frac * served_lam * dt
        tally.met += met
        tally.missed_by_key[key] += n - met
    # GPU time: every GPU held by a replica alive now (warming, serving or draining)
    held = {(s.site, s.pool, g) for s in fleet.slots if s.retire_at > t for g in s.gpus}
    hours = dt / 3600.0
    tally.gpu_hours += len(held) * hours
    for site, pool, _ in held:
        price, kw_kg = pool_info[(site, pool)]
        tally.cost_usd += price * hours
        tally.carbon_kg += kw_kg * hours


def forecast_accuracy(trace: Trace, lead: float, settings: dict[str, ScalingSettings]) -> dict:
    """Each forecaster's error on this trace at the horizon predictive plans for (lead + interval),
    and at 30 minutes (where the seasonal shape matters more than the level).

    WAPE = sum |forecast mean - actual| / sum actual over every series and interval; the
    last-value forecast (the rate just observed) is the baseline; ``upper_coverage`` is the share
    of intervals whose actual rate is within the upper quantile (at the lead horizon). Only
    intervals from the second day on are scored when the trace is longer than 1.5 days (the
    first day has no seasonality).
    """
    dt_ = trace.interval_s
    horizons = {"lead": 1 + int(round(lead / dt_)), "30min": max(1, int(round(1800 / dt_)))}
    rates = trace.requests / dt_
    first = int(86_400 / dt_) if trace.intervals * dt_ > 1.5 * 86_400 else 0
    far = max(horizons.values())
    out: dict = {}
    for m in METHODS:
        err = {h: 0.0 for h in horizons}
        naive = {h: 0.0 for h in horizons}
        tot = {h: 0.0 for h in horizons}
        covered = n = 0.0
        c0 = time.process_time()
        for k, key in enumerate(trace.keys):
            f = SeriesForecaster(ForecastConfig(method=m))
            q = settings.get(key[0], ScalingSettings()).target_quantile
            for i in range(trace.intervals - far):
                t = trace.start + i * dt_
                f.observe(t, float(rates[k, i]))
                if i < first:
                    continue
                for h, ahead in horizons.items():
                    fc = f.predict(t, ahead * dt_, q)
                    actual = float(rates[k, i + ahead])
                    err[h] += abs(fc.mean - actual)
                    naive[h] += abs(float(rates[k, i]) - actual)
                    tot[h] += actual
                    if h == "lead":
                        covered += actual <= fc.upper
                        n += 1
        out[m] = {"wape": round(err["lead"] / tot["lead"], 4) if tot["lead"] else None,
                  "wape_last_value": round(naive["lead"] / tot["lead"], 4) if tot["lead"] else None,
                  "wape_30min": round(err["30min"] / tot["30min"], 4) if tot["30min"] else None,
                  "wape_30min_last_value": round(naive["30min"] / tot["30min"], 4) if tot["30min"] else None,
                  "upper_coverage": round(covered / n, 4) if n else None, "points": int(n),
                  "cpu_s": round(time.process_time() - c0, 2)}
    out["scored_from_hour"] = round(first * dt_ / 3600, 2)
    return out


# --- policies --------------------------------------------------------------------------------


def run_policy(policy: str, problem: Problem, trace: Trace, weights: dict, lead: float, cfg: DecideConfig,
               settings: dict[str, ScalingSettings], forecaster: str, timeline: Optional[list] = None) -> dict:
    """Simulate ``policy`` over ``trace``; ``timeline`` (if given) gets one row per interval."""
    infos = {(w.service, w.region): KeyInfo(w.ttft_slo, w.tpot_slo, w.sheddable) for w in problem.workloads}
    pool_info = {(p.site, p.name): (p.price, p.power / 1000.0 * s.intensity / 1000.0)
                 for s in problem.sites for p in s.pools}
    dt_ = trace.interval_s
    fleet = Fleet(problem, weights, lead)
    tally = Tally()
    backlog: dict[Key, float] = {}
    rates = trace.requests / dt_
    base = {(w.service, w.region): 0.0 for w in problem.workloads}  # workloads the trace does not drive
    if policy == "static":
        need = {key: float(rates[k].max()) * cfg.headroom for k, key in enumerate(trace.keys)}
    else:
        need = {key: float(rates[k, 0]) * (cfg.headroom if policy == "predictive" else 1 / HPA_TARGET)
                for k, key in enumerate(trace.keys)}
    c0 = time.thread_time()
    placement, planned = place_within_limits(problem, {**base, **need}, None, settings, cfg)
    tally.plan_cpu_s += time.thread_time() - c0
    tally.plans += 1
    fleet.apply(placement, trace.start, warm=True)
    # workloads the trace does not drive stay at 0 (decide() would otherwise keep their YAML demand)
    state = ScalerState({**base, **{k: v for k, v in planned.items() if k in need}}, {}, placement)
    step_cfg = cfg if policy == "predictive" else DecideConfig(**{**cfg.__dict__, "headroom": 1.0})
    models = {}
    if policy == "predictive":
        models = {key: {forecaster: SeriesForecaster(ForecastConfig(method=forecaster))} for key in trace.keys}
    for i in range(trace.intervals):
        t = trace.start + i * dt_
        fleet.prune(t)
        met0, req0 = tally.met, tally.requests
        serve_interval(fleet, t, dt_, trace, i, infos, backlog, tally, pool_info)
        if timeline is not None:
            ready = sum(1 for s in fleet.slots if s.ready_at <= t + dt_ / 2 and s.retire_at > t + dt_ / 2)
            timeline.append({"t": t, "rate": float(rates[:, i].sum()), "ready": ready, "slots": len(fleet.slots),
                             "met": (tally.met - met0) / max(tally.requests - req0, 1e-9),
                             "planned": round(sum(state.planned.values()), 2) if policy != "static" else None,
                             "backlog": round(sum(backlog.values()), 1)})
        if policy == "static":
            continue
        now = t + dt_
        need = {}
        for k, key in enumerate(trace.keys):
            observed = float(rates[k, i])
            if policy == "reactive":
                need[key] = hpa_need(observed, HPA_TARGET)
                continue
            chosen = None
            for m, f in models[key].items():
                f.observe(t, observed)
                fc = f.predict(t, lead + dt_, settings.get(key[0], ScalingSettings()).target_quantile)
                if m == forecaster:
                    chosen = fc
            assert chosen is not None
            need[key] = max(observed, need_from_forecast(chosen.mean, chosen.upper, infos[key].sheddable))
        c0 = time.thread_time()
        decision = decide(problem, state, need, now, settings, step_cfg)
        if decision.replanned:
            tally.plan_cpu_s += time.thread_time() - c0
            tally.plans += 1
            state = decision.state
            fleet.apply(state.placement, now)  # type: ignore[arg-type]
        else:
            state = decision.state
    return {
        "slo_attainment": round(tally.met / tally.requests, 5) if tally.requests else None,
        "gpu_hours": round(tally.gpu_hours, 2),
        "cost_usd": round(tally.cost_usd, 2),
        "carbon_kg": round(tally.carbon_kg, 2),
        "residency_violations": int(round(tally.residency_violations)),
        "shed_requests": int(round(tally.shed)),
        "scale_events": fleet.scale_events,
        "replicas_started": fleet.replicas_started,
        "plans": tally.plans,
        "plan_cpu_s": round(tally.plan_cpu_s, 2),
        "missed_by_gpu_type": {g: int(round(v)) for g, v in sorted(tally.missed_by_gpu.items()) if v >= 1},
        "worst_series": sorted(((f"{s}/{r}", round(v)) for (s, r), v in tally.missed_by_key.items() if v >= 1),
                               key=lambda x: -x[1])[:3],
    }


def stated_params(text: str) -> float:
    """Parameter count a Model states in words ("8B-parameter", "(0.3B encoder)"), or 0."""
    found = re.search(r"(\d+(?:\.\d+)?)\s*B\b", text)
    return float(found.group(1)) * 1e9 if found else 0.0


def run(fleet_dirs: list[str], trace_path: str, lead: float = 120.0, interval_s: Optional[float] = None,
        service: Optional[str] = None, region: Optional[str] = None, forecaster: str = "holt_winters",
        scale_down_delay_s: float = 600.0, max_runs: Optional[int] = 1,
        policies: tuple[str, ...] = POLICIES) -> dict:
    from hub.policy import load_bundle

    wall0, cpu0 = time.perf_counter(), time.process_time()
    bundle = load_bundle([Path(d) for d in fleet_dirs])
    problem = problem_from_bundle(bundle, at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    if service is None and region is None and problem.workloads:
        service, region = problem.workloads[0].service, problem.workloads[0].region
    trace = load_trace(trace_path, interval_s, service, region)
    known = {(w.service, w.region) for w in problem.workloads}
    unknown = [f"{s}/{r}" for s, r in trace.keys if (s, r) not in known]
    if unknown:
        raise TraceError(f"{trace_path}: (service, region) {', '.join(unknown)} not among the fleet's Service demand "
                         f"regions ({', '.join(sorted(f'{s}/{r}' for s, r in known))})")
    weights = {}
    for name, m in bundle.models.items():
        params = stated_params(" ".join([m.spec.description, *m.metadata.annotations.values()]))
        for v in m.spec.versions:
            weights[(name, v.name)] = (float(v.weight_size), params)
    # services the trace does not drive stay unplaced (planned 0), so no min replicas for them
    settings = {name: ScalingSettings(scale_down_delay_s=scale_down_delay_s) for name in {s for s, _ in trace.keys}}
    cfg = DecideConfig(lead_time_s=lead, max_runs=max_runs)
    accuracy = forecast_accuracy(trace, lead, settings)
    out_pol = {}
    for policy in policies:
        out_pol[policy] = run_policy(policy, problem, trace, weights, lead, cfg, settings, forecaster)
    static_h = out_pol.get("static", {}).get("gpu_hours")
    for p in out_pol.values():
        p["gpu_hours_vs_static"] = round(p["gpu_hours"] / static_h, 4) if static_h else None
    return {
        "benchmark": "autoscale", "trace": trace.name, "requests": int(round(trace.requests.sum())),
        "lead_time_s": lead, "interval_s": trace.interval_s, "hours": round(trace.intervals * trace.interval_s / 3600, 2),
        "series": len(trace.keys), "sites": len(problem.sites), "services": len({s for s, _ in trace.keys}),
        "forecaster": forecaster, "policies": out_pol, "forecasters": accuracy,
        "slo_attainment_counts": "requests meeting both TTFT and TPOT p95 SLO targets / all requests (shed = not met)",
        "calibration": dp.CALIBRATION,
        "wall_s": round(time.perf_counter() - wall0, 1), "cpu_s": round(time.process_time() - cpu0, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", action="append", required=True, help="fleet config directory (repeatable)")
    parser.add_argument("--trace", required=True, help="trace CSV (per request or per interval)")
    parser.add_argument("--lead-time", type=float, default=120.0, help="provisioning lead time, s (default 120)")
    parser.add_argument("--interval", type=float, default=None,
                        help="simulation interval, s (per-request traces: default 60; per-interval: the trace's)")
    parser.add_argument("--service", help="service of a per-request trace without a service column")
    parser.add_argument("--region", help="region of a per-request trace without a region column")
    parser.add_argument("--forecaster", choices=METHODS, default="holt_winters", help="forecaster driving predictive")
    parser.add_argument("--scale-down-delay", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--max-runs", type=int, default=1, help="greedy solver runs per plan (default 1)")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help="comma-separated subset of static,reactive,predictive; 'none': forecaster accuracy only")
    args = parser.parse_args(argv)
    policies = tuple(p for p in args.policies.split(",") if p and p != "none")
    bad = [p for p in policies if p not in POLICIES]
    if bad:
        parser.error(f"unknown policy {', '.join(bad)}; choose from {', '.join(POLICIES)}")
    try:
        result = run(args.fleet, args.trace, args.lead_time, args.interval, args.service, args.region,
                     args.forecaster, args.scale_down_delay, args.max_runs, policies)
    except TraceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
