"""Make autoscale benchmark traces from the public Azure LLM inference traces (2023).

    python -m benchmarks.traces.make_traces --fleet fleet_configs --fleet policies --out /tmp/traces

Writes (nothing large is committed: traces are made at run time):

- ``fleet-48h.csv`` (per interval, ``TIMESTAMP,service,region,requests,ContextTokens,GeneratedTokens``):
  every (service, region) of the fleet's Services for ``--hours`` hours. Rate = the Service's
  declared demand (taken as its daily peak) x a daily curve in the region's local time (trough
  ``--trough`` of the peak at 04:00, peak at 16:00) x the minute-by-minute texture of the Azure
  trace (its per-minute arrival counts over their mean, cycled from a random offset per series)
  x the surges; counts are Poisson. The texture's swings are scaled down by sqrt(series rate /
  source trace rate) for series busier than the source (see ``aggregate``). Token means follow the Azure trace's per-minute means, scaled
  to the Service's declared means. Interactive services take the conversation trace's texture,
  others the (burstier) code trace's.
- ``<service>-<region>-requests.csv`` (per request, ``TIMESTAMP,ContextTokens,GeneratedTokens``):
  ``--request-hours`` hours of one series at request level (the Azure conversation trace's
  requests, resampled to the series' rate, with the same surge shape), for the per-request path.

Surges (``--surge SERVICE/REGION@HOUR``, repeatable): the series' demand ramps to ``--surge-factor``
(default 10) x what it would be at that moment over 5 minutes, holds 40 minutes and falls back
over 15 minutes. Without ``--surge``, the largest interactive (SLO-critical) series of the fleet surges at hour
30.5 (local morning in Europe), when the day's curve is still low: 10x of a morning is ~3x the
Service's declared peak.

Source traces: AzurePublicDataset, CC-BY; Patel et al., "Splitwise: Efficient generative LLM
inference using phase splitting", ISCA 2024 (see the data directory's README).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional

import numpy as np

DATA = Path("/work/shared/data/azure-llm-2023")
REGION_UTC_OFFSET_H = {
    "eu-central": 1, "eu-west": 1, "eu-south": 1, "eu-north": 1, "eu-east": 2, "uk": 0,
    "us-east": -5, "us-west": -8, "us-central": -6, "ap-southeast": 8, "ap-northeast": 9, "ap-south": 5.5,
}
RAMP_UP_S, HOLD_S, RAMP_DOWN_S = 300.0, 2400.0, 900.0


def daily(t_s: np.ndarray, offset_h: float, trough: float) -> np.ndarray:
    """Share of the daily peak at UTC seconds ``t_s`` for a region ``offset_h`` hours from UTC."""
    h = (t_s / 3600.0 + offset_h) % 24.0
    x = (1 - np.cos(2 * np.pi * (h - 4.0) / 24.0)) / 2  # 0 at 04:00, 1 at 16:00
    return trough + (1 - trough) * x ** 1.5


def surge(t_s: np.ndarray, start_s: float, factor: float) -> np.ndarray:
    """Multiplier of a surge starting at ``start_s`` (ramp up, hold, ramp down)."""
    up = np.clip((t_s - start_s) / RAMP_UP_S, 0, 1)
    down = np.clip((t_s - start_s - RAMP_UP_S - HOLD_S) / RAMP_DOWN_S, 0, 1)
    return 1 + (factor - 1) * up * (1 - down)


def azure(kind: str, data: Path = DATA):
    """(per-minute count multipliers, per-minute prompt/ output means over overall means, raw frame)."""
    import pandas as pd

    path = data / f"AzureLLMInferenceTrace_{kind}.csv"
    if not path.exists():
        raise SystemExit(f"error: {path} not found; pass --azure DIR (the azure-llm-2023 data directory)")
    df = pd.read_csv(path)
    t = pd.to_datetime(df["TIMESTAMP"], format="mixed")
    s = (t - t.min()).dt.total_seconds().to_numpy()
    df = df.assign(s=s, minute=(s // 60).astype(int))
    g = df.groupby("minute").agg(n=("s", "size"), p=("ContextTokens", "mean"), o=("GeneratedTokens", "mean"))
    g = g.reindex(range(int(g.index.max()))).fillna({"n": 0}).ffill()  # the last, partial minute dropped
    counts = g["n"].to_numpy(float)
    return (counts / counts.mean(), g["p"].to_numpy(float) / df["ContextTokens"].mean(),
            g["o"].to_numpy(float) / df["GeneratedTokens"].mean(), df)


def aggregate(multiplier: np.ndarray, rate: float, source_rate: float) -> np.ndarray:
    """The per-minute texture of a series ``rate / source_rate`` times busier than the source.

    A busier series is the superposition of k = rate / source_rate streams like the source; its
    relative swings shrink as 1/sqrt(k) (independent streams), so a 2.5 req/s trace's 4x minutes
    do not become 4x minutes of a 120 req/s service.
    """
    k = max(1.0, rate / source_rate)
    return np.maximum(0.0, 1 + (multiplier - 1) / math.sqrt(k))


def workloads(fleet: list[str]) -> list[dict]:
    from hub.placement.build import problem_from_bundle
    from hub.policy import load_bundle

    problem = problem_from_bundle(load_bundle([Path(d) for d in fleet]))
    return [{"service": w.service, "region": w.region, "rate": w.rate, "prompt": w.prompt_tokens,
             "output": w.output_tokens, "sheddable": w.sheddable, "interactive": w.priority >= 1000}
            for w in problem.workloads]


def parse_surges(items: list[str], series: list[dict]) -> list[tuple[str, str, float]]:
    out = []
    keys = {(w["service"], w["region"]) for w in series}
    for item in items:
        try:
            name, hour = item.rsplit("@", 1)
            svc, reg = name.split("/", 1)
            out.append((svc, reg, float(hour)))
        except ValueError:
            raise SystemExit(f"error: --surge {item!r}: write SERVICE/REGION@HOUR, e.g. assistant-eu/eu-west@30.5") from None
        if (svc, reg) not in keys:
            raise SystemExit(f"error: --surge {item!r}: {svc}/{reg} is not a demand region of the fleet's Services")
    if not items:
        firm = [w for w in series if not w["sheddable"] and w["interactive"]]
        w = max(firm or series, key=lambda w: w["rate"])
        out.append((w["service"], w["region"], 30.5))
    return out


def per_interval(series: list[dict], hours: float, interval: float, trough: float, surges, factor: float,
                 rng: np.random.Generator, data: Path) -> list[tuple]:
    tex, src_rate = {}, {}
    for kind in ("conv", "code"):
        *parts, df = azure(kind, data)
        tex[kind] = parts
        src_rate[kind] = len(df) / (len(parts[0]) * 60.0)
    n = int(round(hours * 3600 / interval))
    t = np.arange(n) * interval
    rows = []
    for w in series:
        kind = "conv" if w["interactive"] else "code"
        counts, pm, om = tex[kind]
        counts = aggregate(counts, w["rate"], src_rate[kind])
        minute = ((t // 60).astype(int) + int(rng.integers(len(counts)))) % len(counts)
        rate = w["rate"] * daily(t, REGION_UTC_OFFSET_H.get(w["region"], 0), trough) * counts[minute]
        for svc, reg, hour in surges:
            if (svc, reg) == (w["service"], w["region"]):
                rate = rate * surge(t, hour * 3600, factor)
        req = rng.poisson(rate * interval)
        prompt = np.maximum(1, w["prompt"] * pm[minute])
        output = np.maximum(1, w["output"] * om[minute])
        for i in range(n):
            rows.append((t[i], w["service"], w["region"], int(req[i]), round(float(prompt[i]), 1), round(float(output[i]), 1)))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    return rows


def per_request(w: dict, hours: float, trough: float, start_h: float, surge_h: Optional[float], factor: float,
                rng: np.random.Generator, data: Path) -> np.ndarray:
    """Rows (t, prompt, output) of one series at request level: Azure conversation requests thinned
    or repeated to the series' daily curve and surge (non-homogeneous Poisson by thinning)."""
    _, _, _, df = azure("conv", data)
    s = df["s"].to_numpy()
    span = float(s.max()) + 1.0
    t0 = start_h * 3600
    peak = w["rate"] * factor
    n = rng.poisson(peak * hours * 3600)
    ts = np.sort(rng.uniform(0, hours * 3600, n))
    lam = w["rate"] * daily(t0 + ts, REGION_UTC_OFFSET_H.get(w["region"], 0), trough)
    if surge_h is not None:
        lam = lam * surge(t0 + ts, surge_h * 3600, factor)
    keep = rng.uniform(0, peak, n) < lam
    ts = ts[keep]
    # texture: each kept arrival takes the tokens of the Azure request nearest in its hour's position
    pos = np.searchsorted(s, ts % span).clip(0, len(s) - 1)
    prompt = df["ContextTokens"].to_numpy()[pos] * w["prompt"] / df["ContextTokens"].mean()
    output = df["GeneratedTokens"].to_numpy()[pos] * w["output"] / df["GeneratedTokens"].mean()
    return np.column_stack([t0 + ts, np.maximum(1, prompt.round()), np.maximum(1, output.round())])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", action="append", required=True, help="fleet config directory (repeatable)")
    parser.add_argument("--out", required=True, help="directory to write the traces to")
    parser.add_argument("--azure", default=str(DATA), help=f"Azure trace directory (default {DATA})")
    parser.add_argument("--hours", type=float, default=48.0)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per interval (default 60)")
    parser.add_argument("--trough", type=float, default=0.2, help="night demand as a share of the peak (default 0.2)")
    parser.add_argument("--surge", action="append", default=[], help="SERVICE/REGION@HOUR (repeatable)")
    parser.add_argument("--surge-factor", type=float, default=10.0)
    parser.add_argument("--request-hours", type=float, default=3.0, help="hours of the per-request trace (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    data = Path(args.azure)
    series = workloads(args.fleet)
    surges = parse_surges(args.surge, series)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    rows = per_interval(series, args.hours, args.interval, args.trough, surges, args.surge_factor, rng, data)
    path = out / f"fleet-{args.hours:g}h.csv"
    with path.open("w") as f:
        f.write(",".join(("TIMESTAMP", "service", "region", "requests", "ContextTokens", "GeneratedTokens")) + "\n")
        for r in rows:
            f.write(f"{r[0]:g},{r[1]},{r[2]},{r[3]},{r[4]},{r[5]}\n")
    written[str(path)] = {"rows": len(rows), "requests": int(sum(r[3] for r in rows))}
    if args.request_hours > 0:
        svc, reg, hour = surges[0]
        w = next(x for x in series if (x["service"], x["region"]) == (svc, reg))
        start_h = max(0.0, hour - args.request_hours / 3)
        reqs = per_request(w, args.request_hours, args.trough, start_h, hour, args.surge_factor, rng, data)
        path = out / f"{svc}-{reg}-requests.csv"
        with path.open("w") as f:
            f.write("TIMESTAMP,ContextTokens,GeneratedTokens\n")
            for t, p, o in reqs:
                f.write(f"{t:.3f},{int(p)},{int(o)}\n")
        written[str(path)] = {"rows": len(reqs), "service": svc, "region": reg}
    print(json.dumps({"traces": written, "surges": [f"{s}/{r}@{h:g}h" for s, r, h in surges],
                      "surge_factor": args.surge_factor}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
