"""A real Hub (SQLite, insecure, port 0) and real Agents in Kubernetes mode,
in the test's event loop, against the session's kube-apiserver."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from hub.config import HubConfig
from hub.placement.model import Assignment, Placement
from hub.publish import MANAGED_KINDS
from hub.server import Hub
from protos.fleet.v1 import admin_pb2, admin_pb2_grpc

TOKEN = "test-admin-token-0123456789"
WAIT = 15.0

GPU_LABELS = {
    "nvidia.com/gpu.present": "true",
    "nvidia.com/gpu.product": "NVIDIA-L4",
    "nvidia.com/gpu.memory": "23034",
    "nvidia.com/gpu.count": "2",
    "topology.kubernetes.io/region": "eu-west",
    "topology.kubernetes.io/zone": "eu-west-a",
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def eventually(cond: Callable[[], Any], timeout: float = WAIT, what: str = "condition", interval: float = 0.05) -> Any:
    """Poll a sync or async predicate until truthy; return its value."""
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
        await asyncio.sleep(interval)


async def no_leaks() -> None:
    """Fail a test that leaves asyncio tasks or agent threads running."""
    gc.collect()
    current = asyncio.current_task()
    for _ in range(40):
        tasks = {t for t in asyncio.all_tasks() if t is not current and not t.done()}
        threads = [t for t in threading.enumerate() if t.name.startswith(("node-watch-", "managed-servers"))]
        if not tasks and not threads:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"test leaked tasks {sorted(repr(t.get_coro()) for t in tasks)} or threads {threads}")


def create_gpu_node(core: Any, name: str, labels: dict[str, str] | None = None, gpus: str | None = "2") -> None:
    from kubernetes import client

    core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=name, labels=GPU_LABELS if labels is None else labels),
            spec=client.V1NodeSpec(taints=[client.V1Taint(key="nvidia.com/gpu", value="present", effect="NoSchedule")]),
        )
    )
    if gpus is not None:
        res = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": gpus}
        core.patch_node_status(name, {"status": {"capacity": res, "allocatable": res}})


class Fleet:
    """One hub and its admin client; agents started in Kubernetes mode."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.hub: Hub | None = None
        self.channel: grpc.aio.Channel | None = None
        self.admin: admin_pb2_grpc.AdminStub | None = None
        self.agent_port = 0
        self.admin_port = 0
        self.agents: list[tuple[Agent, asyncio.Event, asyncio.Task]] = []

    async def start(self) -> None:
        self.hub = Hub(
            HubConfig(
                db_url=f"sqlite:///{self.tmp / 'hub.db'}", agent_listen="127.0.0.1:0", admin_listen="127.0.0.1:0",
                insecure=True, admin_token=TOKEN, heartbeat_interval_s=0.5, stale_after_s=5.0,
                unreachable_after_s=20.0, poll_interval_s=0.05, flush_interval_s=0.02,
            )
        )
        ports = await self.hub.start()
        self.agent_port = ports.agent
        self.admin_port = ports.admin
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports.admin}")
        self.admin = admin_pb2_grpc.AdminStub(self.channel)

    def config(self, node: str, kubeconfig: Path, *, site: str = "k8s", **kw: Any) -> AgentConfig:
        return AgentConfig(
            hub=kw.pop("hub", f"127.0.0.1:{self.agent_port}"), site=site, node=node,
            data_dir=kw.pop("data_dir", self.tmp / "agents" / node), insecure=True,
            country="DE", jurisdiction="EU", kubernetes=True, kubeconfig=kubeconfig, health_port=0,
            backoff_initial_s=0.05, backoff_max_s=0.5, **kw,
        )

    async def start_agent(self, cfg: AgentConfig) -> Agent:
        agent = Agent(cfg, probe_gpus=False)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        self.agents.append((agent, stop, task))
        await eventually(lambda: agent.health is None or agent.health.port, what="agent started")
        return agent

    async def stop_agent(self, agent: Agent) -> None:
        for entry in list(self.agents):
            if entry[0] is agent:
                entry[1].set()
                await asyncio.wait_for(entry[2], WAIT)
                self.agents.remove(entry)

    async def close(self) -> None:
        try:
            for agent, _, task in list(self.agents):
                try:
                    await self.stop_agent(agent)
                except Exception:  # noqa: BLE001 - teardown stops everything it can
                    task.cancel()
        finally:
            if self.channel is not None:
                await self.channel.close()
            if self.hub is not None:
                await self.hub.stop(grace=0.2)

    # -- admin ------------------------------------------------------------

    @property
    def md(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {TOKEN}")]

    async def nodes(self) -> dict[str, admin_pb2.NodeView]:
        assert self.admin is not None
        resp = await self.admin.ListNodes(admin_pb2.ListNodesRequest(), metadata=self.md, timeout=WAIT)
        return {n.node: n for n in resp.nodes}

    async def node(self, name: str) -> admin_pb2.NodeView | None:
        return (await self.nodes()).get(name)

    async def put(self, kind: str, name: str, spec: dict, site: str = "", node: str = "") -> Any:
        assert self.admin is not None
        if kind in MANAGED_KINDS:
            # The admin API refuses revision-managed kinds (only revisions change them); these tests
            # hand-write single Placements, so they go straight into the hub's store and the broker
            # pushes them like any revision's objects.
            assert self.hub is not None
            obj = await self.hub.store.put_object(kind, name, spec, site, node, now=datetime.now(UTC))
            self.hub.broker.poke()
            return obj
        s = Struct()
        s.update(spec)
        req = admin_pb2.PutObjectRequest(kind=kind, name=name, spec=s, target=admin_pb2.ObjectTarget(site=site, node=node))
        return (await self.admin.PutObject(req, metadata=self.md, timeout=WAIT)).object

    async def delete(self, kind: str, name: str) -> None:
        assert self.admin is not None
        if kind in MANAGED_KINDS:
            assert self.hub is not None
            await self.hub.store.delete_object(kind, name, now=datetime.now(UTC))
            self.hub.broker.poke()
            return
        await self.admin.DeleteObject(admin_pb2.DeleteObjectRequest(kind=kind, name=name), metadata=self.md, timeout=WAIT)


def assignment(node: str, service: str = "assistant-eu", *, replicas: int = 2, gpus: int = 1, site: str = "k8s",
               model: str = "assistant", version: str = "v3", share: float = 1.0, region: str = "eu-central",
               shard: int = 0) -> Assignment:
    """One assignment as the hub's planner makes it."""
    return Assignment(
        service=service, region=region, shard=shard, shards=1, model=model, version=version, site=site, pool="l4",
        node=node, gpu_type="L4", replicas=replicas, gpus_per_replica=gpus, memory_per_replica=17179869184.0,
        gpus=tuple(tuple(range(i * gpus, (i + 1) * gpus)) for i in range(replicas)), gpu_share=share, rate=12.5,
        rtt=0.002, ttft_p95=0.31, tpot_p95=0.04, residency="EU",
    )


def placement(node: str, *assignments: Assignment, site: str = "k8s") -> dict:
    """The Placement spec the hub publishes to `node` (hub.placement.model.Placement.agent_specs)."""
    return Placement(tuple(assignments or (assignment(node, site=site),))).agent_specs()[(site, node)]


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body
