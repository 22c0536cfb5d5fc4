"""The serving runtime: HTTP (uvicorn) and gRPC servers plus the telemetry and demand flushes,
on one event loop in their own thread, so serving load never delays the hub link.

Start: models restored by the caller (appliers) → servers bound → ports logged
(``serving http on HOST:PORT``) and written to ``<data_dir>/serve.json``
(``{"http": port, "grpc": port}``). Stop, in a fixed order: servers stop
accepting and finish in-flight requests (grace period) → engines shut down →
the last telemetry window (and the demand counted since the last demand report)
is flushed to the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.serving.appliers import appliers as make_appliers
from edge_agent.serving.appliers import restore
from edge_agent.serving.cost import NvmlEnergy
from edge_agent.serving.demand import KIND as DEMAND_KIND
from edge_agent.serving.demand import DemandWindow
from edge_agent.serving.drift_signals import KIND as DRIFT_KIND
from edge_agent.serving.drift_signals import DriftSignals
from edge_agent.serving.gateway import Gateway, Report
from edge_agent.serving.integrity import REPORT_KIND as INTEGRITY_REPORT
from edge_agent.serving.integrity import WeightsVerifier
from edge_agent.serving.metrics import EngineGauges, PrometheusExporter
from edge_agent.serving.models import ExternalBackend, ModelRegistry, external_factory, local_factory
from edge_agent.serving.residency import Location
from edge_agent.serving.telemetry import Telemetry
from edge_agent.state import LocalObject

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingConfig:
    host: str = "127.0.0.1"
    """Address the HTTP and gRPC servers bind (default 127.0.0.1)."""
    http_port: int | None = 0
    """OpenAI-compatible HTTP port; 0 picks a free one; None = no HTTP."""
    grpc_port: int | None = None
    """gRPC Inference port; 0 picks a free one; None (default) = no gRPC."""
    models_dir: Path | None = None
    """Local mode: models live in <models_dir>/<model>/<version>/."""
    external_url: str = ""
    """External mode: base URL of the OpenAI-compatible server to forward to."""
    default_data_class: str = ""
    """Data class of requests that name none; empty (default) refuses them."""
    default_priority_class: str = ""
    """Priority class of requests whose service names none; empty = priority 0."""
    telemetry_interval_s: float = 5.0
    """Seconds between telemetry reports (a window with no request sends none)."""
    demand_interval_s: float = 60.0
    """Seconds per demand report (edge_agent.serving.demand; windows end on multiples of it)."""
    data_dir: Path | None = None
    """Where serve.json goes; None = not written."""
    engine_config: Any = None
    """:class:`~edge_agent.runtime.engine.EngineConfig` for local engines (default: the engine's)."""
    grace_s: float = 5.0
    """Seconds in-flight requests get to finish at stop (then they are cancelled); idle
    connections close at once (default 5; `fleet-agent run --drain-timeout`)."""
    audit_allowed: bool = False
    """Also audit allowed residency decisions (refusals are always audited)."""


class Serving:
    def __init__(self, cfg: ServingConfig, here: Location, node: str, report: Report) -> None:
        self.cfg = cfg
        self.verifier: WeightsVerifier | None = None
        if cfg.external_url:
            factory = external_factory(cfg.external_url)  # no torch: an external-mode agent never imports it
        else:
            factory = local_factory(cfg.models_dir or Path("models"), cfg.engine_config)
            # The local runtime reads the weights itself, so it checks them first (edge_agent/serving/integrity.py).
            self.verifier = WeightsVerifier(cfg.models_dir or Path("models"),
                                            lambda v: self.report(INTEGRITY_REPORT, v.payload()))
        verify = None
        if self.verifier is not None:
            verifier = self.verifier
            verify = lambda a: verifier.check(a.model, a.version, a.digest, a.integrity or "sha256")  # noqa: E731
        self.registry = ModelRegistry(factory, node, here.country, verify=verify)
        self.telemetry = Telemetry(here.site, node)
        self.exporter = PrometheusExporter(self._gauges)
        self.telemetry.observers.append(self.exporter)
        self.demand = DemandWindow(here.site, node, cfg.demand_interval_s)
        self.telemetry.observers.append(self.demand)
        self.drift = DriftSignals(here.site, node)
        self.telemetry.observers.append(self.drift)
        self.report = report
        energy = NvmlEnergy() if not cfg.external_url else None
        self.gateway = Gateway(here, self.registry, self.telemetry, report,
                               default_data_class=cfg.default_data_class,
                               default_priority_class=cfg.default_priority_class,
                               audit_allowed=cfg.audit_allowed, energy=energy if energy and energy.available else None)
        self.appliers = make_appliers(self.gateway)
        self.http_port: int | None = None
        self.grpc_port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _gauges(self) -> Iterable[EngineGauges]:
        return [(b.model, b.version, *b.gauges()) for b in self.registry.backends()]

    def restore(self, held: Iterable[LocalObject]) -> list[str]:
        """Re-apply what local state held; the lines of what could not be (see appliers.restore)."""
        return restore(self.appliers, held)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Serving:
        """Bind the servers (blocking until bound); raises what binding raised."""
        self._thread = threading.Thread(target=self._run, name="fleet-serving", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("serving did not start in time")
        if self._error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise self._error
        return self

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if self._thread is not None and loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
            self._thread.join(self.cfg.grace_s + 30)
        self._thread = None
        self.registry.close()
        self.flush()
        self.flush_demand(final=True)

    def flush(self) -> dict | None:
        """Send the current telemetry window, and its drift signals, to the hub (if anything happened)."""
        payload = self.telemetry.flush()
        drift = self.drift.flush()
        for kind, body in (("telemetry", payload), (DRIFT_KIND, drift)):
            if body is not None:
                try:
                    self.report(kind, body)
                except Exception:  # noqa: BLE001 - never kill the loop over one window
                    log.exception("could not queue the %s report", kind)
        return payload

    def flush_demand(self, *, final: bool = False) -> list[dict]:
        """Queue the demand windows closed by now (at stop also the partial one, if anything arrived)."""
        payloads = self.demand.flush(serving=bool(self.registry.backends()), final=final)
        for payload in payloads:
            try:
                self.report(DEMAND_KIND, payload)
            except Exception:  # noqa: BLE001 - never kill the loop over one window
                log.exception("could not queue the demand report")
        return payloads

    def __enter__(self) -> Serving:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - surfaced by start()
            if not self._started.is_set():
                if isinstance(exc, SystemExit):  # uvicorn exits when it cannot bind
                    exc = OSError(f"could not serve http on {self.cfg.host}:{self.cfg.http_port} (see the log above)")
                self._error = exc
            else:
                log.exception("serving loop failed")
        finally:
            self._started.set()

    async def _main(self) -> None:
        import grpc
        import uvicorn

        from edge_agent.serving.grpc_api import add_to_server
        from edge_agent.serving.openai_api import build_app

        cfg = self.cfg
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        http: uvicorn.Server | None = None
        http_task: asyncio.Task | None = None
        rpc: grpc.aio.Server | None = None
        try:
            if cfg.http_port is not None:
                config = uvicorn.Config(build_app(self.gateway, self.exporter), host=cfg.host, port=cfg.http_port,
                                        log_level="warning", lifespan="off", ws="none", access_log=False,
                                        timeout_graceful_shutdown=max(0.1, cfg.grace_s))  # type: ignore[arg-type]
                http = uvicorn.Server(config)
                http_task = asyncio.create_task(http.serve())
                while not http.started:
                    if http_task.done():
                        http_task.result()
                        raise RuntimeError(f"could not serve http on {cfg.host}:{cfg.http_port}")
                    await asyncio.sleep(0.01)
                self.http_port = http.servers[0].sockets[0].getsockname()[1]
                log.warning("serving http on %s:%d", cfg.host, self.http_port)
            if cfg.grpc_port is not None:
                rpc = grpc.aio.server()
                add_to_server(rpc, self.gateway)
                self.grpc_port = rpc.add_insecure_port(f"{cfg.host}:{cfg.grpc_port}")
                if not self.grpc_port:
                    raise RuntimeError(f"could not serve grpc on {cfg.host}:{cfg.grpc_port}")
                await rpc.start()
                log.warning("serving grpc on %s:%d", cfg.host, self.grpc_port)
            if cfg.data_dir is not None:
                cfg.data_dir.mkdir(parents=True, exist_ok=True)
                (cfg.data_dir / "serve.json").write_text(json.dumps({"http": self.http_port, "grpc": self.grpc_port}))
            self._started.set()
            loop = asyncio.get_running_loop()
            next_telemetry = loop.time() + cfg.telemetry_interval_s
            while not self._stop.is_set():
                wait = min(next_telemetry - loop.time(), self.demand.seconds_to_due() + 0.01)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, wait)):
                        await self._stop.wait()
                if self._stop.is_set():
                    break
                if loop.time() >= next_telemetry:
                    self.flush()
                    next_telemetry = loop.time() + cfg.telemetry_interval_s
                self.flush_demand()
        finally:
            # Both servers drain at once, each for at most grace_s: idle keep-alive
            # connections close at once, in-flight requests are cancelled at the deadline.
            async def stop_http() -> None:
                if http is not None and http_task is not None:
                    http.should_exit = True
                    with contextlib.suppress(Exception):
                        await http_task

            await asyncio.gather(rpc.stop(cfg.grace_s) if rpc is not None else asyncio.sleep(0), stop_http(),
                                 return_exceptions=True)
            for b in self.registry.backends():
                if isinstance(b, ExternalBackend):
                    await b.aclose()
