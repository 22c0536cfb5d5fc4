"""Regenerate the Python code of protos/fleet/v1 from its .proto files.

    python tools/gen_protos.py            # write next to the .proto files
    python tools/gen_protos.py --out DIR  # write into DIR (the freshness test)

The output depends on the grpcio-tools version, which is pinned in
pyproject.toml's `dev` extra for that reason.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "fleet" / "v1"


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in PROTO_DIR.glob("*.proto"))
    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    ns = parser.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    generate(ns.out)


if __name__ == "__main__":
    sys.exit(main())
