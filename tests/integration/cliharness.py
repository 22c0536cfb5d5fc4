"""Running the real `fleet` and `fleet-agent` as subprocesses, for the CLI tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
FLEET = [str(BIN / "fleet")] if (BIN / "fleet").exists() else [sys.executable, "-m", "hub.cli.main"]
AGENT = [str(BIN / "fleet-agent")] if (BIN / "fleet-agent").exists() else [sys.executable, "-m", "edge_agent.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Hub:
    def __init__(self, tmp: Path, extra: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.port, self.admin_port = free_port(), free_port()
        self.data = tmp / "hub"
        self.log = open(tmp / "hub.log", "w")  # noqa: SIM115 - closed in close()
        self.env = {**os.environ, "FLEETCONFIG": str(self.data / "fleetconfig.yaml")}
        self.env.pop("FLEET_TOKEN", None)
        self.env.pop("FLEET_HUB", None)
        self.env.pop("FLEET_DEBUG", None)
        self.proc = subprocess.Popen(
            [*FLEET, "hub", "serve", "--insecure", "--data-dir", str(self.data), "--listen", f"127.0.0.1:{self.port}",
             "--admin-listen", f"127.0.0.1:{self.admin_port}", "--heartbeat-interval", "0.5", *extra],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
        )
        self.agents: list[subprocess.Popen] = []

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.tmp / "hub.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.admin_port), timeout=0.5):
                    if (self.data / "fleetconfig.yaml").exists():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("hub did not start: " + (self.tmp / "hub.log").read_text())

    def start_agent(self, site: str, node: str, *, region: str = "eu-central", country: str = "DE",
                    jurisdiction: str = "EU", extra: tuple[str, ...] = ()) -> subprocess.Popen:
        p = subprocess.Popen(
            [*AGENT, "run", "--hub", f"127.0.0.1:{self.port}", "--site", site, "--node", node, "--insecure",
             "--data-dir", str(self.agent_dir(site, node)), "--no-gpu-probe", "--gpu", "NVIDIA L4:24:2",
             "--region", region, "--country", country, "--jurisdiction", jurisdiction, *extra],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
        )
        self.agents.append(p)
        return p

    def agent_dir(self, site: str, node: str) -> Path:
        return self.tmp / f"agent-{site}-{node}"

    def close(self) -> None:
        for p in self.agents:
            stop(p)
        stop(self.proc)
        self.log.close()


def fleet(hub: Hub | None, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    base = hub.env if hub else {k: v for k, v in os.environ.items() if not k.startswith("FLEET")}
    return subprocess.run([*FLEET, *args], capture_output=True, text=True, timeout=timeout, env={**base, **(env or {})})


INSECURE_WARNING = "warning: insecure: plaintext connection to "


def without_insecure_warning(stderr: str) -> str:
    """stderr less the warning every plaintext (--insecure) CLI call prints first."""
    lines = stderr.splitlines(keepends=True)
    while lines and lines[0].startswith(INSECURE_WARNING):
        lines.pop(0)
    return "".join(lines)


def assert_clean_error(proc: subprocess.CompletedProcess, *, next_line: bool = True) -> None:
    assert proc.returncode != 0, proc.stdout
    stderr = without_insecure_warning(proc.stderr)
    assert stderr.startswith("error: "), proc.stderr
    if next_line:
        assert "\n  next: " in stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
