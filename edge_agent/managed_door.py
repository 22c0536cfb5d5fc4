"""The agent's door in Kubernetes external mode: requests to the agent's
OpenAI port are forwarded to the model servers the agent runs as
Deployments and Services (`edge_agent.managed`).

So residency, priority classes and telemetry stay at the agent's door (the
gateway admits a request before any backend is chosen), while the model runs
in its own pod. `ManagedBackend` is the serving registry's backend for one
(model, version): at each request it takes the current routes of that model
(the Services of the assignments that serve it, from the reconciler's last
pass) and streams from one of them, round robin.

Measured at the door, as for any external server (`ExternalServer`): TTFT,
inter-token latency, end-to-end latency, and tokens from the server's final
usage chunk. A request's GPU-seconds, which cost and carbon are computed
from, are its share of the replica's GPUs while it ran: end-to-end seconds x
GPUs per replica / requests in flight on this backend when it started (the
server batches concurrent requests; its steps are not visible from outside).

`ManagedPlacements` is the Placement applier: the managed model servers and
the door's model registry take each Placement together, the model servers'
validation first, so a spec the cluster cannot serve changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

from edge_agent.managed import ManagedServers, PlacementSpec, Route
from edge_agent.serving.errors import Unavailable
from edge_agent.serving.models import Backend, ExternalBackend, ExternalGeneration, GenRequest
from edge_agent.state import LocalObject

log = logging.getLogger(__name__)


class MeteredGeneration(ExternalGeneration):
    """An external generation that, when it ends, charges its share of the replica's GPUs."""

    def __init__(self, server: Any, model: str, req: GenRequest, gpus: float, concurrency: int) -> None:
        super().__init__(server, model, req)
        self.gpus = gpus
        self.concurrency = max(1, concurrency)
        self._charged = False

    @property
    def done(self) -> bool:
        s = self.result.stats
        return s is not None and s.finished_ns is not None

    def _charge(self) -> None:
        s = self.result.stats
        if self._charged or s is None or s.finished_ns is None:
            return
        self._charged = True
        s.gpu_seconds = (s.finished_ns - s.arrival_ns) / 1e9 * self.gpus / self.concurrency
        self.stats = s

    async def _next(self) -> str | None:
        try:
            return await super()._next()
        finally:
            self._charge()

    async def aclose(self) -> None:
        await super().aclose()
        self._charge()


class ManagedBackend(ExternalBackend):
    """One (model, version) served by the managed Services of its model (an external
    backend with one client per Service address; the serving layer closes it as one)."""

    def __init__(self, model: str, version: str, routes: Callable[[str], tuple[Route, ...]],
                 dial: Callable[[str, int], str]) -> None:
        super().__init__(model, version, "")
        self._routes = routes
        self._dial = dial
        self._rr = itertools.count()
        self._clients: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._live: list[MeteredGeneration] = []

    def _client(self, url: str) -> Any:
        from edge_agent.runtime.external import ExternalServer

        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._clients, self._loop = {}, loop
        if url not in self._clients:
            self._clients[url] = ExternalServer(url)
        return self._clients[url]

    def _running(self) -> list[MeteredGeneration]:
        self._live = [g for g in self._live if not g.done]
        return self._live

    async def start(self, req: GenRequest) -> MeteredGeneration:
        routes = self._routes(self.model)
        if not routes:
            raise Unavailable(f"model {self.model}: its model server has no Service address yet "
                              "(the agent is creating it); retry shortly")
        route = routes[next(self._rr) % len(routes)]
        gen = MeteredGeneration(self._client(self._dial(route.host, route.port)), self.model, req,
                                route.gpus_per_replica, len(self._running()) + 1)
        self._live.append(gen)
        return gen

    def gauges(self) -> tuple[int, int, float]:
        return (len(self._running()), 0, 0.0)

    def idle(self) -> bool:
        """No request in flight: the registry's drain (another thread) may close this backend."""
        return all(g.done for g in list(self._live))

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for c in clients:
            await c.aclose()

    def close(self) -> None:
        loop = self._loop
        if not self._clients or loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(self.aclose(), loop)


def backend_factory(managed: ManagedServers) -> Callable[[str, str], Backend]:
    """The serving registry's factory in Kubernetes external mode (nothing loads in the agent)."""

    def make(model: str, version: str) -> Backend:
        return ManagedBackend(model, version, managed.routes, lambda host, port: managed.dial(host, port))

    return make


class ManagedPlacements:
    """Applier for "Placement": the managed model servers, then the door's registry."""

    def __init__(self, managed: ManagedServers, door: Any) -> None:
        self.managed = managed
        self.door = door

    def apply(self, obj: LocalObject, previous: LocalObject | None) -> None:
        PlacementSpec.from_object(obj, self.managed.settings.node)  # raise: nothing changes, the hub hears
        self.door.apply(obj, previous)
        self.managed.apply(obj, previous)

    def remove(self, obj: LocalObject) -> None:
        self.managed.remove(obj)
        self.door.remove(obj)
