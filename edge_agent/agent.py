"""One agent process: local state, inventory, the hub link, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal

from edge_agent.config import AgentConfig
from edge_agent.inventory import Inventory, detect
from edge_agent.link import Applier, HubLink
from edge_agent.state import LocalState

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, cfg: AgentConfig, *, probe_gpus: bool = True, appliers: dict[str, Applier] | None = None) -> None:
        self.cfg = cfg
        self.state = LocalState(cfg.data_dir)
        self.inventory: Inventory = detect(cfg, probe=probe_gpus)
        self.kube = None  # edge_agent.kube.Kube when cfg.kubernetes
        self.pod_gpus: int | None = None  # GPUs this agent's pod holds (in-process mode in a pod), else None
        self.node_watch = None
        self.managed = None
        self.health = None
        self.serving = None  # edge_agent.serving.server.Serving when a serving port is set
        held = self.state.objects()
        if cfg.kubernetes:
            appliers = self._kubernetes(held, appliers)
        if cfg.serving:
            appliers = self._serving(appliers)
        self.link = HubLink(cfg, self.state, lambda: self.inventory, appliers)
        if held:
            # Edge autonomy: whatever was applied before a restart stays in force.
            log.info("resuming with %d objects applied before restart; %d reports queued",
                     len(held), self.state.outbox_size())

    def _kubernetes(self, held: list, appliers: dict[str, Applier] | None) -> dict[str, Applier] | None:
        """Node watch, health endpoints, and in external mode the managed model servers."""
        from edge_agent.config import ConfigError
        from edge_agent.health import DEFAULT_PORT, HealthServer
        from edge_agent.kube import Kube, KubeConfigError
        from edge_agent.node_watch import NodeWatch

        cfg = self.cfg
        try:
            self.kube = Kube.connect(cfg.kubeconfig, cfg.namespace)
        except KubeConfigError as exc:
            raise ConfigError(str(exc)) from None
        self.node_watch = NodeWatch(
            self.kube, cfg.node, self.inventory, self._node_inventory,
            on_error=lambda m: self.link.status.error(m),
            backoff_initial_s=cfg.backoff_initial_s, backoff_max_s=cfg.backoff_max_s,
        )
        port = DEFAULT_PORT if cfg.health_port is None else cfg.health_port
        had_state = bool(held)
        self.health = HealthServer(
            port, lambda: None if (self.link.status.resynced.is_set() or had_state or self.state.held())
            else "hub link not resynced yet and no local state",
        )
        if cfg.runtime_mode == "external":
            from edge_agent.managed import ManagedServers, ServerSettings

            self.managed = ManagedServers(
                self.kube,
                ServerSettings(self.kube.namespace, cfg.site, cfg.node, cfg.model_server_image, cfg.pod_name,
                               backoff_initial_s=cfg.backoff_initial_s, backoff_max_s=cfg.backoff_max_s),
                authoritative=lambda: had_state or self.link.status.resynced.is_set(),
                report=lambda kind, payload: self.link.report(kind, payload),
                on_error=lambda m: self.link.status.error(m),
            )
            self.managed.load(held)
            appliers = {"Placement": self.managed, **(appliers or {})}
        return appliers

    def _serving(self, appliers: dict[str, Applier] | None) -> dict[str, Applier]:
        """The serving layer (OpenAI HTTP, gRPC): appliers for ResidencyPolicy, PriorityClass, Placement."""
        from edge_agent.serving.residency import Location
        from edge_agent.serving.server import Serving, ServingConfig

        cfg = self.cfg
        external = cfg.runtime_mode == "external"
        self.serving = Serving(
            ServingConfig(host=cfg.serve_host, http_port=cfg.serve_port, grpc_port=cfg.grpc_port,
                          models_dir=cfg.models_dir or cfg.data_dir / "models",
                          external_url=cfg.external_url if external else "",
                          default_data_class=cfg.default_data_class,
                          default_priority_class=cfg.default_priority_class,
                          telemetry_interval_s=cfg.telemetry_interval_s, demand_interval_s=cfg.demand_interval_s,
                          data_dir=cfg.data_dir,
                          grace_s=cfg.drain_timeout_s),
            Location(cfg.site, cfg.country, cfg.jurisdiction), cfg.node,
            lambda kind, payload: self.link.report(kind, payload),
        )
        # Where this site is comes from the hub's SiteLocation; a contradiction with --country/--jurisdiction
        # is surfaced in the heartbeat's recent errors (and as an event, and in the log).
        self.serving.gateway.on_error = lambda msg: self.link.status.error(msg)
        ours: dict[str, Applier] = dict(self.serving.appliers)  # type: ignore[arg-type]
        appliers = dict(appliers or {})
        if self.managed is not None:
            ours["Placement"] = self._door_to_managed_servers(ours["Placement"])
            appliers.pop("Placement")  # the managed servers alone (from _kubernetes): now behind the door
        return {**ours, **appliers}

    def _door_to_managed_servers(self, door_placements: Applier) -> Applier:
        """Kubernetes external mode: the model servers run as managed Deployments; the agent's
        door (residency, priority, telemetry) forwards each model's requests to their Services."""
        from edge_agent.managed_door import ManagedPlacements, backend_factory

        assert self.serving is not None and self.managed is not None
        self.serving.registry.factory = backend_factory(self.managed)
        self.serving.gateway.energy = None  # this pod's NVML does not see the model servers' share
        return ManagedPlacements(self.managed, door_placements)

    async def _read_pod_gpus(self) -> None:
        """In-process mode in a pod: how many GPUs the pod holds (its engine can use no others)."""
        if self.kube is None or self.cfg.runtime_mode != "local" or not self.cfg.pod_name:
            return
        from edge_agent.inventory import pod_gpus
        from edge_agent.kube import KubeError

        try:
            pod = await asyncio.to_thread(self.kube.get_pod, self.cfg.pod_name)
        except KubeError as exc:
            log.warning("cannot read this agent's Pod %s (%s): reporting all of the node's GPUs as placeable",
                        self.cfg.pod_name, exc)
            return
        self.pod_gpus = pod_gpus(pod)

    def _node_inventory(self, inventory: Inventory) -> None:
        """The Node's inventory, capped at the GPUs this agent's pod holds (in-process mode): the
        hub must not place on GPUs the engine cannot use. The node view shows the rest as
        the label fleet.edge/gpus-not-held; request them in the DaemonSet (deploy/README.md)."""
        from edge_agent.inventory import NOT_HELD_LABEL, held_by_pod

        capped = held_by_pod(inventory, self.pod_gpus)
        if capped is not inventory and capped != self.inventory:
            msg = (f"this agent's pod holds {self.pod_gpus} of the node's {sum(g.count for g in inventory.gpus)} GPUs: "
                   f"{capped.labels[NOT_HELD_LABEL]} are not placeable; raise nvidia.com/gpu in the agent DaemonSet")
            log.warning("%s", msg)
            self.link.status.error(msg)
        self.set_inventory(capped)

    def set_inventory(self, inventory: Inventory) -> None:
        """A new inventory (e.g. from the Node object): tell the hub at once if it changed."""
        if inventory != self.inventory:
            self.inventory = inventory
            self.link.inventory_changed()

    def set_unschedulable(self, value: bool) -> None:
        """Cordon/uncordon: tell the hub at once so placements move."""
        if value != self.inventory.unschedulable:
            from dataclasses import replace

            self.inventory = replace(self.inventory, unschedulable=value)
            self.link.inventory_changed()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        if self.health is not None:
            await self.health.start()
        if self.node_watch is not None:
            await self._read_pod_gpus()
            self.node_watch.start()
            await self.node_watch.wait_synced(5.0)  # the hub's first view has the Node's GPUs
        if self.managed is not None:
            self.managed.start()
        if self.serving is not None:
            # Edge autonomy: serve what was applied before a restart (the hub resends only changes). In a
            # thread: restoring loads models and first re-verifies their weights (hashing, which may take minutes).
            for msg in await asyncio.to_thread(self.serving.restore, self.state.objects()):
                self.link.status.error(msg)
            try:
                self.serving.start()
            except OSError as exc:
                from edge_agent.config import ConfigError

                raise ConfigError(f"cannot start serving: {exc}; choose another --serve-port/--grpc-port") from None
        task = asyncio.create_task(self.link.run())
        if self.managed is not None:
            resynced = asyncio.create_task(self.link.status.resynced.wait())
            resynced.add_done_callback(lambda t: t.cancelled() or self.managed.kick())
        await stop.wait()
        self.link.stop()
        await task
        if self.serving is not None:
            self.serving.stop()  # servers drain, engines stop, the last telemetry window is queued
        if self.managed is not None:
            resynced.cancel()
            await self.managed.stop()
        if self.node_watch is not None:
            await self.node_watch.stop()
        if self.health is not None:
            await self.health.stop()
        if self.kube is not None:
            self.kube.close()
        self.state.close()


    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.run(stop)


def run_forever(cfg: AgentConfig, *, probe_gpus: bool = True) -> None:
    asyncio.run(Agent(cfg, probe_gpus=probe_gpus).run_until_signal())
