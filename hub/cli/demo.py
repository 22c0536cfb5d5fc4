"""`fleet demo`: a hub and four edge sites on this machine, end to end.

Mints a CA and certificates, starts an embedded hub (SQLite in a temporary
directory), plans and applies the shipped fleet (`fleet_configs/` and
`policies/`: 30 sites, SLOs, residency) as revision 1, starts `fleet-agent`
processes with mTLS for four of the nodes that received placements
(Frankfurt, Berlin, Paris, Virginia), each serving a small locally built model
over OpenAI-compatible HTTP; sends them a mixed interactive/batch load plus a
request that residency must refuse, and prints the report the hub merged from
the agents' telemetry. Everything it started stops at the end (also on Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from google.protobuf import json_format

from fleet_contract.weights import manifest
from hub.cli import views
from hub.cli.errors import CliError
from hub.cli.output import console, emit
from hub.cli.demo_load import send_load
from hub.cli.model_cmd import pin_digests
from hub.config import HubConfig
from hub.policy import load_bundle
from hub.policy.vocab import COUNTRY_JURISDICTIONS
from hub.security import certs
from hub.server import Hub
from protos.fleet.v1 import admin_pb2, admin_pb2_grpc


ROOT = Path(__file__).resolve().parents[2]
#: The shipped fleet the demo applies (an editable install, as in the README).
BUNDLE = (ROOT / "fleet_configs", ROOT / "policies")
#: Sites whose placed nodes get a real agent: EU (GDPR), Germany-only, EU, US.
DEMO_SITES = ("fra-1", "ber-1", "par-1", "iad-1")
#: A terminal-wide subset of `fleet report`'s columns.
DEMO_REPORT_COLUMNS = [
    ("SITE", "site"), ("MODEL", "model"), ("PRIORITY", "priority"), ("REQS", "requests"), ("FORBID", "forbidden"),
    ("TTFT P50 MS", "ttftP50Ms"), ("TTFT P95 MS", "ttftP95Ms"), ("ITL P95 MS", "itlP95Ms"), ("TOK/S", "tokensPerS"),
    ("$/1K REQ", "usdPer1kRequests"), ("GCO2E/1K REQ", "gco2ePer1kRequests"),
]
MODEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-fleet" / "demo-model-tiny"
"""Where the demo's locally built model is cached (``demo-model-<size>`` beside it for other sizes)."""


@dataclass(frozen=True)
class DemoNode:
    site: str
    node: str
    city: str
    region: str
    country: str
    jurisdiction: str
    gpu: str
    assignments: tuple[dict, ...]

    @property
    def label(self) -> str:
        return f"{self.site}/{self.node}"


