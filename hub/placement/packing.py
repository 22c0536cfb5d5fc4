"""GPU-level state of the fleet during a solve: which replica sits on which
GPU. Replicas that fit in one GPU share GPUs when both memory and compute
share (see :mod:`hub.placement.perf`) fit (best fit on memory); larger
replicas take ``k`` whole, otherwise empty GPUs of one pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Optional, Sequence

import numpy as np

_EPS = 1e-6


@dataclass
class PoolState:
    memory: float
    count: int
    free: list[float] = field(default_factory=list)
    compute: list[float] = field(default_factory=list)
    """Free compute share per GPU (1.0 when empty)."""
    residents: list[list[tuple[Hashable, int, float, float]]] = field(default_factory=list)
    """Per GPU: (workload key, replica number, bytes, compute share)."""

    def __post_init__(self) -> None:
        if not self.free:
            self.free = [self.memory] * self.count
            self.compute = [1.0] * self.count
            self.residents = [[] for _ in range(self.count)]

    def copy(self) -> "PoolState":
        return PoolState(self.memory, self.count, list(self.free), list(self.compute), [list(r) for r in self.residents])

    @property
    def used(self) -> int:
        return sum(1 for r in self.residents if r)

    @property
    def empty(self) -> int:
        return self.count - self.used

    def fits_open(self, size: float) -> int:
        """Replicas of ``size`` bytes that fit by memory into GPUs already in use."""
        return sum(int((f + _EPS) // size) for f, r in zip(self.free, self.residents) if r)

    def compute_open(self) -> float:
        """Free compute share summed over GPUs already in use."""
        return sum(c for c, r in zip(self.compute, self.residents) if r)

    def plan(
        self, replicas: int, size: float, k: int, share: float = 1.0, prefer: Sequence[int] = ()
    ) -> Optional[list[tuple[int, ...]]]:
        """GPU indices for each replica, or None if they do not fit. Pure."""
        free = list(self.free)
        comp = list(self.compute)
        busy = [bool(r) for r in self.residents]
        out: list[tuple[int, ...]] = []
        if k > 1:
            empty = [i for i in range(self.count) if not busy[i] and free[i] >= self.memory - _EPS]
            if len(empty) < replicas * k:
                return None
            return [tuple(empty[j * k:(j + 1) * k]) for j in range(replicas)]
        preferred = [i for i in prefer if 0 <= i < self.count]
        for _ in range(replicas):
            best = -1
            for i in preferred:
                if free[i] + _EPS >= size and comp[i] + _EPS >= share:
                    best = i
                    break
            if best < 0:
                best_free = np.inf
                for i in range(self.count):
                    if busy[i] and size <= free[i] + _EPS and share <= comp[i] + _EPS and free[i] < best_free:
                        best, best_free = i, free[i]
            if best < 0:
                for i in range(self.count):
                    if not busy[i]:
                        best = i
                        break
            if best < 0:
                return None
            free[best] -= size
            comp[best] -= share
            busy[best] = True
            out.append((best,))
        return out

    def commit(self, key: Hashable, gpus: list[tuple[int, ...]], size: float, share: float = 1.0) -> None:
        for replica, group in enumerate(gpus):
            per, cshare = (size, share) if len(group) == 1 else (self.memory, 1.0)
            for i in group:
                self.free[i] -= per
                self.compute[i] -= cshare
                self.residents[i].append((key, replica, per, cshare))

    def remove(self, key: Hashable) -> None:
        for i, residents in enumerate(self.residents):
            keep = [r for r in residents if r[0] != key]
            if len(keep) != len(residents):
                self.free[i] = self.memory - sum(r[2] for r in keep)
                self.compute[i] = 1.0 - sum(r[3] for r in keep)
                self.residents[i] = keep

    def layout(self, key: Hashable) -> list[tuple[int, ...]]:
        """GPU groups of ``key``'s replicas, by replica number."""
        groups: dict[int, list[int]] = {}
        for i, residents in enumerate(self.residents):
            for k, replica, _, _ in residents:
                if k == key:
                    groups.setdefault(replica, []).append(i)
        return [tuple(sorted(groups[r])) for r in sorted(groups)]

    def used_memory(self) -> float:
        return sum(r[2] for residents in self.residents for r in residents)
