"""Preallocated KV caches: one slot per sequence, or fixed-size blocks (paged).

:class:`KVCache` (``slots``) gives a request a slot of ``max_len`` tokens for
its whole life; most of it sits empty for short requests. :class:`PagedKVCache`
(``paged``, the engine's default) allocates KV memory in blocks of
``block_size`` tokens from a free pool as a sequence grows, and keeps a block
table per sequence, so the same memory holds many more short sequences (the
waste paged attention removed in vLLM). Both hand the model the same thing,
:class:`Addressing`: where this batch's new K/V go and how to gather each
row's keys and values, as index tensors (no Python loop per token).

Slot layout ``[layers, slots, max_len + 1, kv_heads, head_dim]`` for keys and
values. A running request owns one slot for its lifetime; position
``max_len`` of every slot is a scratch row that absorbs writes from padding
tokens, so padded batches never touch real data. Freeing a slot is O(1)
and immediate: the memory stays allocated (no fragmentation, no allocator
calls on the hot path) and is simply handed to the next request.
"""

from __future__ import annotations

import collections
import hashlib
import math
import threading
from collections.abc import Callable, Sequence
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
    blocks_total: int = 0
    """KV blocks in the pool (0 for the slot cache)."""
    blocks_used: int = 0

    @property
    def fraction(self) -> float:
        """Share of KV memory in use: blocks when paged, slots otherwise."""
        if self.blocks_total:
            return self.blocks_used / self.blocks_total
        return self.slots_used / self.slots_total if self.slots_total else 0.0


@dataclass(frozen=True)
class Addressing:
    """Where one forward pass writes and reads K/V in a per-layer cache tensor.

    ``write`` indexes the first dimensions of a layer's cache tensor (use
    ``index_put_``), one entry per (row, token); ``read(layer_tensor)`` returns
    ``[B, kv_len, kv_heads, head_dim]``: each row's positions ``[0, kv_len)``.
    Computed once per forward and shared by all layers.
    """

    write: tuple[torch.Tensor, torch.Tensor]
    read: Callable[[torch.Tensor], torch.Tensor]


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

    layout = "slots"

    def addressing(self, slots: torch.Tensor, positions: torch.Tensor, kv_len: int) -> Addressing:
        """Rows ``slots`` [B] writing at ``positions`` [B, T] and attending to ``[0, kv_len)``."""
        rows = slots[:, None].expand_as(positions)
        return Addressing((rows, positions), lambda c: c[slots, :kv_len])

    def blocks_for(self, tokens: int) -> int:
        """KV blocks ``tokens`` positions take (a slot cache has none to count)."""
        return 0

    def ensure(self, slot: int, tokens: int) -> bool:
        """A slot always holds ``max_len`` positions."""
        return tokens <= self.max_len

    @property
    def free_blocks(self) -> int | None:
        """None: admission is bounded by slots only."""
        return None

    def blocks_held(self, slot: int) -> int:
        return 0

    def share_prefix(self, slot: int, tokens: Sequence[int], limit: int) -> int:
        """Slots share nothing."""
        return 0

    def register(self, slot: int, tokens: Sequence[int], computed: int) -> None:
        """Slots share nothing."""

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


