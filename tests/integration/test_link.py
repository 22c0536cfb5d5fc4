"""The hub–agent link end to end: a real Hub on port 0 and real agents
(edge_agent.agent.Agent: HubLink + LocalState in tmp dirs) in one event loop,
on SQLite and PostgreSQL; then bad input from raw grpc.aio clients.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, GpuSpec
from hub.config import HubConfig, Limits
from hub.security import certs
from hub.server import Hub
from protos.fleet.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, types_pb2
from tests.harness.telemetry import Requests, recorded_ttfts, telemetry_payload

TOKEN = "test-admin-token-0123456789"
WAIT = 10.0  # upper bound for anything that should happen "soon"; polls return as soon as it does


# -- helpers ------------------------------------------------------------------


async def eventually(cond: Callable[[], object], timeout: float = WAIT, what: str = "condition"):
    """Poll a sync or async predicate until it is truthy; return its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture(autouse=True)
async def no_leaked_tasks():
    """Fail a test that leaves asyncio tasks running (kopf's _no_asyncio_pending_tasks)."""
    before = set(asyncio.all_tasks())
    yield
    # Surface unclosed resources (connections, channels) in the test that made them.
    gc.collect()
    current = asyncio.current_task()
    # Give cancelled tasks time to finish: grpc's own cleanup tasks can need
    # more than a few loop turns on a loaded machine. A real leak stays.
    for _ in range(60):
        leaked = {t for t in asyncio.all_tasks() - before if t is not current and not t.done()}
        if not leaked:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"test leaked asyncio tasks: {sorted(repr(t.get_coro()) for t in leaked)}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    certs.init_ca(d)
    certs.issue_hub(d, [])
    for site, node in [("fra", "a"), ("fra", "b"), ("par", "a"), ("good", "n1"), ("slow", "n1")]:
        certs.issue_agent(d, site, node)
    return d


