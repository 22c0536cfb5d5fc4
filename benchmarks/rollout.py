"""Rollout: wall time from start to completion of a 4-wave rollout, and the controller's overhead per wave.

    python -m benchmarks.rollout --sites 1000          # SQLite in a temp dir
    python -m benchmarks.rollout --sites 1000 --db postgresql://fleet@127.0.0.1:55432/fleet_test

N simulated sites (hub.rollout.synthetic: one node with one L4 each, the
service ``chat`` on every site at v1) in a real, migrated store; the real
RolloutController (APScheduler, persistent job store, lease) drives a
rollout to v2 with waves 1,10%,50%,100% and the gates at their minimum
(--min-success-time 1s, one request per gate, --max-unavailable 50%).

The agents are simulated: a task plays every node's agent against the
store as the hub's link would record them, i.e. it writes a node's applied
acknowledgement (``Store.record_applied``) for each Placement object it is
sent (read with ``Store.changed_since``, as the broker does), and every
second a ``telemetry`` report per node for the version it runs, v1 or v2 (one bulk
insert into the reports table, exactly what ``Store.store_reports`` writes
per node). No gRPC, no agent processes: the figure is the control plane's.

Prints one JSON line: wall time start -> Completed; per wave the wall time,
the decision time (the ticks that changed the rollout: observe + step +
act + persist, e.g. publishing the wave, judging its gate) and the
controller's whole time (every tick, the idle polling between decisions
included); the largest single tick and the tick count. Tick times are wall
times in one process that also runs the simulated agents, so they include
waiting for the store.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks._sim import fresh_database

log = logging.getLogger("benchmarks")

REPORT_INTERVAL_S = 1.0
"""How often each simulated agent sends telemetry (real agents: --telemetry-interval, default 5 s; the demo uses 1 s,
matching the 1 s min-success-time here)."""


def _payload() -> dict:
    from ddsketch import DDSketch
    from ddsketch.pb.proto import DDSketchProto

    def b64(v: float) -> str:
        sk = DDSketch(relative_accuracy=0.01)
        for _ in range(5):
            sk.add(v)
        return base64.b64encode(DDSketchProto.to_proto(sk).SerializeToString()).decode()

    return {"model": "assistant", "priority": "interactive", "requests": 5, "errors": 0, "rejected": 0,
            "cancelled": 0, "forbidden": 0, "promptTokens": 500, "outputTokens": 250, "gpuSeconds": 0.5,
            "costUsd": 0.0, "energyJ": 1.0, "carbonG": 0.001,
            "sketches": {"ttftS": b64(0.15), "itlS": b64(0.02), "tpotS": b64(0.02), "e2eS": b64(1.0)}}


class SimulatedAgents:
    """Every node's agent, played against the store (see the module docstring)."""

    def __init__(self, store, node_ids: dict[tuple[str, str], int]) -> None:
        self.store, self.node_ids = store, node_ids
        self.seen = 0
        self.running: dict[int, str] = {}
        self.seq: dict[int, int] = dict.fromkeys(node_ids.values(), 0)
        self.group = _payload()
        self.last_beat = self.last_report = 0.0
        self.reports_by_version: dict[str, int] = {}

    async def run(self) -> None:
        while True:
            await self.once()
            await asyncio.sleep(0.2)

    async def once(self) -> None:
        from hub.store.repo import AppliedRecord, Heartbeat

        changed = await self.store.changed_since(self.seen)
        acks = []
        now = datetime.now(UTC)
        for o in changed:
            self.seen = max(self.seen, o.version)
            nid = self.node_ids.get((o.target_site, o.target_node))
            if o.kind != "Placement" or nid is None or o.deleted:
                continue
            acks.append(AppliedRecord(nid, o.id, o.version, True, "", now))
            for a in o.spec.get("assignments", ()):
                self.running[nid] = a["version"]
        await self.store.record_applied(acks)
        if time.monotonic() - self.last_beat >= 2.0:
            self.last_beat = time.monotonic()
            await self.store.record_heartbeats([Heartbeat(n, now) for n in self.node_ids.values()])
        if time.monotonic() - self.last_report >= REPORT_INTERVAL_S:
            self.last_report = time.monotonic()
            await self.report(now)

    async def report(self, now: datetime) -> None:
        from hub.store import tables as t

        rows = []
        for nid, version in self.running.items():
            # every node reports the traffic of the version it runs, old or new, as real agents do: the
            # gates read the old version's too (baseline), and the store holds and scans every row
            self.seq[nid] += 1
            self.reports_by_version[version] = self.reports_by_version.get(version, 0) + 1
            rows.append({"node_id": nid, "seq": self.seq[nid], "kind": "telemetry", "created_at": now,
                         "received_at": now, "payload": {
                             "schema": 1, "site": "", "node": "", "windowStart": (now - timedelta(seconds=REPORT_INTERVAL_S)).isoformat(),
                             "windowEnd": now.isoformat(), "groups": [{**self.group, "version": version}]}})
        if rows:
            async with self.store.db.sessions.begin() as s:
                await s.execute(t.Report.__table__.insert(), rows)


