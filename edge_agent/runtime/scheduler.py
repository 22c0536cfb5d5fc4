"""Priority-aware admission: a pure policy, tested without an engine.

Conventions (Gateway API Inference Extension): priority is an integer,
higher wins, negative means sheddable. Each request may carry a deadline
for its first token (arrival + TTFT SLO) and a time-per-output-token SLO.

Every engine iteration calls :func:`schedule` with plain views of the
running and waiting requests and gets back a :class:`Decision`:

* **order**: waiting requests by (priority desc, deadline asc, arrival asc),
  or by arrival alone in FIFO mode (the baseline the benchmark compares to);
* **batch limit**: the largest batch whose measured step time fits the
  tightest TPOT objective among running requests (:class:`StepTimeModel`);
  it holds back (and evicts) lower classes only, never peers of that request;
* **preemption**: a waiting request that cannot be admitted evicts the
  lowest-priority running request of a strictly lower class, unless a slot
  frees naturally within ``preempt_after_steps`` steps without missing its
  deadline (KV freed, the victim is resumed later by recomputing its prefix);
* **KV blocks** (paged cache, ``free_blocks`` given): a request is admitted
  only while the free blocks cover its prompt plus one token and leave
  ``watermark_blocks`` for running requests to grow into; the first request
  that does not fit holds back those behind it (no starvation of long
  prompts), though a higher class may still preempt lower ones for blocks.
  When decode itself runs short, :func:`reclaim_for_decode` picks whom to
  preempt (recompute), lowest class and newest first;
* **shedding**: sheddable requests beyond ``shed_queue_depth`` waiting ahead
  of them (or past their deadline) are rejected with a reason and a
  retry-after estimate; everyone beyond ``max_waiting`` is rejected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge_agent.runtime.request import Rejection


@dataclass(frozen=True)
class SeqView:
    """What the policy needs to know about one request."""

    id: str
    priority: int
    arrival_ns: int
    deadline_ns: int | None = None
    """Time by which the first token is due (arrival + TTFT SLO); None = no SLO."""
    tpot_slo_s: float | None = None
    """Time-per-output-token objective while running; None = none."""
    remaining_tokens: int = 1
    """Output tokens still to generate at most."""
    started: bool = False
    """Has produced tokens already (a preempted request waiting to resume)."""
    blocks_needed: int = 0
    """KV blocks this request must take for its next step: to be admitted (its
    prompt or prefix to recompute, plus one token) or, running, for its next
    decode token. 0 with the slot cache."""
    blocks_held: int = 0
    """KV blocks a running request holds (freed if it is preempted)."""

    @property
    def sheddable(self) -> bool:
        return self.priority < 0


@dataclass(frozen=True)
class SchedulerConfig:
    """Knobs of the admission policy."""

    max_batch: int = 32
    """Upper bound on running requests (the number of KV slots)."""
    max_waiting: int = 4096
    """Waiting requests beyond this many are rejected whatever their class."""
    shed_queue_depth: int = 64
    """A sheddable request with this many or more requests waiting ahead is rejected."""
    priority_order: bool = True
    """False = FIFO by arrival, no preemption (the baseline)."""
    preemption: bool = True
    """Allow evicting lower classes for higher ones."""
    default_step_s: float = 0.05
    """Assumed decode step time before any step was measured (seconds)."""
    slo_memory_s: float = 2.0
    """A TPOT objective keeps limiting the batch this long after its request ended
    (the engine passes such requests as ``recent``), so the next request of that
    class does not arrive into a long step of a batch grown in between."""
    preempt_after_steps: float = 0.0
    """A higher class waits for a slot to free naturally only if that takes at most
    this many decode steps (and its deadline is safe); otherwise it preempts.
    0 (default) preempts at once: recomputing a victim's prefix is cheaper than
    the higher class's wait. Raise it to save recompute when SLOs are loose."""