class RunningAgent:
    """A real Agent on its own data dir, run as a task; records every DesiredUpdate it receives."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.agent = Agent(cfg, probe_gpus=False)
        self.link = self.agent.link
        self.state = self.agent.state
        self.updates: list[agent_pb2.DesiredUpdate] = []
        apply = self.link._apply

        def recording_apply(upd):
            copy = agent_pb2.DesiredUpdate()
            copy.CopyFrom(upd)
            self.updates.append(copy)
            return apply(upd)

        self.link._apply = recording_apply
        self._stop = asyncio.Event()
        self.task = asyncio.create_task(self.agent.run(self._stop))

    @property
    def site_node(self) -> tuple[str, str]:
        return self.cfg.site, self.cfg.node

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self.task, WAIT)

    async def resynced(self) -> None:
        await eventually(self.link.status.resynced.is_set, what=f"{self.site_node} to resync")

    def held_names(self) -> set[str]:
        return {o.name for o in self.state.objects()}


class Fleet:
    """One hub (restartable on the same DB and agent port), its admin client, and agents."""

    def __init__(self, db_url: str, tmp: Path, pki: Path | None, **hub_kw) -> None:
        self.db_url, self.tmp, self.pki = db_url, tmp, pki
        self.hub_kw = {
            "heartbeat_interval_s": 0.2,
            "stale_after_s": 2.0,
            "unreachable_after_s": 10.0,
            "poll_interval_s": 0.05,
            "flush_interval_s": 0.02,
            **hub_kw,
        }
        self.hub: Hub | None = None
        self.agent_port = 0
        self.admin_port = 0
        self.channel: grpc.aio.Channel | None = None
        self.admin: admin_pb2_grpc.AdminStub | None = None
        self.agents: list[RunningAgent] = []
        self._names = itertools.count()

    @property
    def secure(self) -> bool:
        return self.pki is not None

    async def start_hub(self) -> None:
        cfg = HubConfig(
            db_url=self.db_url,
            agent_listen=f"127.0.0.1:{self.agent_port}",
            admin_listen="127.0.0.1:0",
            insecure=not self.secure,
            certs_dir=self.pki,
            admin_token=TOKEN,
            **self.hub_kw,
        )
        self.hub = Hub(cfg)
        ports = await self.hub.start()
        self.agent_port, self.admin_port = ports.agent, ports.admin
        if self.secure:
            creds = grpc.ssl_channel_credentials(root_certificates=(self.pki / "ca.pem").read_bytes())
            self.channel = grpc.aio.secure_channel(f"127.0.0.1:{self.admin_port}", creds)
        else:
            self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.admin_port}")
        self.admin = admin_pb2_grpc.AdminStub(self.channel)

    async def stop_hub(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.hub is not None:
            hub, self.hub = self.hub, None
            await hub.stop(grace=0.2)

    def agent_config(self, site: str, node: str, data_dir: Path | None = None, **kw) -> AgentConfig:
        tls = {}
        if self.secure:
            cert, key = certs.agent_paths(self.pki, site, node)
            tls = {"ca": self.pki / "ca.pem", "cert": cert, "key": key}
        return AgentConfig(
            hub=f"127.0.0.1:{self.agent_port}",
            site=site,
            node=node,
            data_dir=data_dir or self.tmp / "agents" / f"{site}-{node}",
            insecure=not self.secure,
            region="eu-central",
            country="DE",
            jurisdiction="EU",
            gpus=[GpuSpec(model="NVIDIA L4", memory_gib=24, count=2)],
            backoff_initial_s=0.05,
            backoff_max_s=0.3,
            **tls,
            **kw,
        )

    def start_agent(self, site: str, node: str, data_dir: Path | None = None, **kw) -> RunningAgent:
        a = RunningAgent(self.agent_config(site, node, data_dir, **kw))
        self.agents.append(a)
        return a

    async def stop_agent(self, a: RunningAgent) -> None:
        await a.stop()
        self.agents.remove(a)

    # admin calls -----------------------------------------------------------

    @property
    def md(self):
        return [("authorization", f"Bearer {TOKEN}")]

    async def put(self, kind: str, name: str, spec: dict | None = None, site: str = "", node: str = ""):
        from google.protobuf.struct_pb2 import Struct

        s = Struct()
        s.update(spec or {})
        req = admin_pb2.PutObjectRequest(kind=kind, name=name, spec=s, target=admin_pb2.ObjectTarget(site=site, node=node))
        return (await self.admin.PutObject(req, metadata=self.md, timeout=WAIT)).object

    async def delete(self, kind: str, name: str) -> int:
        return (await self.admin.DeleteObject(admin_pb2.DeleteObjectRequest(kind=kind, name=name), metadata=self.md, timeout=WAIT)).version

    async def nodes(self) -> dict[tuple[str, str], admin_pb2.NodeView]:
        resp = await self.admin.ListNodes(admin_pb2.ListNodesRequest(), metadata=self.md, timeout=WAIT)
        return {(n.site, n.node): n for n in resp.nodes}

    async def objects(self) -> dict[str, admin_pb2.ObjectView]:
        resp = await self.admin.ListObjects(admin_pb2.ListObjectsRequest(), metadata=self.md, timeout=WAIT)
        return {o.object.name: o for o in resp.objects}

    async def report_stats(self) -> dict[tuple[str, str], admin_pb2.AgentReportStats]:
        resp = await self.admin.ReportStats(admin_pb2.ReportStatsRequest(), metadata=self.md, timeout=WAIT)
        return {(a.site, a.node): a for a in resp.agents}

    async def assert_serving(self, good: RunningAgent) -> None:
        """The well-behaved agent still gets and applies new desired state, on its first stream."""
        name = f"probe-{next(self._names)}"
        site, node = good.site_node
        await self.put("Config", name, {"probe": True}, site=site, node=node)
        await eventually(lambda: name in good.held_names(), what=f"{name} applied on {site}/{node}")
        assert good.link.status.connects == 1, f"the good agent reconnected: {good.link.status.recent_errors}"
        assert good.link.status.connected

    async def close(self) -> None:
        for a in list(self.agents):
            try:
                await a.stop()
            except Exception:  # noqa: BLE001 - teardown stops everything it can
                a.task.cancel()
        self.agents.clear()
        await self.stop_hub()


@pytest.fixture
async def make_fleet(db_url, tmp_path, pki):
    fleets: list[Fleet] = []

    async def make(secure: bool = False, **hub_kw) -> Fleet:
        f = Fleet(db_url, tmp_path / f"fleet{len(fleets)}", pki if secure else None, **hub_kw)
        fleets.append(f)
        await f.start_hub()
        return f

    try:
        yield make
    finally:
        for f in fleets:
            await f.close()


# -- happy path ---------------------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["insecure", "mtls"])
async def test_publish_reaches_exactly_the_targeted_agents(make_fleet, secure):
    fleet = await make_fleet(secure=secure)
    fa, fb, pa = fleet.start_agent("fra", "a"), fleet.start_agent("fra", "b"), fleet.start_agent("par", "a")
    for a in (fa, fb, pa):
        await a.resynced()
    nodes = await fleet.nodes()
    assert set(nodes) == {("fra", "a"), ("fra", "b"), ("par", "a")}
    inv = nodes[("fra", "a")].inventory
    assert (inv.region, inv.country, inv.jurisdiction, inv.gpu_source) == ("eu-central", "DE", "EU", "config")
    assert [(g.model, g.count, g.memory_bytes) for g in inv.gpus] == [("NVIDIA L4", 2, 24 * 2**30)]
    assert all(n.phase == admin_pb2.NODE_PHASE_CONNECTED and n.connected for n in nodes.values())

    everywhere = await fleet.put("Config", "everywhere", {"logLevel": "debug"})
    await fleet.put("Config", "fra-only", {"n": 1}, site="fra")
    await fleet.put("Config", "fra-b-only", {"n": 2}, site="fra", node="b")
    expected = {
        ("fra", "a"): {"everywhere", "fra-only"},
        ("fra", "b"): {"everywhere", "fra-only", "fra-b-only"},
        ("par", "a"): {"everywhere"},
    }
    for a in (fa, fb, pa):
        await eventually(lambda a=a: a.held_names() == expected[a.site_node], what=f"{a.site_node} to apply")
    assert fa.state.get(everywhere.id).spec == {"logLevel": "debug"}
    # The hub knows who applied what: every targeted node, nobody else.
    await eventually(
        lambda: _applied_counts(fleet, {"everywhere": (3, 3), "fra-only": (2, 2), "fra-b-only": (1, 1)}),
        what="hub to record applied acks",
    )
    nodes = await fleet.nodes()
    assert nodes[("fra", "b")].objects_desired == 3 and nodes[("par", "a")].objects_desired == 1
    await eventually(lambda: _in_sync(fleet), what="applied_version == desired_version everywhere")
    # Nothing anyone did not need: every object reached each agent once.
    for a in (fa, fb, pa):
        received = [o.name for u in a.updates for o in u.upserts]
        assert sorted(received) == sorted(expected[a.site_node])

    # Deletion reaches exactly the agents that held it; the hub drops their applied rows.
    await fleet.delete("Config", "fra-only")
    for a in (fa, fb):
        await eventually(lambda a=a: "fra-only" not in a.held_names(), what=f"deletion on {a.site_node}")
    assert pa.held_names() == {"everywhere"}
    assert all(not u.deletes for u in pa.updates), "par/a never held it, so it gets no deletion"
    await eventually(lambda: _applied_counts(fleet, {"everywhere": (3, 3), "fra-b-only": (1, 1)}))


async def _applied_counts(fleet: Fleet, want: dict[str, tuple[int, int]]) -> bool:
    objs = await fleet.objects()
    return {n: (o.nodes_applied, o.nodes_targeted) for n, o in objs.items()} == want


async def _in_sync(fleet: Fleet) -> bool:
    return all(
        n.applied_version == n.desired_version and n.objects_applied == n.objects_desired
        for n in (await fleet.nodes()).values()
    )


async def test_agent_restart_with_held_state_gets_nothing_resent(make_fleet, tmp_path):
    fleet = await make_fleet()
    a = fleet.start_agent("fra", "a")
    await a.resynced()
    keep = await fleet.put("Config", "keep", {"x": 1})
    drop = await fleet.put("Config", "drop", {"x": 2})
    await eventually(lambda: a.held_names() == {"keep", "drop"})
    await eventually(lambda: _applied_counts(fleet, {"keep": (1, 1), "drop": (1, 1)}))
    await fleet.stop_agent(a)

    # Restart with nothing changed: the resync carries nothing.
    a = fleet.start_agent("fra", "a")
    await a.resynced()
    assert len(a.updates) == 1 and a.updates[0].resync_complete
    assert list(a.updates[0].upserts) == [] and list(a.updates[0].deletes) == []
    await fleet.stop_agent(a)

    # Changes while the agent was away: exactly those, and nothing it already had.
    await fleet.delete("Config", "drop")
    added = await fleet.put("Config", "added", {"x": 3})
    # The hub's broker reads changes from the store (poked, but a query away on a loaded machine):
    # once it has them they are part of the resync, otherwise they come as a live update after it.
    await eventually(lambda: fleet.hub.broker.version >= added.version, what="the broker to see the changes")
    a = fleet.start_agent("fra", "a")
    await a.resynced()
    resync = a.updates[0]
    assert resync.resync_complete
    assert [(o.name, o.version) for o in resync.upserts] == [("added", added.version)]
    assert list(resync.deletes) == [drop.id]
    assert a.state.held() == {keep.id: keep.version, added.id: added.version}


async def test_hub_restart_agent_keeps_state_resyncs_and_reports_exactly_once(make_fleet, tmp_path):
    fleet = await make_fleet()
    a = fleet.start_agent("fra", "a")
    await a.resynced()
    before = await fleet.put("Config", "before", {"v": 1})
    await eventually(lambda: a.held_names() == {"before"})
    for i in range(40):
        a.link.report("telemetry", {"i": i})
    await eventually(lambda: a.state.outbox_size() == 0, what="reports acked before the restart")
    port = fleet.agent_port

    await fleet.stop_hub()
    await eventually(lambda: not a.link.status.connected, what="agent to notice the hub is gone")
    # Edge autonomy: the agent keeps what it applied and keeps queueing reports.
    for i in range(40, 70):
        a.link.report("telemetry", {"i": i})
    await asyncio.sleep(0.3)  # a few failed reconnects happen meanwhile
    assert a.state.held() == {before.id: before.version}
    assert a.state.get(before.id).spec == {"v": 1}
    assert a.state.outbox_size() >= 30
    # ... also across its own restart while the hub is down.
    data_dir = a.cfg.data_dir
    await fleet.stop_agent(a)
    a = fleet.start_agent("fra", "a", data_dir=data_dir)
    assert a.state.held() == {before.id: before.version}
    for i in range(70, 90):
        a.link.report("telemetry", {"i": i})
    await asyncio.sleep(0.2)
    assert not a.link.status.resynced.is_set()

    # A new hub on the same store and port: the agent reconnects by itself and resyncs.
    await fleet.start_hub()
    assert fleet.agent_port == port
    await a.resynced()
    assert list(a.updates[0].upserts) == [], "nothing changed, nothing re-sent"
    after = await fleet.put("Config", "after", {"v": 2})
    await eventually(lambda: a.held_names() == {"before", "after"})
    assert a.state.get(after.id).version == after.version

    await eventually(lambda: a.state.outbox_size() == 0, what="outbox drained after the restart")
    last = a.state.last_seq()
    assert last >= 90  # 90 telemetry + one Applied event per applied object
    stats = (await fleet.report_stats())[("fra", "a")]
    assert (stats.reports, stats.max_seq, stats.counted) == (last, last, last)
    node = await fleet.hub.store.get_node("fra", "a")
    stored = await fleet.hub.store.reports(node.id, "telemetry")
    assert [r.payload["i"] for r in stored] == list(range(90))


async def test_an_ack_lost_with_the_hub_is_recovered_from_the_agents_hello(make_fleet):
    """The hub batches applied-acks; if it dies before writing a batch, the agent's next Hello
    (what it holds) records them, since the agent will not acknowledge an object it holds again.
    Found by the rollout chaos test: a wave waited for an ack that had died with the hub."""
    from sqlalchemy import delete

    from hub.store import tables

    fleet = await make_fleet()
    a = fleet.start_agent("fra", "a")
    await a.resynced()
    obj = await fleet.put("Config", "c", {"x": 1})
    await eventually(lambda: _applied_counts(fleet, {"c": (1, 1)}))
    first = {r.object_id: r for r in await fleet.hub.store.applied_rows()}[obj.id]

    # Reconnecting with nothing lost leaves the row as it was (applied_at included).
    await fleet.stop_hub()
    a.link.status.resynced.clear()
    await fleet.start_hub()
    await a.resynced()
    await fleet.hub.recorder.flush()
    again = {r.object_id: r for r in await fleet.hub.store.applied_rows()}[obj.id]
    assert (again.version, again.ok, again.applied_at) == (first.version, True, first.applied_at)

    # The hub applied-ack batch is lost: the hub stops with the row gone, as if never written.
    await fleet.stop_hub()
    async with fleet_store_session(fleet) as s:
        await s.execute(delete(tables.Applied))
    a.link.status.resynced.clear()
    n_updates = len(a.updates)
    await fleet.start_hub()
    await a.resynced()
    assert [list(u.upserts) for u in a.updates[n_updates:]] == [[]], "it holds it: nothing re-sent, no new ack"
    await eventually(lambda: _applied_counts(fleet, {"c": (1, 1)}), what="the Hello to count as the ack")


def fleet_store_session(fleet: Fleet):
    """A transaction on the store under test, opened while the hub is stopped."""
    from hub.store import Database

    class _Tx:
        async def __aenter__(self):
            self.db = Database(fleet.db_url)
            self.cm = self.db.sessions.begin()
            return await self.cm.__aenter__()

        async def __aexit__(self, *exc):
            try:
                return await self.cm.__aexit__(*exc)
            finally:
                await self.db.close()

    return _Tx()


async def test_reports_acked_only_once_stored_across_restart_race(make_fleet):
    """Reports in flight when the hub stops are re-sent and de-duplicated, never lost or double-counted."""
    fleet = await make_fleet()
    a = fleet.start_agent("fra", "a", report_batch=10, report_window=8)
    await a.resynced()
    n = 1000
    for i in range(n):
        a.link.report("telemetry", {"i": i})
    # stop mid-flow: once the first reports are stored and acknowledged ...
    await eventually(lambda: a.state.outbox_size() < n, what="the first reports acknowledged")
    await fleet.stop_hub()
    # ... and, the precondition of this test, while others are still unacknowledged
    left = a.state.outbox_size()
    assert 0 < left < n, f"{left} of {n} reports unacknowledged when the hub stopped: not mid-flow"
    await fleet.start_hub()
    await eventually(lambda: a.state.outbox_size() == 0, what="outbox drained")
    stats = (await fleet.report_stats())[("fra", "a")]
    assert (stats.reports, stats.max_seq, stats.counted) == (n, n, n)


async def test_an_agent_that_lost_its_data_dir_has_every_new_report_stored(make_fleet):
    """Issue 10: an agent restarted on an empty data dir (a replaced pod with an emptyDir) starts its
    outbox at seq 1 again. Under a new incarnation the hub stores those reports (audit records of
    refusals included) instead of acknowledging them as re-sends of the old stream's and dropping them."""
    import shutil

    fleet = await make_fleet()
    a = fleet.start_agent("fra", "a")
    await a.resynced()
    before = a.state.incarnation
    for i in range(4):
        a.link.report("telemetry", {"life": 1, "i": i})
    a.link.report("audit", {"life": 1, "decision": "refused", "dataClass": "de-personal"})
    await eventually(lambda: a.state.outbox_size() == 0, what="the first life's reports acked")
    data_dir = a.cfg.data_dir
    await fleet.stop_agent(a)

    shutil.rmtree(data_dir)  # the disk is gone
    a = fleet.start_agent("fra", "a", data_dir=data_dir)
    await a.resynced()
    assert a.state.incarnation != before and a.state.last_seq() == 0
    for i in range(3):
        a.link.report("telemetry", {"life": 2, "i": i})
    a.link.report("audit", {"life": 2, "decision": "refused", "dataClass": "de-personal"})
    await eventually(lambda: a.state.outbox_size() == 0, what="the second life's reports acked")

    node = await fleet.hub.store.get_node("fra", "a")
    stored = [(r.incarnation, r.seq, r.kind, r.payload) for r in await fleet.hub.store.reports(node.id)]
    assert stored == [
        (before, 1, "telemetry", {"life": 1, "i": 0}), (before, 2, "telemetry", {"life": 1, "i": 1}),
        (before, 3, "telemetry", {"life": 1, "i": 2}), (before, 4, "telemetry", {"life": 1, "i": 3}),
        (before, 5, "audit", {"life": 1, "decision": "refused", "dataClass": "de-personal"}),
        (a.state.incarnation, 1, "telemetry", {"life": 2, "i": 0}),
        (a.state.incarnation, 2, "telemetry", {"life": 2, "i": 1}),
        (a.state.incarnation, 3, "telemetry", {"life": 2, "i": 2}),
        (a.state.incarnation, 4, "audit", {"life": 2, "decision": "refused", "dataClass": "de-personal"}),
    ]
    assert (node.reports_received, node.reports_duplicate) == (9, 0)


