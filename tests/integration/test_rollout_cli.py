"""`fleet rollout ...` and `fleet audit` end to end: a real hub process, real record-only agent processes.

Completion through the gates is covered in test_rollouts.py (in-process, with
telemetry); here a long soak keeps the rollout in its first wave while the
commands and views are exercised.
"""

from __future__ import annotations

import json
import time

import pytest

from hub.rollout import synthetic
from tests.integration.cliharness import Hub, assert_clean_error, fleet

SITES = ["s1", "s2", "s3"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout-cli")
    h = Hub(tmp, extra=("--rollout-tick", "0.3", "--rollout-lease", "2"))
    try:
        h.wait_ready()
        (tmp / "fleet.yaml").write_text(synthetic.fleet_yaml(SITES))
        proc = fleet(h, "apply", "-f", str(tmp / "fleet.yaml"), "-m", "synthetic fleet")
        assert proc.returncode == 0, proc.stderr
        for s in SITES:
            h.start_agent(s, synthetic.node_of(s))
        yield h
    finally:
        h.close()


def status_json(hub: Hub) -> dict:
    proc = fleet(hub, "rollout", "status", "chat", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def wait_for(hub: Hub, cond, what: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = status_json(hub)
        if cond(st):
            return st
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {st['status']}"
        time.sleep(0.3)


def test_rollout_commands_views_and_errors(hub):
    proc = fleet(hub, "rollout", "pause", "chat")
    assert_clean_error(proc)
    assert "there is no rollout of 'chat'" in proc.stderr

    proc = fleet(hub, "rollout", "start", "chat", "--to", "v9")
    assert_clean_error(proc)
    assert proc.returncode == 2 and "no version 'v9' (versions: v1, v2, v2-slow, v2-a100)" in proc.stderr

    proc = fleet(hub, "rollout", "start", "chat", "--to", "v2", "--schedule", "0 25 * * *", "--window", "1h")
    assert_clean_error(proc)
    assert proc.returncode == 2 and "--schedule:" in proc.stderr

    proc = fleet(hub, "rollout", "start", "chat", "--to", "v2", "--waves", "1,100%", "--min-success-time", "1h",
                 "--author", "ana")
    assert proc.returncode == 0, proc.stderr
    assert "3 site(s) in 2 wave(s) (1 + 2)" in proc.stdout and "fleet rollout status chat --watch" in proc.stdout

    st = wait_for(hub, lambda s: s["state"]["stage"] == "Soaking", "wave 1 to soak")
    assert st["phase"] == "Progressing" and st["createdBy"] == "ana"
    assert [x["status"] for x in st["state"]["sites"]] == ["applied", "pending", "pending"]

    proc = fleet(hub, "rollout", "status", "chat")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Rollout" in out and "v1 -> v2" in out and "1/3 sites" in out and "wave 1/2 soaking" in out
    assert "s1" in out and "applied" in out and "next: fleet rollout status chat --watch" in out

    proc = fleet(hub, "rollout", "status")
    assert proc.returncode == 0 and "chat" in proc.stdout and "Progressing" in proc.stdout

    proc = fleet(hub, "rollout", "start", "chat", "--to", "v2-slow")
    assert_clean_error(proc)
    assert "already Progressing" in proc.stderr and "fleet rollout abort chat" in proc.stderr

    proc = fleet(hub, "apply", "-f", str(hub.tmp / "fleet.yaml"))
    assert_clean_error(proc)
    assert "chat -> v2 (Progressing)" in proc.stderr and "fleet rollout abort chat" in proc.stderr

    proc = fleet(hub, "rollout", "pause", "chat", "-m", "looking at dashboards")
    assert proc.returncode == 0 and "is Paused" in proc.stdout, proc.stderr
    proc = fleet(hub, "rollout", "pause", "chat")
    assert_clean_error(proc)
    assert "already paused" in proc.stderr and "next: resume it with `fleet rollout resume chat`" in proc.stderr

    assert fleet(hub, "rollout", "abort", "chat").returncode == 0
    proc = fleet(hub, "rollout", "undo", "chat")
    assert proc.returncode == 0, proc.stderr
    wait_for(hub, lambda s: s["phase"] == "RolledBack", "the rollback")
    proc = fleet(hub, "rollout", "pause", "chat")
    assert_clean_error(proc)
    assert "nothing to pause" in proc.stderr
    proc = fleet(hub, "rollout", "status", "chat", "--watch")  # already over: draws once, says how it ended
    assert proc.returncode == 3 and "RolledBack" in proc.stdout and "1/1 sites" in proc.stdout, proc.stdout

    proc = fleet(hub, "rollout", "history", "chat")
    assert proc.returncode == 0, proc.stderr
    for action in ("rollout.start", "rollout.published", "rollout.soaking", "rollout.paused", "rollout.aborted",
                   "rollout.rolling-back", "rollout.rolled-back"):
        assert action in proc.stdout, action
    proc = fleet(hub, "audit", "-o", "json", "--since", "1h")
    assert proc.returncode == 0, proc.stderr
    records = json.loads(proc.stdout)
    start = next(r for r in records if r["action"] == "rollout.start")
    assert start["actor"] == "ana" and start["details"]["spec"]["waves"] == "1,100%"
    paused = next(r for r in records if r["action"] == "rollout.paused")
    assert paused["actor"].endswith(("@" + paused["actor"].split("@")[-1])) and "looking at dashboards" in \
        paused["details"]["message"]
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    # the rollout is over: apply works again
    assert fleet(hub, "apply", "-f", str(hub.tmp / "fleet.yaml")).returncode == 0
