"""Policies take effect on their own path, never queued behind a model load (issue 10, item 2).

The bug: the agent applied hub updates one at a time, in one serial step, and a model load had no
bound; a stricter ResidencyPolicy sent while a Placement's model was loading waited for the load,
so the agent went on admitting data the new policy forbade for as long as the load took.
These tests drive the real link reader, appliers, state and door (see tests/residency_kit.py).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.residency_kit import Hub, Node, location, placement, policy



@pytest.fixture
async def node(tmp_path):
    made: list[Node] = []

    def make(**kw) -> Node:
        n = Node(tmp_path / f"agent-{len(made)}", **kw).start()
        made.append(n)
        return n

    yield make
    for n in made:
        await n.stop()


async def test_a_stricter_policy_is_enforced_while_a_model_load_hangs(node):
    hub, n = Hub(), node(site="iad-1")
    where = hub.upsert("SiteLocation", "iad-1", location("iad-1", "US", "US"))
    anywhere = hub.upsert("ResidencyPolicy", "p", policy(anywhere=True))
    n.send(where)
    n.send(anywhere)
    await n.acked(anywhere.upserts[0].id)
    assert n.admits("personal")
    load = hub.upsert("Placement", "iad-1.n", placement("m"))
    n.send(load)
    while ("m", "v1") not in n.loads.started:  # the load is in flight (and hangs until released)
        await asyncio.sleep(0.005)
    stricter = hub.upsert("ResidencyPolicy", "p", policy(countries=["DE"]))
    n.send(stricter)
    ack = await n.acked(stricter.upserts[0].id, stricter.upserts[0].version)  # old code: never, until the load ends
    assert ack.ok and not n.admits("personal")
    assert n.state.get(stricter.upserts[0].id).version == stricter.upserts[0].version  # held as applied
    assert n.state.get(load.upserts[0].id) is None  # the placement is not held before it loaded
    n.loads.release("m", "v1")
    ack = await n.acked(load.upserts[0].id, load.upserts[0].version)
    assert ack.ok and n.state.get(load.upserts[0].id) is not None
    assert not n.admits("personal")  # the loaded placement does not reopen the door


async def test_a_load_that_times_out_is_acked_failed_and_the_old_version_keeps_serving(node):
    hub, n = Hub(), node(site="iad-1", load_timeout_s=0.3)
    n.loads.fast.add("old")
    first = hub.upsert("Placement", "iad-1.n", placement("old"))
    n.send(first)
    assert (await n.acked(first.upserts[0].id, first.upserts[0].version)).ok
    second = hub.upsert("Placement", "iad-1.n", placement("new"))
    n.send(second)
    ack = await n.acked(second.upserts[0].id, second.upserts[0].version)
    assert not ack.ok and "--model-load-timeout" in ack.error and f"version {first.upserts[0].version} keeps serving" in ack.error
    assert any("--model-load-timeout" in e for e in n.link.status.recent_errors)
    assert n.state.get(first.upserts[0].id).version == first.upserts[0].version
    n.loads.release("new", "v1")  # the abandoned load finishes after all: its result is thrown away
    while not any(b.model == "new" for b in n.loads.made):
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    assert {b.model for b in n.registry.backends()} == {"old"}
    assert all(b.closed for b in n.loads.made if b.model == "new")


async def test_a_newer_version_or_a_delete_supersedes_a_load_in_flight(node):
    hub, n = Hub(), node(site="iad-1")
    n.loads.fast.add("quick")
    slow = hub.upsert("Placement", "iad-1.n", placement("slow"))
    n.send(slow)
    while ("slow", "v1") not in n.loads.started:
        await asyncio.sleep(0.005)
    newer = hub.upsert("Placement", "iad-1.n", placement("quick"))
    n.send(newer)
    assert (await n.acked(newer.upserts[0].id, newer.upserts[0].version)).ok
    assert not [a for a in n.acks if a.version == slow.upserts[0].version]  # superseded: never acked as applied
    n.loads.release("slow", "v1")
    await asyncio.sleep(0.1)
    assert {b.model for b in n.registry.backends()} == {"quick"}
    # a delete cancels a load in flight too
    other = hub.upsert("Placement", "iad-1.m", placement("stuck"))
    n.send(other)
    while ("stuck", "v1") not in n.loads.started:
        await asyncio.sleep(0.005)
    n.send(hub.delete("Placement", "iad-1.m"))
    ack = await n.acked(other.upserts[0].id)
    assert ack.deleted and ack.ok and n.state.get(other.upserts[0].id) is None
    n.loads.release("stuck", "v1")
    await asyncio.sleep(0.1)
    assert {b.model for b in n.registry.backends()} == {"quick"}


async def test_resync_completes_once_what_it_sent_is_applied(node):
    hub, n = Hub(), node(site="iad-1")
    upd = hub.upsert("Placement", "iad-1.n", placement("m"), resync=True)
    n.send(upd)
    while ("m", "v1") not in n.loads.started:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)
    assert not n.link.status.resynced.is_set()
    n.loads.release("m", "v1")
    await asyncio.wait_for(n.link.status.resynced.wait(), 30)
    assert n.state.get(upd.upserts[0].id) is not None


async def test_a_placement_opens_to_traffic_only_once_its_data_class_policy_is_held(node):
    hub, n = Hub(), node(site="iad-1")
    n.loads.fast.add("m")
    n.send(hub.upsert("SiteLocation", "iad-1", location("iad-1", "US", "US")))
    n.send(hub.upsert("ResidencyPolicy", "pub", policy("public", anywhere=True)))
    p = hub.upsert("Placement", "iad-1.n", placement("m", data_class="personal"))
    n.send(p)
    assert (await n.acked(p.upserts[0].id)).ok
    from edge_agent.serving.errors import Unavailable

    with pytest.raises(Unavailable, match="does not hold the ResidencyPolicy of its data class 'personal'"):
        n.gateway.admit("m", "public", None)
    pol = hub.upsert("ResidencyPolicy", "personal", policy("personal", countries=["US"]))
    n.send(pol)
    await n.acked(pol.upserts[0].id)
    assert n.gateway.admit("m", "public", None).backend.model == "m"
