"""The paged KV cache: same tokens as the slot cache and the plain loop, blocks accounted, preemption by recompute."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.runtime.engine import Engine, EngineConfig
from edge_agent.runtime.kv_cache import KVCache, PagedKVCache
from edge_agent.runtime.model import LlamaModel
from edge_agent.runtime.request import SamplingParams
from edge_agent.runtime.scheduler import SchedulerConfig, SeqView, StepTimeModel, reclaim_for_decode, schedule
from tests.runtime.test_model import greedy


def paged(model: LlamaModel, seqs: int, max_len: int, blocks: int, block_size: int) -> PagedKVCache:
    s = model.shape
    return PagedKVCache(s.num_layers, seqs, max_len, s.num_kv_heads, s.head_dim, "cpu", model.dtype,
                        num_blocks=blocks, block_size=block_size)


def test_paged_forward_gives_the_slot_cache_logits(tiny_model: LlamaModel) -> None:
    """Padded prefill then batched decode, with blocks handed out interleaved (no sequence's
    blocks are contiguous): every logit equals the slot cache's."""
    s = tiny_model.shape
    rng = random.Random(3)
    prompts = [[1] + [rng.randrange(10, 4000) for _ in range(n - 1)] for n in (13, 5, 22)]
    slot_cache = KVCache(s.num_layers, 3, 64, s.num_kv_heads, s.head_dim, "cpu", tiny_model.dtype)
    cache = paged(tiny_model, 4, 64, blocks=28, block_size=4)
    ids = [cache.allocate() for _ in prompts]
    assert ids == [0, 1, 2]
    other = cache.allocate()
    assert other is not None and cache.ensure(other, 64)  # blocks 0..15
    for upto in range(4, 33, 4):  # grow all three in turn, so their blocks interleave in the pool
        if upto == 20:
            cache.free(other)  # its blocks come back last first: the later ones run backwards
        for i in ids:
            assert cache.ensure(i, upto)  # type: ignore[arg-type]
    table = cache.tables[0, :8].tolist()
    assert table != sorted(table) and table[0] > table[-1]  # really scattered, not even ascending
    width = max(map(len, prompts))
    tokens = torch.zeros((3, width), dtype=torch.long)
    positions = torch.full((3, width), 64)  # padding goes to the scratch position
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p)
        positions[i, : len(p)] = torch.arange(len(p))
    last = torch.tensor([len(p) - 1 for p in prompts])
    rows = torch.tensor([2, 0, 1])  # rows need not be in id order
    want = tiny_model(tokens, positions, rows, slot_cache, width, last)
    got = tiny_model(tokens, positions, rows, cache, width, last)
    assert torch.equal(got, want)
    pos = [len(p) for p in prompts]
    for _ in range(6):
        nxt = want.argmax(-1)
        p = torch.tensor(pos)[:, None]
        want = tiny_model(nxt[:, None], p, rows, slot_cache, max(pos) + 1)
        got = tiny_model(nxt[:, None], p, rows, cache, max(pos) + 1)
        assert torch.equal(got, want)
        pos = [x + 1 for x in pos]


def test_pool_accounting_and_refusals(tiny_model: LlamaModel) -> None:
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        paged(tiny_model, 2, 64, blocks=15, block_size=4)
    cache = paged(tiny_model, 2, 64, blocks=20, block_size=4)
    a, b = cache.allocate(), cache.allocate()
    assert cache.allocate() is None and a is not None and b is not None
    assert cache.ensure(a, 64) and cache.free_blocks == 4
    assert not cache.ensure(b, 17)  # needs 5: refused, and nothing was taken
    assert cache.free_blocks == 4 and cache.blocks_held(b) == 0
    assert cache.ensure(b, 16) and cache.free_blocks == 0
    with pytest.raises(ValueError, match="max_len"):
        cache.ensure(b, 65)
    cache.set_length(a, 50)
    u = cache.usage()
    assert (u.slots_used, u.blocks_used, u.blocks_total, u.tokens_used, u.fraction) == (2, 20, 20, 50, 1.0)
    cache.free(a)
    assert cache.tables[a].tolist() == [cache.scratch_block] * cache.width  # nothing stale left mapped
    assert cache.free_blocks == 16 and cache.usage().fraction == pytest.approx(4 / 20)
    with pytest.raises(ValueError, match="not allocated"):
        cache.free(a)


