"""`fleet demo [--scenario fleet|rollout]`: picks the scenario, runs it, and cleans up.

Kept apart from the scenarios themselves: `demo_rollout` builds on `demo`'s `Demo`, so the choice
between them cannot live in `demo` without an import circle.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hub.cli.demo import Demo
from hub.cli.demo_rollout import RolloutDemo
from hub.cli.output import console


def run_demo(args) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    if getattr(args, "scenario", "fleet") == "rollout":
        demo: Demo = RolloutDemo(workdir, args.agents_timeout)
    else:
        demo = Demo(workdir, args.agents_timeout, Path(args.html).resolve() if args.html else None, args.requests)

    async def main() -> None:
        try:
            await demo.run()
        finally:
            await demo.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        console().print("\ninterrupted; every process the demo started is stopped")
        return 130
    finally:
        if args.keep:
            console().print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0
