"""A real `fleet-agent run` process stops promptly on SIGTERM (a DaemonSet roll waits
for it) and loses nothing it queued: in-flight requests get --drain-timeout, then are
cancelled, and the last telemetry window lands in the durable outbox."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from edge_agent.state import LocalObject, LocalState
from tests.integration.cliharness import AGENT, free_port
from tests.serving.conftest import PUBLIC, tiny_digest, wait_until

DRAIN_S = 1.0
MARGIN_S = 30.0  # generous: a loaded CI machine, not a timing assertion


@pytest.mark.slow
def test_sigterm_drains_briefly_exits_and_keeps_every_report(tmp_path: Path, models_dir: Path) -> None:
    data = tmp_path / "agent"
    state = LocalState(data)
    state.save(LocalObject("id-1", "ResidencyPolicy", "public", 1, PUBLIC))
    state.save(LocalObject("id-2", "Placement", "fra-1.a", 2, {"site": "fra-1", "node": "a", "assignments": [
        {"service": "chat", "model": "tiny", "version": "v1", "digest": tiny_digest(models_dir)}]}))
    state.close()
    log = (tmp_path / "agent.log").open("w")
    # No hub listens there: the link keeps redialling and every report stays queued in the outbox.
    proc = subprocess.Popen(
        [*AGENT, "run", "--hub", f"127.0.0.1:{free_port()}", "--site", "fra-1", "--node", "a", "--insecure",
         "--data-dir", str(data), "--no-gpu-probe", "--serve-port", "0", "--models-dir", str(models_dir),
         "--default-data-class", "public", "--telemetry-interval", "3600", "--drain-timeout", str(DRAIN_S)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: (data / "serve.json").exists() or proc.poll() is not None, 120, "serve.json")
        assert proc.poll() is None, (tmp_path / "agent.log").read_text()
        url = f"http://127.0.0.1:{json.loads((data / 'serve.json').read_text())['http']}"
        with httpx.Client(base_url=url, timeout=60) as c:
            wait_until(lambda: c.get("/readyz").status_code == 200, 60, "ready")
            done = c.post("/v1/completions", json={"model": "chat", "prompt": "hi", "max_tokens": 3})
            assert done.status_code == 200, done.text
        streamed: list[str] = []

        def long_stream() -> None:  # still running when SIGTERM comes: drained, then cancelled
            try:
                with httpx.stream("POST", f"{url}/v1/completions", timeout=120, json={
                        "model": "chat", "prompt": "hi", "max_tokens": 250, "ignore_eos": True, "stream": True}) as r:
                    for line in r.iter_lines():
                        streamed.append(line)
            except httpx.HTTPError:
                pass

        client = threading.Thread(target=long_stream, daemon=True)
        client.start()
        wait_until(lambda: any(x.startswith("data: {") for x in streamed), 60, "the stream to start")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(DRAIN_S + MARGIN_S)
        took = time.monotonic() - t0
        client.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert rc == 0, (tmp_path / "agent.log").read_text()
    assert took < DRAIN_S + MARGIN_S
    state = LocalState(data)
    try:
        tele = [p.payload for p in state.pending(0, 1000) if p.kind == "telemetry"]
    finally:
        state.close()
    groups = [g for t in tele for g in t["groups"]]
    assert sum(g["requests"] for g in groups) == 2, tele  # the finished request and the drained/cancelled one
