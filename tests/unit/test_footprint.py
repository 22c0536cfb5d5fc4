"""The hub, the CLI and an external-runtime agent run without the inference runtime
(torch, transformers, tokenizers...): checked in fresh interpreters, by ``sys.modules``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "safetensors", "tokenizers")


def run_python(code: str, *, block_runtime: bool = False, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; ``block_runtime`` makes torch & co. unimportable there."""
    prelude = "import sys\n"
    if block_runtime:
        prelude += "".join(f"sys.modules[{m!r}] = None\n" for m in HEAVY)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("FLEET_DEBUG", None)
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True, env=env,
                          timeout=240, cwd=ROOT)


def heavy_after(code: str) -> list[str]:
    p = run_python(code + f"\nprint('HEAVY=' + json.dumps(sorted(m for m in {HEAVY!r} if sys.modules.get(m))))")
    assert p.returncode == 0, p.stderr
    (line,) = [x for x in p.stdout.splitlines() if x.startswith("HEAVY=")]
    return json.loads(line[6:])


def test_hub_cli_and_external_agent_modules_do_not_import_torch() -> None:
    modules = ["hub.server", "hub.cli.main", "edge_agent.cli", "edge_agent.agent", "edge_agent.link",
               "edge_agent.serving.server", "edge_agent.serving.openai_api", "edge_agent.serving.grpc_api",
               "edge_agent.serving.models", "edge_agent.managed", "edge_agent.runtime",
               "edge_agent.runtime.external", "edge_agent.runtime.request"]
    assert heavy_after("import importlib, json\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)) == []


def test_an_external_mode_agent_with_serving_and_gpu_probe_does_not_import_torch(tmp_path: Path) -> None:
    """The whole agent, built and serving (the inventory probe included), not just its imports."""
    code = f"""
import json
from pathlib import Path
import httpx
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig
from edge_agent.state import LocalObject
cfg = AgentConfig(hub="127.0.0.1:1", site="s", node="n", data_dir=Path({str(tmp_path)!r}), insecure=True,
                  runtime_mode="external", external_url="http://127.0.0.1:9", serve_port=0, grpc_port=0,
                  default_data_class="public")
agent = Agent(cfg, probe_gpus=True)
agent.serving.appliers["Placement"].apply(LocalObject("p", "Placement", "p", 1,
    {{"site": "s", "node": "n", "assignments": [{{"service": "chat", "model": "m", "version": "v1"}}]}}), None)
agent.serving.start()
r = httpx.get(f"http://127.0.0.1:{{agent.serving.http_port}}/v1/models")
assert r.status_code == 200 and r.json()["data"], r.text
agent.serving.stop()
agent.state.close()
"""
    assert heavy_after(code) == []


def test_the_local_runtime_without_torch_names_the_extra_to_install(tmp_path: Path) -> None:
    p = run_python(f"""
from pathlib import Path
from edge_agent.runtime import RuntimeMissing
from edge_agent.serving.residency import Location
from edge_agent.serving.server import Serving, ServingConfig
try:
    Serving(ServingConfig(models_dir=Path({str(tmp_path)!r})), Location("s", "DE", "EU"), "n", lambda k, p: None)
except RuntimeMissing as exc:
    print("REFUSED:", exc)
Serving(ServingConfig(external_url="http://127.0.0.1:9"), Location("s", "DE", "EU"), "n", lambda k, p: None)
print("EXTERNAL OK")
""", block_runtime=True)
    assert p.returncode == 0, p.stderr
    assert "REFUSED:" in p.stdout and "pip install 'edge-fleet[runtime]'" in p.stdout and "torch" in p.stdout
    assert "EXTERNAL OK" in p.stdout
    # The real command line: a clear error and the next command, no traceback.
    cli = run_python("from edge_agent.cli import main; sys.exit(main())", block_runtime=True, args=(
        "run", "--hub", "127.0.0.1:1", "--site", "s", "--node", "n", "--data-dir", str(tmp_path / "d"),
        "--insecure", "--no-gpu-probe", "--serve-port", "0"))
    assert cli.returncode == 2, cli.stderr
    assert "pip install 'edge-fleet[runtime]'" in cli.stderr and "Traceback" not in cli.stderr


def test_a_missing_hub_says_which_flag_to_set(tmp_path: Path) -> None:
    p = run_python("from edge_agent.cli import main; sys.exit(main())", args=(
        "run", "--site", "fra-1", "--node", "gpu-a", "--data-dir", str(tmp_path), "--insecure"))
    assert p.returncode == 2
    first, *rest = p.stderr.strip().splitlines()
    assert first.startswith("error: hub is required") and "--hub HOST:PORT" in first, p.stderr
    assert rest[-1].strip().startswith("next:")
    several = run_python("from edge_agent.cli import main; sys.exit(main())", args=("run", "--insecure"))
    lines = several.stderr.splitlines()
    assert several.returncode == 2 and lines[0] == "error: the agent cannot start as configured:"
    for flag in ("--hub", "--site", "--node NAME or $NODE_NAME", "--data-dir"):
        assert any(flag in line for line in lines[1:-1]), (flag, several.stderr)
