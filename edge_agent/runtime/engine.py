"""The in-process inference engine: continuous batching on a paged (or slot) KV cache.

One engine thread owns the model and the cache. Each iteration it

1. takes newly submitted requests and cancellations (a cancelled request's
   KV slot is freed in this same iteration),
2. asks the pure :func:`~edge_agent.runtime.scheduler.schedule` policy what
   to admit, preempt and reject,
3. prefills admitted requests in one padded batch (long prompts in chunks of
   at most ``max_prefill_tokens``; a preempted request is resumed by
   recomputing its prompt and the tokens it had produced),
4. takes in requests that arrived meanwhile: one with a TTFT objective is
   scheduled and prefilled now rather than after the decode step,
5. gives every running request the KV block its next token needs; when the
   pool is short it preempts (by recompute: blocks freed, the request goes
   back to waiting and later recomputes its prefix) the lowest class, newest
   requests first, as vLLM does,
6. runs one batched decode step for every running request, each at its own
   position with its own mask (via :class:`DecodeRunner`: CUDA graphs on a
   GPU), and streams the tokens out.

Requests therefore join and leave the batch at every step. Each phase is
timed with ``time.perf_counter_ns`` and its duration is split evenly among
the rows of that phase (``RequestStats.gpu_seconds``) so cost can be
attributed later. Torch releases the GIL inside kernels, so callers'
threads and event loops keep running while a step computes.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edge_agent.runtime.decode_runner import DecodeRunner
from edge_agent.runtime.kv_cache import KVCache, KVUsage, PagedKVCache
from edge_agent.runtime.model import LlamaModel, load_model
from edge_agent.runtime.request import (
    Completion,
    FinishReason,
    Logprob,
    Rejection,
    RequestHandle,
    RequestStats,
    SamplingParams,
    StopMatcher,
    TokenEvent,
    TokenLogprobs,
    coalesced_wakes,
)
from edge_agent.runtime.sampling import chosen_logprobs, logprobs, sample
from edge_agent.runtime.scheduler import SchedulerConfig, SeqView, StepTimeModel, reclaim_for_decode, schedule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Engine sizing and policy."""

    max_batch: int = 32
    """The most requests running at once (slot layout: the number of KV slots)."""
    max_len: int = 1024
    """Most tokens (prompt + output) one request may hold; capped by the model's context."""
    max_prefill_tokens: int = 512
    """Padded tokens per prefill batch; longer prompts are prefilled in chunks."""
    scheduler: SchedulerConfig | None = None
    """Admission policy; its ``max_batch`` is overridden by this ``max_batch``."""
    device: str | None = None
    """``cuda``/``cpu``; default CUDA when present."""
    dtype: str | None = None
    """Weight and cache dtype (``float32``, ``bfloat16``...); default per :func:`load_model`."""
    idle_wait_s: float = 0.05
    """How long the idle loop sleeps between checks (it is woken early by submits)."""
    decode_mode: str | None = None
    """``eager``, ``bucketed`` or ``graphs`` (see :class:`DecodeRunner`); default
    ``graphs`` on CUDA, ``eager`` on a CPU."""
    kv_layout: str = "paged"
    """``paged``: KV memory in blocks from a shared pool, a block table per request
    (:class:`PagedKVCache`); ``slots``: one ``max_len`` slot per request (:class:`KVCache`)."""
    kv_block_size: int = 16
    """Tokens per KV block (paged)."""
    kv_tokens: int | None = None
    """KV memory budget in tokens (paged); default ``max_batch * max_len``, the
    memory the slot layout takes for the same ``max_batch``."""
    kv_watermark: float = 0.01
    """Share of KV blocks admission leaves free while requests run (paged), so
    running requests can grow a while before anyone is preempted."""
    kv_prefix_sharing: bool = False
    """Paged: requests whose prompts start with the same tokens share the KV
    blocks of that prefix instead of recomputing it (off by default: a shared
    prefix's K/V were computed in another batch, so sampled tokens may differ
    from an unshared run in the last bits, as with any batch change)."""

    def __post_init__(self) -> None:
        if self.kv_layout not in ("paged", "slots"):
            raise ValueError(f"kv_layout must be 'paged' or 'slots', got {self.kv_layout!r}")
        if self.kv_block_size < 1:
            raise ValueError(f"kv_block_size must be >= 1, got {self.kv_block_size}")
        if not 0.0 <= self.kv_watermark < 1.0:
            raise ValueError(f"kv_watermark must be in [0, 1), got {self.kv_watermark}")