class PagedKVCache:
    """KV memory in blocks of ``block_size`` tokens, mapped per sequence by a block table.

    Layout ``[layers, num_blocks + 1, block_size, kv_heads, head_dim]``; the
    last block is scratch: padding tokens (position ``max_len``) and table
    entries not yet backed by memory point to it, so padded batches never
    touch real data and never need a branch. ``tables`` [num_seqs, W] lives
    on the cache's device and is updated in place when a sequence grows, so
    captured CUDA graphs see new blocks without re-capture.

    A sequence id (``allocate``) is the ``slot`` the model receives; it owns no
    memory until :meth:`ensure` gives it blocks for its positions. Blocks of a
    freed sequence go back to the pool at once (the memory stays allocated).
    Stale K/V in a reused block is never read: attention masks every key
    position above the query's own, and all positions up to it were written
    by the sequence itself (or, with prefix sharing, by one with the same
    tokens at the same positions).

    Prefix sharing (``prefix_sharing=True``): every full block whose K/V are
    computed is registered under a hash of all tokens up to its end; a new
    sequence whose prompt starts with the same tokens takes those blocks
    (reference-counted) instead of recomputing them. Only full blocks are
    shared, and a sequence writes only beyond its shared prefix, so no block
    is ever written while shared (no copy-on-write needed). A block whose
    last holder leaves keeps its registration while it sits in the free pool
    and is reused least recently freed first, so a later request with the
    same prefix still finds it.
    """

    layout = "paged"

    def __init__(
        self,
        num_layers: int,
        num_seqs: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
        *,
        num_blocks: int,
        block_size: int = 16,
        prefix_sharing: bool = False,
    ) -> None:
        if num_seqs < 1 or max_len < 2 or block_size < 1:
            raise ValueError(f"need num_seqs >= 1, max_len >= 2 and block_size >= 1, got {num_seqs}, {max_len}, {block_size}")
        per_seq = math.ceil(max_len / block_size)
        if num_blocks < per_seq:
            raise ValueError(
                f"{num_blocks} KV blocks of {block_size} tokens cannot hold one sequence of max_len {max_len}; "
                f"give at least {per_seq} blocks ({per_seq * block_size} tokens) or lower max_len"
            )
        shape = (num_layers, num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_slots = num_seqs
        self.max_len = max_len
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.scratch_block = num_blocks
        self.width = per_seq + 1
        """Table columns: enough blocks for ``max_len`` positions, plus the scratch column."""
        self.tables = torch.full((num_seqs, self.width), num_blocks, dtype=torch.long, device=device)
        self._lock = threading.Lock()
        self._free_seqs = list(range(num_seqs - 1, -1, -1))
        self._free: collections.OrderedDict[int, None] = collections.OrderedDict.fromkeys(range(num_blocks))
        """Blocks nobody holds, least recently freed first (registered ones may still be shared again)."""
        self._refs = [0] * num_blocks
        self._blocks: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self.prefix_sharing = prefix_sharing
        self._by_hash: dict[bytes, int] = {}
        self._hash_of: dict[int, bytes] = {}
        self._registered: dict[int, int] = {}
        """Per sequence: how many of its leading blocks are registered (or were shared)."""

    @property
    def scratch_position(self) -> int:
        """The position that padding tokens write to (maps to the scratch block; never attended)."""
        return self.max_len

    def addressing(self, slots: torch.Tensor, positions: torch.Tensor, kv_len: int) -> Addressing:
        """Rows ``slots`` [B] writing at ``positions`` [B, T] and attending to ``[0, kv_len)``.

        Writes go to ``(table[pos // block_size], pos % block_size)``; reads gather
        the first ``ceil(kv_len / block_size)`` table entries of every row.
        """
        bs = self.block_size
        tables = self.tables[slots]  # [B, W]
        col = torch.clamp(positions // bs, max=self.width - 1)
        block = tables.gather(1, col)
        block = torch.where(positions >= self.max_len, self.scratch_block, block)
        nb = min(self.width, -(-kv_len // bs))
        read_ids = tables[:, :nb]
        b = slots.shape[0]

        def read(c: torch.Tensor) -> torch.Tensor:
            return c[read_ids].view(b, nb * bs, *c.shape[2:])[:, :kv_len]

        return Addressing((block, positions % bs), read)

    def blocks_for(self, tokens: int) -> int:
        """Blocks that ``tokens`` positions take."""
        return -(-tokens // self.block_size)

    def allocate(self) -> int | None:
        """Take a free sequence id (no blocks yet), or None when all are in use."""
        with self._lock:
            if not self._free_seqs:
                return None
            seq = self._free_seqs.pop()
            self._blocks[seq] = []
            self._lengths[seq] = 0
            self._registered[seq] = 0
            return seq

    def _take_free(self) -> int:
        block, _ = self._free.popitem(last=False)
        h = self._hash_of.pop(block, None)
        if h is not None:
            del self._by_hash[h]
        self._refs[block] = 1
        return block

    def _chain(self, tokens: Sequence[int], n_blocks: int) -> list[bytes]:
        """Hash of tokens ``[0, (i + 1) * block_size)`` for each of the first ``n_blocks`` blocks."""
        out, h, bs = [], b"", self.block_size
        for i in range(n_blocks):
            h = hashlib.sha256(h + b"|" + ",".join(map(str, tokens[i * bs : (i + 1) * bs])).encode()).digest()
            out.append(h)
        return out

    def share_prefix(self, slot: int, tokens: Sequence[int], limit: int) -> int:
        """Give a fresh ``slot`` the registered blocks that hold the K/V of a prefix of
        ``tokens[:limit]``; returns how many tokens they cover (0 when sharing is off)."""
        if not self.prefix_sharing:
            return 0
        hashes = self._chain(tokens, min(limit, len(tokens)) // self.block_size)
        with self._lock:
            held = self._blocks[slot]
            if held:
                raise ValueError(f"sequence {slot} already holds blocks; share a prefix before it grows")
            for h in hashes:
                block = self._by_hash.get(h)
                if block is None:
                    break
                if self._refs[block] == 0:
                    del self._free[block]
                self._refs[block] += 1
                held.append(block)
            self._registered[slot] = len(held)
            shared = list(held)
        if shared:
            self.tables[slot, : len(shared)] = torch.tensor(shared, dtype=torch.long).to(self.tables.device)
        return len(shared) * self.block_size

    def register(self, slot: int, tokens: Sequence[int], computed: int) -> None:
        """Record that positions ``[0, computed)`` of ``slot`` hold the K/V of ``tokens``, so
        its full blocks can be shared with later sequences."""
        if not self.prefix_sharing:
            return
        full = min(computed, len(tokens)) // self.block_size
        with self._lock:
            start = self._registered.get(slot, 0)
            if full <= start:
                return
            held = self._blocks[slot]
            for i, h in enumerate(self._chain(tokens, full)):
                if i < start or h in self._by_hash or held[i] in self._hash_of:
                    continue
                self._by_hash[h] = held[i]
                self._hash_of[held[i]] = h
            self._registered[slot] = full

    def ensure(self, slot: int, tokens: int) -> bool:
        """Back positions ``[0, tokens)`` of ``slot`` with blocks; False (nothing taken) when the pool is short."""
        if tokens > self.max_len:
            raise ValueError(f"{tokens} positions exceed max_len {self.max_len}")
        with self._lock:
            held = self._blocks[slot]
            need = self.blocks_for(tokens) - len(held)
            if need <= 0:
                return True
            if need > len(self._free):
                return False
            new = [self._take_free() for _ in range(need)]
            start = len(held)
            held.extend(new)
        self.tables[slot, start : start + need] = torch.tensor(new, dtype=torch.long).to(self.tables.device)
        return True

    def blocks_held(self, slot: int) -> int:
        """Blocks that freeing ``slot`` would return to the pool (shared ones stay with their other holders)."""
        with self._lock:
            return sum(1 for b in self._blocks.get(slot, ()) if self._refs[b] == 1)

    def set_length(self, slot: int, length: int) -> None:
        """Record how many positions of ``slot`` hold valid K/V (for usage figures)."""
        with self._lock:
            if slot in self._lengths:
                self._lengths[slot] = length

    def free(self, slot: int) -> None:
        """Return ``slot`` and its blocks to the pools at once. Freeing a free slot is an error."""
        with self._lock:
            if slot not in self._blocks:
                raise ValueError(f"sequence {slot} is not allocated")
            blocks = self._blocks.pop(slot)
            del self._lengths[slot]
            del self._registered[slot]
            for b in reversed(blocks):  # the prefix's first block is reused last
                self._refs[b] -= 1
                if self._refs[b] == 0:
                    self._free[b] = None
            self._free_seqs.append(slot)
        if blocks:
            self.tables[slot, : len(blocks)] = self.scratch_block

    def usage(self) -> KVUsage:
        """Current occupancy."""
        with self._lock:
            return KVUsage(
                slots_total=self.num_slots,
                slots_used=len(self._blocks),
                tokens_used=sum(self._lengths.values()),
                bytes_total=2 * self.k.numel() * self.k.element_size(),
                blocks_total=self.num_blocks,
                blocks_used=self.num_blocks - len(self._free),
            )

    @property
    def free_slots(self) -> int:
        with self._lock:
            return len(self._free_seqs)

    @property
    def free_blocks(self) -> int:
        with self._lock:
            return len(self._free)
