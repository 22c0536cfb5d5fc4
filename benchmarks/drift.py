"""Drift detection benchmark: false alarms on stationary traffic, and the delay to detect four injected drifts.

``python -m benchmarks.drift`` prints one JSON line::

    {"false_alarms_per_service_week", "missed", "drifts": {"prompt_length" | "output_collapse" | "model_swap"
     | "site_corruption": {"detected", "delay_requests", "delay_minutes", "by_service": {...}}}, ...}

Traffic. Two services replay the public Azure LLM inference traces of 2023
(``/work/shared/data/azure-llm-2023/``: ``code`` and ``conv``): each request's
(prompt, output) token counts are drawn from the trace's real mix, arrivals are
Poisson at the trace's own mean rate, spread evenly over four sites. Output
lengths at the trace's maximum count as finish reason ``length``. TTFT follows the
prompt length (a fixed per-token prefill cost with 25 % log-normal noise).

Log-probabilities are real: three tiny Llama models are built here
(:mod:`benchmarks.drift_models`) and served by our engine, and each simulated
request takes the per-request mean log-probability of a request the engine
served with the model that site runs.

Detection is the hub's own (:func:`hub.drift.detect.compare` and
:func:`hub.drift.detect.alarms` with the default :class:`~hub.drift.config.DriftConfig`):
a check every ``--stride`` requests (what a 5 s report interval gives at these
rates, roughly) compares the latest ``window_requests`` requests with the
reference (the version's first ``reference_requests``), and each site's latest
``window_requests`` with the other sites' (cross-site). The sketches are built
from the simulated values in one vectorised pass (the same bins the agent's
DDSketch fills), so a simulated day takes seconds.

* False alarms: every alarm over a simulated 24 h of stationary traffic per
  service, scaled to a week.
* Injected drifts, each on both services, at ``--inject-after`` requests of
  stationary traffic: prompts +30 %; outputs halved; every site switched to the
  differently trained model (a log-probability shift); one site's copy of the
  weights corrupted (noise on one layer), to be found as a cross-site outlier
  at that site. Delay counts the requests (for site corruption: the corrupted
  site's requests) from the injection to the alarm on an expected signal; no
  such alarm within ``--horizon`` requests is a miss.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hub.drift import detect
from hub.drift.config import DEFAULTS, DriftConfig
from hub.drift.signals import FINISH, NUMERIC, Signals
from hub.report.telemetry import empty_sketch

TRACES = Path("/work/shared/data/azure-llm-2023")
SITES = ("fra", "ber", "par", "iad")
PREFILL_S_PER_TOKEN = 2e-5
DRIFTS = ("prompt_length", "output_collapse", "model_swap", "site_corruption")
EXPECTED = {
    "prompt_length": {"promptTokens", "ttftS"},
    "output_collapse": {"outputTokens", "finish"},
    "model_swap": {"nll"},
    "site_corruption": {"nll"},
}
"""Signals whose alarm counts as detecting each drift."""
CORRUPT_SITE = "par"


@dataclass(frozen=True)
class Trace:
    name: str
    prompt: np.ndarray
    output: np.ndarray
    rate_per_min: float


def load_trace(name: str, root: Path = TRACES) -> Trace:
    path = root / f"AzureLLMInferenceTrace_{name}.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    from datetime import datetime

    t0 = datetime.fromisoformat(rows[0]["TIMESTAMP"][:26])
    t1 = datetime.fromisoformat(rows[-1]["TIMESTAMP"][:26])
    minutes = (t1 - t0).total_seconds() / 60
    return Trace(name, np.array([int(r["ContextTokens"]) for r in rows]),
                 np.array([int(r["GeneratedTokens"]) for r in rows]), len(rows) / minutes)


# ------------------------------------------------------------- traffic


@dataclass
class Requests:
    """Columns of simulated requests in arrival order."""

    t_min: np.ndarray
    site: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    length: np.ndarray
    """Finish reason ``length`` (else ``stop``)."""
    ttft: np.ndarray
    nll: np.ndarray


def traffic(trace: Trace, n: int, pools: dict[str, np.ndarray], rng: np.random.Generator,
            drift: str | None = None, inject_at: int = 0) -> Requests:
    """``n`` requests; from ``inject_at`` on, ``drift`` applies."""
    idx = rng.integers(len(trace.prompt), size=n)
    prompt = trace.prompt[idx].astype(float)
    output = trace.output[idx].astype(float)
    cap = float(trace.output.max())
    site = rng.integers(len(SITES), size=n)
    model = np.full(n, "base", dtype=object)
    after = np.arange(n) >= inject_at
    if drift == "prompt_length":
        prompt[after] = np.round(prompt[after] * 1.3)
    elif drift == "output_collapse":
        output[after] = np.round(output[after] / 2)
    elif drift == "model_swap":
        model[after] = "swap"
    elif drift == "site_corruption":
        model[after & (site == SITES.index(CORRUPT_SITE))] = "corrupt"
    elif drift is not None:
        raise ValueError(f"unknown drift {drift!r}")
    nll = np.empty(n)
    for name, pool in pools.items():
        m = model == name
        nll[m] = rng.choice(pool, size=int(m.sum()))
    ttft = (0.03 + prompt * PREFILL_S_PER_TOKEN) * rng.lognormal(0.0, 0.25, size=n)
    t_min = np.cumsum(rng.exponential(1.0 / trace.rate_per_min, size=n))
    return Requests(t_min, site, prompt, output, output >= cap, ttft, nll)


# ------------------------------------------------------------- sketches

_MAPPING = empty_sketch()._mapping


def sketch_of(values: np.ndarray):  # noqa: ANN201 - ddsketch.DDSketch
    """A fleet DDSketch of ``values`` (>= 0), built in one vectorised pass (same bins as adding one by one)."""
    s = empty_sketch()
    values = np.asarray(values, dtype=float)
    pos = values[values > _MAPPING.min_possible]
    s._zero_count = float(len(values) - len(pos))
    s._count = float(len(values))
    if len(pos):
        keys = np.ceil(np.log2(pos) * _MAPPING._multiplier).astype(np.int64) + int(_MAPPING._offset)
        lo = int(keys.min())
        counts = np.bincount(keys - lo).astype(float)
        st = s._store
        st.bins = counts.tolist()
        st.offset = st.min_key = lo
        st.max_key = lo + len(counts) - 1
        st.count = float(len(pos))
        s._min, s._max, s._sum = float(values.min()), float(values.max()), float(values.sum())
    return s


def signals_of(r: Requests, sel: np.ndarray | slice) -> Signals:
    prompt, output, length = r.prompt[sel], r.output[sel], r.length[sel]
    n = len(prompt)
    finish = dict.fromkeys(FINISH, 0)
    finish["length"] = int(length.sum())
    finish["stop"] = n - finish["length"]
    sketches = {k: empty_sketch() for k in NUMERIC}
    sketches.update(promptTokens=sketch_of(prompt), outputTokens=sketch_of(output),
                    ttftS=sketch_of(r.ttft[sel]), nll=sketch_of(r.nll[sel]))
    return Signals(n, finish, int((output == 0).sum()), sketches)


# ------------------------------------------------------------- detection


def run_checks(r: Requests, cfg: DriftConfig, stride: int, start: int = 0) -> list[detect.Check]:
    """The hub's checks over the requests, every ``stride`` requests once the reference is complete."""
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 11, 30, tzinfo=UTC)
    n = len(r.prompt)
    ref = signals_of(r, slice(0, cfg.reference_requests))
    site_idx = [np.flatnonzero(r.site == i) for i in range(len(SITES))]
    checks = []
    first = max(cfg.reference_requests + cfg.min_requests, start)
    for i in range(first, n + 1, stride):
        lo = max(cfg.reference_requests, i - cfg.window_requests)
        findings = detect.compare(ref, signals_of(r, slice(lo, i)), cfg)
        if cfg.large_window_requests:
            lo = max(cfg.reference_requests, i - cfg.large_window_requests)
            findings += detect.compare_large(ref, signals_of(r, slice(lo, i)), cfg)
        latest = {}
        for s, idx in enumerate(site_idx):
            upto = idx[: np.searchsorted(idx, i)]
            latest[SITES[s]] = upto[-cfg.window_requests:]
        sites = detect.site_outliers({s: signals_of(r, idx) for s, idx in latest.items()}, cfg)
        checks.append(detect.Check(t0 + timedelta(minutes=float(r.t_min[i - 1])), i, tuple(findings), sites))
    return checks


