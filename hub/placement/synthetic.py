"""Seeded synthetic fleets for property tests and benchmarks (pure, no I/O).

Grid intensities are Ember 2024 (shared/reference/FACTS.md); GPU memory and
board power from the FACTS GPU table; prices are the FACTS on-demand
estimates. Latencies are modelled from distance, demand and profiles are
drawn at random: the fleets are plausible, not real.
"""

from __future__ import annotations

import math
import random

from hub.placement.model import Pool, Problem, SiteInfo, Weights, Workload
from hub.placement.perf import PerfProfile
from hub.placement.residency import ResidencyRule

GIB = 2.0**30

#: region -> (lat, lon, countries)
REGIONS = {
    "eu-central": (50.1, 8.7, ["DE", "PL"]),
    "eu-west": (48.9, 2.35, ["FR", "NL", "IE"]),
    "eu-north": (59.3, 18.1, ["SE", "FI", "NO"]),
    "eu-south": (41.9, 6.0, ["ES", "IT"]),
    "uk": (51.5, -0.1, ["GB"]),
    "us-east": (39.0, -77.5, ["US"]),
    "us-west": (37.3, -121.9, ["US"]),
    "ap-southeast": (1.35, 103.8, ["SG"]),
    "ap-northeast": (35.7, 139.7, ["JP", "KR"]),
}
#: Ember 2024, gCO2e/kWh (FACTS.md)
INTENSITY = {"DE": 344, "FR": 44, "PL": 615, "SE": 36, "NO": 31, "NL": 253, "IE": 280, "ES": 146, "IT": 288,
             "FI": 72, "GB": 211, "US": 384, "SG": 499, "JP": 482, "KR": 414}
JURISDICTIONS = {"GB": ("UK",), "US": ("US",), "SG": ("SG",), "JP": ("JP",), "KR": ("KR",), "NO": ("EEA",)}
#: type -> (memory GB, price USD/h estimate, board power W) from FACTS.md
GPUS = {"L4": (24e9, 0.85, 72.0), "T4": (16e9, 0.45, 70.0), "A100-80GB": (80e9, 1.55, 300.0),
        "H100-PCIE": (80e9, 2.99, 350.0)}
GPU_MIX = [("L4", 0.55), ("T4", 0.15), ("A100-80GB", 0.2), ("H100-PCIE", 0.1)]

#: name -> (GiB per replica, {gpu: (prefill tok/s, decode tok/s, max batch, tpot@1 s)})
MODELS = {
    "embed-v1": (2.0, {"T4": (30000, 2000, 64, None), "L4": (60000, 4000, 64, None)}),
    "chat-3b": (6.0, {"T4": (2500, 500, 16, 0.02), "L4": (5000, 900, 32, 0.014),
                      "A100-80GB": (16000, 3500, 64, 0.006)}),
    "chat-8b-int8": (11.0, {"L4": (3000, 480, 16, 0.027), "A100-80GB": (12000, 2400, 64, 0.009),
                            "H100-PCIE": (20000, 3600, 64, 0.007)}),
    "chat-8b-fp16": (20.0, {"L4": (2600, 300, 8, 0.05), "A100-80GB": (11000, 2000, 48, 0.012),
                            "H100-PCIE": (18000, 3200, 64, 0.009)}),
    "chat-70b-int4": (44.0, {"L4": (900, 160, 8, 0.04), "A100-80GB": (3500, 700, 32, 0.022),
                             "H100-PCIE": (6000, 1100, 32, 0.016)}),
}
MODEL_MIX = [("embed-v1", 0.25), ("chat-3b", 0.3), ("chat-8b-int8", 0.25), ("chat-8b-fp16", 0.12), ("chat-70b-int4", 0.08)]

RULES = {
    "public": ResidencyRule("public-anywhere", "public", anywhere=True),
    "personal-eu": ResidencyRule("eu-gdpr", "personal-eu", allow_jurisdictions=frozenset({"EEA"})),
    "personal-de": ResidencyRule("germany-only", "personal-de", allow_countries=frozenset({"DE"})),
    "personal-us": ResidencyRule("us-only", "personal-us", allow_jurisdictions=frozenset({"US"}),
                                 deny_sites=frozenset({"site-00001"})),
}