@pytest.fixture
def engine_of(tiny_dir: Path, tiny_model: LlamaModel):  # noqa: ANN201
    made: list[Engine] = []

    def factory(**cfg: object) -> Engine:
        eng = Engine(tiny_dir, EngineConfig(**cfg), model=tiny_model)  # type: ignore[arg-type]
        made.append(eng)
        return eng

    yield factory
    for e in made:
        e.shutdown()


PROMPTS = [[1, 50, 60, 70, 80, 90, 100], [1, 5], [1, 3000, 17, 999, 4, 4, 4, 2048, 12, 13, 300],
           [1, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7], [1, 222, 333]]
N = 24


@pytest.fixture(scope="module")
def plain(tiny_model: LlamaModel) -> list[list[int]]:
    """Greedy tokens of each prompt alone through the model's plain loop (test_model.py: = transformers)."""
    return [greedy(tiny_model, p, N) for p in PROMPTS]


def test_engine_paged_and_slots_agree_token_for_token(engine_of, plain) -> None:  # noqa: ANN001
    params = SamplingParams(max_tokens=N, ignore_eos=True)
    slots = engine_of(max_batch=8, max_len=128, kv_layout="slots")
    pag = engine_of(max_batch=8, max_len=128, kv_layout="paged", kv_block_size=4)
    for eng in (slots, pag):
        handles = [eng.submit(PROMPTS[0], params)]
        for p in PROMPTS[1:]:  # later prompts join a running batch
            eng.step()
            eng.step()
            handles.append(eng.submit(p, params))
        while not all(h.done for h in handles):
            eng.step()
        assert [h.result(0).token_ids for h in handles] == plain
    assert pag.kv_usage().blocks_used == 0 and pag.kv_usage().slots_used == 0
    assert pag.stats().running_peak == 5


def test_decode_out_of_blocks_preempts_by_recompute_and_output_is_unchanged(engine_of, plain) -> None:  # noqa: ANN001
    # 16 blocks of 4 tokens: all five prompts fit at admission (2+1+3+5+1 blocks), but
    # they cannot all grow by 24 tokens, so decode must preempt, and resume by recompute.
    eng = engine_of(max_batch=8, max_len=64, kv_layout="paged", kv_block_size=4, kv_tokens=64, kv_watermark=0.0)
    handles = [eng.submit(p, SamplingParams(max_tokens=N, ignore_eos=True)) for p in PROMPTS]
    eng.step()
    assert eng.stats().running == 5
    peak_blocks = 0
    while not all(h.done for h in handles):
        eng.step()
        peak_blocks = max(peak_blocks, eng.kv_usage().blocks_used)
    assert [h.result(0).token_ids for h in handles] == plain
    assert eng.stats().kv_preemptions > 0
    assert sum(h.stats.preemptions for h in handles) == eng.stats().kv_preemptions
    assert peak_blocks <= 16 and eng.kv_usage().blocks_used == 0


def test_admission_is_bounded_by_free_blocks(engine_of) -> None:  # noqa: ANN001
    # 20 blocks of 4 tokens; each request needs ceil((11 + 1) / 4) = 3 to start: six start, not the eight the slots allow.
    eng = engine_of(max_batch=8, max_len=64, kv_layout="paged", kv_block_size=4, kv_tokens=80, kv_watermark=0.0)
    handles = [eng.submit(PROMPTS[2], SamplingParams(max_tokens=4, ignore_eos=True)) for _ in range(8)]
    eng.step()
    assert eng.stats().running == 6 and eng.kv_usage().blocks_used == 18
    while not all(h.done for h in handles):
        eng.step()
    assert eng.kv_usage().blocks_used == 0


