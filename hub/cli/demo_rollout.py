"""`fleet demo --scenario rollout`: a canary to a slower version is caught and rolled back, then a good one rolls out.

Three edge sites (hub.rollout.synthetic: one node with one L4 each) run the
service ``chat`` on model ``assistant`` v1. Each site gets a real
``fleet-agent`` that serves locally built models over OpenAI-compatible HTTP:
v1 and v2 are the tiny model, ``v2-slow`` is the *small* model (about eight
times the parameters), so it really is slower on the same machine. A steady
load of streamed chat requests runs throughout; the agents' telemetry is
what the gates judge.

1. ``fleet rollout start chat --to v2-slow --strategy canary``: the canary
   site switches, soaks, and the canary gate compares its TTFT/ITL sketches
   and error rate with v1 on the same site; the TTFT comparison fails and the
   rollout rolls back on its own, with the numbers in ``fleet rollout status``.
2. ``fleet rollout start chat --to v2 --waves 1,100%``: each wave soaks and
   passes its SLO gate; the rollout completes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

import httpx
from google.protobuf import json_format

from fleet_contract.weights import manifest
from hub.cli import rollout_cmd
from hub.cli.demo import Demo, DemoNode
from hub.cli.demo_load import PROMPTS, _one
from hub.cli.errors import CliError
from hub.cli.model_cmd import pin_digests
from hub.config import HubConfig
from hub.rollout import synthetic
from hub.rollout.machine import Phase
from hub.rollout.spec import RolloutSpec
from hub.security import certs
from hub.server import Hub
from protos.fleet.v1 import admin_pb2, rollout_pb2, rollout_pb2_grpc

SITES = ("edge-1", "edge-2", "edge-3")


class RolloutDemo(Demo):
    def __init__(self, workdir: Path, agents_timeout: float) -> None:
        super().__init__(workdir, agents_timeout)
        self.load_task: asyncio.Task | None = None
        self.served = 0

    async def rollouts(self, method: str, request, timeout: float = 30):
        assert self.channel is not None
        stub = rollout_pb2_grpc.RolloutsStub(self.channel)
        return await getattr(stub, method)(request, metadata=[("authorization", f"Bearer {self.token}")],
                                           timeout=timeout)

    async def run(self) -> None:
        import grpc

        tiny_task = asyncio.create_task(self.build_model("tiny"))
        small_task = asyncio.create_task(self.build_model("small"))
        certs_dir = self.dir / "certs"
        self.step("Starting a hub (SQLite in a temporary directory, mTLS for agents, rollout controller ticking "
                  "every 0.5 s)")
        certs.init_ca(certs_dir)
        certs.issue_hub(certs_dir, [])
        cfg = HubConfig(
            db_url=f"sqlite:///{self.dir / 'fleet.db'}", agent_listen="127.0.0.1:0", admin_listen="127.0.0.1:0",
            certs_dir=certs_dir, admin_token=f"demo-rollout-{int(time.time())}".ljust(16, "x"),
            heartbeat_interval_s=1.0, stale_after_s=3.0, unreachable_after_s=10.0, rollout_tick_s=0.5,
        )
        self.token = cfg.admin_token
        self.hub = Hub(cfg)
        ports = await self.hub.start()
        self.channel = grpc.aio.secure_channel(f"localhost:{ports.admin}", grpc.ssl_channel_credentials(
            (certs_dir / "ca.pem").read_bytes()))

        tiny, small = await tiny_task, await small_task
        # Pin the digests of the models built above, so the agents verify what they serve.
        digests = {"tiny": (await asyncio.to_thread(manifest, tiny)).digest,
                   "small": (await asyncio.to_thread(manifest, small)).digest}
        bundle = pin_digests(synthetic.fleet_bundle(SITES, ttft_slo="2s", tpot_slo="300ms"),
                             lambda model, version: digests["small" if version == "v2-slow" else "tiny"])
        self.step(f"Applying three edge sites ({', '.join(SITES)}) running service chat on assistant v1; "
                  "the model also has v2 (a good successor) and v2-slow (eight times the parameters)")
        applied = await self.admin("Apply", admin_pb2.ApplyRequest(bundle_json=bundle.to_json(), author="fleet-demo",
                                                                   message="three edge sites"), timeout=120)
        self.out.print(f"    revision {applied.revision.number} stored; one chat replica per site")

        nodes = await self.nodes(bundle)
        self.step("Starting one serving agent per site (v1 and v2: the tiny model; v2-slow: the small model)")
        for n in nodes:
            models = self.dir / "models" / n.label.replace("/", "_") / synthetic.MODEL
            models.mkdir(parents=True, exist_ok=True)
            for version, src in (("v1", tiny), ("v2", tiny), ("v2-slow", small), ("v2-a100", tiny)):
                (models / version).symlink_to(src, target_is_directory=True)
            self.start_agent(n, certs_dir, ports.agent, models.parent)
        await self.wait_connected(len(nodes))
        await self.wait_placements(nodes)
        http = {n.label: await self.serving_port(n) for n in nodes}
        self.load_task = asyncio.create_task(self.load(nodes, http))
        self.step("Steady load: two streamed chat requests at a time per site; the agents report telemetry "
                  "every second")
        await asyncio.sleep(8)
        self.out.print(f"    {self.served} requests served so far (the canary's v1 baseline)")

        self.step("fleet rollout start chat --to v2-slow --strategy canary --waves 100% --min-success-time 5s")
        canary = RolloutSpec(service="chat", to_version="v2-slow", strategy="canary", waves="100%",
                             min_success_time="5s", progress_deadline="3m", min_requests=20,
                             canary={"sites": 1, "min_requests": 30})
        first = await self.run_rollout(canary, want=Phase.ROLLED_BACK)

        self.step("fleet rollout start chat --to v2 --waves 1,100% --min-success-time 5s")
        good = RolloutSpec(service="chat", to_version="v2", waves="1,100%", max_unavailable=2,
                           min_success_time="5s", progress_deadline="3m", min_requests=20)
        second = await self.run_rollout(good, want=Phase.COMPLETED)

        self.step("fleet rollout history chat (the audit trail: who, when, what, and the gate figures)")
        hist = await self.rollouts("History", rollout_pb2.RolloutHistoryRequest(service="chat"))
        keep = ("rollout.start", "rollout.published", "rollout.wave-passed", "rollout.rolling-back",
                "rollout.completed")
        rows = [r for r in rollout_cmd._audit_rows(hist.records) if r["action"] in keep]
        rollout_cmd._audit_table(rows)
        self.out.print(f"\n[bold green]Demo complete.[/] The canary to v2-slow was caught and rolled back "
                       f"({first.id}); v2 rolled out in waves ({second.id}). Export the record: fleet audit -o json")

    async def run_rollout(self, spec: RolloutSpec, want: Phase) -> rollout_pb2.Rollout:
        r = await self.rollouts("Start", rollout_pb2.StartRolloutRequest(spec_json=json.dumps(spec.to_dict()),
                                                                         actor="fleet-demo"))
        self.out.print(f"    rollout {r.id}: {r.status}")
        t0 = time.monotonic()
        last = ""
        while True:
            r = await self.rollouts("Get", rollout_pb2.GetRolloutRequest(id=r.id))
            if r.status != last and r.phase not in (Phase.PENDING.value,):
                self.out.print(f"    [{time.monotonic() - t0:5.1f}s] {r.status}", markup=False)
                last = r.status
            if r.phase in {p.value for p in Phase.terminal()} or r.phase == Phase.PAUSED.value:
                break
            if time.monotonic() - t0 > 240:
                raise CliError(f"the rollout to {spec.to_version} did not finish in 4 minutes: {r.status}",
                               f"rerun with --keep and read {self.dir}/agent-*.log")
            await asyncio.sleep(1.0)
        self.out.print("\n[bold]$ fleet rollout status chat[/]")
        self.out.print(rollout_cmd.render(r))
        if r.phase != want.value:
            raise CliError(f"expected the rollout to {spec.to_version} to end {want.value}, it is {r.phase}: "
                           f"{r.status}", f"rerun with --keep and read {self.dir}/agent-*.log")
        return r

    async def nodes(self, bundle) -> list[DemoNode]:
        objs = (await self.admin("ListObjects", admin_pb2.ListObjectsRequest(kind="Placement"))).objects
        out = []
        for o in sorted(objs, key=lambda o: o.target.site):
            spec = json_format.MessageToDict(o.object.spec)
            site = bundle.sites[o.target.site].spec
            out.append(DemoNode(site=o.target.site, node=o.target.node, city=o.target.site, region=site.region,
                                country=site.country, jurisdiction="EU", gpu="L4:24:1",
                                assignments=tuple(spec.get("assignments", ()))))
        if len(out) != len(SITES):
            raise CliError(f"expected a placement on each of {', '.join(SITES)}, got {len(out)}",
                           "report it with the hub log")
        return out

    async def load(self, nodes: list[DemoNode], http: dict[str, int]) -> None:
        prompts = itertools.cycle(PROMPTS)

        async def worker(n: DemoNode) -> None:
            url = f"http://127.0.0.1:{http[n.label]}"
            async with httpx.AsyncClient(timeout=60) as client:
                while True:
                    res = await _one(client, url, n.label, n.assignments[0], "interactive", next(prompts))
                    self.served += res.ok
                    if not res.ok:
                        await asyncio.sleep(0.2)

        await asyncio.gather(*(worker(n) for n in nodes for _ in range(2)))

    async def close(self) -> None:
        if self.load_task is not None:
            self.load_task.cancel()
            await asyncio.gather(self.load_task, return_exceptions=True)
        await super().close()
