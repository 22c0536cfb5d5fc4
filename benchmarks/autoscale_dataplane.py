"""The autoscale benchmark's data plane: what a replica really serves, per interval.

Independent of the planner's performance model (``hub.placement.perf`` and the models' declared
``profiles``): the planner is judged by a model it does not contain. It uses only public GPU
datasheet figures and the model's weight size and memory per replica from the bundle.

Each replica is a continuous-batching server (vLLM-like):

- decode step with ``b`` running sequences:
  ``step(b) = overhead + (W + b * kv * ctx) / (BW * MBU) + b * F / (FLOPS * MFU)``
  (weights read once per step, each sequence's KV cache read, per-token compute), with ``W`` the
  weight bytes, ``kv`` KV-cache bytes per token, ``ctx = prompt + output / 2`` tokens in cache on
  average, ``F = 2 * params`` FLOPs per token;
- prefill of a prompt of ``P`` tokens: ``P * F / (FLOPS * MFU)``; chunked into decode steps, so
  prefill's share of GPU time ``rho_p = lam * t_prefill`` stretches every step by ``1/(1 - rho_p)``;
- batch: Little's law ``b = lam * output * TPOT`` with ``TPOT = step(b) / (1 - rho_p)`` solved in
  closed form; the batch is capped by KV-cache memory
  (``(memory per replica - W) / (kv * (prompt + output))`` sequences, at most 256);
- capacity ``mu`` (req/s) = the rate at which the batch reaches its cap;
- TTFT = RTT + prefill + M/D/1 prefill wait + wait for a batch slot: below capacity, Sakasegawa's
  M/M/c approximation (P(wait) ~ u^(sqrt(2(c+1))-1), exponential tail at rate mu - lam);
  above it (or while a backlog drains) a fluid queue carried across intervals, waits = backlog / mu;
- replicas sharing a GPU slow each other: each one's step and prefill times are multiplied by the
  GPU's total full-speed utilisation when that exceeds 1 (work-conserving sharing);
- multi-GPU replicas (tensor parallel) get k GPUs' bandwidth and FLOPs at 85 % scaling.

Calibration (stated in the benchmark's output, ``CALIBRATION``): MBU 0.6 and MFU 0.45 with 3 ms
per-step overhead put an 8B int8 model on an H100-PCIe at ~7.5 ms per output token at batch 1 and
~14 k prompt tokens/s, in line with published vLLM figures for Llama-3-8B on H100 (TPOT 7-12 ms,
prefill 10-20 k tok/s); 1 FLOP-pair per weight byte (params ~ weight bytes: int8) and KV bytes per
token = weight bytes / 131072 (Llama-3-8B: 64 KiB/token with an fp8 KV cache, the usual companion of int8
weights, against 8 GB of weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Public datasheet figures: (memory bandwidth bytes/s, dense FP16/BF16 tensor FLOP/s).
GPU_SPECS: dict[str, tuple[float, float]] = {
    "T4": (320e9, 65e12),
    "L4": (300e9, 121e12),
    "A10": (600e9, 125e12),
    "A100-40GB": (1555e9, 312e12),
    "A100-80GB": (2039e9, 312e12),
    "H100-PCIE": (2000e9, 756e12),
    "H100": (3350e9, 989e12),
    "H100-SXM": (3350e9, 989e12),
    "H100-NVL": (3900e9, 835e12),
    "H200": (4800e9, 989e12),
    "L40S": (864e9, 362e12),
}
MBU = 0.6
MFU = 0.45
STEP_OVERHEAD_S = 0.003
KV_BYTES_PER_WEIGHT_BYTE = 1 / 131072
MAX_BATCH = 256
TP_SCALING = 0.85
CALIBRATION = (f"roofline per replica from GPU datasheets (bandwidth, FLOPs) x MBU {MBU} / MFU {MFU}, "
               f"{STEP_OVERHEAD_S * 1000:g} ms per step; 8B int8 on H100-PCIe ~7.5 ms/token at batch 1 and "
               "~14k prompt tok/s, matching published vLLM Llama-3-8B H100 figures (TPOT 7-12 ms, prefill 10-20k tok/s)")


@dataclass(frozen=True)
class ReplicaSpec:
    """What the data plane needs to know about one replica."""

    gpu_type: str
    gpus: int
    weight_bytes: float
    memory_bytes: float
    params: float = 0.0
    """Parameter count when the model states it (its description); 0 = one per weight byte (int8)."""

    def hardware(self) -> tuple[float, float]:
        if self.gpu_type not in GPU_SPECS:
            raise ValueError(f"the data plane has no datasheet figures for GPU type {self.gpu_type!r}; "
                             f"known: {', '.join(sorted(GPU_SPECS))} (add it to GPU_SPECS)")
        bw, flops = GPU_SPECS[self.gpu_type]
        scale = self.gpus * (TP_SCALING if self.gpus > 1 else 1.0)
        return bw * scale, flops * scale


@dataclass(frozen=True)
class Timing:
    """Per-request costs of one replica for a token mix."""

    a: float
    """Step time at batch 0 (s)."""
    b: float
    """Step time added per running sequence (s)."""
    t_prefill: float
    """Prefill time of one prompt (s)."""
    max_batch: int


def timing(spec: ReplicaSpec, prompt: float, output: float) -> Timing:
    bw, flops = spec.hardware()
    flop_per_token = 2.0 * (spec.params or spec.weight_bytes)
    kv = spec.weight_bytes * KV_BYTES_PER_WEIGHT_BYTE
    ctx = prompt + output / 2
    a = STEP_OVERHEAD_S + spec.weight_bytes / (bw * MBU)
    b = kv * ctx / (bw * MBU) + flop_per_token / (flops * MFU)
    t_prefill = prompt * flop_per_token / (flops * MFU)
    kv_room = max(spec.memory_bytes - spec.weight_bytes, 0.0)
    max_batch = int(min(MAX_BATCH, kv_room / max(kv * (prompt + output), 1.0)))
    return Timing(a, b, t_prefill, max(1, max_batch))


def capacity(t: Timing, output: float, slow: float = 1.0) -> float:
    """Requests/s at which the batch reaches its cap (``slow`` stretches all GPU times)."""
    a, b, tp = t.a * slow, t.b * slow, t.t_prefill * slow
    c = t.max_batch
    return c / (max(output, 1.0) * (a + b * c) + c * tp)


@dataclass(frozen=True)
class Served:
    """One replica group's outcome for one interval."""

    met: float
    """Requests that met both TTFT and TPOT SLOs."""
    tpot: float
    ttft_base: float