@dataclass
class _Seq:
    """Engine-side state of one request."""

    handle: RequestHandle
    prompt: list[int]
    params: SamplingParams
    priority: int
    deadline_ns: int | None
    tpot_slo_s: float | None
    generator: torch.Generator | None
    output: list[int] = field(default_factory=list)
    slot: int | None = None
    computed: int = 0
    """Tokens whose K/V are in the slot."""
    prefix_offset: int = 0
    read_offset: int = 0
    stops: StopMatcher | None = None
    """Stop-string matcher when the request has stop strings."""

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.output

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def prefill_target(self) -> int:
        """Tokens to have in cache before decoding: all but the last produced one."""
        return len(self.prompt) if not self.output else len(self.prompt) + len(self.output) - 1

    def view(self, blocks_needed: int = 0, blocks_held: int = 0) -> SeqView:
        return SeqView(
            id=self.handle.request_id,
            priority=self.priority,
            arrival_ns=self.handle.stats.arrival_ns,
            deadline_ns=self.deadline_ns,
            tpot_slo_s=self.tpot_slo_s,
            remaining_tokens=self.params.max_tokens - len(self.output),
            started=bool(self.output),
            blocks_needed=blocks_needed,
            blocks_held=blocks_held,
        )


@dataclass(frozen=True)
class EngineStats:
    """Engine-wide gauges and counters."""

    running: int
    waiting: int
    kv: KVUsage
    steps: int
    prompt_tokens_total: int
    generation_tokens_total: int
    step_times: dict[int, float]
    """Measured decode step seconds by batch size (EWMA)."""
    errors: list[str]
    """Recent engine-loop errors (the loop keeps running)."""
    running_peak: int = 0
    """The most requests that ran at once since start."""
    kv_preemptions: int = 0
    """Requests preempted (by recompute) because decode ran out of KV blocks."""
    prefix_hit_tokens: int = 0
    """Prompt tokens whose K/V came from shared blocks instead of being computed."""


