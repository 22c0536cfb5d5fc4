"""The admission policy, tested as the pure function it is."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.runtime.scheduler import SchedulerConfig, SeqView, StepTimeModel, batch_limit, schedule

MS = 1_000_000


def seq(i: str, prio: int = 0, arrival: int = 0, deadline: int | None = None, **kw: object) -> SeqView:
    return SeqView(id=i, priority=prio, arrival_ns=arrival, deadline_ns=deadline, **kw)  # type: ignore[arg-type]


def steps(**points: float) -> StepTimeModel:
    m = StepTimeModel()
    for b, t in points.items():
        m.observe(int(b[1:]), t)
    return m


def test_admission_orders_by_priority_then_deadline_then_arrival() -> None:
    waiting = [seq("low", 0, arrival=1), seq("high-late", 10, arrival=2, deadline=900 * MS),
               seq("high-soon", 10, arrival=3, deadline=100 * MS), seq("high-none", 10, arrival=0),
               seq("shed", -1, arrival=0)]
    d = schedule(0, [], waiting, free_slots=10, cfg=SchedulerConfig(max_batch=10), steps=StepTimeModel())
    assert d.admit == ["high-soon", "high-late", "high-none", "low", "shed"]
    fifo = schedule(0, [], waiting, 10, SchedulerConfig(max_batch=10, priority_order=False), StepTimeModel())
    assert fifo.admit == ["high-none", "shed", "low", "high-late", "high-soon"]


def test_capacity_limits_admission() -> None:
    waiting = [seq(str(i), arrival=i) for i in range(5)]
    d = schedule(0, [], waiting, free_slots=2, cfg=SchedulerConfig(max_batch=8), steps=StepTimeModel())
    assert d.admit == ["0", "1"] and not d.preempt


def test_step_time_model_interpolates_and_extrapolates() -> None:
    m = steps(b1=0.010, b4=0.016, b8=0.024)
    assert m.predict(4) == 0.016
    assert abs(m.predict(2) - 0.012) < 1e-12
    assert abs(m.predict(16) - 0.040) < 1e-12  # slope 2 ms per row beyond 8
    assert StepTimeModel().predict(3) is None


def test_batch_limit_follows_tightest_tpot_slo() -> None:
    m = steps(b1=0.010, b8=0.024, b16=0.040)
    cfg = SchedulerConfig(max_batch=32)
    assert batch_limit([seq("a")], cfg, m) == 32  # no objective: full batch
    assert batch_limit([seq("a", tpot_slo_s=0.1), seq("b", tpot_slo_s=0.025)], cfg, m) == 8
    assert batch_limit([seq("a", tpot_slo_s=0.001)], cfg, m) == 1


def test_batch_limit_holds_back_lower_classes_not_peers() -> None:
    m = steps(b1=0.010, b2=0.020, b3=0.030)
    running = [seq("chat", 10, tpot_slo_s=0.021), seq("chat2", 10)]
    waiting = [seq("peer", 10, arrival=1), seq("bulk", 0, arrival=0)]
    d = schedule(0, running, waiting, free_slots=4, cfg=SchedulerConfig(max_batch=6), steps=m)
    assert d.batch_limit == 2
    assert d.admit == ["peer"]  # a peer's first token is not traded for the class's own TPOT


def test_recent_objectives_keep_bounding_the_batch() -> None:
    m = steps(b1=0.010, b2=0.020, b3=0.030)
    running = [seq("bulk1", 0, arrival=1), seq("bulk2", 0, arrival=2), seq("bulk3", 0, arrival=3)]
    recent = [seq("chat-done", 10, tpot_slo_s=0.021)]
    d = schedule(0, running, [seq("bulk4", 0, arrival=4)], 2, SchedulerConfig(max_batch=5), m, recent)
    assert d.batch_limit == 2 and d.preempt == ["bulk3"] and not d.admit
    d = schedule(0, running, [seq("bulk4", 0, arrival=4)], 2, SchedulerConfig(max_batch=5), m)
    assert d.batch_limit == 5 and d.admit == ["bulk4"]


def test_running_over_limit_evicts_lower_classes_only() -> None:
    m = steps(b1=0.010, b2=0.020, b3=0.030, b4=0.040)
    running = [seq("urgent", 10, tpot_slo_s=0.021), seq("batch-old", 0, arrival=1),
               seq("batch-new", 0, arrival=2), seq("peer", 10, arrival=3)]
    d = schedule(0, running, [], free_slots=0, cfg=SchedulerConfig(max_batch=4), steps=m)
    assert d.batch_limit == 2
    assert d.preempt == ["batch-new", "batch-old"]


def test_long_natural_wait_preempts_even_with_slack() -> None:
    m = steps(b2=0.01)
    running = [seq("bg", 0, arrival=1, remaining_tokens=30), seq("bg2", 0, arrival=2, remaining_tokens=50)]
    waiting = [seq("chat", 10, arrival=3, deadline=60_000 * MS)]
    d = schedule(0, running, waiting, 0, SchedulerConfig(max_batch=2), m)
    assert d.preempt == ["bg2"] and d.admit == ["chat"]  # latest arrival of the lowest class goes
    lazy = SchedulerConfig(max_batch=2, preempt_after_steps=100)
    assert not schedule(0, running, waiting, 0, lazy, m).preempt


def test_urgent_high_priority_preempts_lowest_class() -> None:
    m = steps(b2=0.05)
    running = [seq("bg", 0, arrival=1, remaining_tokens=100), seq("bulk", -5, arrival=2, remaining_tokens=100)]
    waiting = [seq("chat", 10, arrival=3, deadline=200 * MS)]
    d = schedule(0, running, waiting, free_slots=0, cfg=SchedulerConfig(max_batch=2), steps=m)
    assert d.preempt == ["bulk"] and d.admit == ["chat"]


def test_no_preemption_when_a_slot_frees_in_time_or_class_is_not_higher() -> None:
    m = steps(b2=0.01)
    running = [seq("bg", 0, arrival=1, remaining_tokens=1), seq("bg2", 0, arrival=2, remaining_tokens=50)]
    relaxed = [seq("chat", 10, arrival=3, deadline=5_000 * MS)]
    patient = SchedulerConfig(max_batch=2, preempt_after_steps=1)
    d = schedule(0, running, relaxed, 0, patient, m)
    assert not d.preempt and not d.admit  # "bg" ends at the next step, well before the deadline
    tight = [seq("chat", 10, arrival=3, deadline=15 * MS)]
    d = schedule(0, running, tight, 0, patient, m)
    assert d.preempt == ["bg2"]  # ...but that step plus prefill would miss this deadline
    assert schedule(0, running, relaxed, 0, SchedulerConfig(max_batch=2), m).preempt == ["bg2"]  # default: at once
    peer = [seq("peer", 0, arrival=3, deadline=1 * MS)]
    d = schedule(0, running, peer, 0, SchedulerConfig(max_batch=2), m)
    assert not d.preempt and not d.admit
    fifo = schedule(0, running, [seq("chat", 10, deadline=1 * MS)], 0,
                    SchedulerConfig(max_batch=2, priority_order=False), m)
    assert not fifo.preempt


def test_sheddable_rejected_with_retry_after_when_saturated() -> None:
    m = steps(b2=0.05)
    running = [seq("r1", remaining_tokens=40), seq("r2", remaining_tokens=40)]
    waiting = [seq(f"w{i}", 0, arrival=i) for i in range(3)] + [seq("s1", -1, arrival=10), seq("s2", -1, arrival=11)]
    d = schedule(0, running, waiting, 0, SchedulerConfig(max_batch=2, shed_queue_depth=3), m)
    rejected = dict(d.reject)
    assert set(rejected) == {"s1", "s2"}
    assert "saturated" in rejected["s1"].reason
    assert rejected["s1"].retry_after_s >= 1.0
    assert rejected["s2"].retry_after_s >= rejected["s1"].retry_after_s
    # Non-sheddable requests at the same depth wait instead.
    d = schedule(0, running, waiting[:3] + [seq("n", 0, arrival=12)], 0, SchedulerConfig(max_batch=2, shed_queue_depth=3), m)
    assert not d.reject


def test_sheddable_past_deadline_is_rejected_but_a_resumed_one_is_not() -> None:
    waiting = [seq("late", -1, deadline=10 * MS), seq("resumed", -1, deadline=10 * MS, started=True, arrival=1)]
    d = schedule(20 * MS, [], waiting, 4, SchedulerConfig(max_batch=4), StepTimeModel())
    assert [r for r, _ in d.reject] == ["late"]
    assert d.admit == ["resumed"]


views = st.builds(
    SeqView,
    id=st.uuids().map(str),
    priority=st.integers(-3, 3),
    arrival_ns=st.integers(0, 10**9),
    deadline_ns=st.one_of(st.none(), st.integers(0, 2 * 10**9)),
    tpot_slo_s=st.one_of(st.none(), st.floats(0.001, 1.0)),
    remaining_tokens=st.integers(1, 200),
    started=st.booleans(),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(views, max_size=8, unique_by=lambda v: v.id), st.lists(views, max_size=12, unique_by=lambda v: v.id),
       st.integers(1, 8), st.integers(0, 10**9))
def test_policy_invariants(running: list[SeqView], waiting: list[SeqView], max_batch: int, now: int) -> None:
    running = running[:max_batch]
    ids = {v.id for v in running}
    waiting = [w for w in waiting if w.id not in ids]
    free = max_batch - len(running)
    m = steps(b1=0.01, b4=0.02, b8=0.04)
    cfg = SchedulerConfig(max_batch=max_batch, shed_queue_depth=4)
    d = schedule(now, running, waiting, free, cfg, m)
    admitted = set(d.admit)
    assert admitted <= {w.id for w in waiting}
    assert set(d.preempt) <= ids
    assert not admitted & {r for r, _ in d.reject}
    # Never more running than slots.
    assert len(running) - len(d.preempt) + len(d.admit) <= max_batch
    # A preempted request never outranks every request that was admitted or kept.
    prio = {v.id: v.priority for v in running + waiting}
    kept = [prio[i] for i in admitted] + [v.priority for v in running if v.id not in d.preempt]
    for p in d.preempt:
        assert kept and prio[p] < max(kept)
    # Only sheddable or overflow requests are rejected, never resumed ones.
    for rid, rej in d.reject:
        assert prio[rid] < 0 or "queue full" in rej.reason
        assert rej.retry_after_s >= 1.0
