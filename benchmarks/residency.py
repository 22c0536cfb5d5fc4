"""Residency: how fast a tightened ResidencyPolicy is *enforced* at N agents' doors while each agent's
model load hangs.

    python -m benchmarks.residency --agents 1000

A real hub (`fleet hub serve --insecure`, SQLite in a temporary directory) runs in its own process
group. Revision 1 is the shipped bundle (fleet_configs/, policies/) with policy `germany-only`
loosened to `allow: anywhere`; it is applied with Admin.Apply, the RPC behind `fleet apply`. N agents
at site iad-1 (US) connect and resync. Each then starts a model load that hangs until the end (a
Placement on its own lane, whose backend factory blocks). Revision 2, the shipped bundle (germany-only:
DE only), is then applied with Admin.Apply, while requests of data class `personal-de` flow through
every agent's door. Per agent, enforcement is the moment its door refuses `personal-de`: the moment
the agent's real ResidencyPolicy applier has put the new rule in force and it is held (the link's
`on_applied`); latency = that moment - the start of the Apply RPC (one clock: one machine).
`admitted_after_enforcement` counts requests the door let in after that moment (must be 0).

What is real and what is simulated: each agent runs the real agent-side code for applying what the
hub sends and for admission: `edge_agent.link.HubLink._reader`/`_apply` and its lanes, a real
`LocalState` (SQLite) per agent, the serving layer's appliers, `Gateway` (the door) and
`ModelRegistry`. The transport is cheap: real gRPC streams to the real hub (100 per HTTP/2
connection, as benchmarks/_sim.py does), but a minimal Hello and no heartbeats, report sending or
reconnects (HubLink._session/_sender are not run), and the model backends are stand-ins (no torch).
All agents share one process and event loop, so the figures include queueing behind each other.

Baseline: before this change, updates went through one serial apply step and loads had no timeout,
so with a load hanging the tightened policy was never enforced (admitted requests unbounded).

The hub publishes a policy change in a revision of its own before it plans placements
(`hub.revisions`): `policy_revision` and `placement_revision` are the two revisions of the Apply;
`apply_rpc_s` (the whole RPC) includes planning, which the enforcement figures no longer wait for.

Prints one JSON line: enforce_p50_s, enforce_p99_s, enforce_max_s (from the start of the Apply RPC),
receive_min_s/p50_s/p99_s (the update reaching the agents' links: the first agent's is about when the
hub published the policy revision, the spread after it is the fan-out), agent_receive_to_enforce_p99_s/
max_s (the agent-side part: received to enforced, hanging loads notwithstanding),
admitted_after_enforcement, agents, enforced (agents that enforced within --timeout), requests,
apply_rpc_s, policy_revision, placement_revision, load_avg_1m (os.getloadavg at the end: the machine's
other work skews every figure), cpu_window_s/cpu_hub_s/cpu_planner_s/cpu_agents_s (CPU seconds each
side used from the start of the Apply until the last agent enforced, or --timeout: where the time went),
case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._sim import AUTH, HubProcess, admin_stub, percentile, raise_nofile, setup_logging

log = logging.getLogger("benchmarks")
ROOT = Path(__file__).resolve().parents[1]
SITE = "iad-1"
POLICY = "germany-only"
DATA_CLASS = "personal-de"


def bundles() -> tuple[str, str]:
    """(loose, strict) bundle JSON: the shipped bundle with germany-only allowing anywhere, and as shipped."""
    from hub.policy import load_bundle

    strict = load_bundle([ROOT / "fleet_configs", ROOT / "policies"]).to_json()
    items = json.loads(strict)
    for r in items:
        if r["kind"] == "ResidencyPolicy" and r["metadata"]["name"] == POLICY:
            r["spec"]["allow"] = {"anywhere": True}
    return json.dumps(items), strict


class Agent:
    """One agent's real link reader and door over a cheap stream."""

    def __init__(self, i: int, data_dir: Path, hub: str, gate: threading.Event) -> None:
        from edge_agent.config import AgentConfig
        from edge_agent.inventory import Inventory
        from edge_agent.link import HubLink
        from edge_agent.serving.appliers import appliers
        from edge_agent.serving.gateway import Gateway
        from edge_agent.serving.models import Backend, ModelRegistry
        from edge_agent.serving.residency import Location
        from edge_agent.serving.telemetry import Telemetry
        from edge_agent.state import LocalState

        class StandIn(Backend):
            def __init__(self, model: str, version: str) -> None:
                self.model, self.version = model, version

        def hanging_load(model: str, version: str) -> Backend:
            gate.wait()
            return StandIn(model, version)

        self.i = i
        self.node = f"bench-{i}"
        self.cfg = AgentConfig(hub=hub, site=SITE, node=self.node, data_dir=data_dir, insecure=True)
        self.state = LocalState(data_dir)
        self.registry = ModelRegistry(hanging_load, self.node, drain_timeout_s=0.0)
        self.gateway = Gateway(Location(SITE), self.registry, Telemetry(SITE, self.node), lambda k, p: None)
        self.link = HubLink(self.cfg, self.state, lambda: Inventory(gpus=(), source="bench"), appliers(self.gateway))
        self.link.on_applied = self._applied
        self.received_at: float | None = None
        """When the tightened policy reached this agent's link (its reader handed it to _apply)."""
        apply = self.link._apply

        def stamped(upd):
            if (self.strict_after and self.received_at is None
                    and any(o.kind == "ResidencyPolicy" and o.name == POLICY for o in upd.upserts)):
                self.received_at = time.time()
            return apply(upd)

        self.link._apply = stamped  # type: ignore[method-assign]
        self.strict_after = 0
        """Versions of germany-only above this one are the tightened policy."""
        self.enforced_at: float | None = None
        self.admitted_after = 0
        self.loose_version = 0
        self.call = None
        self.tasks: list[asyncio.Task] = []

    def _applied(self, obj) -> None:
        if obj.kind == "ResidencyPolicy" and obj.name == POLICY:
            if not self.strict_after:
                self.loose_version = obj.version
            elif obj.version > self.strict_after and self.enforced_at is None:
                self.enforced_at = time.time()

    async def connect(self, stub) -> None:
        import grpc

        from protos.fleet.v1 import agent_pb2, types_pb2

        call = self.call = stub.Connect()
        await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(
            identity=types_pb2.AgentIdentity(site=SITE, node=self.node, agent_version="bench"),
            inventory=types_pb2.Inventory(region="us-east"), held=self.state.held(),
            incarnation=f"bench{self.i:08d}")))
        first = await call.read()
        if first is grpc.aio.EOF or first.WhichOneof("msg") != "welcome":
            raise ConnectionError(f"agent {self.i}: no welcome")
        outq: asyncio.Queue = asyncio.Queue()

        async def writer() -> None:
            while True:
                await call.write(await outq.get())

        self.tasks = [asyncio.create_task(self.link._reader(call, outq, {})), asyncio.create_task(writer())]

    def start_hanging_load(self) -> None:
        from edge_agent.state import LocalObject

        spec = {"assignments": [{"service": "chat", "model": "big", "version": "v1", "dataClass": DATA_CLASS}]}
        self.link._enqueue(f"bench-load-{self.i}", LocalObject(f"bench-load-{self.i}", "Placement", self.node,
                                                              1, spec))

    def request(self) -> bool:
        """One personal-de request through the door; True when let in past residency."""
        from edge_agent.serving.errors import Forbidden, ServingError

        t = time.time()
        try:
            self.gateway.admit("chat", DATA_CLASS, None)
        except Forbidden:
            return False
        except ServingError:
            pass  # past residency; the model is still loading
        if self.enforced_at is not None and t >= self.enforced_at:
            self.admitted_after += 1
        return True

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.call is not None:
            self.call.cancel()
        self.link._stop.set()
        await self.link._close_lanes()
        self.registry.close()
        self.state.close()


