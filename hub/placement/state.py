"""The mutable state of one solve: chosen candidate per workload and the
GPU layout of every touched pool; turns into a :class:`Placement`."""

from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np

from hub.placement.constraints import Candidates, FleetIndex
from hub.placement.consolidate import consolidate_pool
from hub.placement.model import Assignment, Placement, Unplaced, Workload
from hub.placement.packing import PoolState


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

    def split(self, wi: int) -> list[int]:
        """Replace workload ``wi`` by its two halves; returns their numbers."""
        self.replaced.add(wi)
        return [self.add(half, self.index.candidates(half)) for half in self.workloads[wi].split()]

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
        return sum(weight * (1 if w.sheddable else 10) / w.shards for wi, w in enumerate(self.workloads)
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
                unplaced.append((self._unplaced(wi), w.shards))
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

    def _merge(self, unplaced: list[tuple[Unplaced, int]]) -> list[Unplaced]:
        """One entry per (service, region), however many of its shards failed."""
        merged: dict[tuple[str, str], tuple[Unplaced, int, float]] = {}
        for u, shards in unplaced:
            key = (u.service, u.region)
            first, count, fraction = merged.get(key, (u, 0, 0.0))
            merged[key] = (first, count + 1, fraction + 1.0 / shards)
        out = []
        for u, count, fraction in merged.values():
            if fraction < 1.0 - 1e-9 or count > 1:
                reason = f"{fraction:.0%} of the demand ({count} shard(s)) unplaced: {u.reason}"
                u = Unplaced(u.service, u.region, reason, u.shed, min(fraction, 1.0))
            out.append(u)
        return out

    def _unplaced(self, wi: int) -> Unplaced:
        w = self.workloads[wi]
        c = self.candidates[wi]
        if len(c):
            part = f" (shard {w.shard + 1}/{w.shards})" if w.shards > 1 else ""
            return Unplaced(w.service, w.region, f"capacity{part}: all {len(c)} feasible pool(s) are full", w.sheddable)
        counts: Counter[str] = Counter()
        examples: dict[str, str] = {}
        for p in range(len(self.index.pools)):
            check = self.index.check(w, p)
            counts[check.constraint] += 1
            examples.setdefault(check.constraint, check.reason)
        parts = [f"{k} x{v} (e.g. {examples[k]})" for k, v in counts.most_common()]
        reason = "no feasible pool: " + "; ".join(parts) if parts else "no GPU pools in the fleet"
        return Unplaced(w.service, w.region, reason, False)