def steady(t: Timing, lam: float, output: float, slow: float = 1.0) -> tuple[float, float]:
    """(batch, TPOT) at arrival rate ``lam`` below capacity."""
    a, b, tp = t.a * slow, t.b * slow, t.t_prefill * slow
    rho_p = min(lam * tp, 0.99)
    o = max(output, 1.0)
    den = 1 - rho_p - lam * o * b
    if den <= 1e-9:
        batch = float(t.max_batch)
    else:
        batch = min(float(t.max_batch), lam * o * a / den)
    tpot = (a + b * batch) / (1 - rho_p)
    return batch, tpot


def wait_tail(u: float, c: int, mu: float, lam: float, x: float) -> float:
    """P(slot wait > x) below capacity (Sakasegawa M/M/c, exponential tail)."""
    if x < 0:
        return 1.0
    if u <= 0:
        return 0.0
    p_wait = min(1.0, u ** (math.sqrt(2 * (c + 1)) - 1))
    return p_wait * math.exp(-(mu - lam) * x)


def fluid_met_fraction(q0: float, lam: float, mu: float, dt: float, slack: float, p_ok_idle: float) -> tuple[float, float]:
    """(share of the interval's arrivals meeting TTFT, backlog at its end) for a fluid queue.

    A request arriving at ``s`` waits ``Q(s)/mu`` with ``Q(s) = max(0, q0 + (lam - mu) s)``; it meets
    its TTFT when that wait is within ``slack``; arrivals while the queue is empty meet it with
    probability ``p_ok_idle`` (the stochastic wait below capacity).
    """
    if mu <= 0:
        return 0.0, q0 + lam * dt
    d = lam - mu
    q_end = max(0.0, q0 + d * dt)
    limit = slack * mu  # backlog a request can stand
    if q0 <= 0 and d <= 0:
        return p_ok_idle, 0.0
    if d > 0:  # growing: Q(s) = q0 + d s; meets while Q(s) <= limit
        s_ok = 0.0 if limit < q0 else min(dt, (limit - q0) / d)
        return s_ok / dt, q_end
    # draining: Q(s) = q0 - |d| s until empty at s_empty
    s_empty = min(dt, q0 / -d)
    s_ok_queued = max(0.0, s_empty - max(0.0, (q0 - limit) / -d))
    return (s_ok_queued + (dt - s_empty) * p_ok_idle) / dt, q_end