async def run(url: str, sites: int, tick: float) -> dict:
    from hub.rollout import synthetic
    from hub.rollout.controller import RolloutController
    from hub.rollout.machine import Phase, RolloutState
    from hub.rollout.service import begin
    from hub.rollout.spec import RolloutSpec
    from hub.store import Database, Store
    from hub.sync import LivenessPolicy

    db = Database(url)
    db.migrate()
    store = Store(db)
    names = [f"s{i:05d}" for i in range(sites)]
    t0 = time.perf_counter()
    bundle = synthetic.fleet_bundle(names)
    now = datetime.now(UTC)
    await synthetic.seed(store, bundle, now)
    node_ids = {}
    for s in names:
        rec = await store.register_node(s, synthetic.node_of(s), "bench", {}, now)
        node_ids[(s, rec.node)] = rec.id
    setup_s = time.perf_counter() - t0
    agents = SimulatedAgents(store, node_ids)
    sim = asyncio.create_task(agents.run())
    await asyncio.sleep(0.5)
    liveness = LivenessPolicy(timedelta(seconds=5), timedelta(minutes=10), timedelta(minutes=30))
    ctl = RolloutController(store, liveness=liveness, tick_s=tick, lease_s=30.0)
    await ctl.start()
    spec = RolloutSpec(service="chat", to_version="v2", waves="1,10%,50%,100%", max_unavailable="50%",
                       min_success_time="1s", progress_deadline="10m", min_requests=1, max_failures=0)
    started = time.perf_counter()
    rec, state = await begin(store, ctl, spec, "benchmark", datetime.now(UTC))
    wave_started: dict[int, float] = {0: started}
    last_wave = 0
    try:
        while True:
            await asyncio.sleep(0.2)
            cur = await store.get_rollout(rec.id)
            st = RolloutState.from_dict(cur.state)
            if st.wave != last_wave:
                wave_started[st.wave] = time.perf_counter()
                last_wave = st.wave
            if st.phase in Phase.terminal():
                break
            if time.perf_counter() - started > 900:
                raise RuntimeError(f"rollout did not finish in 15 minutes: {st.phase} {st.reason}")
        wall = time.perf_counter() - started
    finally:
        await ctl.stop()
        sim.cancel()
        await asyncio.gather(sim, return_exceptions=True)
        await db.close()
    ends = [wave_started.get(i + 1, started + wall) for i in range(len(st.waves))]
    # Ticks are attributed to the wave the rollout is in when the tick ends (the tick that passes wave i's
    # gate and publishes wave i+1 counts for wave i+1).
    decision = [0.0] * len(st.waves)
    every = [0.0] * len(st.waves)
    for wave, _, dt, changed, _ in ctl.stats.log:
        every[min(wave, len(every) - 1)] += dt
        if changed:
            decision[min(wave, len(decision) - 1)] += dt
    return {
        "benchmark": "rollout", "sites": sites, "waves": [len(w) for w in st.waves], "phase": st.phase.value,
        "setup_s": round(setup_s, 2), "wall_s": round(wall, 2), "tick_s": tick, "ticks": ctl.stats.ticks,
        "wave_wall_s": [round(ends[i] - wave_started.get(i, started), 2) for i in range(len(st.waves))],
        "decision_s_per_wave": [round(d, 3) for d in decision],
        "max_decision_s_per_wave": round(max(decision), 3),
        "controller_s_per_wave": [round(x, 3) for x in every],
        "max_controller_s_per_wave": round(max(every), 3),
        "max_tick_s": round(ctl.stats.max_tick, 3),
        "slowest_ticks": [[w + 1, what, round(dt, 3), {k: round(v, 3) for k, v in parts.items()}]
                          for w, what, dt, _, parts in sorted(ctl.stats.log, key=lambda x: -x[2])[:3]],
        "min_success_time_s": 1.0,
        "telemetry_reports_by_version": dict(sorted(agents.reports_by_version.items())),
        "goal": "N=1000 with <= 1 s decision time per wave (decision: ticks that changed the rollout; controller: "
                "every tick, idle polling included)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=1000)
    ap.add_argument("--db", help="database URL (default: SQLite in a temp dir); PostgreSQL: a fresh database beside it")
    ap.add_argument("--tick", type=float, default=0.25, help="controller tick interval, s (default 0.25)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if args.db and args.db.startswith("postgresql"):
            with fresh_database(args.db) as url:
                out = asyncio.run(run(url, args.sites, args.tick))
        else:
            out = asyncio.run(run(args.db or f"sqlite:///{Path(tmp) / 'fleet.db'}", args.sites, args.tick))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