async def test_an_agent_restored_from_an_old_backup_continues_after_what_the_hub_stored(make_fleet, tmp_path):
    """Same incarnation, older counter (the data dir restored from a backup): the Welcome's
    last_report_seq moves the agent's counter past the hub's, and reports it queued before it
    reached the hub are renumbered, so no new report collides with a stored one."""
    import shutil

    fleet = await make_fleet()
    a = fleet.start_agent("fra", "a")
    await a.resynced()
    for i in range(3):
        a.link.report("telemetry", {"n": i})
    await eventually(lambda: a.state.outbox_size() == 0, what="acked before the backup")
    data_dir, backup = a.cfg.data_dir, tmp_path / "backup"
    await fleet.stop_agent(a)
    shutil.copytree(data_dir, backup)
    a = fleet.start_agent("fra", "a", data_dir=data_dir)
    await a.resynced()
    for i in range(3, 8):
        a.link.report("telemetry", {"n": i})
    await eventually(lambda: a.state.outbox_size() == 0, what="acked after the backup")
    hub_last = a.state.last_seq()
    await fleet.stop_agent(a)

    shutil.rmtree(data_dir)
    shutil.copytree(backup, data_dir)  # restored: same incarnation, counter back at 3
    await fleet.stop_hub()
    a = fleet.start_agent("fra", "a", data_dir=data_dir)
    assert a.state.last_seq() == 3
    for i in range(8, 10):  # queued while the hub is away: locally seqs 4 and 5, which the hub holds
        a.link.report("telemetry", {"n": i})
    await fleet.start_hub()
    await a.resynced()
    for i in range(10, 12):
        a.link.report("telemetry", {"n": i})
    await eventually(lambda: a.state.outbox_size() == 0, what="outbox drained after the restore")
    assert a.state.last_seq() == hub_last + 4

    node = await fleet.hub.store.get_node("fra", "a")
    stored = await fleet.hub.store.reports(node.id, "telemetry")
    assert sorted(r.payload["n"] for r in stored) == list(range(12)), "every report stored once, none dropped"
    assert {r.incarnation for r in stored} == {a.state.incarnation}
    assert [r.seq for r in stored if r.payload["n"] >= 8] == [hub_last + 1, hub_last + 2, hub_last + 3, hub_last + 4]


