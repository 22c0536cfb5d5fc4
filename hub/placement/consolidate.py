"""Consolidation ("GPU memory defragmentation"): free whole GPUs with the
fewest replica moves.

Within each pool (same site, node and GPU type, so performance, latency
and residency are unchanged by a move), GPUs are considered in order of
fewest resident replicas, then least memory used. A GPU is emptied only if
*all* its replicas fit, by best fit, into other GPUs that stay in use;
emptying it costs as many moves as it holds replicas. Multi-GPU replicas
are never moved. Compute shares are respected like memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

from hub.placement.packing import _EPS, PoolState


@dataclass(frozen=True)
class Move:
    key: Hashable
    replica: int
    from_gpu: int
    to_gpu: int


def consolidate_pool(state: PoolState) -> list[Move]:
    """Empty as many GPUs of ``state`` as possible, in place; returns the moves."""
    moves: list[Move] = []
    emptied: set[int] = set()
    while True:
        order = sorted(
            (i for i, r in enumerate(state.residents) if r and i not in emptied),
            key=lambda i: (len(state.residents[i]), state.memory - state.free[i], i),
        )
        progress = False
        for source in order:
            residents = state.residents[source]
            if any(r[2] >= state.memory - _EPS for r in residents):
                continue  # part of a multi-GPU replica: never moved
            targets = [i for i, r in enumerate(state.residents) if r and i != source]
            free = {i: state.free[i] for i in targets}
            comp = {i: state.compute[i] for i in targets}
            plan: list | None = []
            for key, replica, size, share in sorted(residents, key=lambda r: -r[2]):
                fit = [i for i in targets if free[i] + _EPS >= size and comp[i] + _EPS >= share]
                if not fit:
                    plan = None
                    break
                best = min(fit, key=lambda i: (free[i], i))
                free[best] -= size
                comp[best] -= share
                plan.append((key, replica, size, share, best))
            if plan is None:
                continue
            for key, replica, size, share, target in plan:
                state.residents[target].append((key, replica, size, share))
                state.free[target] -= size
                state.compute[target] -= share
                moves.append(Move(key, replica, source, target))
            state.residents[source] = []
            state.free[source] = state.memory
            state.compute[source] = 1.0
            emptied.add(source)
            progress = True
            break
        if not progress:
            return moves