class Demo:
    def __init__(self, workdir: Path, agents_timeout: float, html: Path | None = None,
                 requests_per_agent: int = 12) -> None:
        self.dir = workdir
        self.agents_timeout = agents_timeout
        self.html = html
        self.requests_per_agent = requests_per_agent
        self.out = console()
        self.procs: list[subprocess.Popen] = []
        self.hub: Hub | None = None
        self.channel: grpc.aio.Channel | None = None

    def step(self, text: str) -> None:
        self.out.print(f"\n[bold cyan]==>[/] [bold]{text}[/]")

    async def admin(self, method: str, request, timeout: float = 10):
        assert self.channel is not None
        stub = admin_pb2_grpc.AdminStub(self.channel)
        return await getattr(stub, method)(request, metadata=[("authorization", f"Bearer {self.token}")],
                                           timeout=timeout)

    async def run(self) -> None:
        missing = [str(p) for p in BUNDLE if not p.is_dir()]
        if missing:
            raise CliError(f"the demo's fleet files are missing: {', '.join(missing)}",
                           "run the demo from a source checkout installed with `pip install -e .`")
        bundle = load_bundle(BUNDLE)
        model_task = asyncio.create_task(self.build_model())

        certs_dir = self.dir / "certs"
        self.step("Minting a fleet CA and the hub's certificate")
        certs.init_ca(certs_dir)
        certs.issue_hub(certs_dir, [])
        self.out.print(f"    {certs_dir} (agents get spiffe://edge-fleet/site/<site>/node/<node> certificates)")

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

        models_dir = await model_task
        # Every placed version is served from the tiny model here: pin its digest, so the agents verify it.
        digest = (await asyncio.to_thread(manifest, models_dir)).digest
        bundle = pin_digests(bundle, lambda model, version: digest)
        self.out.print(f"    demo weights {digest[:19]}... pinned as every Model version's digest (agents verify it)")

        counts = {k: len(bundle.of_kind(k)) for k in ("Site", "Model", "Service", "ResidencyPolicy", "PriorityClass")}
        self.step("Planning the shipped fleet: " + ", ".join(f"{n} {k}" for k, n in counts.items())
                  + " (fleet_configs/, policies/)")
        req = admin_pb2.ApplyRequest(bundle_json=bundle.to_json(), author="fleet-demo", message="the shipped fleet")
        applied = await self.admin("Apply", req, timeout=120)
        for line in applied.diff:
            if not line.startswith(("  residency", "+ ", "- ")) or line.startswith("+ ") and line.split(":")[0][2:] in DEMO_SITES:
                self.out.print(f"    {line}", markup=False)
        self.out.print(f"    revision {applied.revision.number} stored; {applied.objects_published} desired objects "
                       f"published (a Placement per node, ResidencyPolicy and PriorityClass objects for every node)")

        nodes = await self.demo_nodes(bundle)
        self.step("Residency justification of what the demo agents will serve")
        for line in applied.diff:
            if line.startswith("  residency") and any(f" at {n.site}:" in line for n in nodes):
                self.out.print(f"  {line}", markup=False)

        self.step("Starting one agent per demo node: " + ", ".join(f"{n.city} ({n.label})" for n in nodes))
        for n in nodes:
            self.start_agent(n, certs_dir, ports.agent, models_dir)
        await self.wait_connected(len(nodes))
        sites = (await self.admin("ListSites", admin_pb2.ListSitesRequest())).sites
        emit([views.site_row(s) for s in sites], views.SITE_COLUMNS, "table")

        self.step("Each agent receives its own Placement, loads its models and opens its door")
        await self.wait_placements(nodes)
        objs = (await self.admin("ListObjects", admin_pb2.ListObjectsRequest(kind="Placement"))).objects
        emit([views.object_row(o) for o in objs if o.target.site in DEMO_SITES], views.OBJECT_COLUMNS, "table")
        http = {n.label: await self.serving_port(n) for n in nodes}

        self.step(f"Sending a mixed load: {self.requests_per_agent} requests per agent, interactive and batch together")
        results = await send_load(nodes, http, self.requests_per_agent)
        ok = sum(r.ok for r in results)
        self.out.print(f"    {ok}/{len(results)} served; " + ", ".join(
            f"{label}: {sum(r.ok for r in results if r.node == label)}" for label in http))
        if ok == 0:
            raise CliError("no request was served, although every agent acknowledged its placement",
                           "rerun with `fleet demo --keep` and read the agent logs in the directory it keeps")
        self.step("Residency at the door: personal data of a German user sent to Virginia")
        refused = await self.residency_refusal(nodes, http)

        self.step("The report the hub merged from the agents' telemetry sketches")
        report = await self.wait_report(ok + refused)  # a refusal is measured too
        table = json.loads(report.table_json)
        emit(table["rows"], DEMO_REPORT_COLUMNS, "table")
        self.out.print("    (every column: `fleet report`; as data: `fleet report -o json`)")
        if self.html:
            self.html.write_text(report.html, encoding="utf-8")
            self.out.print(f"    charts: {self.html}")
        else:
            self.out.print("    (rerun with --html FILE for the page with latency and cost/carbon charts)")
        self.out.print("\n[bold green]Demo complete.[/] Placements applied where the policy allows, served, "
                       "measured and reported.")

    # -- steps ------------------------------------------------------------------

    async def build_model(self, size: str = "tiny") -> Path:
        """A tiny Llama with a locally trained tokenizer (nothing is downloaded), cached between demos."""
        src = Path(__file__).resolve().parents[2] / "edge_agent" / "runtime" / "make_model.py"
        stamp = f"{src.stat().st_size}-{int(src.stat().st_mtime)}" if src.exists() else "installed"
        cached = MODEL_CACHE.with_name(f"demo-model-{size}") / stamp
        if not (cached / "config.json").exists():
            tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_agent.cli", "make-model", "--size", size, str(tmp),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise CliError("building the demo model failed: " + out.decode(errors="replace")[-400:],
                               f"run `fleet-agent make-model --size {size} /tmp/m` to see why")
            cached.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp.rename(cached)
            except OSError:  # another demo won the race; use its copy
                shutil.rmtree(tmp, ignore_errors=True)
        return cached

    async def demo_nodes(self, bundle) -> list[DemoNode]:
        objs = (await self.admin("ListObjects", admin_pb2.ListObjectsRequest(kind="Placement"))).objects
        chosen: list[DemoNode] = []
        for site in DEMO_SITES:
            mine = sorted((o for o in objs if o.target.site == site), key=lambda o: o.object.name)
            if not mine:
                continue
            o = mine[0]
            spec = json_format.MessageToDict(o.object.spec)
            site_spec = bundle.sites[site].spec
            pool = next(p for p in site_spec.gpu_pools if p.node_name == o.target.node)
            chosen.append(DemoNode(
                site=site, node=o.target.node, city=bundle.sites[site].metadata.labels.get("city", site),
                region=site_spec.region, country=site_spec.country,
                jurisdiction=site_spec.jurisdiction or COUNTRY_JURISDICTIONS[site_spec.country][0],
                gpu=f"{pool.gpu_type}:{pool.memory / 2**30:.0f}:{pool.count}",
                assignments=tuple(spec.get("assignments", ())),
            ))
        if not chosen:
            raise CliError("the plan placed nothing on the demo sites " + ", ".join(DEMO_SITES),
                           "check fleet_configs/ with `fleet plan -f fleet_configs -f policies`")
        return chosen

    def start_agent(self, n: DemoNode, certs_dir: Path, agent_port: int, models_dir: Path) -> None:
        certs.issue_agent(certs_dir, n.site, n.node)
        cert, key = certs.agent_paths(certs_dir, n.site, n.node)
        models = self.dir / "models" / n.label.replace("/", "_")
        for a in n.assignments:  # every placed (model, version) is the tiny model here
            target = models / a["model"] / a["version"]
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(models_dir, target_is_directory=True)
        data_class = n.assignments[0].get("dataClass", "") if n.assignments else ""
        log = open(self.dir / f"agent-{n.site}.log", "w")  # noqa: SIM115 - closed with the process
        self.procs.append(subprocess.Popen(
            [
                sys.executable, "-m", "edge_agent.cli", "run",
                "--hub", f"localhost:{agent_port}", "--site", n.site, "--node", n.node,
                "--data-dir", str(self.agent_dir(n)),
                "--ca", str(certs_dir / "ca.pem"), "--cert", str(cert), "--key", str(key),
                "--region", n.region, "--country", n.country, "--jurisdiction", n.jurisdiction,
                "--gpu", n.gpu, "--no-gpu-probe", "--exit-with-parent", str(os.getpid()),
                "--serve-port", "0", "--models-dir", str(models), "--default-data-class", data_class,
                "--telemetry-interval", "1",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        ))

    def agent_dir(self, n: DemoNode) -> Path:
        return self.dir / "agents" / n.label.replace("/", "_")

    async def wait_connected(self, expected: int) -> None:
        t0 = time.monotonic()
        while True:
            nodes = (await self.admin("ListNodes", admin_pb2.ListNodesRequest())).nodes
            up = [n for n in nodes if n.phase == admin_pb2.NODE_PHASE_CONNECTED and n.connected]
            if len(up) == expected:
                break
            self.check_alive(t0, f"only {len(up)} of {expected} agents connected")
            await asyncio.sleep(0.2)
        self.out.print(f"    all {expected} agents connected in {time.monotonic() - t0:.1f}s\n")

    def check_alive(self, t0: float, what: str) -> None:
        dead = [p for p in self.procs if p.poll() is not None]
        if dead or time.monotonic() - t0 > self.agents_timeout:
            raise CliError(
                what + (f"; {len(dead)} agent(s) exited" if dead else f" within {self.agents_timeout:.0f}s"),
                f"see the agent logs: rerun with --keep and read {self.dir}/agent-*.log",
            )

    async def wait_placements(self, nodes: list[DemoNode]) -> None:
        t0 = time.monotonic()
        want = {(n.site, n.node) for n in nodes}
        while True:
            objs = (await self.admin("ListObjects", admin_pb2.ListObjectsRequest())).objects
            views_ = [o for o in objs if (o.target.site, o.target.node) in want or not o.target.site]
            pending = [o for o in views_ if o.nodes_applied < o.nodes_targeted]
            if not pending:
                break
            self.check_alive(t0, f"{len(pending)} objects not applied yet")
            await asyncio.sleep(0.1)
        self.out.print(f"    every demo node applied its placement and the fleet's policies in "
                       f"{time.monotonic() - t0:.1f}s\n")

    async def serving_port(self, n: DemoNode) -> int:
        path = self.agent_dir(n) / "serve.json"
        t0 = time.monotonic()
        while not path.exists():
            self.check_alive(t0, f"{n.label} never opened its HTTP port")
            await asyncio.sleep(0.1)
        return int(json.loads(path.read_text())["http"])

    async def residency_refusal(self, nodes: list[DemoNode], http: dict[str, int]) -> int:
        """Requests refused (0 when the plan put no US node in the demo)."""
        us = next((n for n in nodes if n.country == "US"), None)
        if us is None or not us.assignments:
            self.out.print("    (no US node in the demo plan; skipped)")
            return 0
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                f"http://127.0.0.1:{http[us.label]}/v1/chat/completions",
                headers={"X-Fleet-Data-Class": "personal-de"},
                json={"model": us.assignments[0]["model"], "max_tokens": 8,
                      "messages": [{"role": "user", "content": "Meine Steuer-ID ist ..."}]},
            )
        message = r.json().get("error", {}).get("message", r.text) if r.headers.get("content-type", "").startswith(
            "application/json") else r.text
        self.out.print(f"    HTTP {r.status_code}: {message}", markup=False)
        if r.status_code != 403:
            raise CliError(f"{us.label} served personal-de data (HTTP {r.status_code}); residency must refuse it",
                           "this is a bug: report it with the agent log")
        self.out.print("    refused at the door and written to the audit trail (report kind 'audit')")
        return 1

    async def wait_report(self, measured: int) -> admin_pb2.GetReportResponse:
        """The report once it counts ``measured`` requests (agents flush telemetry every second)."""
        t0 = time.monotonic()
        while True:
            rep = await self.admin("GetReport", admin_pb2.GetReportRequest(html=self.html is not None), timeout=60)
            total = json.loads(rep.report_json)["total"]
            if total["requests"] >= measured or time.monotonic() - t0 > 30:
                return rep
            await asyncio.sleep(0.5)

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

