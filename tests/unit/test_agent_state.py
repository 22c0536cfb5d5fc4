"""The agent's durable local state (edge_agent/state.py) and reconnect backoff."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.link import backoff_delay
from edge_agent.state import LocalObject, LocalState


@pytest.fixture
def state(tmp_path):
    s = LocalState(tmp_path / "agent")
    yield s
    s.close()


def test_outbox_seqs_start_at_one_and_strictly_increase(state):
    seqs = [state.append("event", {"i": i}, 1000.0 + i) for i in range(20)]
    assert seqs == list(range(1, 21))
    assert state.last_seq() == 20
    pending = state.pending(0, 100)
    assert [p.seq for p in pending] == seqs
    assert [p.payload for p in pending] == [{"i": i} for i in range(20)]
    assert [p.seq for p in state.pending(15, 3)] == [16, 17, 18]


def test_seqs_never_reused_after_ack_and_restart(tmp_path):
    d = tmp_path / "agent"
    s = LocalState(d)
    first = [s.append("event", {}, 0.0) for _ in range(5)]
    s.ack(first)  # everything acknowledged: the outbox is empty
    assert s.outbox_size() == 0
    s.close()
    s = LocalState(d)
    try:
        assert s.last_seq() == 5
        nxt = s.append("event", {}, 0.0)
        assert nxt == 6, "a seq the hub already stored would be dropped as a duplicate"
        assert [p.seq for p in s.pending(0, 10)] == [6]
    finally:
        s.close()


def test_unacked_reports_survive_restart(tmp_path):
    d = tmp_path / "agent"
    s = LocalState(d)
    for i in range(6):
        s.append("telemetry", {"n": i}, float(i))
    s.ack([2, 4])
    s.ack([])  # no-op
    s.close()
    s = LocalState(d)
    try:
        assert [(p.seq, p.payload["n"]) for p in s.pending(0, 10)] == [(1, 0), (3, 2), (5, 4), (6, 5)]
        assert s.outbox_size() == 4
    finally:
        s.close()


def test_concurrent_appends_get_distinct_seqs(state):
    got: list[int] = []
    lock = threading.Lock()

    def work():
        mine = [state.append("event", {}, 0.0) for _ in range(50)]
        with lock:
            got.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == list(range(1, 201))


def test_held_state_survives_reopen(tmp_path):
    d = tmp_path / "agent"
    s = LocalState(d)
    s.save(LocalObject("a", "Config", "x", 3, {"k": 1}))
    s.save(LocalObject("b", "Placement", "y", 5, {"model": "m"}))
    s.save(LocalObject("a", "Config", "x", 7, {"k": 2}))  # replaced, not duplicated
    s.save(LocalObject("c", "Config", "z", 8, {}))
    s.remove("c")
    s.close()
    s = LocalState(d)
    try:
        assert s.held() == {"a": 7, "b": 5}
        assert s.get("a") == LocalObject("a", "Config", "x", 7, {"k": 2})
        assert s.get("c") is None
        assert [o.id for o in s.objects()] == ["b", "a"]  # version order
        assert [o.id for o in s.objects("Placement")] == ["b"]
    finally:
        s.close()


# -- backoff ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 5.0), st.floats(0.01, 120.0), st.integers(0, 2**32))
def test_backoff_delay_within_full_jitter_bounds(attempt, initial, cap, seed):
    d = backoff_delay(attempt, initial, cap, random.Random(seed))
    assert 0.0 <= d <= min(cap, initial * 2 ** min(attempt, 30))


def test_backoff_grows_then_caps():
    rng = random.Random(7)
    # Mean of U(0, c) is c/2: sample means track the ceiling.
    def mean(attempt):
        return sum(backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(2000)) / 2000
    assert mean(0) == pytest.approx(0.25, rel=0.1)
    assert mean(3) == pytest.approx(2.0, rel=0.1)
    assert mean(20) == pytest.approx(15.0, rel=0.1)
    assert max(backoff_delay(10**6, 0.5, 30.0, rng) for _ in range(500)) <= 30.0  # no overflow


def test_backoff_is_jittered():
    rng = random.Random(1)
    assert len({backoff_delay(5, 0.5, 30.0, rng) for _ in range(50)}) == 50