async def test_telemetry_reports_merge_exactly_into_the_admin_report(make_fleet):
    import json as _json

    fleet = await make_fleet()
    a, b = fleet.start_agent("fra", "a"), fleet.start_agent("par", "a")
    await asyncio.gather(a.resynced(), b.resynced())
    a_vals, b_vals = [0.1 * i for i in range(1, 51)], [0.2 + 0.01 * i for i in range(100)]
    a_req, b_req = Requests("assistant", "v3", a_vals), Requests("assistant", "v3", b_vals)
    # made by the agent's own telemetry code; "spoofed": the hub must use the verified identity, not this
    a.link.report("telemetry", telemetry_payload("spoofed", "a", [a_req], "2026-11-27T10:00:00Z", "2026-11-27T10:00:05Z"))
    b.link.report("telemetry", telemetry_payload("spoofed", "a", [b_req], "2026-11-27T10:00:00Z", "2026-11-27T10:00:05Z"))
    a.link.report("telemetry", {"schema": 99})  # a payload from the future is skipped with a reason, not fatal
    await eventually(lambda: a.state.outbox_size() == 0 and b.state.outbox_size() == 0, what="reports acked")
    resp = await fleet.admin.GetReport(admin_pb2.GetReportRequest(by=["site"], html=True), metadata=fleet.md, timeout=WAIT)
    rep = _json.loads(resp.report_json)
    rows = {r["site"]: r for r in rep["rows"]}
    assert rep["payloads"] == 2, (rep["outside"], rep["skipped"])
    assert set(rows) == {"fra", "par"}  # the verified identity, not the payload's "spoofed" site
    assert rep["total"]["requests"] == 150
    from ddsketch import DDSketch

    union = DDSketch(relative_accuracy=0.01)
    for v in recorded_ttfts(a_req) + recorded_ttfts(b_req):
        union.add(v)
    for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):  # merged at the hub == one sketch of all values
        assert rep["total"]["ttftS"][key] == pytest.approx(union.get_quantile_value(q), rel=1e-12)
    assert len(rep["skipped"]) == 1 and rep["skipped"][0]["site"] == "fra"
    assert "<svg" in resp.html
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.admin.GetReport(admin_pb2.GetReportRequest(by=["colour"]), metadata=fleet.md, timeout=WAIT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_liveness_goes_stale_then_unreachable_when_heartbeats_stop(make_fleet):
    # Stale after ten missed heartbeats, not five: the good agent must stay fresh on a loaded machine too.
    fleet = await make_fleet(heartbeat_interval_s=0.2, stale_after_s=2.0, unreachable_after_s=4.0)
    good = fleet.start_agent("fra", "a")
    await good.resynced()
    # A stream that says hello and then never heartbeats (it stays open).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fleet.agent_port}") as ch:
        call = agent_pb2_grpc.AgentLinkStub(ch).Connect()
        await call.write(hello("fra", "silent"))
        assert (await call.read()).WhichOneof("msg") == "welcome"

        async def phase_of(key):
            return (await fleet.nodes())[key].phase

        assert await phase_of(("fra", "silent")) == admin_pb2.NODE_PHASE_CONNECTED
        await eventually(lambda: _phase_is(fleet, ("fra", "silent"), admin_pb2.NODE_PHASE_STALE))
        nodes = await fleet.nodes()
        assert nodes[("fra", "silent")].connected, "Stale by heartbeat age alone, the stream is still open"
        assert nodes[("fra", "a")].phase == admin_pb2.NODE_PHASE_CONNECTED, "heartbeats keep the good agent fresh"
        await eventually(lambda: _phase_is(fleet, ("fra", "silent"), admin_pb2.NODE_PHASE_UNREACHABLE))
        # Site phase is the best of its nodes.
        sites = (await fleet.admin.ListSites(admin_pb2.ListSitesRequest(), metadata=fleet.md)).sites
        assert [(s.site, s.phase, s.nodes, s.nodes_connected, s.gpus) for s in sites] == [
            ("fra", admin_pb2.NODE_PHASE_CONNECTED, 2, 1, 2)
        ]
        call.cancel()
    # A good agent that goes away turns Stale at once (stream closed), not Unreachable.
    await fleet.stop_agent(good)
    await eventually(lambda: _phase_is(fleet, ("fra", "a"), admin_pb2.NODE_PHASE_STALE))


async def _phase_is(fleet: Fleet, key, phase) -> bool:
    return (await fleet.nodes())[key].phase == phase


async def test_cordon_reaches_the_hub_before_the_next_heartbeat(make_fleet):
    # Heartbeats every 120 s: well inside that, only the inventory-change wake-up can deliver the cordon.
    # The bound is the configured interval's, not a wall-clock figure (how fast it is: a benchmark's job).
    heartbeat = 120.0
    fleet = await make_fleet(heartbeat_interval_s=heartbeat, stale_after_s=2 * heartbeat,
                             unreachable_after_s=4 * heartbeat)
    a = fleet.start_agent("fra", "a")
    await a.resynced()
    await eventually(lambda: _node_has(fleet, ("fra", "a"), lambda n: n.inventory.region == "eu-central"))
    assert not (await fleet.nodes())[("fra", "a")].inventory.unschedulable
    a.agent.set_unschedulable(True)
    await eventually(lambda: _node_has(fleet, ("fra", "a"), lambda n: n.inventory.unschedulable),
                     timeout=heartbeat / 4, what="cordon to reach the hub")
    inv = (await fleet.nodes())[("fra", "a")].inventory
    assert inv.region == "eu-central" and [g.count for g in inv.gpus] == [2], "the rest of the inventory is kept"
    a.agent.set_unschedulable(False)
    await eventually(lambda: _node_has(fleet, ("fra", "a"), lambda n: not n.inventory.unschedulable),
                     timeout=heartbeat / 4, what="uncordon to reach the hub")


async def _node_has(fleet: Fleet, key, pred) -> bool:
    n = (await fleet.nodes()).get(key)
    return n is not None and pred(n)


# -- bad input ------------------------------------------------------------------

SMALL = Limits(
    max_message_bytes=64 * 1024,
    max_reports_per_batch=50,
    messages_per_second=20,
    burst=40,
    send_queue=8,
    hello_timeout_s=0.5,
)


def hello(site: str, node: str, incarnation: str = "raw0", **held: int) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        hello=agent_pb2.Hello(identity=types_pb2.AgentIdentity(site=site, node=node, agent_version="raw"), held=held,
                              incarnation=incarnation)
    )


