"""The serving layer wired into the Agent and `fleet-agent run` flags."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx

from edge_agent.agent import Agent
from edge_agent.cli import parser
from edge_agent.config import ConfigError, load
from edge_agent.state import LocalObject, LocalState
from tests.serving.conftest import CLASSES, EU, site_location, tiny_digest


def test_run_flags_reach_the_config(tmp_path: Path) -> None:
    args = parser().parse_args([
        "run", "--hub", "h:1", "--site", "fra-1", "--node", "a", "--data-dir", str(tmp_path), "--insecure",
        "--serve-port", "0", "--grpc-port", "0", "--models-dir", str(tmp_path / "m"),
        "--default-data-class", "personal-eu", "--default-priority-class", "batch", "--telemetry-interval", "2"])
    cfg = load(None, {"hub": args.hub, "site": args.site, "node": args.node, "data_dir": args.data_dir,
                      "insecure": args.insecure, "serve_port": args.serve_port, "grpc_port": args.grpc_port,
                      "models_dir": args.models_dir, "default_data_class": args.default_data_class,
                      "default_priority_class": args.default_priority_class,
                      "telemetry_interval_s": args.telemetry_interval})
    assert cfg.serving and cfg.serve_port == 0 and cfg.grpc_port == 0 and cfg.telemetry_interval_s == 2
    assert cfg.default_data_class == "personal-eu" and cfg.models_dir == tmp_path / "m"
    plain = load(None, {"hub": "h:1", "site": "s", "node": "n", "data_dir": tmp_path, "insecure": True})
    assert not plain.serving
    try:
        load(None, {"hub": "h:1", "site": "s", "node": "n", "data_dir": tmp_path, "insecure": True,
                    "serve_port": 0, "runtime_mode": "external"})
        raise AssertionError("external mode without a URL must be refused")
    except ConfigError as exc:
        assert "--external-url" in str(exc)


async def test_agent_serves_what_it_held_before_a_restart(tmp_path: Path, models_dir: Path) -> None:
    from edge_agent.config import AgentConfig

    data = tmp_path / "agent"
    state = LocalState(data)
    for i, (kind, name, spec) in enumerate([
        ("SiteLocation", "fra-1", site_location("fra-1", "DE")),
        ("ResidencyPolicy", "eu-gdpr", EU), ("PriorityClass", "interactive", CLASSES["interactive"]),
        ("Placement", "fra-1.a", {"site": "fra-1", "node": "a", "assignments": [
            {"service": "chat", "model": "tiny", "version": "v1", "priorityClass": "interactive",
             "digest": tiny_digest(models_dir)}]}),
    ], start=1):
        state.save(LocalObject(f"id-{i}", kind, name, i, spec))
    state.close()
    cfg = AgentConfig(hub="127.0.0.1:1", site="fra-1", node="a", data_dir=data, insecure=True, country="DE",
                      jurisdiction="EU", serve_port=0, grpc_port=0, models_dir=models_dir,
                      default_data_class="personal-eu", backoff_initial_s=5.0)
    agent = Agent(cfg, probe_gpus=False)
    assert {"ResidencyPolicy", "PriorityClass", "Placement"} <= set(agent.link.appliers)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        deadline = time.monotonic() + 60
        while not (data / "serve.json").exists():
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.05)
        ports = json.loads((data / "serve.json").read_text())
        assert ports["http"] == agent.serving.http_port and ports["grpc"] == agent.serving.grpc_port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['http']}", timeout=60) as c:
            assert (await c.get("/readyz")).status_code == 200
            r = await c.post("/v1/chat/completions", json={
                "model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] >= 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    state = LocalState(data)
    try:
        (tele,) = [p.payload for p in state.pending(0, 1000) if p.kind == "telemetry"]
    finally:
        state.close()
    (group,) = tele["groups"]
    assert (group["model"], group["version"], group["priority"], group["requests"]) == ("tiny", "v1", "interactive", 1)
