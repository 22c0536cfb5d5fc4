"""Realistic telemetry for the report tests: several sites, models, versions and both priority classes.

Payloads are built as the agents build them (schema 1, DDSketch bins), with
names as long as the shipped fleet's (``assistant-large``, ``interactive``).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from ddsketch import DDSketch

from hub.report.telemetry import encode_sketch

T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
SITES = ("fra-1", "ber-1", "par-1", "iad-1", "sin-1")
MODELS = (("assistant", "v1"), ("assistant-large", "v2-a100"))
PRIORITIES = ("interactive", "batch")


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _sketch(values) -> dict:
    s = DDSketch(0.01)
    for v in values:
        s.add(v)
    return encode_sketch(s)


def payloads(seed: int = 7) -> list[dict]:
    """One payload per site with a group per model and priority class."""
    rnd = random.Random(seed)
    out = []
    for i, site in enumerate(SITES):
        groups = []
        for model, version in MODELS:
            for prio in PRIORITIES:
                slow = 4.0 if prio == "batch" else 1.0
                n = rnd.randint(200, 400)
                groups.append({
                    "model": model, "version": version, "priority": prio, "requests": n,
                    "errors": rnd.randint(0, 5), "rejected": rnd.randint(0, 3), "cancelled": 0,
                    "forbidden": rnd.randint(0, 2), "promptTokens": n * 300, "outputTokens": n * 120,
                    "gpuSeconds": 50.0 + i, "costUsd": 0.9 + i / 10, "energyJ": 3.6e6 * (1 + i), "carbonG": 40.0 + i,
                    "sketches": {
                        "ttftS": _sketch(rnd.lognormvariate(-1.7, 0.5) * slow * (1 + i / 4) for _ in range(n)),
                        "itlS": _sketch(rnd.lognormvariate(-3.5, 0.4) * slow for _ in range(n * 20)),
                        "tpotS": _sketch(rnd.lognormvariate(-3.4, 0.3) * slow for _ in range(n)),
                        "queueS": _sketch(rnd.expovariate(50) for _ in range(n)),
                        "e2eS": _sketch(rnd.lognormvariate(1.0, 0.4) * slow for _ in range(n)),
                    },
                })
        out.append({"schema": 1, "site": site, "node": "gpu-node-01", "windowStart": _iso(T0),
                    "windowEnd": _iso(T0 + timedelta(minutes=10)), "groups": groups})
    return out