def heartbeat() -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat())


def batch(*seqs: int) -> agent_pb2.AgentMessage:
    b = agent_pb2.ReportBatch()
    for s in seqs:
        b.reports.add(seq=s, kind="event")
    return agent_pb2.AgentMessage(reports=b)


async def finish(call) -> grpc.StatusCode:
    """Read until the stream ends and return its status code."""
    try:
        while (await asyncio.wait_for(call.read(), WAIT)) is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return await asyncio.wait_for(call.code(), WAIT)


async def send(call, *msgs) -> None:
    """Write, ignoring failures once the hub has already closed the stream."""
    for m in msgs:
        try:
            await call.write(m)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return


@pytest.fixture
async def guarded(make_fleet, caplog):
    """A hub with small limits and one well-behaved agent that must keep working."""
    caplog.set_level(logging.WARNING, logger="hub.link")
    fleet = await make_fleet(limits=SMALL, heartbeat_interval_s=0.2)
    good = fleet.start_agent("good", "n1")
    await good.resynced()
    yield fleet, good
    await fleet.assert_serving(good)
    assert good.state.outbox_size() == 0 or await eventually(lambda: good.state.outbox_size() == 0)


async def raw_call(fleet: Fleet, creds: grpc.ChannelCredentials | None = None):
    target = f"127.0.0.1:{fleet.agent_port}"
    ch = grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target)
    return ch, agent_pb2_grpc.AgentLinkStub(ch).Connect()