def test_bad_kv_config_is_refused(tiny_dir: Path, tiny_model: LlamaModel) -> None:
    with pytest.raises(ValueError, match="kv_layout"):
        EngineConfig(kv_layout="pages")
    with pytest.raises(ValueError, match="cannot hold one sequence"):
        Engine(tiny_dir, EngineConfig(max_len=128, kv_tokens=100), model=tiny_model)


# -- the pure policy ----------------------------------------------------------------------------
def v(i: str, prio: int = 0, arrival: int = 0, need: int = 0, held: int = 0) -> SeqView:
    return SeqView(id=i, priority=prio, arrival_ns=arrival, blocks_needed=need, blocks_held=held)


def test_admission_by_blocks_keeps_the_watermark_and_order() -> None:
    cfg = SchedulerConfig(max_batch=10)
    waiting = [v("a", arrival=1, need=4), v("big", arrival=2, need=8), v("small", arrival=3, need=1)]
    d = schedule(0, [], waiting, 10, cfg, StepTimeModel(), free_blocks=12, watermark_blocks=2)
    # a fits (8 left >= 2); big would leave 0 < 2; small would fit but does not overtake big.
    assert d.admit == ["a"] and d.preempt == []
    # With nothing running the watermark does not apply: a lone request always starts.
    d = schedule(0, [], [v("big", need=8)], 10, cfg, StepTimeModel(), free_blocks=8, watermark_blocks=2)
    assert d.admit == ["big"]
    # Slot cache (no free_blocks): unchanged behaviour, blocks ignored.
    d = schedule(0, [], waiting, 10, cfg, StepTimeModel())
    assert d.admit == ["a", "big", "small"]


def test_higher_class_preempts_lower_ones_for_blocks() -> None:
    cfg = SchedulerConfig(max_batch=10)
    running = [v("low-old", 0, arrival=1, held=3), v("low-new", 0, arrival=2, held=3), v("mid", 5, arrival=0, held=3)]
    d = schedule(0, running, [v("high", 10, arrival=5, need=5)], 7, cfg, StepTimeModel(), free_blocks=1)
    assert d.preempt == ["low-new", "low-old"] and d.admit == ["high"]  # newest of the lowest class first
    # Not enough blocks even after evicting every lower class: nobody is evicted in vain.
    d = schedule(0, running, [v("high", 10, need=20)], 7, cfg, StepTimeModel(), free_blocks=1)
    assert d.preempt == [] and d.admit == []


def test_reclaim_for_decode_evicts_lowest_class_newest_first() -> None:
    running = [v("hi", 5, arrival=1, need=1, held=4), v("old", 0, arrival=1, need=1, held=2),
               v("new", 0, arrival=2, need=0, held=3)]
    assert reclaim_for_decode(running, free_blocks=2) == []
    assert reclaim_for_decode(running, free_blocks=1) == ["new"]  # 1 + 3 freed >= 2 needed
    assert reclaim_for_decode(running, free_blocks=0) == ["new"]
    assert reclaim_for_decode([v("a", need=1, held=5)], free_blocks=0) == ["a"]  # even the one that asked


# -- prefix sharing -------------------------------------------------------------------------------
def test_cache_shares_registered_full_blocks_by_reference(tiny_model: LlamaModel) -> None:
    s = tiny_model.shape
    cache = PagedKVCache(s.num_layers, 3, 64, s.num_kv_heads, s.head_dim, "cpu", tiny_model.dtype,
                         num_blocks=20, block_size=4, prefix_sharing=True)
    toks = list(range(1, 12))  # 11 tokens: two full blocks, and a partial one that is never shared
    a = cache.allocate()
    assert a is not None and cache.share_prefix(a, toks, 10) == 0  # nothing registered yet
    assert cache.ensure(a, 12)
    cache.register(a, toks, 11)
    b = cache.allocate()
    assert b is not None and cache.share_prefix(b, toks + [99], 11) == 8
    assert cache.tables[b, :2].tolist() == cache.tables[a, :2].tolist()
    assert cache.blocks_held(b) == 0 and cache.blocks_held(a) == 1  # freeing either returns only what it alone holds
    assert cache.ensure(b, 13) and cache.usage().blocks_used == 5
    c = cache.allocate()
    assert c is not None and cache.share_prefix(c, [1, 2, 3, 4, 7, 7, 7, 7], 8) == 4  # diverges in block 2
    cache.free(c)
    cache.free(a)
    assert cache.usage().blocks_used == 4 and cache.blocks_held(b) == 4  # b now holds the prefix alone
    cache.free(b)
    assert cache.usage().blocks_used == 0
    d = cache.allocate()  # the freed prefix blocks are still registered: shared again from the free pool
    assert d is not None and cache.share_prefix(d, toks, 10) == 8 and cache.usage().blocks_used == 2
    off = paged(tiny_model, 1, 64, blocks=16, block_size=4)
    x = off.allocate()
    assert x is not None and off.ensure(x, 12)
    off.register(x, toks, 11)
    off.free(x)
    y = off.allocate()
    assert y is not None and off.share_prefix(y, toks, 10) == 0  # sharing is opt-in


