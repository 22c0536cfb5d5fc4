"""Wiring of one hub process: store, broker, recorder, and the gRPC servers.

Three listeners, each with the credentials its callers can show:
- agents (mTLS, a client certificate from the fleet CA is required): AgentLink,
  and Enrollment for renewals (the caller's certificate names who renews);
- enrollment (TLS that authenticates the hub, no client certificate): only
  Enrollment, where a node without a certificate yet sends a bootstrap token
  and its CSR. A separate port because gRPC Python can either require client
  certificates or not ask for them at all: one port that asks but does not
  require them (the way kube-apiserver does) is not available, and AgentLink
  must never run on a listener that does not require them;
- admin (TLS + bearer token): Admin, Rollouts, Certificates.

Shutdown follows a fixed order: stop accepting → let streams end within the
grace period → flush batched writes → close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from dataclasses import dataclass
from datetime import timedelta

import grpc

from hub.admin import AdminService, BearerTokenInterceptor
from hub.config import HubConfig
from hub.link import AgentLinkService, Broker, Recorder
from hub.drift.monitor import DriftMonitor
from hub.metrics import HubMetrics, serve_http
from hub.rollout.controller import RolloutController
from hub.rollout.service import RolloutService
from hub.security.enrollment import CertificatesService, Enrollment, EnrollmentService, Signer
from hub.store import Database, Store
from hub.store.enroll_repo import EnrollStore
from protos.fleet.v1 import admin_pb2_grpc, agent_pb2_grpc, enroll_pb2_grpc, rollout_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ports:
    agent: int
    admin: int | None
    enroll: int | None = None
    metrics: int | None = None


def _server_options(cfg: HubConfig) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", cfg.limits.max_message_bytes),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
        # Several hub processes may share the port (fleet hub serve --workers N).
        ("grpc.so_reuseport", 1),
        # Find dead agents behind NAT within about a minute, and let agents ping.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        # A reconnect storm waits in gRPC's backlog instead of being shed (see Limits.pending_streams).
        ("grpc.server.max_pending_requests", cfg.limits.pending_streams),
        ("grpc.server.max_pending_requests_hard_limit", cfg.limits.pending_streams),
    ]


class PortInUse(OSError):
    """Another process (maybe another hub) listens on an address this hub needs."""


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port) if port.isdigit() else 0


def check_port_free(address: str, what: str) -> None:
    """Raise PortInUse when something already listens on ``address`` (port 0: nothing to check).

    The agent port is opened with SO_REUSEPORT so that one hub's ``--workers`` share it, which
    would also let a *second* hub listen beside the first and take half its agents. So the hub
    that owns the port (the admin-serving process, which binds before it starts its workers)
    first binds a plain socket without SO_REUSEPORT: Linux refuses that while any socket listens
    on the port, whoever owns it. SO_REUSEADDR keeps connections in TIME_WAIT from an earlier run
    from blocking a restart.
    """
    host, port = _host_port(address)
    if port == 0:  # a free port picked by the OS (or no port: gRPC's bind reports that)
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {address} for {what}: {exc}") from None
    for family, kind, proto, _, sockaddr in infos[:1]:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUse(f"{what} address {address} is in use (another hub, or another program, "
                                    "listens there)") from None
                raise


class Hub:
    """One hub process. `serve_admin=False` for extra worker processes."""

    def __init__(self, cfg: HubConfig, *, serve_admin: bool = True, migrate: bool = True) -> None:
        self.cfg = cfg
        self.serve_admin = serve_admin
        self.db = Database(cfg.db_url)
        if migrate:
            self.db.migrate()
        self.store = Store(self.db)
        self.broker = Broker(self.store, cfg.poll_interval_s)
        self.recorder = Recorder(self.store, cfg.flush_interval_s)
        self._tasks: list[asyncio.Task] = []
        self.metrics: HubMetrics | None = None
        self.drift: DriftMonitor | None = None
        self._metrics_http = None
        self._agent_server: grpc.aio.Server | None = None
        self._admin_server: grpc.aio.Server | None = None
        self._enroll_server: grpc.aio.Server | None = None
        self.enrollment = Enrollment(
            EnrollStore(self.db), self.store,
            Signer(None if cfg.insecure else cfg.certs_dir, timedelta(seconds=cfg.agent_cert_ttl_s)),
        )
        self._link: AgentLinkService | None = None
        self.rollouts: RolloutController | None = None

    def _credentials(self, client_auth: bool) -> grpc.ServerCredentials:
        d = self.cfg.certs_dir
        assert d is not None
        return grpc.ssl_server_credentials(
            [((d / "hub-key.pem").read_bytes(), (d / "hub.pem").read_bytes())],
            root_certificates=(d / "ca.pem").read_bytes() if client_auth else None,
            require_client_auth=client_auth,
        )

    def _bind(self, server: grpc.aio.Server, address: str, client_auth: bool) -> int:
        try:
            if self.cfg.insecure:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, self._credentials(client_auth))
        except RuntimeError:  # grpc.aio raises this when it cannot bind
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {address}: the address is in use or not local")
        return port

    async def start(self) -> Ports:
        if self.serve_admin:
            # The owning process checks before binding; its workers then join the agent port.
            check_port_free(self.cfg.agent_listen, "the agent")
            check_port_free(self.cfg.admin_listen, "the admin API")
        await self.broker.start()
        opts = _server_options(self.cfg)
        self._agent_server = grpc.aio.server(options=opts)
        self._link = AgentLinkService(
            self.store,
            self.broker,
            self.recorder,
            self.cfg.limits,
            self.cfg.heartbeat_interval_s,
            require_identity=not self.cfg.insecure,
        )
        agent_pb2_grpc.add_AgentLinkServicer_to_server(self._link, self._agent_server)
        if not self.cfg.insecure:
            enroll_pb2_grpc.add_EnrollmentServicer_to_server(EnrollmentService(self.enrollment), self._agent_server)
        agent_port = self._bind(self._agent_server, self.cfg.agent_listen, client_auth=True)
        enroll_port = None
        if self.cfg.enroll_listen and not self.cfg.insecure:
            if not self.enrollment.signer.available:
                log.warning("node enrollment is off: %s", self.enrollment.signer.why_not)
            self._enroll_server = grpc.aio.server(options=opts)
            enroll_pb2_grpc.add_EnrollmentServicer_to_server(EnrollmentService(self.enrollment), self._enroll_server)
            # Server-authenticated TLS only: nothing on this listener trusts a caller's identity.
            enroll_port = self._bind(self._enroll_server, self.cfg.enroll_listen, client_auth=False)
        admin_port = None
        if self.serve_admin:
            self._admin_server = grpc.aio.server(
                options=[("grpc.so_reuseport", 0)], interceptors=[BearerTokenInterceptor(self.cfg.admin_token)]
            )
            admin_pb2_grpc.add_AdminServicer_to_server(
                AdminService(self.store, self.cfg.liveness, self.broker.poke), self._admin_server
            )
            # The admin-serving process drives rollouts (one driver per rollout across replicas: a lease).
            self.rollouts = RolloutController(
                self.store, liveness=self.cfg.liveness, on_change=self.broker.poke,
                tick_s=self.cfg.rollout_tick_s, lease_s=self.cfg.rollout_lease_s,
            )
            rollout_pb2_grpc.add_RolloutsServicer_to_server(RolloutService(self.store, self.rollouts),
                                                            self._admin_server)
            enroll_pb2_grpc.add_CertificatesServicer_to_server(CertificatesService(self.enrollment),
                                                               self._admin_server)
            admin_port = self._bind(self._admin_server, self.cfg.admin_listen, client_auth=False)
        self._tasks = [
            asyncio.create_task(self.broker.run(), name="broker"),
            asyncio.create_task(self.recorder.run(), name="recorder"),
        ]
        metrics_port = None
        if self.serve_admin and self.cfg.drift_interval_s:
            self.drift = DriftMonitor(self.store, self.cfg.drift_interval_s)
            self._tasks.append(asyncio.create_task(self.drift.run(), name="drift"))
        if self.serve_admin and self.cfg.metrics_listen:
            self.metrics = HubMetrics(self.drift)
            self._metrics_http, metrics_port = serve_http(self.cfg.metrics_listen, self.metrics.registry)
            self._tasks.append(asyncio.create_task(
                self.metrics.run(self.store, self.cfg.liveness, self.cfg.metrics_refresh_s), name="metrics"))
            log.info("hub metrics on port %d (/metrics)", metrics_port)
        await self._agent_server.start()
        if self._enroll_server is not None:
            await self._enroll_server.start()
        if self._admin_server is not None:
            await self._admin_server.start()
        if self.rollouts is not None:
            await self.rollouts.start()
        log.info("hub serving agents on port %d%s%s", agent_port,
                 f", enrollment on port {enroll_port}" if enroll_port else "",
                 f", admin on port {admin_port}" if admin_port else "")
        return Ports(agent_port, admin_port, enroll_port, metrics_port)

    async def stop(self, grace: float = 2.0) -> None:
        if self.rollouts is not None:
            try:
                await self.rollouts.stop()
            except Exception:  # noqa: BLE001 - shutting down goes on; leases expire by themselves
                log.exception("stopping the rollout controller failed")
        servers = [s for s in (self._agent_server, self._enroll_server, self._admin_server) if s is not None]
        await asyncio.gather(*(s.stop(grace) for s in servers))
        # Cancelled stream handlers still mark their nodes disconnected: let them
        # finish before the store closes, or they open connections nobody closes.
        if self._link is not None and not await self._link.wait_idle(grace + 5.0):
            log.warning("some agent streams did not finish their clean-up before shutdown")
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        # The broker and recorder finish the query in flight and return; only what does not is cancelled.
        self.broker.stop()
        self.recorder.stop()
        polite = [t for t in self._tasks if t.get_name() in ("broker", "recorder")]
        for t in self._tasks:
            if t not in polite:
                t.cancel()
        if polite:
            _, pending = await asyncio.wait(polite, timeout=grace + 5.0)
            for t in pending:
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.recorder.flush()
        await self.db.close()

    async def wait(self) -> None:
        assert self._agent_server is not None
        await self._agent_server.wait_for_termination()