async def test_first_message_not_hello_is_invalid_argument(guarded, caplog):
    fleet, good = guarded
    ch, call = await raw_call(fleet)
    async with ch:
        await send(call, heartbeat())
        assert await finish(call) == grpc.StatusCode.INVALID_ARGUMENT
        assert "first message must be hello" in await call.details()
    assert "INVALID_ARGUMENT" in caplog.text


async def test_bad_identity_is_invalid_argument_and_registers_nothing(guarded):
    fleet, good = guarded
    cases = {
        "no-identity": agent_pb2.AgentMessage(hello=agent_pb2.Hello()),
        "no-site": hello("", "n1"),
        "no-node": hello("fra", ""),
        "site-too-long": hello("x" * 129, "n1"),
    }
    for case, msg in cases.items():
        ch, call = await raw_call(fleet)
        async with ch:
            await send(call, msg)
            assert await finish(call) == grpc.StatusCode.INVALID_ARGUMENT, case
    assert set(await fleet.nodes()) == {("good", "n1")}


async def test_second_hello_is_invalid_argument(guarded):
    fleet, good = guarded
    ch, call = await raw_call(fleet)
    async with ch:
        await send(call, hello("fra", "x"), hello("fra", "x"))
        assert await finish(call) == grpc.StatusCode.INVALID_ARGUMENT


async def test_out_of_order_seqs_are_invalid_argument_and_nothing_is_stored(guarded, caplog):
    fleet, good = guarded
    cases = {"swapped": (1, 3, 2), "repeated": (1, 2, 2), "zero": (0, 1), "tail": (1, 2, 3, 2)}
    for case, seqs in cases.items():
        ch, call = await raw_call(fleet)
        async with ch:
            await send(call, hello("bad", case), batch(*seqs))
            assert await finish(call) == grpc.StatusCode.INVALID_ARGUMENT, case
        node = await fleet.hub.store.get_node("bad", case)
        assert node is not None, case  # it did say hello
        assert await fleet.hub.store.reports(node.id) == [], f"{case}: stored half-way"
        assert (node.reports_received, node.reports_duplicate) == (0, 0)
    assert await fleet.hub.store.report_counts() == {}
    assert "strictly increasing" in caplog.text


async def test_a_hello_without_incarnation_is_invalid_argument_and_registers_nothing(guarded):
    fleet, good = guarded
    for case, inc in {"missing": "", "bad-chars": "a b/c", "too-long": "x" * 65}.items():
        ch, call = await raw_call(fleet)
        async with ch:
            await send(call, hello("old", case, incarnation=inc))
            assert await finish(call) == grpc.StatusCode.INVALID_ARGUMENT, case
            assert "hello.incarnation" in await call.details(), case
        assert await fleet.hub.store.get_node("old", case) is None, case


def bad_report(case: str) -> agent_pb2.AgentMessage:
    """A batch whose second report (seq 2) has one field out of what the hub can store."""
    b = agent_pb2.ReportBatch()
    b.reports.add(seq=1, kind="event")
    r = b.reports.add(seq=2, kind="event")
    if case == "seq-2^63":
        r.seq = 2**63
    elif case == "seq-2^64-1":
        r.seq = 2**64 - 1
    elif case == "after-9999":
        r.created_at.seconds = 253_402_300_800  # 10000-01-01
    elif case == "before-1":
        r.created_at.seconds = -62_135_596_801
    elif case == "kind-65":
        r.kind = "k" * 65
    elif case == "kind-empty":
        r.kind = ""
    elif case == "nan":
        r.payload.update({"x": {"y": [1.0, float("nan")]}})
    return agent_pb2.AgentMessage(reports=b)


async def test_report_fields_out_of_range_are_invalid_argument_naming_the_seq(guarded, caplog):
    """They were INTERNAL with a traceback in the hub's log (the database driver's overflow)."""
    fleet, good = guarded
    caplog.set_level(logging.INFO, logger="hub.link")
    cases = {"seq-2^63": "seq 9223372036854775808", "seq-2^64-1": "seq 18446744073709551615",
             "after-9999": "seq 2: created_at", "before-1": "seq 2: created_at", "kind-65": "seq 2: kind",
             "kind-empty": "seq 2: kind", "nan": "seq 2: payload"}
    for case, says in cases.items():
        ch, call = await raw_call(fleet)
        async with ch:
            await send(call, hello("bad", case), bad_report(case))
            assert await finish(call) == grpc.StatusCode.INVALID_ARGUMENT, case
            assert says in await call.details(), (case, await call.details())
        node = await fleet.hub.store.get_node("bad", case)
        assert await fleet.hub.store.reports(node.id) == [], f"{case}: half the batch stored"
    assert "Traceback" not in caplog.text and "INTERNAL" not in caplog.text