class StepTimeModel:
    """Measured decode-step time per batch size (EWMA), with interpolation."""

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self._t: dict[int, float] = {}

    def observe(self, batch: int, seconds: float) -> None:
        """Fold one measured step of ``batch`` rows into the estimate."""
        old = self._t.get(batch)
        self._t[batch] = seconds if old is None else old + self.alpha * (seconds - old)

    def predict(self, batch: int) -> float | None:
        """Estimated step seconds at ``batch`` rows; None before any measurement.

        Linear between measured sizes; beyond the largest one, extrapolated
        along the line through the two largest (never below the largest).
        """
        if not self._t or batch < 1:
            return None
        if batch in self._t:
            return self._t[batch]
        sizes = sorted(self._t)
        lo = [b for b in sizes if b < batch]
        hi = [b for b in sizes if b > batch]
        if lo and hi:
            a, b = lo[-1], hi[0]
            return self._t[a] + (self._t[b] - self._t[a]) * (batch - a) / (b - a)
        if hi:  # below the smallest measured size
            return self._t[hi[0]]
        if len(sizes) == 1:
            return self._t[sizes[0]]
        a, b = sizes[-2], sizes[-1]
        slope = max(0.0, (self._t[b] - self._t[a]) / (b - a))
        return self._t[b] + slope * (batch - b)

    def snapshot(self) -> dict[int, float]:
        return dict(self._t)


@dataclass(frozen=True)
class Decision:
    """What the engine does this iteration."""

    admit: list[str] = field(default_factory=list)
    """Waiting requests to start (in this order)."""
    preempt: list[str] = field(default_factory=list)
    """Running requests to evict (KV freed, back to waiting)."""
    reject: list[tuple[str, Rejection]] = field(default_factory=list)
    batch_limit: int = 0


def order_key(s: SeqView, priority_order: bool = True) -> tuple[float, ...]:
    """Sort key for admission: priority desc, deadline asc, arrival asc (or arrival only)."""
    if not priority_order:
        return (s.arrival_ns,)
    deadline = s.deadline_ns if s.deadline_ns is not None else math.inf
    return (-s.priority, deadline, s.arrival_ns)


def batch_limit(running: Sequence[SeqView], cfg: SchedulerConfig, steps: StepTimeModel) -> int:
    """Largest batch whose predicted step time meets the tightest TPOT SLO among ``running``."""
    slos = [s.tpot_slo_s for s in running if s.tpot_slo_s is not None]
    if not slos or steps.predict(1) is None:
        return cfg.max_batch
    tight = min(slos)
    best = 1
    for b in range(1, cfg.max_batch + 1):
        t = steps.predict(b)
        if t is not None and t <= tight:
            best = b
    return best


def _victim_key(s: SeqView) -> tuple[float, ...]:
    # Evict the lowest class first, then the latest deadline, then the newest.
    deadline = s.deadline_ns if s.deadline_ns is not None else math.inf
    return (s.priority, -deadline, -s.arrival_ns)