def cpu_seconds(hub: HubProcess) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the hub's main process, its children (the planning
    process), and this process (every simulated agent and the request traffic)."""
    import psutil

    def used(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    out = {"hub": 0.0, "planner": 0.0, "agents": used(psutil.Process())}
    if hub.proc is not None:
        try:
            main = psutil.Process(hub.proc.pid)
            out["hub"] = used(main)
            out["planner"] = sum(used(c) for c in main.children(recursive=True))
        except psutil.Error:
            pass
    return out


def two_step(resp) -> bool:
    """Whether the Apply stored its policies in a revision of their own (False from a hub without that)."""
    return "policy_revision" in resp.DESCRIPTOR.fields_by_name and resp.HasField("policy_revision")


async def apply(addr: str, bundle_json: str, solver: str) -> object:
    from protos.fleet.v1 import admin_pb2

    ch, stub = admin_stub(addr)
    async with ch:
        return await stub.Apply(admin_pb2.ApplyRequest(bundle_json=bundle_json, author="bench", message="residency",
                                                       solver=solver), metadata=AUTH, timeout=600)


async def run(args, hub: HubProcess, tmp: Path) -> dict:
    import grpc

    from protos.fleet.v1 import agent_pb2_grpc

    loose, strict = bundles()
    r1 = await apply(hub.admin_addr, loose, args.solver)
    log.info("revision %d applied (germany-only: anywhere)", r1.revision.number)
    gate = threading.Event()
    agents = [Agent(i, tmp / f"a{i}", hub.agent_addr, gate) for i in range(args.agents)]
    channels = [grpc.aio.insecure_channel(hub.agent_addr, options=[("grpc.use_local_subchannel_pool", 1),
                                                                    ("bench.channel", k)])
                for k in range(0, args.agents, 100)]
    requests = 0
    flowing = True
    try:
        t0 = time.time()
        sem = asyncio.Semaphore(100)

        async def connect(a: Agent) -> None:
            async with sem:
                await a.connect(agent_pb2_grpc.AgentLinkStub(channels[a.i // 100]))

        await asyncio.gather(*(connect(a) for a in agents))
        deadline = time.time() + args.timeout
        while not all(a.link.status.resynced.is_set() and a.loose_version for a in agents):
            if time.time() > deadline:
                raise TimeoutError("agents did not resync revision 1 in time")
            await asyncio.sleep(0.1)
        log.info("%d agents connected and resynced in %.1fs", len(agents), time.time() - t0)
        assert all(a.request() for a in agents[:10]), "revision 1 should let personal-de in at iad-1"
        for a in agents:
            a.start_hanging_load()
            a.strict_after = a.loose_version
        while sum(len(a.link._lanes) for a in agents) < len(agents):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # every load is in flight (its thread blocked in the factory)

        async def traffic() -> None:
            nonlocal requests
            while flowing:
                for k, a in enumerate(agents):
                    a.request()
                    requests += 1
                    if k % 50 == 49:
                        await asyncio.sleep(0)
                await asyncio.sleep(0)

        flow = asyncio.create_task(traffic())
        await asyncio.sleep(0.5)
        cpu0 = cpu_seconds(hub)
        t_apply = time.time()
        rpc_done: list[float] = []
        rpc = asyncio.create_task(apply(hub.admin_addr, strict, args.solver))
        rpc.add_done_callback(lambda _: rpc_done.append(time.time()))
        # Enforcement is watched while the RPC runs: the policy revision comes before planning ends.
        deadline = time.time() + args.timeout
        while time.time() < deadline and not all(a.enforced_at for a in agents):
            await asyncio.sleep(0.05)
        cpu1 = cpu_seconds(hub)
        window = time.time() - t_apply
        r2 = await rpc
        apply_rpc_s = rpc_done[0] - t_apply
        log.info("revision %d applied in %.2fs (germany-only: DE only)%s", r2.revision.number, apply_rpc_s,
                 f"; its policies first, in revision {r2.policy_revision.number}"
                 if two_step(r2) else "")
        await asyncio.sleep(0.5)  # requests keep flowing after enforcement
        flowing = False
        await flow
        still_loading = sum(1 for a in agents if a.link._lanes)
        lat = [a.enforced_at - t_apply for a in agents if a.enforced_at]
        at_agent = [a.enforced_at - a.received_at for a in agents if a.enforced_at and a.received_at]
        arrive = [a.received_at - t_apply for a in agents if a.received_at]
        return {
            "benchmark": "residency",
            "agents": args.agents,
            "enforced": len(lat),
            "enforce_p50_s": round(percentile(lat, 50), 3) if lat else None,
            "enforce_p99_s": round(percentile(lat, 99), 3) if lat else None,
            "enforce_max_s": round(max(lat), 3) if lat else None,
            "admitted_after_enforcement": sum(a.admitted_after for a in agents),
            "requests": requests,
            "apply_rpc_s": round(apply_rpc_s, 3),
            "receive_min_s": round(min(arrive), 3) if arrive else None,
            "receive_p50_s": round(percentile(arrive, 50), 3) if arrive else None,
            "receive_p99_s": round(percentile(arrive, 99), 3) if arrive else None,
            "policy_revision": r2.policy_revision.number if two_step(r2) else None,
            "placement_revision": r2.revision.number,
            "agent_receive_to_enforce_p99_s": round(percentile(at_agent, 99), 4) if at_agent else None,
            "agent_receive_to_enforce_max_s": round(max(at_agent), 4) if at_agent else None,
            "loads_hanging_at_enforcement": still_loading,
            "cpu_window_s": round(window, 3),
            "cpu_hub_s": round(cpu1["hub"] - cpu0["hub"], 3),
            "cpu_planner_s": round(cpu1["planner"] - cpu0["planner"], 3),
            "cpu_agents_s": round(cpu1["agents"] - cpu0["agents"], 3),
            "solver": args.solver,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "case": ("fleet apply (Admin.Apply) of a tightened ResidencyPolicy while every agent's model load hangs; "
                     "real hub, real agent link apply path and door per agent; transport simulated cheaply "
                     "(real gRPC streams, minimal Hello, no heartbeats/reports/reconnects), stand-in backends, "
                     "all agents in one process"),
            "baseline": "before: serial apply and no load timeout, so the policy was never enforced while a load hung",
        }
    finally:
        flowing = False
        gate.set()
        await asyncio.gather(*(a.close() for a in agents), return_exceptions=True)
        for ch in channels:
            with contextlib.suppress(Exception):
                await ch.close(None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for resync and for enforcement")
    ap.add_argument("--solver", default="greedy", choices=["auto", "greedy", "exact"],
                    help="placement solver of both applies (default greedy: planning is not what is measured)")
    args = ap.parse_args()
    setup_logging()
    logging.getLogger("edge_agent").setLevel(logging.ERROR)  # one audit line per refusal would dominate
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="fleet-residency-") as tmp:
        hub = HubProcess(Path(tmp) / "hub")
        (Path(tmp) / "hub").mkdir()
        try:
            hub.start()
            out = asyncio.run(run(args, hub, Path(tmp)))
            print(json.dumps(out), flush=True)
        finally:
            hub.stop()


if __name__ == "__main__":
    main()