async def test_acks_for_objects_not_meant_for_the_node_are_refused(guarded):
    """Applied acks were stored as rows for any object id; now only for what the node was sent
    (or, crossing a change, what is or lately was meant for it: a tombstone of its own object)."""
    fleet, good = guarded
    theirs = await fleet.put("Config", "theirs", {"x": 1}, site="par")
    gone = await fleet.put("Config", "gone-theirs", {"x": 1}, site="par")
    await fleet.delete("Config", "gone-theirs")
    mine = await fleet.put("Config", "mine", {"x": 1}, site="raw")
    await eventually(lambda: fleet.hub.broker.version >= mine.version, what="the broker to see the objects")

    def applied(obj_id: str, version: int = 0, deleted: bool = False) -> agent_pb2.AgentMessage:
        return agent_pb2.AgentMessage(applied=agent_pb2.Applied(object_id=obj_id, version=version, deleted=deleted,
                                                                ok=True))

    refused = {
        "other-node": applied(theirs.id, theirs.version),
        "other-node-deletion": applied(theirs.id, deleted=True),
        "other-node-tombstone": applied(gone.id, deleted=True),
        "unknown": applied("0" * 32, 1),
        "newer-than-sent": applied(mine.id, mine.version + 5),
    }
    for i, (case, msg) in enumerate(refused.items()):
        ch, call = await raw_call(fleet)
        async with ch:
            await send(call, hello("raw", f"n{i}"), msg)
            assert await finish(call) == grpc.StatusCode.PERMISSION_DENIED, case
            assert "never meant for raw/" in await call.details(), case
    await fleet.hub.recorder.flush()
    rows = await fleet.hub.store.applied_rows()
    good_node = await fleet.hub.store.get_node("good", "n1")
    assert {r.node_id for r in rows} <= {good_node.id}, "no junk rows for refused acks"

    # What the node was meant for is acknowledged, also across its deletion.
    ch, call = await raw_call(fleet)
    async with ch:
        await send(call, hello("raw", "ok"))
        assert (await call.read()).WhichOneof("msg") == "welcome"
        assert [o.name for o in (await call.read()).desired.upserts] == ["mine"]
        await fleet.delete("Config", "mine")
        assert list((await asyncio.wait_for(call.read(), WAIT)).desired.deletes) == [mine.id]
        # The upsert's ack arrives after the deletion (it was applying), then the deletion's.
        await send(call, applied(mine.id, mine.version), applied(mine.id, deleted=True), batch(1))
        while (m := await asyncio.wait_for(call.read(), WAIT)).WhichOneof("msg") != "report_ack":
            pass
        assert list(m.report_ack.seqs) == [1], "the stream is still open: both acks were accepted"
        call.cancel()


async def test_oversized_batch_is_invalid_argument_and_nothing_is_stored(guarded):
    fleet, good = guarded
    ch, call = await raw_call(fleet)
    async with ch:
        await send(call, hello("bad", "x"), batch(*range(1, SMALL.max_reports_per_batch + 2)))
        assert await finish(call) == grpc.StatusCode.INVALID_ARGUMENT
    node = await fleet.hub.store.get_node("bad", "x")
    assert await fleet.hub.store.reports(node.id) == []


async def test_replayed_batch_is_acked_and_stored_once(guarded):
    fleet, good = guarded
    ch, call = await raw_call(fleet)
    async with ch:
        await send(call, hello("rep", "x"))
        assert (await call.read()).WhichOneof("msg") == "welcome"
        acks = []
        for seqs in [(1, 2, 3), (2, 3, 4), (1, 2, 3, 4)]:
            await call.write(batch(*seqs))
            while (m := await asyncio.wait_for(call.read(), WAIT)).WhichOneof("msg") != "report_ack":
                pass
            acks.append(tuple(m.report_ack.seqs))
        assert acks == [(1, 2, 3), (2, 3, 4), (1, 2, 3, 4)]  # every re-send is acknowledged again
        call.cancel()
    node = await fleet.hub.store.get_node("rep", "x")
    assert [r.seq for r in await fleet.hub.store.reports(node.id)] == [1, 2, 3, 4]
    assert (node.reports_received, node.reports_duplicate) == (4, 2 + 4)


