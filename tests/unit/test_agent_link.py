"""The agent link's session tasks stop when the session ends, whatever else is happening.

A regression test for a hang the rollout chaos test found: on Python 3.11,
``asyncio.wait_for`` returns normally (swallowing the cancellation) when the
awaited event fires in the same turn of the loop as the cancel. The report
sender waited for its wake-up event that way, so a report queued at the moment
a hub connection dropped kept the sender looping forever, the session never
finished tearing down, and the agent never reconnected.
"""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.config import AgentConfig
from edge_agent.inventory import Inventory
from edge_agent.link import HubLink
from edge_agent.state import LocalState


@pytest.fixture
def link(tmp_path):
    cfg = AgentConfig(hub="127.0.0.1:1", site="s", node="n", data_dir=tmp_path, insecure=True)
    state = LocalState(tmp_path)
    yield HubLink(cfg, state, lambda: Inventory(gpus=(), source="test"))
    state.close()


async def test_sender_stops_when_cancelled_as_a_report_wakes_it(link):
    outq: asyncio.Queue = asyncio.Queue()
    for _ in range(50):
        task = asyncio.create_task(link._sender(outq, {}))
        await asyncio.sleep(0.01)  # the sender is waiting for its wake-up
        link._outbox_wake.set()  # a report was queued ...
        task.cancel()  # ... in the same turn of the loop as the session ends
        done, _ = await asyncio.wait([task], timeout=2.0)
        assert done, "the report sender ignored its cancellation"
        assert task.cancelled()


async def test_heartbeats_stop_when_cancelled_as_the_inventory_changes(link):
    outq: asyncio.Queue = asyncio.Queue()
    for _ in range(50):
        task = asyncio.create_task(link._heartbeats(outq, 5.0))
        await asyncio.sleep(0.01)
        link.inventory_changed()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2.0)
        assert done, "the heartbeat loop ignored its cancellation"
        assert task.cancelled()


def test_no_asyncio_wait_for_in_the_code():
    """`asyncio.wait_for` can lose a cancellation on Python 3.11 (see above); the code uses
    `asyncio.timeout`, which cannot. This keeps it that way in both packages."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    found = []
    for package in ("hub", "edge_agent"):
        for f in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text(), filename=str(f))):
                if (isinstance(node, ast.Attribute) and node.attr == "wait_for"
                        and isinstance(node.value, ast.Name) and node.value.id == "asyncio"):
                    found.append(f"{f.relative_to(root)}:{node.lineno}")
    assert found == [], "use `async with asyncio.timeout(...)` instead of asyncio.wait_for at " + ", ".join(found)


async def test_the_sender_sets_aside_reports_the_hub_could_not_store_and_sends_the_rest(link, caplog):
    """A report out of the hub's bounds was sent at every reconnect and refused every time, with
    everything queued behind it. Now it goes to the dead-letter table, once, and the rest flows."""
    import logging

    state = link.state
    state.append("event", {"ok": 1}, 1000.0)
    state.append("k" * 65, {}, 1000.0)                       # kind too long
    state.append("event", {}, 253_402_300_800.0)             # created_at in the year 10000
    state.append("event", {"x": [1.0, float("nan")]}, 1.0)  # PostgreSQL's JSON has no NaN
    state.append("", {}, 1000.0)                             # no kind
    state.append("event", {"ok": 2}, 1000.5)
    outq: asyncio.Queue = asyncio.Queue()
    inflight: dict[int, int] = {}
    caplog.set_level(logging.ERROR, logger="edge_agent.link")
    task = asyncio.create_task(link._sender(outq, inflight))
    try:
        async with asyncio.timeout(5.0):
            msg = await outq.get()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    sent = msg.reports.reports
    assert [r.seq for r in sent] == [1, 6] and sorted(inflight) == [1, 6]
    assert sent[1].created_at.seconds == 1000 and sent[1].created_at.nanos == 500_000_000
    assert [(d.seq, d.reason.split(":")[0]) for d in state.dead_letters()] == [
        (2, "report seq 2"), (3, "report seq 3"), (4, "report seq 4"), (5, "report seq 5")]
    assert state.outbox_size() == 2
    assert caplog.text.count("dead letter") == 4, "logged once each"
    assert [e.split(":")[0] for e in link.status.recent_errors] == ["dead letter"] * 4


def test_report_bounds_match_the_hubs():
    """The agent sets aside exactly what the hub refuses (hub/convert.py): same numbers."""
    from edge_agent import report_check
    from hub import convert

    assert report_check.MAX_SEQ == convert.MAX_REPORT_SEQ
    assert report_check.KIND_MAX == convert.REPORT_KIND_MAX
    assert (report_check.MIN_CREATED_AT, report_check.MAX_CREATED_AT) == (convert.MIN_TIMESTAMP_S, convert.MAX_TIMESTAMP_S)


def test_report_problem_names_the_seq():
    from edge_agent.report_check import report_problem
    from edge_agent.state import PendingReport

    assert report_problem(PendingReport(7, "event", 0.0, {"a": [1, {"b": 2.5}]})) is None
    assert "seq 9223372036854775808" in report_problem(PendingReport(2**63, "event", 0.0, {}))
    assert "seq 0" in report_problem(PendingReport(0, "event", 0.0, {}))
    assert "seq 3: created_at" in report_problem(PendingReport(3, "event", -62_135_596_801.0, {}))
    assert "seq 3: created_at" in report_problem(PendingReport(3, "event", float("inf"), {}))
    assert "seq 3: payload" in report_problem(PendingReport(3, "event", 0.0, {"a": {"b": [float("-inf")]}}))