def test_engine_prefix_sharing_skips_the_shared_prompt_and_keeps_the_tokens(engine_of, tiny_model) -> None:  # noqa: ANN001
    system = [1] + list(range(100, 116))  # a 17-token "system prompt": four full blocks of 4
    prompts = [system + [7, 8], system + [9], system + [300, 301, 302]]
    want = [greedy(tiny_model, p, 12) for p in prompts]
    eng = engine_of(max_batch=4, max_len=64, kv_layout="paged", kv_block_size=4, kv_prefix_sharing=True)
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    first = eng.submit(prompts[0], params)
    while not first.done:
        eng.step()
    rest = [eng.submit(p, params) for p in prompts[1:]]
    eng.step()
    assert eng.stats().prefix_hit_tokens == 32  # 16 tokens each, not recomputed
    held = eng.kv_usage().blocks_used
    assert held == 4 + 1 + 2  # the shared prefix once, plus each one's own (prompt rest + first token) blocks
    while not all(h.done for h in rest):
        eng.step()
    assert [first.result(0).token_ids] + [h.result(0).token_ids for h in rest] == want
    assert eng.kv_usage().blocks_used == 0


block_views = st.builds(
    SeqView,
    id=st.uuids().map(str),
    priority=st.integers(-3, 3),
    arrival_ns=st.integers(0, 10**9),
    deadline_ns=st.one_of(st.none(), st.integers(0, 2 * 10**9)),
    tpot_slo_s=st.one_of(st.none(), st.floats(0.001, 1.0)),
    remaining_tokens=st.integers(1, 200),
    started=st.booleans(),
    blocks_needed=st.integers(0, 12),
    blocks_held=st.integers(0, 12),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(block_views, max_size=8, unique_by=lambda v: v.id),
       st.lists(block_views, max_size=12, unique_by=lambda v: v.id),
       st.integers(1, 8), st.integers(0, 40), st.integers(0, 4), st.integers(0, 10**9))
def test_block_admission_invariants(running: list[SeqView], waiting: list[SeqView], max_batch: int,
                                    free_blocks: int, watermark: int, now: int) -> None:
    running = running[:max_batch]
    ids = {v.id for v in running}
    waiting = [w for w in waiting if w.id not in ids]
    cfg = SchedulerConfig(max_batch=max_batch, shed_queue_depth=4)
    d = schedule(now, running, waiting, max_batch - len(running), cfg, StepTimeModel(),
                 free_blocks=free_blocks, watermark_blocks=watermark)
    held = {v.id: v.blocks_held for v in running}
    need = {w.id: w.blocks_needed for w in waiting}
    # Never more blocks handed out than are free plus what the preempted give back.
    assert sum(need[i] for i in d.admit) <= free_blocks + sum(held[i] for i in d.preempt)
    assert len(running) - len(d.preempt) + len(d.admit) <= max_batch
    # reclaim_for_decode leaves enough blocks for every remaining request's next token.
    out = set(reclaim_for_decode(running, free_blocks))
    left = [v for v in running if v.id not in out]
    assert sum(v.blocks_needed for v in left) <= free_blocks + sum(held[i] for i in out)
