"""`fleet demo --scenario rollout`: a canary to a really slower version is rolled back by its gate, then a good
version rolls out in waves; both visible in `fleet rollout status` output."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_rollout_demo_catches_the_slow_canary_and_rolls_out_the_good_version():
    proc = subprocess.run(
        [sys.executable, "-m", "hub.cli.main", "demo", "--scenario", "rollout"],
        capture_output=True, text=True, timeout=420, env={**os.environ, "COLUMNS": "200"},
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    canary = out[out.index("--to v2-slow --strategy canary"):out.index("--to v2 --waves")]
    # RollingBack itself lasts about one controller tick, so a once-a-second progress line may miss it on a
    # loaded machine; the gate's reason and the final RolledBack status below are always there.
    assert "the new version is slower than allowed; rolling back" in canary
    assert "Status: RolledBack: chat v1 -> v2-slow" in canary and "FAIL " in canary and "-comparison" in canary
    waves = out[out.index("--to v2 --waves"):]
    assert "Status: Completed: chat v1 -> v2, 3 site(s): 3 applied" in waves
    assert waves.count("rollout.wave-passed") == 2 and "meets the SLO" in waves
    assert "Demo complete." in out