def schedule(
    now_ns: int,
    running: Sequence[SeqView],
    waiting: Sequence[SeqView],
    free_slots: int,
    cfg: SchedulerConfig,
    steps: StepTimeModel,
    recent: Sequence[SeqView] = (),
    *,
    free_blocks: int | None = None,
    watermark_blocks: int = 0,
) -> Decision:
    """Decide admissions, preemptions and rejections for one iteration (pure).

    ``recent``: requests with a TPOT objective that ended within
    ``cfg.slo_memory_s``; their objectives still bound the batch.
    ``free_blocks``: free KV blocks of a paged cache (None: slots only);
    ``watermark_blocks`` of them stay free while anything runs.
    """
    ordered = sorted(waiting, key=lambda s: order_key(s, cfg.priority_order))
    if not cfg.priority_order:
        recent = ()
    limit = batch_limit([*running, *recent], cfg, steps)
    step_s = steps.predict(max(1, len(running))) or cfg.default_step_s
    remaining_avg = (sum(s.remaining_tokens for s in running) / len(running)) if running else 1.0

    reject: list[tuple[str, Rejection]] = []
    candidates: list[SeqView] = []
    for ahead, s in enumerate(ordered):
        if ahead >= cfg.max_waiting and not s.started:
            reject.append((s.id, Rejection("queue full", _retry_after(ahead - cfg.max_waiting, limit, remaining_avg, step_s))))
        elif s.sheddable and not s.started and (
            len(candidates) >= cfg.shed_queue_depth or (s.deadline_ns is not None and now_ns > s.deadline_ns)
        ):
            why = "deadline passed while queued" if len(candidates) < cfg.shed_queue_depth else "saturated"
            reject.append((s.id, Rejection(f"sheddable request shed: {why}",
                                           _retry_after(len(candidates) - cfg.shed_queue_depth, limit, remaining_avg, step_s))))
        else:
            candidates.append(s)

    live = list(running)
    preempt: list[str] = []
    # Shrink to the latency-driven batch limit, evicting lower classes only.
    if cfg.preemption and cfg.priority_order and len(live) > limit:
        top = max(s.priority for s in [*live, *recent])
        for v in sorted((s for s in live if s.priority < top), key=_victim_key):
            if len(live) <= limit:
                break
            live.remove(v)
            preempt.append(v.id)
    free = free_slots + len(preempt)
    blocks = None if free_blocks is None else free_blocks + sum(v.blocks_held for v in running if v.id in preempt)

    def fits(s: SeqView, budget: int | None, others: Sequence[SeqView]) -> bool:
        return budget is None or budget - s.blocks_needed >= (watermark_blocks if others else 0)

    natural_wait_s = (min(s.remaining_tokens for s in live) * step_s) if live else 0.0

    # The limit protects the tightest TPOT objective from lower classes; its peers
    # and higher classes are still admitted while slots last.
    with_slo = [s for s in [*running, *recent] if s.tpot_slo_s is not None]
    protected = max((s.priority for s in with_slo if s.tpot_slo_s == min(r.tpot_slo_s for r in with_slo)),
                    default=None)  # type: ignore[type-var]
    admit: list[str] = []
    held_back = False
    """A request that had a slot but not the KV blocks: those behind it wait too."""
    for s in candidates:
        limit_ok = len(live) < limit or (protected is not None and s.priority >= protected)
        if free > 0 and limit_ok and not held_back and fits(s, blocks, live):
            admit.append(s.id)
            live.append(s)
            free -= 1
            blocks = None if blocks is None else blocks - s.blocks_needed
            continue
        if free > 0 and not fits(s, blocks, live):
            held_back = True
        if not (cfg.preemption and cfg.priority_order):
            continue
        victims = sorted((r for r in live if r.priority < s.priority and r.id not in admit), key=_victim_key)
        if not victims:
            continue
        urgent = (
            s.deadline_ns is None
            or natural_wait_s > cfg.preempt_after_steps * step_s
            or now_ns + int((natural_wait_s + step_s) * 1e9) >= s.deadline_ns
        )
        if not urgent:
            continue
        # Evict lower classes, fewest first, until there is a slot, the blocks, and room under the limit.
        chosen: list[SeqView] = []
        f, b = free, blocks
        for v in victims:
            rest = [r for r in live if r not in chosen]
            if f > 0 and fits(s, b, rest) and (chosen or limit_ok):
                break
            chosen.append(v)
            f += 1
            b = None if b is None else b + v.blocks_held
        rest = [r for r in live if r not in chosen]
        if not (chosen and f > 0 and fits(s, b, rest)):
            continue
        for v in chosen:
            live.remove(v)
            preempt.append(v.id)
        admit.append(s.id)
        live.append(s)
        free = f - 1
        blocks = None if b is None else b - s.blocks_needed
    return Decision(admit=admit, preempt=preempt, reject=reject, batch_limit=limit)


def _retry_after(excess: int, limit: int, remaining_avg: float, step_s: float) -> float:
    """Seconds until ``excess + 1`` queued requests have drained, at least 1 s."""
    waves = max(1, math.ceil((excess + 1) / max(1, limit)))
    return max(1.0, round(waves * remaining_avg * step_s, 1))


def reclaim_for_decode(running: Sequence[SeqView], free_blocks: int) -> list[str]:
    """Running requests to preempt (by recompute) so every other one gets the KV
    blocks its next decode token needs (``blocks_needed``) from ``free_blocks`` (pure).

    Victims go lowest class first, then latest deadline, then newest, as vLLM
    preempts the latest arrivals; a victim may be a request that itself needed a
    block. Empty when the pool suffices.
    """
    need = sum(s.blocks_needed for s in running)
    out: list[str] = []
    for v in sorted(running, key=_victim_key):
        if need <= free_blocks:
            break
        out.append(v.id)
        need -= v.blocks_needed
        free_blocks += v.blocks_held
    return out
