"""Agent footprint: idle RSS and CPU of a real `fleet-agent run` process in each
runtime mode, and how long it takes to exit on SIGTERM.

    python -m benchmarks.agent_footprint [--idle 5] [--size tiny]

Starts a real hub (`fleet hub serve --insecure`, SQLite in a temporary
directory, benchmarks/_sim.py's HubProcess) and, one after the other, a real agent in

* ``local`` mode: serving one model (``fleet-agent make-model --size SIZE``)
  in the in-process engine (torch loaded), and
* ``external`` mode: forwarding to an OpenAI-compatible server
  (``--external-url``; none needs to run for an idle agent), torch never
  imported.

The hub publishes a ResidencyPolicy and a Placement of the model to the
agent's node; each agent serves HTTP, and is measured with psutil once it has connected
to the hub, its HTTP API is ready and it has been idle for ``--idle`` seconds:
RSS and USS (MiB), CPU over the idle window (% of one core), threads, and
whether torch is loaded (``/proc/PID/maps``). Then it is sent SIGTERM and the
time to exit is taken. The GPU probe runs as by default (NVML, then torch in
local mode only). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from fleet_contract.weights import manifest

PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


async def _publish(admin_addr: str, digest: str) -> None:
    """The objects an agent on fra-1/a serves from: a ResidencyPolicy and a Placement of tiny v1
    (with its weights digest: the local runtime serves only verified weights)."""
    from google.protobuf.struct_pb2 import Struct

    from benchmarks._sim import AUTH, admin_stub
    from protos.fleet.v1 import admin_pb2

    ch, stub = admin_stub(admin_addr)
    async with ch:
        for kind, name, spec in (
                ("ResidencyPolicy", "public", {"dataClass": "public", "allow": {"anywhere": True}}),
                ("Placement", "fra-1.a", {"site": "fra-1", "node": "a", "assignments": [
                    {"service": "chat", "model": "tiny", "version": "v1", "digest": digest}]})):
            s = Struct()
            s.update(spec)
            await stub.PutObject(admin_pb2.PutObjectRequest(kind=kind, name=name, spec=s,
                                                            target=admin_pb2.ObjectTarget(site="fra-1", node="a")),
                                 metadata=AUTH)


def measure(mode: str, hub: str, tmp: Path, models: Path, idle_s: float) -> dict:
    data = tmp / f"agent-{mode}"
    log_path = tmp / f"agent-{mode}.log"
    extra = ["--models-dir", str(models)] if mode == "local" else \
        ["--runtime-mode", "external", "--external-url", f"http://127.0.0.1:{_free_port()}"]
    t_start = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [PY, "-m", "edge_agent.cli", "run", "--hub", hub, "--site", "fra-1", "--node", "a", "--insecure",
             "--data-dir", str(data), "--serve-port", "0", "--default-data-class", "public",
             "--drain-timeout", "1", "-v", *extra],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        return _measure(mode, proc, data, log_path, t_start, idle_s)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; the agent's log ends with:\n{log_path.read_text()[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _measure(mode: str, proc: subprocess.Popen, data: Path, log_path: Path, t_start: float, idle_s: float) -> dict:
    if True:
        _wait(lambda: (data / "serve.json").exists() or proc.poll() is not None, 300, f"{mode} agent to serve")
        if proc.poll() is not None:
            raise RuntimeError(f"{mode} agent exited: {log_path.read_text()[-2000:]}")
        url = f"http://127.0.0.1:{json.loads((data / 'serve.json').read_text())['http']}"
        _wait(lambda: httpx.get(f"{url}/readyz").status_code == 200, 120, f"{mode} agent ready")
        _wait(lambda: "connected to hub" in log_path.read_text(), 120, f"{mode} agent to connect")
        ready_s = time.monotonic() - t_start
        p = psutil.Process(proc.pid)
        time.sleep(1.0)  # let start-up work settle before the idle window
        c0, t0 = p.cpu_times(), time.monotonic()
        time.sleep(idle_s)
        c1, t1 = p.cpu_times(), time.monotonic()
        mem = p.memory_full_info()
        maps = Path(f"/proc/{proc.pid}/maps").read_text() if Path(f"/proc/{proc.pid}/maps").exists() else ""
        out = {
            "rss_mib": round(mem.rss / 2**20, 1), "uss_mib": round(mem.uss / 2**20, 1),
            "idle_cpu_pct": round(100 * ((c1.user - c0.user) + (c1.system - c0.system)) / (t1 - t0), 2),
            "threads": p.num_threads(), "torch_loaded": "libtorch" in maps, "start_to_ready_s": round(ready_s, 2),
        }
        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out["exit_code"] = proc.wait(120)
        out["sigterm_exit_s"] = round(time.monotonic() - t_term, 2)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=float, default=5.0, help="seconds idle before measuring CPU (default 5)")
    ap.add_argument("--size", default="tiny", choices=["tiny", "small", "1b"], help="local model size (default tiny)")
    args = ap.parse_args()
    from benchmarks._sim import HubProcess
    from edge_agent.runtime.make_model import make_model

    with tempfile.TemporaryDirectory(prefix="agent-footprint-") as d:
        tmp = Path(d)
        models = tmp / "models"
        make_model(args.size, models / "tiny" / "v1", seed=0)
        hub = HubProcess(tmp / "hub")
        hub.data_dir.mkdir()
        hub.start()
        try:
            asyncio.run(_publish(hub.admin_addr, manifest(models / "tiny" / "v1").digest))
            result = {mode: measure(mode, hub.agent_addr, tmp, models, args.idle) for mode in ("local", "external")}
        finally:
            hub.stop()
    print(json.dumps({"benchmark": "agent_footprint", "model_size": args.size, "idle_s": args.idle, **result}))


if __name__ == "__main__":
    main()
