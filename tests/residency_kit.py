"""An agent's link and door from real parts, fed hub messages by hand (no hub, no torch).

Real :class:`~edge_agent.link.HubLink` (its ``_reader``, lanes and acks), real
:class:`~edge_agent.state.LocalState`, the serving layer's real appliers, real
:class:`~edge_agent.serving.gateway.Gateway` and :class:`~edge_agent.serving.models.ModelRegistry`;
only the model backends are stand-ins whose loads block until a test releases them.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.struct_pb2 import Struct

from edge_agent.config import AgentConfig
from edge_agent.inventory import Inventory
from edge_agent.link import HubLink
from edge_agent.serving.appliers import appliers
from edge_agent.serving.errors import Forbidden, ServingError
from edge_agent.serving.gateway import Gateway
from edge_agent.serving.models import Backend, ModelRegistry
from edge_agent.serving.residency import Location
from edge_agent.serving.telemetry import Telemetry
from edge_agent.state import LocalState
from protos.fleet.v1 import agent_pb2, types_pb2


class StandInBackend(Backend):
    def __init__(self, model: str, version: str) -> None:
        self.model, self.version = model, version
        self.closed = False

    def close(self) -> None:
        self.closed = True


class GatedLoads:
    """A backend factory whose loads of a (model, version) block until ``release``d (or all are)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.gates: dict[tuple[str, str], threading.Event] = {}
        self.started: list[tuple[str, str]] = []
        self.made: list[StandInBackend] = []
        self.fast: set[str] = set()
        """Models whose loads do not block."""
        self._all = threading.Event()

    def gate(self, model: str, version: str) -> threading.Event:
        with self._lock:
            return self.gates.setdefault((model, version), threading.Event())

    def release(self, model: str, version: str) -> None:
        self.gate(model, version).set()

    def release_all(self) -> None:
        self._all.set()
        for g in list(self.gates.values()):
            g.set()

    def __call__(self, model: str, version: str) -> Backend:
        self.started.append((model, version))
        if model not in self.fast:
            g = self.gate(model, version)
            while not (g.is_set() or self._all.is_set()):
                g.wait(0.05)
        b = StandInBackend(model, version)
        self.made.append(b)
        return b


class FakeCall:
    """The hub's side of the stream, as ``HubLink._reader`` reads it."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue = asyncio.Queue()

    async def read(self) -> Any:
        return await self.inbox.get()

    def send(self, upd: agent_pb2.DesiredUpdate) -> None:
        self.inbox.put_nowait(agent_pb2.HubMessage(desired=upd))

    def end(self) -> None:
        self.inbox.put_nowait(grpc.aio.EOF)


class Hub:
    """Makes desired objects with stable ids and rising versions, as the hub's store does."""

    def __init__(self) -> None:
        self.versions = itertools.count(1)
        self.ids: dict[tuple[str, str], str] = {}

    def obj(self, kind: str, name: str, spec: dict) -> types_pb2.DesiredObject:
        oid = self.ids.setdefault((kind, name), str(uuid.uuid4()))
        st = Struct()
        st.update(spec)
        return types_pb2.DesiredObject(id=oid, kind=kind, name=name, version=next(self.versions), spec=st)

    def upsert(self, kind: str, name: str, spec: dict, resync: bool = False) -> agent_pb2.DesiredUpdate:
        return agent_pb2.DesiredUpdate(upserts=[self.obj(kind, name, spec)], resync_complete=resync)

    def delete(self, kind: str, name: str) -> agent_pb2.DesiredUpdate:
        return agent_pb2.DesiredUpdate(deletes=[self.ids[(kind, name)]])


def placement(model: str, version: str = "v1", data_class: str = "personal") -> dict:
    return {"assignments": [{"service": model, "model": model, "version": version, "dataClass": data_class}]}


def policy(data_class: str = "personal", **allow: Any) -> dict:
    return {"dataClass": data_class, "allow": allow}


def location(site: str, country: str, *jurisdictions: str) -> dict:
    return {"site": site, "country": country, "jurisdictions": list(jurisdictions)}


class Node:
    """One agent: link, state, door. ``start()`` runs the real reader on a fake stream."""

    def __init__(self, data_dir: Path, *, site: str = "iad-1", country: str = "", jurisdiction: str = "",
                 load_timeout_s: float = 900.0) -> None:
        self.cfg = AgentConfig(hub="127.0.0.1:1", site=site, node="n", data_dir=data_dir, insecure=True,
                               country=country, jurisdiction=jurisdiction, model_load_timeout_s=load_timeout_s)
        self.state = LocalState(data_dir)
        self.loads = GatedLoads()
        self.registry = ModelRegistry(self.loads, "n", country, drain_timeout_s=0.0)
        self.reports: list[tuple[str, dict]] = []
        self.gateway = Gateway(Location(site, country, jurisdiction), self.registry, Telemetry(site, "n"),
                               lambda k, p: self.reports.append((k, p)))
        self.link = HubLink(self.cfg, self.state, lambda: Inventory(gpus=(), source="test"), appliers(self.gateway))
        self.gateway.on_error = self.link.status.error
        self.call = FakeCall()
        self.outq: asyncio.Queue = asyncio.Queue()
        self.acks: list[agent_pb2.Applied] = []
        self._reader: asyncio.Task | None = None
        self._pump: asyncio.Task | None = None

    def start(self) -> Node:
        self._reader = asyncio.create_task(self.link._reader(self.call, self.outq, {}))
        self._pump = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        while True:
            msg = await self.outq.get()
            if msg.WhichOneof("msg") == "applied":
                self.acks.append(msg.applied)

    def send(self, upd: agent_pb2.DesiredUpdate) -> None:
        self.call.send(upd)

    async def acked(self, object_id: str, version: int | None = None, timeout: float = 30.0) -> agent_pb2.Applied:
        """The ack of ``object_id`` (at ``version``), waiting for it."""
        async with asyncio.timeout(timeout):
            while True:
                for a in self.acks:
                    if a.object_id == object_id and (version is None or a.version == version or a.deleted):
                        return a
                await asyncio.sleep(0.005)

    def admits(self, data_class: str, model: str = "m") -> bool:
        """Through the real door: True when let in, False when refused for residency."""
        try:
            self.gateway.admit(model, data_class, None)
        except Forbidden:
            return False
        except ServingError:
            return True  # past residency (e.g. the model is not loaded yet)
        return True

    async def stop(self) -> None:
        self.loads.release_all()
        self.link._stop.set()
        await self.link._close_lanes()
        for t in (self._reader, self._pump):
            if t is not None:
                t.cancel()
        await asyncio.gather(*(t for t in (self._reader, self._pump) if t is not None), return_exceptions=True)
        self.registry.close()
        self.state.close()
