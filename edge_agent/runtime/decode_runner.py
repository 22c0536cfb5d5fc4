"""Batched decode steps, replayed from captured CUDA graphs on a GPU.

A decode step at small batch is bound by kernel-launch overhead long before
memory bandwidth: ~15 kernels per layer launched from Python. On CUDA the
runner captures the whole decode forward once per bucket batch size (1, 2,
4, 8, ... up to the slot count) with static input tensors and a fixed
attention length (the cache's ``max_len``: a static KV cache), then each
step only copies the inputs and replays the graph.

Rows beyond the real batch are padding: they write into the scratch
position of slot 0 (with the paged cache, the scratch block) and their
logits are dropped. The paged cache's block tables are a persistent device
tensor updated in place, so a captured graph follows sequences as they grow. The same bucketing runs
eagerly on a CPU (``use_graphs=False``) so it is tested without a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from edge_agent.runtime.kv_cache import KVCache, PagedKVCache
from edge_agent.runtime.model import LlamaModel

log = logging.getLogger(__name__)


def bucket_sizes(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch``, and ``max_batch`` itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return sizes + [max_batch]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    logits: torch.Tensor


class DecodeRunner:
    """One decode step for a batch of running sequences.

    ``mode``: ``eager`` (exact batch, attention over the longest live prefix),
    ``bucketed`` (padded to a bucket, static attention length, eager), or
    ``graphs`` (bucketed and replayed from CUDA graphs; CUDA only).
    """

    def __init__(self, model: LlamaModel, cache: KVCache | PagedKVCache, mode: str = "eager") -> None:
        if mode not in ("eager", "bucketed", "graphs"):
            raise ValueError(f"unknown decode mode {mode!r}")
        if mode == "graphs" and model.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model, self.cache, self.mode = model, cache, mode
        self.buckets = bucket_sizes(cache.num_slots)
        self._graphs: dict[int, _Graph] = {}
        self._pool: object | None = None

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def __call__(self, tokens: Sequence[int], positions: Sequence[int], slots: Sequence[int]) -> torch.Tensor:
        """Logits [n, V] (float32) for one new token per sequence."""
        n = len(tokens)
        dev = self.model.device
        if self.mode == "eager":
            t = torch.tensor(tokens, dtype=torch.long).view(n, 1).to(dev)
            p = torch.tensor(positions, dtype=torch.long).view(n, 1).to(dev)
            s = torch.tensor(slots, dtype=torch.long).to(dev)
            return self.model(t, p, s, self.cache, max(positions) + 1)
        b = self.bucket(n)
        pad = b - n
        t = torch.tensor(list(tokens) + [0] * pad, dtype=torch.long).view(b, 1)
        p = torch.tensor(list(positions) + [self.cache.scratch_position] * pad, dtype=torch.long).view(b, 1)
        s = torch.tensor(list(slots) + [0] * pad, dtype=torch.long)
        if self.mode == "bucketed":
            return self.model(t.to(dev), p.to(dev), s.to(dev), self.cache, self.cache.max_len)[:n]
        g = self._graphs.get(b) or self._capture(b)
        g.tokens.copy_(t, non_blocking=True)
        g.positions.copy_(p, non_blocking=True)
        g.slots.copy_(s, non_blocking=True)
        g.graph.replay()
        return g.logits[:n]

    def capture_all(self) -> None:
        """Capture every bucket now (startup), instead of on first use."""
        if self.mode == "graphs":
            for b in self.buckets:
                if b not in self._graphs:
                    self._capture(b)

    def _capture(self, b: int) -> _Graph:
        dev = self.model.device
        tokens = torch.zeros((b, 1), dtype=torch.long, device=dev)
        positions = torch.full((b, 1), self.cache.scratch_position, dtype=torch.long, device=dev)
        slots = torch.zeros((b,), dtype=torch.long, device=dev)
        kv_len = self.cache.max_len
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm up kernels and allocator outside the graph
                self.model(tokens, positions, slots, self.cache, kv_len)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self.model(tokens, positions, slots, self.cache, kv_len)
        self._pool = graph.pool()
        log.debug("captured decode graph for batch %d", b)
        g = _Graph(graph, tokens, positions, slots, logits)
        self._graphs[b] = g
        return g
