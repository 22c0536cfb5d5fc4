"""The mutable state of one solve: chosen candidate per workload and the
GPU layout of every touched pool; turns into a :class:`Placement`."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Optional

import numpy as np

from hub.placement.constraints import Candidates, FleetIndex
from hub.placement.consolidate import consolidate_pool
from hub.placement.model import Assignment, Placement, Unplaced, Workload
from hub.placement.packing import PoolState

#: How a capacity shortfall's reason starts (the rest names the full GPUs).
_NO_ROOM = "has no room (capacity)"


class SolveState:
    def __init__(self, index: FleetIndex, workloads: list[Workload], candidates: list[Candidates]):
        self.index = index
        self.workloads = workloads
        self.candidates = candidates
        self.pools: dict[int, PoolState] = {}
        self.chosen: dict[int, int] = {}
        """workload number -> candidate number."""
        self.stats: dict[str, float] = {}
        self.beta = 0.0
        """Greedy scoring blend: 0 = marginal GPUs opened, 1 = stand-alone GPU share."""
        self.empty = index.count.copy()
        self.used = np.zeros(len(index.pools), dtype=np.int64)
        self.sizes = sorted({w.memory for w in workloads})
        self.size_index = {s: i for i, s in enumerate(self.sizes)}
        self.fits = np.zeros((len(index.pools), max(1, len(self.sizes))), dtype=np.int64)
        self.compute_open = np.zeros(len(index.pools))
        self.previous_gpus: dict[tuple, list[int]] = {}
        prev = index.problem.previous
        if prev is not None:
            for a in prev.assignments:
                self.previous_gpus.setdefault((a.service, a.region, a.site, a.pool), []).extend(
                    g for grp in a.gpus for g in grp)
        self.replaced: set[int] = set()
        """Workloads split into shards that are placed instead."""

    def add(self, w: Workload, c: Candidates) -> int:
        self.workloads.append(w)
        self.candidates.append(c)
        return len(self.workloads) - 1

    def split(self, wi: int, rates: Optional[tuple[float, ...]] = None) -> list[int]:
        """Replace workload ``wi`` by parts of ``rates`` req/s (default: halves); returns their numbers."""
        self.replaced.add(wi)
        return [self.add(part, self.index.candidates(part)) for part in self.workloads[wi].split(rates)]

    def pool(self, p: int) -> PoolState:
        state = self.pools.get(p)
        if state is None:
            state = self.pools[p] = PoolState(float(self.index.memory[p]), int(self.index.count[p]))
        if self._journal is not None and p not in self._journal:
            self._journal[p] = state.copy()
        return state

    # A journal makes a tentative change undoable: pools are copied the first
    # time they are touched, choices are remembered.
    _journal: Optional[dict[int, PoolState]] = None
    _journal_chosen: Optional[dict[int, int]] = None

    def begin(self) -> None:
        self._journal = {}
        self._journal_chosen = dict(self.chosen)

    def commit(self) -> None:
        self._journal = self._journal_chosen = None

    def rollback(self) -> None:
        assert self._journal is not None and self._journal_chosen is not None
        journal = self._journal
        self.chosen = self._journal_chosen
        self._journal = self._journal_chosen = None
        for p, state in journal.items():
            self.pools[p] = state
            self._refresh(p)

    def refresh(self, p: int) -> None:
        self._refresh(p)

    def _refresh(self, p: int) -> None:
        state = self.pools[p]
        self.empty[p] = state.empty
        self.used[p] = state.count - state.empty
        self.compute_open[p] = state.compute_open()
        for s, size in enumerate(self.sizes):
            self.fits[p, s] = state.fits_open(size)

    def new_gpus(self, wi: int) -> np.ndarray:
        """Estimated GPUs each candidate of workload ``wi`` would newly open."""
        c = self.candidates[wi]
        w = self.workloads[wi]
        per_gpu = np.maximum(np.floor(self.index.memory[c.pool] / w.memory + 1e-9), 1).astype(np.int64)
        by_compute = np.floor(self.compute_open[c.pool] / np.maximum(c.share, 1e-9) + 1e-9)
        fits = np.minimum(self.fits[c.pool, self.size_index[w.memory]], by_compute)
        shared = -(-np.maximum(c.replicas - fits, 0) // per_gpu)
        return np.where(c.gpus_per_replica > 1, c.replicas * c.gpus_per_replica, shared)

    def place(self, wi: int, ci: int) -> bool:
        c = self.candidates[wi]
        w = self.workloads[wi]
        p = int(c.pool[ci])
        state = self.pool(p)
        pool = self.index.pools[p]
        prefer = self.previous_gpus.get((w.service, w.region, pool.site, pool.name), ())
        share = float(c.share[ci])
        gpus = state.plan(int(c.replicas[ci]), w.memory, int(c.gpus_per_replica[ci]), share, prefer)
        if gpus is None:
            return False
        state.commit(wi, gpus, w.memory, share)
        self.chosen[wi] = ci
        self._refresh(p)
        return True

    def unplace(self, wi: int) -> None:
        ci = self.chosen.pop(wi)
        p = int(self.candidates[wi].pool[ci])
        self.pool(p).remove(wi)
        self._refresh(p)

    def consolidate(self) -> int:
        moves = 0
        for p, state in self.pools.items():
            moved = consolidate_pool(state)
            if moved:
                moves += len(moved)
                self._refresh(p)
        return moves

    def top_up(self) -> float:
        """Move unplaced demand onto replicas already placed for the same service
        and region that carry more than their part (nearest first); returns req/s moved.

        Parts round up to whole replicas, so a placed part often has slack while
        another part of the same demand found no room: without this, more demand
        could leave more of it unplaced on the same GPUs (issue 12)."""
        moved = 0.0
        groups: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for wi, w in enumerate(self.workloads):
            if wi in self.replaced:
                continue
            placed, left = groups.setdefault((w.service, w.region), ([], []))
            (placed if wi in self.chosen else left).append(wi)
        for placed, left in groups.values():
            if not left or not placed:
                continue
            need = sum(self.workloads[u].rate for u in left)
            for wi in sorted(placed, key=lambda i: (float(self.candidates[i].rtt[self.chosen[i]]), i)):
                if need <= 1e-12:
                    break
                gained = self._grow(wi, need)
                need -= gained
                moved += gained
            taken = sum(self.workloads[u].rate for u in left) - need  # moved onto placed replicas
            for u in left:  # take the moved demand off the unplaced parts
                w = self.workloads[u]
                give = min(w.rate, max(0.0, taken))
                taken -= give
                if give >= w.rate - 1e-12:
                    self.replaced.add(u)
                elif give > 0:
                    self.workloads[u] = dataclasses.replace(w, rate=w.rate - give, fraction=w.fraction * (w.rate - give) / w.rate)
        return moved

    def _grow(self, wi: int, extra: float) -> float:
        """Raise placed workload ``wi``'s demand by up to ``extra`` req/s on the same
        replicas and GPUs while its SLOs and the GPUs' compute still hold."""
        w = self.workloads[wi]
        c = self.candidates[wi]
        ci = self.chosen[wi]
        p, n, k = int(c.pool[ci]), int(c.replicas[ci]), int(c.gpus_per_replica[ci])
        gpu_type = self.index.pools[p].gpu_type
        rtt = float(c.rtt[ci])
        bigger = dataclasses.replace(w, rate=w.rate + extra)
        rate = self.index.carried(bigger, gpu_type, rtt, n)
        state = self.pool(p)
        gpus = state.layout(wi)
        while rate > w.rate * (1 + 1e-9):
            grown = dataclasses.replace(w, rate=rate, fraction=w.fraction * rate / w.rate)
            share = 1.0 if k > 1 else float(self.index.curve(grown, gpu_type).utilisation(n))
            on_gpu = Counter(g[0] for g in gpus)  # replicas of wi per GPU: each grows by the same share
            room = (float(c.share[ci]) + min(state.compute[g] / m for g, m in on_gpu.items())) if k == 1 else 1.0
            if share <= room + 1e-9:
                state.remove(wi)
                state.commit(wi, [tuple(g) for g in gpus], w.memory, share)
                self.workloads[wi] = grown
                self.candidates[wi] = Candidates(
                    c.pool[ci:ci + 1], c.replicas[ci:ci + 1], c.gpus_per_replica[ci:ci + 1], c.rtt[ci:ci + 1],
                    np.array([share]),
                    c.fixed_cost[ci:ci + 1] + self.index.problem.weights.latency_usd_per_rps_s * (rate - w.rate) * rtt)
                self.chosen[wi] = 0
                self._refresh(p)
                return rate - w.rate
            rate = w.rate + (rate - w.rate) / 2  # the GPU is shared: try less
            if rate - w.rate < 1e-6 * w.rate:
                break
        return 0.0

    # ------------------------------------------------------------ results

    def objective(self) -> float:
        total = 0.0
        for p, state in self.pools.items():
            total += state.used * float(self.index.gpu_cost[p])
        for wi, ci in self.chosen.items():
            total += float(self.candidates[wi].fixed_cost[ci])
        return total + self.unplaced_penalty()

    def unplaced_penalty(self) -> float:
        weight = self.index.problem.weights.unplaced_usd
        return sum(weight * (1 if w.sheddable else 10) * w.fraction for wi, w in enumerate(self.workloads)
                   if wi not in self.chosen and wi not in self.replaced)

    def gpu_totals(self) -> tuple[int, float, float, float, float]:
        """(GPUs used, USD/h, kgCO2e/h, memory used bytes, memory of used GPUs bytes)."""
        gpus, cost, carbon, used_mem, cap = 0, 0.0, 0.0, 0.0, 0.0
        for p, state in self.pools.items():
            u = state.used
            gpus += u
            cost += u * float(self.index.price[p])
            carbon += u * float(self.index.carbon_kg_h[p])
            used_mem += state.used_memory()
            cap += u * state.memory
        return gpus, cost, carbon, used_mem, cap

    def _compute_used(self) -> float:
        return sum(r[3] for s in self.pools.values() for rs in s.residents for r in rs)

    def to_placement(self, solver: str, stats: Optional[dict] = None) -> Placement:
        index = self.index
        assignments = []
        unplaced = []
        for wi, w in enumerate(self.workloads):
            if wi in self.replaced:
                continue
            ci = self.chosen.get(wi)
            if ci is None:
                unplaced.append((self._unplaced(wi), w.fraction))
                continue
            c = self.candidates[wi]
            p = int(c.pool[ci])
            pool = index.pools[p]
            site = index.sites[index.pool_site[p]]
            rule = index.problem.rules[w.data_class]
            allowed, why = rule.verdict(site.name, site.country, site.jurisdictions)
            if not allowed:  # defence in depth: candidates never include such pools
                raise AssertionError(f"residency violated for {w.key} at {site.name}")
            curve = index.curve(w, pool.gpu_type)
            n = int(c.replicas[ci])
            assignments.append(Assignment(
                service=w.service, region=w.region, shard=w.shard, shards=w.shards, model=w.model, version=w.version,
                site=site.name, pool=pool.name, node=pool.node, gpu_type=pool.gpu_type,
                replicas=n, gpus_per_replica=int(c.gpus_per_replica[ci]), memory_per_replica=w.memory,
                gpus=tuple(self.pools[p].layout(wi)), gpu_share=float(c.share[ci]), rate=w.rate, rtt=float(c.rtt[ci]),
                ttft_p95=float(c.rtt[ci]) + curve.predicted_ttft(n), tpot_p95=curve.tpot, residency=why,
            ))
        gpus, cost, carbon, used_mem, cap = self.gpu_totals()
        all_stats = {
            "gpus": gpus, "cost_usd_h": cost, "carbon_kg_h": carbon,
            "memory_utilisation": used_mem / cap if cap else 0.0,
            "compute_utilisation": self._compute_used() / gpus if gpus else 0.0,
        }
        all_stats.update(stats or {})
        return Placement(tuple(assignments), tuple(self._merge(unplaced)), solver, self.objective(), all_stats)

    def _merge(self, unplaced: list[tuple[Unplaced, float]]) -> list[Unplaced]:
        """One entry per (service, region), however many of its parts failed,
        worded in the user's terms: share and req/s of the demand, not shards."""
        merged: dict[tuple[str, str], tuple[Unplaced, float]] = {}
        for u, fraction in unplaced:
            key = (u.service, u.region)
            first, total = merged.get(key, (u, 0.0))
            merged[key] = (first, total + fraction)
        rates = {(w.service, w.region): w.rate / w.fraction for w in self.workloads if w.fraction > 0}
        out = []
        for (service, region), (u, fraction) in merged.items():
            fraction = min(fraction, 1.0)
            total = rates.get((service, region), 0.0)
            if fraction < 1.0 - 1e-9:
                reason = (f"{fraction:.0%} of {service}'s demand from {region} "
                          f"({fraction * total:.3g} of {total:.3g} req/s) {u.reason}")
                u = Unplaced(u.service, u.region, reason, u.shed, fraction)
            elif u.reason.startswith(_NO_ROOM):
                reason = f"all of {service}'s demand from {region} ({total:.3g} req/s) {u.reason}"
                u = Unplaced(u.service, u.region, reason, u.shed, 1.0)
            out.append(u)
        return out

    def _full_reason(self, w: Workload, c: Candidates) -> str:
        """Why a workload with candidates found no room: the GPUs it may use are full,
        naming the ResidencyPolicy when it is what keeps the demand off other GPUs."""
        pools = sorted({int(p) for p in c.pool})
        gpus = sum(int(self.index.count[p]) for p in pools)
        types = "/".join(sorted({self.index.pools[p].gpu_type for p in pools}))
        rule = self.index.problem.rules.get(w.data_class)
        runs_on = np.zeros(len(self.index.pools), dtype=bool)
        for gpu_type in w.profiles:
            runs_on[self.index.by_type.get(gpu_type, np.zeros(0, dtype=np.int64))] = True
        elsewhere = runs_on & self.index.available & ~self.index.allowed(w.data_class)
        if rule is not None and elsewhere.any():
            return (f"{_NO_ROOM}: the {gpus} {types} GPUs its ResidencyPolicy {rule.policy} allows "
                    f"(and that meet its SLOs) are full")
        return f"{_NO_ROOM}: the {gpus} {types} GPUs that meet its SLOs are full"

    def _unplaced(self, wi: int) -> Unplaced:
        w = self.workloads[wi]
        c = self.candidates[wi]
        if len(c):
            return Unplaced(w.service, w.region, self._full_reason(w, c), w.sheddable)
        counts: Counter[str] = Counter()
        examples: dict[str, str] = {}
        for p in range(len(self.index.pools)):
            check = self.index.check(w, p)
            counts[check.constraint] += 1
            examples.setdefault(check.constraint, check.reason)
        parts = [f"{k} x{v} (e.g. {examples[k]})" for k, v in counts.most_common()]
        reason = "no feasible pool: " + "; ".join(parts) if parts else "no GPU pools in the fleet"
        return Unplaced(w.service, w.region, reason, False)