class Engine:
    """Continuous-batching engine over one model on one device."""

    def __init__(
        self,
        model_dir: Path | str | None = None,
        config: EngineConfig | None = None,
        *,
        model: LlamaModel | None = None,
        tokenizer: object | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        """Load ``model_dir`` (or use ``model``) and preallocate the KV cache.

        ``tokenizer`` is a ``tokenizers.Tokenizer``; by default the
        directory's ``tokenizer.json`` when present (without one, submit
        token ids). EOS ids come from config.json and generation_config.json.
        """
        self.config = config or EngineConfig()
        if model is None:
            if model_dir is None:
                raise ValueError("give model_dir or model")
            dtype = getattr(torch, self.config.dtype) if self.config.dtype else None
            model = load_model(model_dir, device=self.config.device, dtype=dtype)
        self.model = model
        shape = model.shape
        self.max_len = min(self.config.max_len, shape.max_position_embeddings)
        self.cache: KVCache | PagedKVCache
        cfg = self.config
        if cfg.kv_layout == "slots":
            self.cache = KVCache(
                shape.num_layers, cfg.max_batch, self.max_len, shape.num_kv_heads, shape.head_dim,
                model.device, model.dtype,
            )
            self._watermark_blocks = 0
        else:
            kv_tokens = cfg.kv_tokens if cfg.kv_tokens is not None else cfg.max_batch * self.max_len
            blocks = kv_tokens // cfg.kv_block_size
            self.cache = PagedKVCache(
                shape.num_layers, cfg.max_batch, self.max_len, shape.num_kv_heads, shape.head_dim,
                model.device, model.dtype, num_blocks=blocks, block_size=cfg.kv_block_size,
                prefix_sharing=cfg.kv_prefix_sharing,
            )
            self._watermark_blocks = int(blocks * cfg.kv_watermark)
        mode = self.config.decode_mode or ("graphs" if model.device.type == "cuda" else "eager")
        self.decoder = DecodeRunner(model, self.cache, mode)
        self.tokenizer = tokenizer
        eos = set(eos_token_ids or shape.eos_token_ids)
        if model_dir is not None:
            d = Path(model_dir)
            if tokenizer is None and (d / "tokenizer.json").exists():
                from tokenizers import Tokenizer

                self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
            gen = d / "generation_config.json"
            if eos_token_ids is None and gen.exists():
                e = json.loads(gen.read_text()).get("eos_token_id")
                eos |= set(e if isinstance(e, list) else [] if e is None else [e])
        self.eos_token_ids = frozenset(eos)
        base = self.config.scheduler or SchedulerConfig()
        self.sched_config = SchedulerConfig(**{**base.__dict__, "max_batch": self.config.max_batch})
        self.step_times = StepTimeModel()
        self._lock = threading.Lock()
        self._inbox: collections.deque[_Seq] = collections.deque()
        self._cancels: set[str] = set()
        self._live: set[str] = set()
        self._recent: collections.deque[tuple[int, SeqView]] = collections.deque(maxlen=256)
        """(finish time, view) of recently ended requests that had a TPOT objective."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._waiting: dict[str, _Seq] = {}
        self._running: dict[str, _Seq] = {}
        self._ids = itertools.count()
        self._steps = 0
        self._prompt_total = 0
        self._gen_total = 0
        self._errors: collections.deque[str] = collections.deque(maxlen=10)
        self._running_peak = 0
        self._kv_preemptions = 0
        self._prefix_hits = 0
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> Engine:
        """Start the engine thread (idempotent)."""
        if self._thread is None:
            self.decoder.capture_all()  # CUDA graphs, before any request (no-op otherwise)
            self._thread = threading.Thread(target=self._loop, name="edge-engine", daemon=True)
            self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the thread; unfinished requests end with ``abort``."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            leftovers = list(self._inbox) + list(self._waiting.values()) + list(self._running.values())
            self._inbox.clear()
        self._waiting.clear()
        for s in leftovers:
            self._finish(s, FinishReason.ABORT)
        self._running.clear()

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- API -----------------------------------------------------------------
    def submit(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        priority: int = 0,
        ttft_slo_s: float | None = None,
        tpot_slo_s: float | None = None,
        request_id: str | None = None,
    ) -> RequestHandle:
        """Queue a request; thread-safe. Returns its handle at once.

        Raises ValueError (the HTTP layer maps it to 400) for an empty prompt,
        token ids outside the vocabulary, prompt + ``max_tokens`` beyond
        ``max_len``, or a ``request_id`` already in flight.
        """
        params = params or SamplingParams()
        arrival = time.perf_counter_ns()
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer.json: submit token ids")
            ids = list(self.tokenizer.encode(prompt).ids)  # type: ignore[attr-defined]
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("empty prompt")
        if len(ids) >= self.max_len:
            raise ValueError(f"prompt has {len(ids)} tokens; this engine holds at most {self.max_len - 1}")
        if any(t < 0 or t >= self.model.shape.vocab_size for t in ids):
            raise ValueError("prompt token id out of the vocabulary")
        if len(ids) + params.max_tokens > self.max_len:
            raise ValueError(
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context of "
                f"{self.max_len} tokens; lower max_tokens to at most {self.max_len - len(ids)}"
            )
        rid = request_id or f"req-{next(self._ids)}"
        stats = RequestStats(request_id=rid, priority=priority, arrival_ns=arrival, prompt_tokens=len(ids))
        handle = RequestHandle(rid, stats, self.cancel)
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.model.device).manual_seed(params.seed)
        seq = _Seq(
            handle=handle, prompt=ids, params=params, priority=priority,
            deadline_ns=None if ttft_slo_s is None else arrival + int(ttft_slo_s * 1e9),
            tpot_slo_s=tpot_slo_s, generator=gen, stops=StopMatcher(params.stop) if params.stop else None,
        )
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("engine is shut down")
            if rid in self._live:
                raise ValueError(f"request id {rid!r} is already in flight")
            self._live.add(rid)
            self._inbox.append(seq)
        self._wake.set()
        return handle

    def cancel(self, request_id: str) -> bool:
        """Abort a request; its KV memory is freed at the next iteration. Thread-safe.

        Returns False when no request with this id is in flight.
        """
        with self._lock:
            if request_id not in self._live:
                return False
            self._cancels.add(request_id)
        self._wake.set()
        return True

    def generate(
        self, prompts: Sequence[str | Sequence[int]], params: SamplingParams | None = None, **kw: object
    ) -> list[Completion]:
        """Submit all ``prompts`` at once and wait for all (sync API for benchmarks)."""
        handles = [self.submit(p, params, **kw) for p in prompts]  # type: ignore[arg-type]
        return [h.result() for h in handles]

    def kv_usage(self) -> KVUsage:
        return self.cache.usage()

    def stats(self) -> EngineStats:
        with self._lock:
            waiting = len(self._waiting) + len(self._inbox)
        return EngineStats(
            running=len(self._running), waiting=waiting, kv=self.cache.usage(), steps=self._steps,
            prompt_tokens_total=self._prompt_total, generation_tokens_total=self._gen_total,
            step_times=self.step_times.snapshot(), errors=list(self._errors),
            running_peak=self._running_peak, kv_preemptions=self._kv_preemptions,
            prefix_hit_tokens=self._prefix_hits,
        )

    # -- the loop --------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.step()
            except Exception as exc:  # the loop never dies; the batch that failed is ended
                log.exception("engine step failed")
                self._errors.append(f"{type(exc).__name__}: {exc}")
                for s in list(self._running.values()):
                    self._finish(s, FinishReason.ERROR)
                worked = True
            if not worked:
                self._wake.wait(self.config.idle_wait_s)
                self._wake.clear()

    def step(self) -> bool:
        """Run one iteration; returns False when there was nothing to do.

        Called by the engine thread; tests may call it directly on an engine
        that was never started.
        """
        self._intake()
        if not self._waiting and not self._running:
            return False
        self._schedule()
        # Readers are woken once per phase (see coalesced_wakes): first tokens
        # leave right after prefill, the decode step's tokens right after it.
        with coalesced_wakes():
            self._prefill()
        if self._intake() and any(s.deadline_ns is not None and not s.output for s in self._waiting.values()):
            # Requests with a TTFT objective that arrived during the prefill phase
            # do not wait for the decode step too.
            self._schedule()
            with coalesced_wakes():
                self._prefill(urgent_only=True)
        with coalesced_wakes():
            self._decode()
        self._steps += 1
        return True

    def _schedule(self) -> None:
        now = time.perf_counter_ns()
        memory_ns = int(self.sched_config.slo_memory_s * 1e9)
        while self._recent and self._recent[0][0] < now - memory_ns:
            self._recent.popleft()
        cache = self.cache
        decision = schedule(
            now, [self._view(s) for s in self._running.values()],
            [s.view(cache.blocks_for(s.prefill_target + 1)) for s in self._waiting.values()],
            cache.free_slots, self.sched_config, self.step_times, [v for _, v in self._recent],
            free_blocks=cache.free_blocks, watermark_blocks=self._watermark_blocks,
        )
        for rid, rej in decision.reject:
            self._finish(self._waiting.pop(rid), FinishReason.REJECTED, rej)
        for rid in decision.preempt:
            self._preempt(self._running.pop(rid))
        for rid in decision.admit:
            s = self._waiting.pop(rid)
            s.slot = cache.allocate()
            assert s.slot is not None, "scheduler admitted beyond free slots"
            # A shared prefix is not recomputed; a new request still computes its last prompt token (for logits).
            s.computed = cache.share_prefix(s.slot, s.tokens, s.prefill_target if s.output else s.prefill_target - 1)
            self._prefix_hits += s.computed
            # Blocks for the prompt (or the prefix to recompute) and the first decoded token.
            if not cache.ensure(s.slot, s.prefill_target + 1):  # a policy bug: keep the request, free what it took
                self._release(s)
                s.computed = 0
                self._waiting[rid] = s
                raise RuntimeError("scheduler admitted beyond free KV blocks")
            if s.handle.stats.admitted_ns is None:
                s.handle.stats.admitted_ns = now
            self._running[rid] = s
        self._running_peak = max(self._running_peak, len(self._running))

    def _view(self, s: _Seq) -> SeqView:
        """A running request's view: the blocks it holds and those its next decode token needs."""
        if s.slot is None or self.cache.free_blocks is None:
            return s.view()
        held = self.cache.blocks_held(s.slot)  # type: ignore[union-attr]
        ready = bool(s.output) and s.computed == s.num_tokens - 1
        need = max(0, self.cache.blocks_for(s.computed + 1) - held) if ready else 0
        return s.view(need, held)

    def _preempt(self, s: _Seq) -> None:
        """Evict a running request: KV freed now, back to waiting, resumed later by recompute."""
        self._release(s)
        s.computed = 0
        s.handle.stats.preemptions += 1
        self._waiting[s.handle.request_id] = s

    def _intake(self) -> bool:
        """Move submitted requests to waiting and apply cancels; True if anything arrived."""
        with self._lock:
            arrived = bool(self._inbox)
            while self._inbox:
                s = self._inbox.popleft()
                self._waiting[s.handle.request_id] = s
            cancels, self._cancels = self._cancels, set()
        for rid in cancels:
            s = self._waiting.pop(rid, None) or self._running.pop(rid, None)
            if s is not None:
                self._finish(s, FinishReason.ABORT)
        return arrived

    def _release(self, s: _Seq) -> None:
        if s.slot is not None:
            self.cache.free(s.slot)
            s.slot = None

    def _finish(self, s: _Seq, reason: FinishReason, rejection: Rejection | None = None) -> None:
        rid = s.handle.request_id
        self._running.pop(rid, None)
        self._waiting.pop(rid, None)
        self._release(s)
        s.handle.stats.finished_ns = time.perf_counter_ns()
        if s.tpot_slo_s is not None and reason is not FinishReason.REJECTED:
            self._recent.append((s.handle.stats.finished_ns, s.view()))
        with self._lock:
            self._live.discard(rid)
        s.handle._finished(reason, rejection)

    # -- prefill ---------------------------------------------------------------
    def _prefill(self, urgent_only: bool = False) -> None:
        """Prefill (a chunk of) admitted requests in one padded batch.

        ``urgent_only``: only if the first in line has a TTFT objective.
        """
        todo = [s for s in self._running.values() if s.computed < s.prefill_target]
        if not todo:
            return
        todo.sort(key=lambda s: (-s.priority, s.handle.stats.arrival_ns))
        budget = self.config.max_prefill_tokens
        urgent = todo[0].deadline_ns is not None and not todo[0].output
        if urgent_only and not urgent:
            return
        if urgent:
            # An urgent first token is neither chunked nor slowed down by lower classes.
            todo = [s for s in todo if s.priority == todo[0].priority]
            budget = max(budget, todo[0].prefill_target - todo[0].computed)
        rows: list[tuple[_Seq, int]] = []
        width = 0
        for s in todo:
            need = s.prefill_target - s.computed
            w = max(width, min(need, budget))
            if rows and (len(rows) + 1) * w > budget:
                break
            width = w
            rows.append((s, min(need, budget)))
        dev = self.model.device
        scratch = self.cache.scratch_position
        tokens = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.full((len(rows), width), scratch, dtype=torch.long)
        for i, (s, n) in enumerate(rows):
            tokens[i, :n] = torch.tensor(s.tokens[s.computed : s.computed + n])
            positions[i, :n] = torch.arange(s.computed, s.computed + n)
        kv_len = max(s.computed + n for s, n in rows)
        slots = torch.tensor([s.slot for s, _ in rows], dtype=torch.long)
        last = torch.tensor([n - 1 for _, n in rows], dtype=torch.long)
        t0 = time.perf_counter_ns()
        logits = self.model(tokens.to(dev), positions.to(dev), slots.to(dev), self.cache, kv_len, last.to(dev))
        sampled_rows = [i for i, (s, n) in enumerate(rows) if not s.output and s.computed + n == s.prefill_target]
        picked = sample(logits[sampled_rows], [rows[i][0].params for i in sampled_rows],
                        [rows[i][0].generator for i in sampled_rows]) if sampled_rows else []
        lps = self._logprobs(logits[sampled_rows], [rows[i][0] for i in sampled_rows], picked)
        chosen = chosen_logprobs(logits[sampled_rows], picked)
        t1 = time.perf_counter_ns()
        share = (t1 - t0) / 1e9 / len(rows)
        for s, n in rows:
            s.computed += n
            s.handle.stats.gpu_seconds += share
            self.cache.set_length(s.slot, s.computed)  # type: ignore[arg-type]
            self.cache.register(s.slot, s.tokens, s.computed)  # type: ignore[arg-type]
            if not s.output and s.computed == s.prefill_target:
                self._prompt_total += len(s.prompt)
        for i, tok, lp, c in zip(sampled_rows, picked, lps, chosen):
            self._emit(rows[i][0], tok, t1, lp, c)

    # -- decode -----------------------------------------------------------------
    def _reserve_decode_blocks(self) -> None:
        """Give every decoding request the block its next token needs, preempting when the pool is short."""
        if self.cache.free_blocks is None:
            return
        views = [self._view(s) for s in self._running.values()]
        if sum(v.blocks_needed for v in views) == 0:
            return
        for rid in reclaim_for_decode(views, self.cache.free_blocks):
            self._preempt(self._running.pop(rid))
            self._kv_preemptions += 1
        for s in self._running.values():
            if s.output and s.computed == s.num_tokens - 1 and not self.cache.ensure(s.slot, s.computed + 1):  # type: ignore[arg-type]
                raise RuntimeError("decode reclaimed too few KV blocks")

    def _decode(self) -> None:
        self._reserve_decode_blocks()
        batch = [s for s in self._running.values() if s.output and s.computed == s.num_tokens - 1]
        if not batch:
            return
        t0 = time.perf_counter_ns()
        logits = self.decoder([s.output[-1] for s in batch], [s.computed for s in batch],
                              [s.slot for s in batch])  # type: ignore[misc]
        picked = sample(logits, [s.params for s in batch], [s.generator for s in batch])
        lps = self._logprobs(logits, batch, picked)
        chosen = chosen_logprobs(logits, picked)
        t1 = time.perf_counter_ns()
        self.step_times.observe(len(batch), (t1 - t0) / 1e9)
        share = (t1 - t0) / 1e9 / len(batch)
        for s, tok, lp, c in zip(batch, picked, lps, chosen):
            s.computed += 1
            s.handle.stats.gpu_seconds += share
            self.cache.set_length(s.slot, s.computed)  # type: ignore[arg-type]
            self._emit(s, tok, t1, lp, c)

    def _logprobs(self, logits: torch.Tensor, seqs: Sequence[_Seq],
                  picked: Sequence[int]) -> list[TokenLogprobs | None]:
        """Log-probabilities for the rows whose request asked for them; requests that did not pay nothing."""
        want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        out: list[TokenLogprobs | None] = [None] * len(seqs)
        if not want:
            return out
        rows = logprobs(logits[want], [picked[i] for i in want], [seqs[i].params.logprobs or 0 for i in want])
        for i, (lp, alts) in zip(want, rows):
            out[i] = TokenLogprobs(Logprob(picked[i], self._token_text(picked[i]), lp),
                                   tuple(Logprob(t, self._token_text(t), v) for t, v in alts))
        return out

    def _token_text(self, tok: int) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode([tok], skip_special_tokens=False)  # type: ignore[attr-defined]

    def _emit(self, s: _Seq, tok: int, t_ns: int, lp: TokenLogprobs | None = None,
              chosen: float | None = None) -> None:
        s.output.append(tok)
        st = s.handle.stats
        if chosen is not None and chosen == chosen:  # NaN logits would poison the drift signal's sum
            st.logprob_sum += chosen
            st.logprob_tokens += 1
        if st.first_token_ns is None:
            st.first_token_ns = t_ns
        st.token_ns.append(t_ns)
        st.output_tokens = len(s.output)
        self._gen_total += 1
        p = s.params
        text = self._detok(s)
        reason: FinishReason | None = None
        if s.stops is not None:
            text = s.stops.feed(text)
            if s.stops.stopped:
                reason = FinishReason.STOP
        if reason is None:
            if (tok in self.eos_token_ids and not p.ignore_eos) or tok in p.stop_token_ids:
                reason = FinishReason.STOP
            elif len(s.output) >= p.max_tokens or s.num_tokens >= self.max_len:
                reason = FinishReason.LENGTH
            if reason is not None and s.stops is not None:
                text += s.stops.flush()  # held back for a stop string that never came
        s.handle._push(TokenEvent(index=len(s.output) - 1, token_id=tok, text=text, time_ns=t_ns, logprobs=lp))
        if reason is not None:
            self._finish(s, reason)  # the KV slot is freed now, in this step

    def _detok(self, s: _Seq) -> str:
        """Incremental detokenisation (holds back incomplete UTF-8 sequences)."""
        if self.tokenizer is None:
            return ""
        dec = self.tokenizer.decode  # type: ignore[attr-defined]
        ids = s.output
        prefix = dec(ids[s.prefix_offset : s.read_offset])
        full = dec(ids[s.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            s.prefix_offset, s.read_offset = s.read_offset, len(ids)
            return full[len(prefix) :]
        return ""