async def test_oversized_message_is_resource_exhausted(guarded):
    fleet, good = guarded
    big = hello("big", "x")
    big.hello.inventory.labels["junk"] = "x" * (SMALL.max_message_bytes + 1)
    ch, call = await raw_call(fleet)
    async with ch:
        await send(call, big)
        assert await finish(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await fleet.hub.store.get_node("big", "x") is None


async def test_rate_limit_is_resource_exhausted(guarded, caplog):
    fleet, good = guarded
    ch, call = await raw_call(fleet)
    async with ch:
        await send(call, hello("chatty", "x"), *[heartbeat() for _ in range(SMALL.burst + 20)])
        assert await finish(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "messages/s" in caplog.text


async def test_client_that_never_reads_is_closed_with_resource_exhausted(guarded, caplog):
    fleet, good = guarded
    # No BDP probing: the client's transport keeps a small window instead of buffering megabytes.
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{fleet.agent_port}", options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    ) as ch:
        call = agent_pb2_grpc.AgentLinkStub(ch).Connect()
        await send(call, hello("slow", "n1"))
        await eventually(lambda: ("slow", "n1") in fleet.hub.broker.sessions, what="the non-reader's session")
        session = fleet.hub.broker.sessions[("slow", "n1")]
        # Large objects meant only for the non-reader fill the transport window, then its send queue.
        blob = "x" * 100_000
        for i in range(60):
            await fleet.put("Config", f"big-{i}", {"blob": blob}, site="slow")
            if session.closed.is_set():
                break
        assert session.closed.is_set(), "the hub kept queueing for an agent that never reads"
        assert session.queue.qsize() == SMALL.send_queue, "bounded by the send queue"
        assert await finish(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "not reading its stream" in caplog.text
    assert not any(n.startswith("big-") for n in good.held_names()), "big objects went nowhere else"


async def test_hello_timeout(guarded):
    fleet, good = guarded
    ch, call = await raw_call(fleet)
    async with ch:
        # Open the stream but say nothing.
        assert await finish(call) == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_garbage_then_disconnect(guarded):
    fleet, good = guarded
    # Bytes that are not an AgentMessage, on a real gRPC stream, then hang up.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{fleet.agent_port}") as ch:
        raw = ch.stream_stream("/fleet.v1.AgentLink/Connect", request_serializer=lambda b: b, response_deserializer=lambda b: b)
        call = raw()
        await send(call, b"\xff\xff\xff\xff\x0f garbage")
        code = await finish(call)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), code
        call2 = raw()
        await send(call2, b"\x0a\x02\xff")  # truncated hello
        call2.cancel()
    # Not even HTTP/2: a TCP client that writes junk and disconnects.
    reader, writer = await asyncio.open_connection("127.0.0.1", fleet.agent_port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    assert set(await fleet.nodes()) == {("good", "n1")}


# -- mTLS identity ---------------------------------------------------------------


@pytest.fixture
async def secure_guarded(make_fleet, caplog):
    caplog.set_level(logging.WARNING, logger="hub.link")
    fleet = await make_fleet(secure=True, limits=SMALL)
    good = fleet.start_agent("good", "n1")
    await good.resynced()
    yield fleet, good
    await fleet.assert_serving(good)


def agent_creds(pki: Path, site: str, node: str, ca_dir: Path | None = None) -> grpc.ChannelCredentials:
    cert, key = certs.agent_paths(pki, site, node)
    return grpc.ssl_channel_credentials(
        root_certificates=((ca_dir or pki) / "ca.pem").read_bytes(),
        private_key=key.read_bytes(),
        certificate_chain=cert.read_bytes(),
    )


async def test_certificate_for_one_identity_claiming_another_is_permission_denied(secure_guarded, pki, caplog):
    fleet, good = secure_guarded
    for claim in [("par", "a"), ("fra", "b"), ("good", "n1")]:
        ch, call = await raw_call(fleet, agent_creds(pki, "fra", "a"))
        async with ch:
            await send(call, hello(*claim))
            assert await finish(call) == grpc.StatusCode.PERMISSION_DENIED, claim
    assert set(await fleet.nodes()) == {("good", "n1")}
    assert "PERMISSION_DENIED" in caplog.text and "certificate is for fra/a" in caplog.text
    # The matching identity is accepted on the same certificate.
    ch, call = await raw_call(fleet, agent_creds(pki, "fra", "a"))
    async with ch:
        await send(call, hello("fra", "a"))
        assert (await asyncio.wait_for(call.read(), WAIT)).WhichOneof("msg") == "welcome"
        call.cancel()


async def test_no_client_certificate_or_foreign_ca_cannot_connect(secure_guarded, pki, tmp_path):
    fleet, good = secure_guarded
    ca_only = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.pem").read_bytes())
    ch, call = await raw_call(fleet, ca_only)
    async with ch:
        await send(call, hello("fra", "a"))
        assert await finish(call) == grpc.StatusCode.UNAVAILABLE
    # A certificate from another CA, even for a real identity.
    other = tmp_path / "other-ca"
    certs.init_ca(other)
    certs.issue_agent(other, "fra", "a")
    cert, key = certs.agent_paths(other, "fra", "a")
    foreign = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(), private_key=key.read_bytes(), certificate_chain=cert.read_bytes()
    )
    ch, call = await raw_call(fleet, foreign)
    async with ch:
        await send(call, hello("fra", "a"))
        assert await finish(call) == grpc.StatusCode.UNAVAILABLE
    assert await fleet.hub.store.get_node("fra", "a") is None


# -- admin ---------------------------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["insecure", "tls"])
async def test_admin_requires_the_bearer_token(make_fleet, secure):
    fleet = await make_fleet(secure=secure)
    for md in [None, [("authorization", "Bearer wrong-token-0123456789")], [("authorization", TOKEN)],
               [("authorization", f"bearer {TOKEN}")]]:
        for rpc, req in [(fleet.admin.ListSites, admin_pb2.ListSitesRequest()),
                         (fleet.admin.PutObject, admin_pb2.PutObjectRequest(kind="Config", name="x"))]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await rpc(req, metadata=md, timeout=WAIT)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await fleet.hub.store.live_objects() == [], "a refused PutObject must not write"
    assert (await fleet.admin.ListSites(admin_pb2.ListSitesRequest(), metadata=fleet.md)).sites == []


async def test_admin_rejects_bad_names_and_unknown_deletes(make_fleet):
    fleet = await make_fleet()
    for kind, name in [("config", "x"), ("Config", "Bad_Name"), ("Config", ""), ("", "x")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await fleet.put(kind, name)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await fleet.delete("Config", "nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert await fleet.hub.store.current_version() == 0


async def test_a_hello_counts_as_applied_only_what_it_says_it_holds(make_fleet):
    """The other side of recovering lost acks from a Hello: an object the agent was just sent but
    has not applied (its model still loading) is not applied, whatever the hub queued for it."""
    fleet = await make_fleet()
    one = await fleet.put("Config", "one", {"x": 1}, site="raw")
    two = await fleet.put("Config", "two", {"x": 2}, site="raw")
    await eventually(lambda: fleet.hub.broker.version >= two.version, what="the broker to see both objects")
    ch, call = await raw_call(fleet)
    async with ch:
        await send(call, hello("raw", "n", **{one.id: one.version}))
        assert (await call.read()).WhichOneof("msg") == "welcome"
        resync = (await call.read()).desired
        assert [o.name for o in resync.upserts] == ["two"]
        await fleet.hub.recorder.flush()
        node = await fleet.hub.store.get_node("raw", "n")
        rows = {(r.object_id, r.version) for r in await fleet.hub.store.applied_rows() if r.node_id == node.id}
        assert rows == {(one.id, one.version)}, "only what the Hello holds; `two` waits for its ack"
        assert two.id not in {o for o, _ in rows}
        call.cancel()


async def test_report_writer_commits_concurrent_batches_together_and_isolates_a_refused_one(store):
    """Group commit: batches that arrive together share a transaction; when the database refuses one
    batch of a group, the others are still stored (one by one) and only that stream gets the error.
    Two batches of one stream never share a transaction (the second waits for the next group)."""
    from datetime import UTC, datetime

    from sqlalchemy.exc import DBAPIError

    from hub.link import ReportWriter
    from hub.store.repo import IncomingReport

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    a = await store.register_node("fra", "a", "1", {}, t0)
    b = await store.register_node("fra", "b", "1", {}, t0)
    calls: list[int] = []
    real = store.store_report_batches

    async def counting(batches):
        calls.append(len(batches))
        return await real(batches)

    store.store_report_batches = counting
    writer = ReportWriter(store)

    def reps(kind: str, *seqs: int) -> list[IncomingReport]:
        return [IncomingReport(s, kind, t0, {"s": s}) for s in seqs]

    got = await asyncio.gather(writer.write(a.id, "i", reps("t", 1, 2), t0), writer.write(b.id, "i", reps("t", 1), t0),
                               writer.write(a.id, "i", reps("t", 2, 3), t0))
    assert [(r.new, r.duplicate) for r in got] == [((1, 2), ()), ((1,), ()), ((3,), (2,))]
    assert calls == [2, 1], "the first two in one transaction; a's second batch in the next"
    calls.clear()
    ok, bad = await asyncio.gather(writer.write(b.id, "i", reps("t", 2), t0),
                                   writer.write(a.id, "i", reps("k" * 65, 4), t0), return_exceptions=True)
    assert isinstance(bad, DBAPIError)
    assert (ok.new, ok.duplicate) == ((2,), ())
    assert calls == [2, 1, 1]
    assert await store.report_counts() == {a.id: (3, 3), b.id: (2, 2)}
