"""`fleet demo`, the README's main job, end to end as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow


def _agents_of(pid: int) -> list[psutil.Process]:
    return [
        p for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and "edge_agent.cli" in " ".join(p.info["cmdline"])
        and f"--exit-with-parent {pid}" in " ".join(p.info["cmdline"])
    ]


def test_demo_plans_applies_serves_and_reports_then_exits_cleanly(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.cli.main", "demo", "--html", str(tmp_path / "report.html")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
    )
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "all 4 agents connected" in out
    assert "revision 1 stored" in out
    assert "every demo node applied its placement" in out
    assert "48/48 served" in out
    assert "HTTP 403: data class 'personal-de' may not be processed at site iad-1" in out
    report = out[out.index("merged from the agents' telemetry"):]
    total = next(line.split() for line in report.splitlines() if line.startswith("TOTAL"))
    assert int(total[3]) >= 48 and int(total[4]) == 1  # every served request measured; the refusal counted
    assert (tmp_path / "report.html").read_text().count("<svg") >= 2
    assert "Traceback" not in out
    # This demo's agents only (they name its pid): another demo on the same machine is not this one's leftover.
    leftovers = _agents_of(proc.pid)
    assert leftovers == [], f"demo left processes behind: {[p.info['cmdline'] for p in leftovers]}"


def test_demo_ctrl_c_stops_every_process_it_started():
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.cli.main", "demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not _agents_of(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        agents = _agents_of(proc.pid)
        assert agents, "the demo never started its agents"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (130, 0), out
    gone, alive = psutil.wait_procs(agents, timeout=10)
    assert alive == [], f"agents still running after Ctrl-C: {[p.pid for p in alive]}"
    assert "Traceback" not in out