def first_detection(alarms: list[detect.Alarm], drift: str, inject_at: int, r: Requests) -> dict:
    for a in alarms:
        if a.raised_requests <= inject_at or a.signal not in EXPECTED[drift]:
            continue
        if drift == "site_corruption" and a.site != CORRUPT_SITE:
            continue
        if drift != "site_corruption" and a.site:
            continue
        i = a.raised_requests
        delay = i - inject_at
        if drift == "site_corruption":  # the corrupted site's own requests since the injection
            delay = int(np.sum(r.site[inject_at:i] == SITES.index(CORRUPT_SITE)))
        return {"detected": True, "delay_requests": int(delay),
                "delay_minutes": round(float(r.t_min[i - 1] - r.t_min[inject_at]), 2), "signal": a.signal}
    return {"detected": False, "delay_requests": None, "delay_minutes": None, "signal": None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.drift", description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0, help="stationary hours simulated per service")
    ap.add_argument("--stride", type=int, default=50, help="requests between checks")
    ap.add_argument("--inject-after", type=int, default=5000, help="stationary requests before a drift")
    ap.add_argument("--horizon", type=int, default=3000, help="requests after the injection before a miss")
    ap.add_argument("--pool", type=int, default=300, help="engine requests per model for the log-prob pools")
    ap.add_argument("--noise", type=float, default=0.3, help="corruption noise, in the layer's weight std")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--traces", type=Path, default=TRACES)
    args = ap.parse_args(argv)
    cfg = DEFAULTS
    t_start = time.perf_counter()

    from benchmarks import drift_models

    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        dirs = drift_models.build(Path(tmp), noise=args.noise, seed=0)
        pools = {k: np.asarray(drift_models.logprob_pool(d, args.pool, seed=0)) for k, d in dirs.items()}
    t_models = time.perf_counter() - t_start

    rng = np.random.default_rng(args.seed)
    traces = [load_trace(name, args.traces) for name in ("code", "conv")]
    false_alarms = {}
    for tr in traces:
        n = int(tr.rate_per_min * 60 * args.hours)
        r = traffic(tr, n, pools, rng)
        false_alarms[tr.name] = len(detect.alarms(run_checks(r, cfg, args.stride), cfg))
    drifts = {}
    missed = 0
    for drift in DRIFTS:
        by_service = {}
        for tr in traces:
            r = traffic(tr, args.inject_after + args.horizon, pools, rng, drift, args.inject_after)
            checks = run_checks(r, cfg, args.stride)
            by_service[tr.name] = first_detection(detect.alarms(checks, cfg), drift, args.inject_after, r)
        detected = all(v["detected"] for v in by_service.values())
        missed += sum(not v["detected"] for v in by_service.values())
        worst = max(by_service.values(), key=lambda v: (v["delay_requests"] is None, v["delay_requests"] or 0))
        drifts[drift] = {"detected": detected, "delay_requests": worst["delay_requests"],
                         "delay_minutes": worst["delay_minutes"], "by_service": by_service}
    weeks = args.hours / (24 * 7)
    out = {
        "false_alarms_per_service_week": round(sum(false_alarms.values()) / len(traces) / weeks, 3),
        "missed": missed,
        "drifts": drifts,
        "false_alarms": false_alarms,
        "stationary_hours_per_service": args.hours,
        "rates_per_min": {t.name: round(t.rate_per_min, 1) for t in traces},
        "logprob_pools": {k: {"n": len(v), "mean_nll": round(float(v.mean()), 4), "std": round(float(v.std()), 4)}
                          for k, v in pools.items()},
        "corruption": {"layer": drift_models.CORRUPT_LAYER, "noise_std_rel": args.noise, "site": CORRUPT_SITE},
        "config": {"reference_requests": cfg.reference_requests, "window_requests": cfg.window_requests,
                   "alpha": cfg.alpha, "consecutive": cfg.consecutive, "stride": args.stride},
        "models_s": round(t_models, 1),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
