"""Fan-out: how fast a desired-state change is *stored as applied* for N connected agents.

    python -m benchmarks.fanout --agents 1000                       # a revision: one distinct Placement per node
    python -m benchmarks.fanout --agents 1000 --case shared         # one Config every node receives (cheapest)
    python -m benchmarks.fanout --agents 10000 --workers 2          # full size (the issue's goal)

A real hub (`fleet hub serve --insecure --workers W`, SQLite in a temporary
directory unless --db) runs in its own process group; N simulated agents
(benchmarks/_sim.py: generated stubs, not the real HubLink, which keeps a
SQLite file per agent) run in --procs separate processes, 100 streams per
HTTP/2 connection.

Cases (--case):

- ``placement`` (default), what `fleet apply` or a rollout publishes: the
  fleet is the synthetic one of hub.rollout.synthetic (one node with one L4
  per site, the service ``chat`` on every site). Revision 1 (v1) is stored
  and published before the agents connect, so each holds its own Placement,
  the ResidencyPolicy and the PriorityClass. The timed change is revision 2
  (the service at v2): N distinct Placement objects, one per node, written
  through the hub's revision publish path (`hub.publish.desired_objects` +
  `Store.add_revision`, what Admin.Apply does after planning; the planner is
  left out: at N = 10,000 planning alone takes minutes here) by this process
  into the hub's store; the hub's broker picks the revision up by polling
  the store (every 0.1 s), as every hub worker but the one that served an
  Apply does. The hub checks each changed object against each agent and
  builds N distinct messages.
  At N = 10,000 the synthetic fleet's YAML is 3.8 MiB, over the policy
  loader's 2 MiB per file, so this case stops before the agents connect;
  measure that size with ``--case shared``.
- ``shared``: one ``Config`` object targeting every node, published with
  Admin.PutObject; the hub builds that message once and shares it across all
  streams (the cheapest message there is; this benchmark's figure before).

Latency is measured on the hub side: this process polls the store's
``applied`` rows (every --poll s) and stamps each node when its ack is
first *stored* (the hub's recorder batches acks into one transaction per
interval), minus the time publishing began (one clock: all processes share
the machine). An agent whose ack is not stored within --timeout (or that
never connected) counts as infinitely late: p99 is then reported as the
timeout (``p99_censored``) when more than 1 % are lost. The agents' own
send stamps are reported beside it (``agent_ack_*``).

Prints one JSON line: p50/p99/max ms (stored), lost, connected, case, hub
peak RSS (the hub's whole process tree), connect time.

What limits a single grpc.aio server to ~5,000-7,000 streams, measured
with a bare bidi server (100 streams per connection, ~120 fds, ~200 MB): not
file descriptors, memory or HTTP/2 stream limits, but gRPC core's backlog of
calls that arrived before the Python server asked for them
(`grpc.server.max_pending_requests`, default 1000, and
`grpc.server.max_pending_requests_hard_limit`, default 3000; calls over the
backlog are shed and the client sees CANCELLED, then INTERNAL on its next
write). A burst of 10,000 opened 4,746-5,328; at 1,000/s 7,853; with both
options at 100,000, all 10,000 in 13 s. The hub now sizes that backlog by
`limits.pending_streams` (default 20,000) instead of shedding a reconnect storm.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import tempfile
import time
from pathlib import Path

from benchmarks._sim import (AUTH, AgentFleet, HubProcess, admin_stub, fresh_database, percentile, raise_nofile,
                             setup_logging, sim_identity)

log = logging.getLogger("benchmarks")


async def _put_config(addr: str, name: str) -> None:
    from google.protobuf.struct_pb2 import Struct

    from protos.fleet.v1 import admin_pb2

    ch, stub = admin_stub(addr)
    async with ch:
        spec = Struct()
        spec.update({"model": "llama-3-8b", "replicas": 1, "at": time.time()})
        await stub.PutObject(admin_pb2.PutObjectRequest(kind="Config", name=name, spec=spec), metadata=AUTH)


class StoreView:
    """This process's connection to the hub's store: publishes revisions, watches applied rows."""

    def __init__(self, url: str) -> None:
        from hub.store import Database, Store

        self.db = Database(url)
        self.store = Store(db=self.db)

    async def version(self) -> int:
        return await self.store.current_version()

    async def publish(self, bundle) -> int:
        """Store ``bundle`` placed one replica per site as the next revision (hub.rollout.synthetic.seed:
        desired_objects + Store.add_revision, the publish path of Admin.Apply); returns its Placement objects."""
        from datetime import UTC, datetime

        from hub.publish import desired_objects
        from hub.rollout import synthetic

        await synthetic.seed(self.store, bundle, datetime.now(UTC), author="benchmark")
        return sum(o.kind == "Placement" for o in desired_objects(bundle, synthetic.one_per_site(bundle)))

    async def stored_acks(self, v0: int) -> set[int]:
        """Nodes with an applied row (ok) for an object at version >= v0."""
        from sqlalchemy import select

        from hub.store import tables as t

        async with self.db.sessions() as s:
            rows = await s.execute(select(t.Applied.node_id).where(t.Applied.version >= v0, t.Applied.ok))
            return {r[0] for r in rows}

    async def watch(self, v0: int, expected: int, t_pub: float, timeout: float, poll: float) -> dict[int, float]:
        """node id -> seconds after ``t_pub`` its ack was first seen stored (polled every ``poll`` s)."""
        seen: dict[int, float] = {}
        while time.time() - t_pub < timeout and len(seen) < expected:
            nodes = await self.stored_acks(v0)
            now = time.time()
            for n in nodes - seen.keys():
                seen[n] = now - t_pub
            await asyncio.sleep(poll)
        return seen

    async def close(self) -> None:
        await self.db.close()


def censored_quantiles(lat_s: list[float], n: int, timeout_s: float) -> dict:
    """p50/p99/max in ms over ``n`` agents, the missing ones infinitely late (reported as the timeout)."""
    full = sorted(lat_s) + [math.inf] * (n - len(lat_s))

    def q(p: float) -> float | None:
        v = percentile(full, p)
        return None if v is None else round(min(v, timeout_s) * 1000, 1)

    return {"p50_ms": q(50), "p99_ms": q(99), "max_ms": q(100),
            "p99_censored": bool(full) and math.isinf(percentile(full, 99) or 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000)
    ap.add_argument("--case", choices=("placement", "shared"), default="placement",
                    help="placement: a revision with one distinct Placement per node (default); "
                         "shared: one Config object every node receives")
    ap.add_argument("--workers", type=int, default=1, help="hub processes sharing the agent port")
    ap.add_argument("--procs", type=int, default=2, help="agent processes")
    ap.add_argument("--per-channel", type=int, default=100, help="agent streams per HTTP/2 connection")
    ap.add_argument("--db", help="database URL (default: SQLite in a temporary directory; PostgreSQL: a fresh database is made)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds an agent's ack has to be stored before it counts as lost (infinitely late)")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between polls of the store's applied rows")
    ap.add_argument("--connect-timeout", type=float, default=600.0)
    args = ap.parse_args()
    setup_logging()
    raise_nofile()
    n = args.agents
    with tempfile.TemporaryDirectory(prefix="fleet-fanout-") as tmp, fresh_database(args.db) as db:
        url = db or f"sqlite:///{Path(tmp) / 'fleet.db'}"
        hub = HubProcess(Path(tmp), workers=args.workers, db=url)
        fleet = None
        view = None
        loop = asyncio.new_event_loop()
        try:
            hub_start = hub.start()
            log.info("hub up in %.1fs on %s (admin %s)", hub_start, hub.agent_addr, hub.admin_addr)
            view = StoreView(url)
            bundle_v2 = None
            if args.case == "placement":
                from hub.rollout import synthetic

                t_b = time.time()
                sites = [sim_identity(i)[0] for i in range(n)]
                bundle_v1 = synthetic.fleet_bundle(sites)
                bundle_v2 = synthetic.fleet_bundle(sites, version="v2")
                loop.run_until_complete(view.publish(bundle_v1))
                log.info("revision 1 (v1, %d sites) built and stored in %.1fs", n, time.time() - t_b)
            t0 = time.time()
            fleet = AgentFleet(hub.agent_addr, n, args.procs, per_channel=args.per_channel)
            ok = fleet.wait_until(lambda s: s["resynced"] >= n, args.connect_timeout, what="for connections")
            st = fleet.status()
            connect_s = time.time() - t0
            if not ok:
                log.error("only %d of %d agents connected", st["resynced"], n)
            log.info("%d agents connected and resynced in %.1fs", st["resynced"], connect_s)
            time.sleep(1.0)  # let the connect burst's writes settle
            rss_before = hub.tree_rss()
            v0 = loop.run_until_complete(view.version()) + 1
            t_pub = time.time()
            if args.case == "placement":
                published = loop.run_until_complete(view.publish(bundle_v2))
            else:
                loop.run_until_complete(_put_config(hub.admin_addr, f"fanout-{int(t_pub)}"))
                published = 1
            publish_ms = (time.time() - t_pub) * 1000
            # the pipes from the agent processes are drained while the store is watched
            stop_pump = False

            async def pump() -> None:
                while not stop_pump:
                    fleet.pump(0)
                    await asyncio.sleep(0.05)

            async def watch() -> dict[int, float]:
                nonlocal stop_pump
                pumping = asyncio.ensure_future(pump())
                try:
                    return await view.watch(v0, n, t_pub, args.timeout, args.poll)
                finally:
                    stop_pump = True
                    await pumping

            stored = loop.run_until_complete(watch())
            sent = fleet.ask(("acks_from", v0), "acks_from")
            agent_lat = [s - t_pub for s in sent if s is not None and s - t_pub <= args.timeout]
            lat = [v for v in stored.values() if v <= args.timeout]
            out = {
                "benchmark": "fanout", "case": args.case,
                "agents": n, "workers": args.workers, "agent_procs": args.procs, "per_channel": args.per_channel,
                "db": "postgresql" if url.startswith("postgres") else "sqlite",
                "connected": st["resynced"], "connect_s": round(connect_s, 2),
                "placements_published" if args.case == "placement" else "objects_published": published,
                "measured_at": "hub store (applied row first seen)",
                **censored_quantiles(lat, n, args.timeout),
                "lost": n - len(lat),
                "timeout_s": args.timeout, "store_poll_s": args.poll,
                "agent_ack_p50_ms": round(percentile(agent_lat, 50) * 1000, 1) if agent_lat else None,
                "agent_ack_p99_ms": round(percentile(agent_lat, 99) * 1000, 1) if agent_lat else None,
                "agent_acks": len(agent_lat),
                "publish_ms": round(publish_ms, 1),
                "hub_rss_before_publish_mb": round(rss_before / 2**20, 1),
                "hub_peak_rss_mb": round(hub.peak_rss / 2**20, 1),
            }
            print(json.dumps(out), flush=True)
        finally:
            if fleet is not None:
                fleet.stop()
            if view is not None:
                loop.run_until_complete(view.close())
            loop.close()
            hub.stop()


if __name__ == "__main__":
    main()
