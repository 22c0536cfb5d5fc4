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
            self.kube, cfg.node, self.inventory, self.set_inventory,
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
                          telemetry_interval_s=cfg.telemetry_interval_s, data_dir=cfg.data_dir,
                          grace_s=cfg.drain_timeout_s),
            Location(cfg.site, cfg.country, cfg.jurisdiction), cfg.node,
            lambda kind, payload: self.link.report(kind, payload),
        )
        ours: dict[str, Applier] = dict(self.serving.appliers)  # type: ignore[arg-type]
        if self.managed is not None:
            ours.pop("Placement")  # managed model servers own placements in Kubernetes external mode
        return {**ours, **(appliers or {})}

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
            self.node_watch.start()
            await self.node_watch.wait_synced(5.0)  # the hub's first view has the Node's GPUs
        if self.managed is not None:
            self.managed.start()
        if self.serving is not None:
            # Edge autonomy: serve what was applied before a restart (the hub resends only changes).
            self.serving.restore(self.state.objects())
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