def _pick(rng: random.Random, mix):
    x = rng.random() * sum(w for _, w in mix)
    for item, weight in mix:
        x -= weight
        if x <= 0:
            return item
    return mix[-1][0]


def _rtt(a, b) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(b[1] - a[1]) / 2) ** 2
    km = 2 * 6371 * math.asin(math.sqrt(h))
    return 0.002 + 2 * 1.5 * km / 200_000.0


def synthetic_problem(
    sites: int,
    services: int,
    seed: int = 0,
    weights: Weights = Weights(),
    unavailable_share: float = 0.03,
    load: float = 1.0,
    gpu_scale: int = 1,
) -> Problem:
    """A random but plausible fleet of ``sites`` sites and ``services`` services.

    ``load`` scales demand, ``gpu_scale`` multiplies every pool's GPU count."""
    rng = random.Random(seed)
    names = list(REGIONS)
    site_infos = []
    for i in range(sites):
        region = names[i % len(names)] if i < len(names) else rng.choice(names)
        lat, lon, countries = REGIONS[region]
        country = rng.choice(countries)
        pos = (lat + rng.uniform(-4, 4), lon + rng.uniform(-6, 6))
        latency = {r: round(_rtt(pos, REGIONS[r][:2]) * rng.uniform(1.0, 1.3), 4) for r in names}
        latency = {r: v for r, v in latency.items() if v <= 0.15}
        name = f"site-{i:05d}"
        pools = []
        for j in range(1 if rng.random() < 0.6 else 2):
            gpu = _pick(rng, GPU_MIX)
            mem, price, power = GPUS[gpu]
            count = rng.choice([1, 2, 2, 4, 4, 8]) * gpu_scale
            pools.append(Pool(name, f"{gpu.lower()}-{j}", f"{name}-node-{j}", gpu, count, mem,
                              round(price * rng.uniform(0.9, 1.1), 3), power))
        juris = JURISDICTIONS.get(country, ("EU", "EEA"))
        unavailable = "site is cordoned" if rng.random() < unavailable_share else None
        site_infos.append(SiteInfo(name, region, country, juris, INTENSITY[country], latency, tuple(pools), unavailable))

    workloads = []
    for s in range(services):
        model = _pick(rng, MODEL_MIX)
        mem, profiles = MODELS[model]
        prof = {g: PerfProfile(p, d, b, t) for g, (p, d, b, t) in profiles.items()}
        data_class = _pick(rng, [("public", 0.5), ("personal-eu", 0.35), ("personal-de", 0.08), ("personal-us", 0.07)])
        if data_class == "personal-eu":
            regions = [r for r in names if r.startswith("eu-")]
        elif data_class == "personal-de":
            regions = ["eu-central"]
        elif data_class == "personal-us":
            regions = ["us-east", "us-west"]
        else:
            regions = names
        chosen = rng.sample(regions, k=min(len(regions), rng.choice([1, 1, 2, 3])))
        embed = model.startswith("embed")
        priority, sheddable = _pick(rng, [((1000, False), 0.5), ((100, False), 0.35), ((-10, True), 0.15)])
        ttft = 0.15 if embed else rng.choice([0.4, 0.6, 1.0, 2.0])
        tpot = 0.05 if embed else rng.choice([0.05, 0.08, 0.1])
        for region in chosen:
            rate = round(min(60.0, rng.lognormvariate(0.5, 1.0)) * load * (10 if embed else 1), 3)
            workloads.append(Workload(
                service=f"svc-{s:04d}", region=region, model=model, version="v1", rate=rate,
                prompt_tokens=300 if embed else rng.choice([200, 500, 1000, 2000]),
                output_tokens=1 if embed else rng.choice([100, 200, 400]),
                ttft_slo=ttft, tpot_slo=tpot, e2e_slo=None, priority=priority, sheddable=sheddable,
                data_class=data_class, memory=mem * GIB, profiles=prof,
            ))
    return Problem(tuple(site_infos), tuple(workloads), dict(RULES), weights, None)
