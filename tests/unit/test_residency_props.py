"""Property: no request is admitted after the agent held a policy that forbids it (issue 10, item 2).

Hypothesis interleaves policy changes (stricter, looser, withdrawn), placement changes whose model
loads hang until released (or time out), releases, and requests through the real door of an agent
built from the real link reader, appliers, state and gateway (tests/residency_kit.py). Before every
request the test reads the policy the agent holds (its persisted state) and decides with the same
pure function the hub uses; whenever that forbids the class, the door must refuse.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_contract.residency import Place, decide
from edge_agent.serving.residency import ResidencyRule
from tests.residency_kit import Hub, Node, location, placement

SITE = Place("iad-1", "US", ("US",))
POLICIES = [
    {"anywhere": True}, {"countries": ["US"]}, {"countries": ["DE"]}, {"jurisdictions": ["EU", "EEA"]},
    {"jurisdictions": ["US"]}, {"sites": ["iad-1"]}, {"sites": ["fra-1"]},
]

step = st.one_of(
    st.tuples(st.just("policy"), st.integers(0, len(POLICIES) - 1), st.booleans()),
    st.tuples(st.just("drop-policy")),
    st.tuples(st.just("placement"), st.sampled_from(["a", "b"]), st.sampled_from(["m1", "m2", "m3"])),
    st.tuples(st.just("drop-placement"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("release"), st.sampled_from(["m1", "m2", "m3"])),
    st.tuples(st.just("request"), st.sampled_from(["m1", "m2", "m3", "a", "b"])),
    st.tuples(st.just("pause")),
)


def held_forbids(n: Node, hub: Hub) -> bool:
    oid = hub.ids.get(("ResidencyPolicy", "personal"))
    held = n.state.get(oid) if oid else None
    if held is None:
        return True  # no policy held: forbidden (fail-closed)
    return not decide(ResidencyRule.from_spec(held.name, held.spec), SITE).allowed


async def scenario(data_dir: Path, steps: list[tuple]) -> None:
    hub = Hub()
    n = Node(data_dir, site="iad-1", load_timeout_s=0.5).start()
    try:
        n.send(hub.upsert("SiteLocation", "iad-1", location("iad-1", "US", "US")))
        for s in steps:
            kind = s[0]
            if kind == "policy":
                spec = {"dataClass": "personal", "allow": POLICIES[s[1]]}
                if s[2]:
                    spec["deny"] = {"sites": ["fra-1"]}
                upd = hub.upsert("ResidencyPolicy", "personal", spec)
                n.send(upd)
                # applied promptly, whatever loads are hanging (the old agent queued it behind them)
                await n.acked(upd.upserts[0].id, upd.upserts[0].version, timeout=10)
            elif kind == "drop-policy" and ("ResidencyPolicy", "personal") in hub.ids:
                n.acks.clear()
                n.send(hub.delete("ResidencyPolicy", "personal"))
                await n.acked(hub.ids[("ResidencyPolicy", "personal")], timeout=10)
            elif kind == "placement":
                n.send(hub.upsert("Placement", f"iad-1.{s[1]}", placement(s[2], data_class="personal")))
            elif kind == "drop-placement" and ("Placement", f"iad-1.{s[1]}") in hub.ids:
                n.send(hub.delete("Placement", f"iad-1.{s[1]}"))
            elif kind == "release":
                n.loads.release(s[1], "v1")
            elif kind == "pause":
                await asyncio.sleep(0.02)
            elif kind == "request":
                await asyncio.sleep(0)  # let the reader take what was sent
                if held_forbids(n, hub):
                    assert not n.admits("personal", s[1]), f"admitted against the held policy after {steps}"
    finally:
        await n.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=25))
def test_no_request_is_admitted_after_a_forbidding_policy_is_held(steps):
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(scenario(Path(d), steps))
