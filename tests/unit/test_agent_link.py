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
