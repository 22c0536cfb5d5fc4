"""Hard constraints, twice: vectorised over all pools for the solvers, and
one (workload, pool) at a time with a reason for ``explain``. A test checks
that both agree.

Order of checks (the first failing one is the reason): residency, site
availability (cordoned / maintenance), network reach of the demand region,
GPU type compatibility, GPU memory fit, TPOT, TTFT / e2e with the network
round trip, pool size. Capacity left after other workloads is dynamic and
is checked by the solvers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from hub.placement.model import Pool, Problem, SiteInfo, Workload
from hub.placement.perf import NO_REPLICAS, ReplicaCurve, build_curves, ttft_budget
from hub.placement.residency import no_rule_reason


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if math.isfinite(seconds) else "inf"


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f}GiB"


#: USD/h per second of round trip on every option, whatever the latency weight: among otherwise
#: equal-cost choices the nearer site wins (issue 12: users were sent 20-25 ms away while sites
#: 3-5 ms away had room). 0.01 USD/h at 100 ms: below any price difference that matters.
RTT_TIE_USD_PER_S = 0.1


@dataclass
class Candidates:
    """Statically feasible (pool, replicas) options of one workload."""

    pool: np.ndarray
    replicas: np.ndarray
    gpus_per_replica: np.ndarray
    rtt: np.ndarray
    share: np.ndarray
    """Compute share of one replica on its GPU (1 for multi-GPU replicas)."""
    fixed_cost: np.ndarray
    """Latency + churn part of the objective, USD/h."""
    oversize: int = 0
    """Pools that failed only because the demand needs more GPUs than they have."""

    def __len__(self) -> int:
        return len(self.pool)


class FleetIndex:
    """Arrays over every GPU pool of the fleet, and per-workload curves."""

    def __init__(self, problem: Problem, max_candidates: Optional[int] = None):
        """``max_candidates`` keeps only that many cheapest options per workload
        (by its stand-alone GPU share cost); None keeps all (exact solver)."""
        self.problem = problem
        self.max_candidates = max_candidates
        self.sites: list[SiteInfo] = list(problem.sites)
        self.site_index = {s.name: i for i, s in enumerate(self.sites)}
        self.pools: list[Pool] = [p for s in self.sites for p in s.pools]
        self.pool_index = {(p.site, p.name): i for i, p in enumerate(self.pools)}
        n = len(self.pools)
        self.pool_site = np.array([self.site_index[p.site] for p in self.pools], dtype=np.int64).reshape(n)
        self.memory = np.array([p.memory for p in self.pools], dtype=float).reshape(n)
        self.count = np.array([p.count for p in self.pools], dtype=np.int64).reshape(n)
        price = np.array([p.price for p in self.pools], dtype=float).reshape(n)
        power = np.array([p.power for p in self.pools], dtype=float).reshape(n)
        intensity = np.array([s.intensity for s in self.sites], dtype=float)[self.pool_site] if n else np.zeros(0)
        self.price = price
        self.carbon_kg_h = power / 1000.0 * intensity / 1000.0
        w = problem.weights
        self.gpu_cost = w.cost * price + w.carbon_usd_per_kg * self.carbon_kg_h
        available = np.array([s.unavailable is None for s in self.sites], dtype=bool)
        pool_ok = np.array([p.unavailable is None for p in self.pools], dtype=bool).reshape(n)
        self.available = available[self.pool_site] & pool_ok if n else np.zeros(0, dtype=bool)
        self.by_type: dict[str, np.ndarray] = {}
        for i, p in enumerate(self.pools):
            self.by_type.setdefault(p.gpu_type, []).append(i)  # type: ignore[arg-type]
        self.by_type = {k: np.array(v, dtype=np.int64) for k, v in self.by_type.items()}
        self._allowed: dict[str, np.ndarray] = {}
        self._latency: dict[str, np.ndarray] = {}
        self._curves: dict[tuple, ReplicaCurve] = {}
        self._bases: dict[tuple, tuple[np.ndarray, ...]] = {}
        self.previous: dict[tuple[str, str], dict[int, int]] = {}
        """(service, region) -> {pool: replicas} of the previous placement."""
        if problem.previous is not None:
            for a in problem.previous.assignments:
                idx = self.pool_index.get((a.site, a.pool))
                if idx is not None:
                    per_pool = self.previous.setdefault((a.service, a.region), {})
                    per_pool[idx] = per_pool.get(idx, 0) + a.replicas

    # ---------------------------------------------------------------- masks

    def allowed(self, data_class: str) -> np.ndarray:
        """Pools on sites where the data class may be processed."""
        if data_class not in self._allowed:
            rule = self.problem.rules.get(data_class)
            if rule is None:
                per_site = np.zeros(len(self.sites), dtype=bool)
            else:  # one verdict per distinct (country, jurisdictions); named sites individually
                memo: dict[tuple, bool] = {}
                named = rule.allow_sites | rule.deny_sites
                values = []
                for s in self.sites:
                    if s.name in named:
                        values.append(rule.verdict(s.name, s.country, s.jurisdictions)[0])
                        continue
                    key = (s.country, s.jurisdictions)
                    if key not in memo:
                        memo[key] = rule.verdict(s.name, s.country, s.jurisdictions)[0]
                    values.append(memo[key])
                per_site = np.array(values, dtype=bool)
            self._allowed[data_class] = per_site[self.pool_site] if len(self.pools) else np.zeros(0, dtype=bool)
        return self._allowed[data_class]

    def latency(self, region: str) -> np.ndarray:
        """Round trip (s) from ``region`` to each pool's site; NaN where not served."""
        if region not in self._latency:
            per_site = np.array([s.latency.get(region, np.nan) for s in self.sites], dtype=float)
            self._latency[region] = per_site[self.pool_site] if len(self.pools) else np.zeros(0)
        return self._latency[region]

    @staticmethod
    def _curve_key(w: Workload, gpu_type: str) -> tuple:
        return (w.rate, w.prompt_tokens, w.output_tokens, w.profiles[gpu_type], w.tpot_slo)

    def warm(self, workloads: list[Workload]) -> None:
        """Build the replica curves of many workloads in one vectorised pass."""
        keys = []
        seen = set(self._curves)
        for w in workloads:
            for gpu_type in w.profiles:
                key = self._curve_key(w, gpu_type)
                if key not in seen and gpu_type in self.by_type:
                    seen.add(key)
                    keys.append(key)
        for key, curve in zip(keys, build_curves(keys)):
            self._curves[key] = curve

    def curve(self, w: Workload, gpu_type: str) -> ReplicaCurve:
        key = self._curve_key(w, gpu_type)
        if key not in self._curves:
            self._curves[key] = ReplicaCurve(w.rate, w.prompt_tokens, w.output_tokens, w.profiles[gpu_type], w.tpot_slo)
        return self._curves[key]

    def budget(self, w: Workload, gpu_type: str) -> float:
        return ttft_budget(self.curve(w, gpu_type), w.ttft_slo, w.e2e_slo)

    # ----------------------------------------------------------- candidates

    def _base(self, data_class: str, region: str, gpu_type: str, memory: float) -> tuple[np.ndarray, ...]:
        """Pools of ``gpu_type`` that are legal, available, reach ``region`` and
        can hold a replica of ``memory`` bytes: (pools, RTTs, GPUs per replica,
        GPU counts, whether every replica fits one GPU)."""
        key = (data_class, region, gpu_type, memory)
        base = self._bases.get(key)
        if base is None:
            idx = self.by_type.get(gpu_type, np.zeros(0, dtype=np.int64))
            lat = self.latency(region)
            idx = idx[self.allowed(data_class)[idx] & self.available[idx] & ~np.isnan(lat[idx])]
            k = np.ceil(memory / self.memory[idx] - 1e-9).astype(np.int64)
            ok = k <= self.count[idx]
            idx = idx[ok]
            k = k[ok]
            base = self._bases[key] = (idx, lat[idx], k, self.count[idx], bool((k == 1).all()))
        return base

    def candidates(self, w: Workload) -> Candidates:
        parts = []
        oversize = 0
        for gpu_type in sorted(w.profiles):
            idx, rtt, k, count, single = self._base(w.data_class, w.region, gpu_type, w.memory)
            if not len(idx):
                continue
            curve = self.curve(w, gpu_type)
            if curve.batch == 0:
                continue
            n = curve.replicas_raw(ttft_budget(curve, w.ttft_slo, w.e2e_slo) - rtt)  # infeasible: huge
            ok = n * k <= count
            if not ok.all():
                oversize += int(np.count_nonzero(n < NO_REPLICAS)) - int(np.count_nonzero(ok))
                idx, n, k, rtt = idx[ok], n[ok], k[ok], rtt[ok]
            share = curve.utilisation(n) if single else np.where(k > 1, 1.0, curve.utilisation(n))
            parts.append((idx, n, k, rtt, share))
        if not parts:
            empty_i = np.zeros(0, dtype=np.int64)
            return Candidates(empty_i, empty_i, empty_i, np.zeros(0), np.zeros(0), np.zeros(0), oversize)
        if len(parts) == 1:
            pool, reps, k, rtt, share = parts[0]
        else:
            pool, reps, k, rtt, share = (np.concatenate(arrays) for arrays in zip(*parts))
        weights = self.problem.weights
        fixed = (weights.latency_usd_per_rps_s * w.rate + RTT_TIE_USD_PER_S) * rtt
        if self.max_candidates is not None and len(pool) > self.max_candidates:
            fraction = np.where(k > 1, reps * k, reps * np.maximum(share, w.memory / self.memory[pool]))
            keep = np.argpartition(fraction * self.gpu_cost[pool] + fixed, self.max_candidates)[: self.max_candidates]
            keep.sort()
            pool, reps, k, rtt, share, fixed = pool[keep], reps[keep], k[keep], rtt[keep], share[keep], fixed[keep]
        prev = self.previous.get((w.service, w.region))
        if weights.churn_usd_per_replica:
            churn = reps.astype(float)
            if prev:
                before = np.array([prev.get(int(p), 0) for p in pool], dtype=float)
                churn = np.maximum(churn - before, 0.0)
            fixed = fixed + weights.churn_usd_per_replica * churn
        return Candidates(pool, reps, k, rtt, share, fixed, oversize)

    def carried(self, w: Workload, gpu_type: str, rtt: float, replicas: int) -> float:
        """Most demand (req/s, at most ``w.rate``) that ``replicas`` replicas on
        ``gpu_type`` at round trip ``rtt`` serve within the SLOs (0: none).
        Bisection on the rate: the replicas needed grow with the rate."""
        if replicas <= 0:
            return 0.0

        def fits(rate: float) -> bool:
            curve = ReplicaCurve(rate, w.prompt_tokens, w.output_tokens, w.profiles[gpu_type], w.tpot_slo)
            if curve.batch == 0:
                return False
            return int(curve.replicas_raw(np.array([ttft_budget(curve, w.ttft_slo, w.e2e_slo) - rtt]))[0]) <= replicas

        if fits(w.rate):
            return w.rate
        lo, hi = 0.0, w.rate
        for _ in range(30):
            mid = (lo + hi) / 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo

    def pool_capacity(self, w: Workload, gpus: Optional[np.ndarray] = None) -> float:
        """Most of ``w``'s demand (req/s) one legal pool carries with whole
        replicas: ``gpus`` GPUs per pool (default: all of them, e.g. the
        solver's empty GPUs instead). 0 when no pool carries any."""
        best = 0.0
        for gpu_type in sorted(w.profiles):
            idx, rtt, k, count, _ = self._base(w.data_class, w.region, gpu_type, w.memory)
            if not len(idx):
                continue
            have = count if gpus is None else gpus[idx]
            reps = have // k
            if not reps.max() > 0:
                continue
            # the pools with the most replicas (nearest first) and the nearest pools (most replicas first)
            options = {(int(reps.max()), float(rtt[reps == reps.max()].min()))}
            usable = reps > 0
            near = float(rtt[usable].min())
            options.add((int(reps[usable & (rtt == near)].max()), near))
            for n, r in sorted(options):
                best = max(best, self.carried(w, gpu_type, r, n))
                if best >= w.rate:
                    return w.rate
        return best

    @staticmethod
    def capacity_rates(rate: float, cap: float, max_parts: int, equal: bool) -> Optional[tuple[float, ...]]:
        """``rate`` in parts no larger than ``cap`` (at most ``max_parts``; the
        last takes what is left): ``equal`` parts, as few as fit, or parts of
        ``cap`` plus a remainder. None when that gives fewer than two parts."""
        if not (0 < cap < rate) or max_parts < 2:
            return None
        if equal and math.ceil(rate / cap - 1e-9) <= max_parts:  # else equal parts would not fit: capacity-sized
            m = max(2, math.ceil(rate / cap - 1e-9))
            return tuple([rate / m] * (m - 1) + [rate - rate / m * (m - 1)])
        full = min(int(rate // cap), max_parts - 1)
        rest = rate - full * cap
        rates = [cap] * full + ([rest] if rest > 1e-9 * rate else [])
        if len(rates) < 2:
            return None
        rates[-1] = rate - cap * (len(rates) - 1)  # absorbs rounding
        return tuple(rates)

    def prepare(self, workloads: list[Workload], max_shards: int = 64,
                equal: bool = True) -> tuple[list[Workload], list[Candidates]]:
        """Candidates per workload; a workload no single pool can take (too much
        demand for one pool) is split into as few equal shards as the largest
        legal pool carries with whole replicas (``equal``; they pack well when
        there is room) or into shards of what that pool carries plus a remainder
        (not ``equal``; wastes no replica when GPUs are short), halves when
        neither applies, until each shard has a candidate or ``max_shards``.

        Sized by capacity rather than halved: halves each round up to whole
        replicas, so more demand could leave more unplaced on the same GPUs
        than less demand did (issue 12: 3.5 req/s on three GPUs carrying 1.25
        each is three shards of 1.17, not halves needing two GPUs each)."""
        out_w: list[Workload] = []
        out_c: list[Candidates] = []
        self.warm(workloads)
        todo = list(workloads)
        while todo:
            w = todo.pop(0)
            c = self.candidates(w)
            if len(c) or w.shards * 2 > max_shards or not c.oversize:
                out_w.append(w)
                out_c.append(c)
            else:
                todo[:0] = list(w.split(self.split_rates(w, None, max_shards, equal)))
        return out_w, out_c

    def split_rates(self, w: Workload, gpus: Optional[np.ndarray], max_shards: int,
                    equal: bool = False) -> tuple[float, ...]:
        """How to split ``w``: into parts no larger than what one pool carries with
        ``gpus`` GPUs per pool (None: all of them; during a solve, the GPUs still
        empty), ``equal`` or capacity-sized plus the rest; halves when no pool
        carries a part."""
        rates = self.capacity_rates(w.rate, self.pool_capacity(w, gpus), max_shards // w.shards, equal)
        return rates if rates is not None else (w.rate / 2, w.rate / 2)

    # -------------------------------------------------------- one by one

    def check(self, w: Workload, pool_idx: int) -> "Check":
        """Static feasibility of one pool for one workload, with the reason."""
        pool = self.pools[pool_idx]
        site = self.sites[self.pool_site[pool_idx]]
        rule = self.problem.rules.get(w.data_class)
        if rule is None:
            return Check(False, "residency", no_rule_reason(w.data_class))
        ok, why = rule.verdict(site.name, site.country, site.jurisdictions)
        if not ok:
            return Check(False, "residency", why)
        residency = why
        if site.unavailable is not None:
            return Check(False, "availability", site.unavailable, residency=residency)
        if pool.unavailable is not None:
            return Check(False, "availability", pool.unavailable, residency=residency)
        rtt = site.latency.get(w.region)
        if rtt is None:
            return Check(False, "network", f"site lists no networkLatency for region {w.region!r}", residency=residency)
        if pool.gpu_type not in w.profiles:
            return Check(False, "gpu-type", f"{w.model} {w.version} does not run on {pool.gpu_type} "
                         f"(runs on {', '.join(sorted(w.profiles))})", residency=residency, rtt=rtt)
        k = math.ceil(w.memory / pool.memory - 1e-9)
        if k > pool.count:
            return Check(False, "gpu-memory", f"replica needs {_gib(w.memory)} = {k} x {_gib(pool.memory)} GPUs; "
                         f"pool has {pool.count}", residency=residency, rtt=rtt)
        curve = self.curve(w, pool.gpu_type)
        if curve.batch == 0:
            return Check(False, "slo-tpot", f"TPOT with one sequence on {pool.gpu_type} is "
                         f"{_ms(curve.profile.step(1))} > tpotP95 {_ms(w.tpot_slo)}", residency=residency, rtt=rtt)
        budget = self.budget(w, pool.gpu_type)
        n = curve.replicas(budget - rtt)
        if n == 0:
            return Check(False, "slo-ttft", f"RTT {_ms(rtt)} + prefill {_ms(curve.floor)} leaves no replica count "
                         f"meeting the TTFT budget {_ms(budget)}", residency=residency, rtt=rtt)
        if n * k > pool.count:
            return Check(False, "pool-size", f"needs {n} replicas x {k} GPU = {n * k} GPUs; pool has {pool.count}",
                         residency=residency, rtt=rtt, replicas=n, gpus_per_replica=k)
        share = 1.0 if k > 1 else float(curve.utilisation(n))
        return Check(True, "", "feasible", residency=residency, rtt=rtt, replicas=n, gpus_per_replica=k,
                     ttft=rtt + curve.predicted_ttft(n), tpot=curve.tpot, share=share)


@dataclass(frozen=True)
class Check:
    ok: bool
    constraint: str
    """Which constraint failed: residency, availability, network, gpu-type, gpu-memory, slo-tpot, slo-ttft, pool-size."""
    reason: str
    residency: str = ""
    rtt: Optional[float] = None
    replicas: int = 0
    gpus_per_replica: int = 0
    ttft: float = math.inf
    tpot: float = math.inf
    share: float = 1.0
