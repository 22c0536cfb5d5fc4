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


# -- incarnation, restore from a backup, dead letters -------------------------


def test_incarnation_is_minted_once_and_kept(tmp_path):
    s = LocalState(tmp_path / "agent")
    first = s.incarnation
    s.close()
    assert len(first) == 32 and int(first, 16) >= 0
    s = LocalState(tmp_path / "agent")
    try:
        assert s.incarnation == first, "the same state is the same report stream"
    finally:
        s.close()
    other = LocalState(tmp_path / "wiped-and-recreated")
    try:
        assert other.incarnation != first, "lost state is a new report stream"
    finally:
        other.close()


def test_resume_after_a_higher_hub_seq_moves_the_counter_and_renumbers_unchecked_reports(tmp_path):
    """State restored from an old backup: the hub stored seqs up to 10 of this incarnation, the
    restored counter is at 3. The backup's queued reports keep their numbers (the hub has those very
    ones); reports queued since this state was opened, never sent, move past 10."""
    d = tmp_path / "agent"
    s = LocalState(d)
    for i in range(3):
        s.append("event", {"old": i}, 0.0)
    s.ack([1])
    s.resume_after(3)  # the welcome of the backup's own time: nothing to move
    s.close()

    s = LocalState(d)  # restored; then queues two reports before reaching the hub
    try:
        assert [s.append("event", {"new": i}, 0.0) for i in range(2)] == [4, 5]
        assert s.resume_after(10) == 2
        assert [(p.seq, p.payload) for p in s.pending(0, 10)] == [
            (2, {"old": 1}), (3, {"old": 2}), (11, {"new": 0}), (12, {"new": 1})]
        assert s.last_seq() == 12
        assert s.append("event", {}, 0.0) == 13
        # Checked: a later welcome (a reconnect) renumbers nothing, whatever it says.
        assert s.resume_after(20) == 0 and s.last_seq() == 20
        assert [p.seq for p in s.pending(0, 10)] == [2, 3, 11, 12, 13]
    finally:
        s.close()


def test_resume_after_a_lower_or_equal_hub_seq_changes_nothing(state):
    for _ in range(5):
        state.append("event", {}, 0.0)
    for hub_last in (0, 3, 5):
        assert state.resume_after(hub_last) == 0
    assert state.last_seq() == 5 and [p.seq for p in state.pending(0, 10)] == [1, 2, 3, 4, 5]


def test_reports_queued_by_an_earlier_run_that_never_reached_the_hub_are_renumbered_too(tmp_path):
    d = tmp_path / "agent"
    s = LocalState(d)
    s.append("event", {"n": 1}, 0.0)
    s.close()  # crashed before its first welcome
    s = LocalState(d)
    try:
        s.append("event", {"n": 2}, 0.0)
        assert s.resume_after(7) == 2
        assert [(p.seq, p.payload) for p in s.pending(0, 10)] == [(8, {"n": 1}), (9, {"n": 2})]
    finally:
        s.close()


def test_dead_letter_moves_a_report_out_of_the_outbox_for_good(tmp_path):
    d = tmp_path / "agent"
    s = LocalState(d)
    for i in range(3):
        s.append("event", {"i": i}, float(i))
    s.dead_letter(2, "report seq 2: why")
    s.close()
    s = LocalState(d)
    try:
        assert [p.seq for p in s.pending(0, 10)] == [1, 3]
        [dl] = s.dead_letters()
        assert (dl.seq, dl.kind, dl.created_at, dl.payload, dl.reason) == (2, "event", 1.0, '{"i": 1}', "report seq 2: why")
        assert s.dead_letter_count() == 1
        assert s.append("event", {}, 0.0) == 4, "a dead letter's seq is not reused"
    finally:
        s.close()
