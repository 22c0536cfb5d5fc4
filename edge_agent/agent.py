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
        self.link = HubLink(cfg, self.state, lambda: self.inventory, appliers)
        held = self.state.objects()
        if held:
            # Edge autonomy: whatever was applied before a restart stays in force.
            log.info("resuming with %d objects applied before restart; %d reports queued",
                     len(held), self.state.outbox_size())

    def set_unschedulable(self, value: bool) -> None:
        """Cordon/uncordon: tell the hub at once so placements move."""
        if value != self.inventory.unschedulable:
            from dataclasses import replace

            self.inventory = replace(self.inventory, unschedulable=value)
            self.link.inventory_changed()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        task = asyncio.create_task(self.link.run())
        await stop.wait()
        self.link.stop()
        await task
        self.state.close()


    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.run(stop)


def run_forever(cfg: AgentConfig, *, probe_gpus: bool = True) -> None:
    asyncio.run(Agent(cfg, probe_gpus=probe_gpus).run_until_signal())
