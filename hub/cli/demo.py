"""`fleet demo`: a hub and four edge sites on this machine, end to end.

Mints a CA and certificates, starts an embedded hub (SQLite in a temporary
directory) and four `fleet-agent` processes with mTLS — Frankfurt, Paris,
Warsaw and Virginia — waits for them to connect, publishes desired state,
shows it applied everywhere, and stops everything it started (also on Ctrl-C).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.struct_pb2 import Struct

from hub.cli import views
from hub.cli.errors import CliError
from hub.cli.output import console, emit
from hub.config import HubConfig
from hub.security import certs
from hub.server import Hub
from protos.fleet.v1 import admin_pb2, admin_pb2_grpc


@dataclass(frozen=True)
class DemoSite:
    site: str
    city: str
    region: str
    country: str
    jurisdiction: str
    gpu: str


SITES = (
    DemoSite("fra-1", "Frankfurt", "eu-central", "DE", "EU", "NVIDIA L4:24:2"),
    DemoSite("par-1", "Paris", "eu-west", "FR", "EU", "NVIDIA L40S:48:1"),
    DemoSite("waw-1", "Warsaw", "eu-central", "PL", "EU", "NVIDIA L4:24:2"),
    DemoSite("iad-1", "Virginia", "us-east", "US", "US", "NVIDIA A100 80GB:80:1"),
)


class Demo:
    def __init__(self, workdir: Path, agents_timeout: float) -> None:
        self.dir = workdir
        self.agents_timeout = agents_timeout
        self.out = console()
        self.procs: list[subprocess.Popen] = []
        self.hub: Hub | None = None
        self.channel: grpc.aio.Channel | None = None

    def step(self, text: str) -> None:
        self.out.print(f"\n[bold cyan]==>[/] [bold]{text}[/]")

    async def admin(self, method: str, request):
        assert self.channel is not None
        stub = admin_pb2_grpc.AdminStub(self.channel)
        return await getattr(stub, method)(request, metadata=[("authorization", f"Bearer {self.token}")], timeout=10)

    async def run(self) -> None:
        certs_dir = self.dir / "certs"
        self.step("Minting a fleet CA, the hub's certificate and one client certificate per node")
        certs.init_ca(certs_dir)
        certs.issue_hub(certs_dir, [])
        for s in SITES:
            certs.issue_agent(certs_dir, s.site, "gpu-node-1")
        self.out.print(f"    {certs_dir} (identity spiffe://edge-fleet/site/<site>/node/<node>)")

        self.step("Starting the hub (SQLite in a temporary directory, mTLS for agents, token for admin)")
        self.token = "demo-" + certs_dir.name + "-" + str(int(time.time()))
        cfg = HubConfig(
            db_url=f"sqlite:///{self.dir / 'fleet.db'}",
            agent_listen="127.0.0.1:0",
            admin_listen="127.0.0.1:0",
            certs_dir=certs_dir,
            admin_token=self.token.ljust(16, "x"),
            heartbeat_interval_s=1.0,
            stale_after_s=3.0,
            unreachable_after_s=10.0,
        )
        self.token = cfg.admin_token
        self.hub = Hub(cfg)
        ports = await self.hub.start()
        creds = grpc.ssl_channel_credentials((certs_dir / "ca.pem").read_bytes())
        self.channel = grpc.aio.secure_channel(f"localhost:{ports.admin}", creds)
        self.out.print(f"    agents: 127.0.0.1:{ports.agent}   admin: 127.0.0.1:{ports.admin}   store: {cfg.db_url}")

        self.step("Starting one agent per site: " + ", ".join(f"{s.city} ({s.site})" for s in SITES))
        for s in SITES:
            cert, key = certs.agent_paths(certs_dir, s.site, "gpu-node-1")
            log = open(self.dir / f"agent-{s.site}.log", "w")  # noqa: SIM115 - closed with the process
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable, "-m", "edge_agent.cli", "run",
                        "--hub", f"localhost:{ports.agent}", "--site", s.site, "--node", "gpu-node-1",
                        "--data-dir", str(self.dir / "agents" / s.site),
                        "--ca", str(certs_dir / "ca.pem"), "--cert", str(cert), "--key", str(key),
                        "--region", s.region, "--country", s.country, "--jurisdiction", s.jurisdiction,
                        "--gpu", s.gpu, "--no-gpu-probe", "--exit-with-parent", str(os.getpid()),
                    ],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )
            )
        t0 = time.monotonic()
        while True:
            nodes = (await self.admin("ListNodes", admin_pb2.ListNodesRequest())).nodes
            up = [n for n in nodes if n.phase == admin_pb2.NODE_PHASE_CONNECTED and n.connected]
            if len(up) == len(SITES):
                break
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() - t0 > self.agents_timeout:
                raise CliError(
                    f"only {len(up)} of {len(SITES)} agents connected"
                    + (f"; {len(dead)} exited" if dead else f" within {self.agents_timeout:.0f}s"),
                    f"see the agent logs: rerun with --keep and read {self.dir}/agent-*.log",
                )
            await asyncio.sleep(0.2)
        self.out.print(f"    all {len(SITES)} agents connected in {time.monotonic() - t0:.1f}s\n")
        sites = (await self.admin("ListSites", admin_pb2.ListSitesRequest())).sites
        emit([views.site_row(s) for s in sites], views.SITE_COLUMNS, "table")

        self.step("Publishing desired state to every site: Config/fleet-settings")
        spec = Struct()
        spec.update({"telemetryIntervalSeconds": 5, "logLevel": "info", "message": "hello from the hub"})
        put = await self.admin("PutObject", admin_pb2.PutObjectRequest(kind="Config", name="fleet-settings", spec=spec))
        await self.wait_applied(put.object, len(SITES))

        self.step("Publishing to one site only: Config/de-only-settings -> fra-1 (the others must not get it)")
        spec = Struct()
        spec.update({"dataClass": "personal-de", "note": "stays in Germany"})
        put = await self.admin(
            "PutObject",
            admin_pb2.PutObjectRequest(kind="Config", name="de-only-settings", spec=spec,
                                       target=admin_pb2.ObjectTarget(site="fra-1")),
        )
        await self.wait_applied(put.object, 1)
        objs = (await self.admin("ListObjects", admin_pb2.ListObjectsRequest())).objects
        emit([views.object_row(o) for o in objs], views.OBJECT_COLUMNS, "table")
        self.out.print()
        nodes = (await self.admin("ListNodes", admin_pb2.ListNodesRequest())).nodes
        emit([views.node_row(n) for n in nodes], views.NODE_COLUMNS, "table")

        self.step("Reports from the agents' durable outboxes (stored once per agent and sequence number)")
        await asyncio.sleep(1.5)
        stats = await self.admin("ReportStats", admin_pb2.ReportStatsRequest())
        emit(
            [{"site": a.site, "node": a.node, "reports": a.reports, "maxSeq": a.max_seq, "duplicates": a.duplicates}
             for a in stats.agents],
            [("SITE", "site"), ("NODE", "node"), ("REPORTS", "reports"), ("MAX SEQ", "maxSeq"), ("DUPLICATES", "duplicates")],
            "table",
        )
        self.out.print("\n[bold green]Demo complete.[/] Every site applied what was meant for it, and only that.")

    async def wait_applied(self, obj, expected: int) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:
            objs = (await self.admin("ListObjects", admin_pb2.ListObjectsRequest())).objects
            view = next(o for o in objs if o.object.id == obj.id)
            if view.nodes_applied >= expected:
                self.out.print(
                    f"    {obj.kind}/{obj.name} v{obj.version} applied on {view.nodes_applied}/{view.nodes_targeted} "
                    f"nodes in {(time.monotonic() - t0) * 1000:.0f} ms"
                )
                return
            await asyncio.sleep(0.02)
        raise CliError(f"{obj.kind}/{obj.name} was not applied everywhere within 30s", "rerun with --keep and read the agent logs")

    async def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.procs:
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.channel is not None:
            await self.channel.close()
        if self.hub is not None:
            await self.hub.stop(grace=1.0)


def run_demo(args) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    demo = Demo(workdir, args.agents_timeout)

    async def main() -> None:
        try:
            await demo.run()
        finally:
            await demo.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        console().print("\ninterrupted; every process the demo started is stopped")
        return 130
    finally:
        if args.keep:
            console().print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
