"""A preallocated, slot-based KV cache.

Layout ``[layers, slots, max_len + 1, kv_heads, head_dim]`` for keys and
values. A running request owns one slot for its lifetime; position
``max_len`` of every slot is a scratch row that absorbs writes from padding
tokens, so padded batches never touch real data. Freeing a slot is O(1)
and immediate: the memory stays allocated (no fragmentation, no allocator
calls on the hot path) and is simply handed to the next request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVUsage:
    """A snapshot of cache occupancy (``vllm:kv_cache_usage_perc`` is ``fraction``)."""

    slots_total: int
    slots_used: int
    tokens_used: int
    """Sum of the positions written by the owners of used slots."""
    bytes_total: int

    @property
    def fraction(self) -> float:
        return self.slots_used / self.slots_total if self.slots_total else 0.0


class KVCache:
    """Keys and values for ``num_slots`` sequences of up to ``max_len`` tokens."""

    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        if num_slots < 1 or max_len < 2:
            raise ValueError(f"need num_slots >= 1 and max_len >= 2, got {num_slots}, {max_len}")
        shape = (num_layers, num_slots, max_len + 1, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_slots = num_slots
        self.max_len = max_len
        self._lock = threading.Lock()
        self._free = list(range(num_slots - 1, -1, -1))
        self._lengths: dict[int, int] = {}

    @property
    def scratch_position(self) -> int:
        """The position that padding tokens write to (never attended)."""
        return self.max_len

    def allocate(self) -> int | None:
        """Take a free slot, or None when all are in use."""
        with self._lock:
            if not self._free:
                return None
            slot = self._free.pop()
            self._lengths[slot] = 0
            return slot

    def set_length(self, slot: int, length: int) -> None:
        """Record how many positions of ``slot`` hold valid K/V (for usage figures)."""
        with self._lock:
            if slot in self._lengths:
                self._lengths[slot] = length

    def free(self, slot: int) -> None:
        """Return ``slot`` to the pool at once. Freeing a free slot is an error."""
        with self._lock:
            if slot not in self._lengths:
                raise ValueError(f"slot {slot} is not allocated")
            del self._lengths[slot]
            self._free.append(slot)

    def usage(self) -> KVUsage:
        """Current occupancy."""
        with self._lock:
            return KVUsage(
                slots_total=self.num_slots,
                slots_used=len(self._lengths),
                tokens_used=sum(self._lengths.values()),
                bytes_total=2 * self.k.numel() * self.k.element_size(),
            )

    @property
    def free_slots(self) -> int:
        with self._lock:
            return len(self._free)
