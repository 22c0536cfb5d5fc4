"""Generated protobuf code never drifts from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "protos" / "fleet" / "v1"
GENERATED = ("*_pb2.py", "*_pb2_grpc.py", "*_pb2.pyi")


def _generated(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for pattern in GENERATED for p in d.glob(pattern)}


def test_regenerating_protos_changes_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_protos.py"), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    fresh = _generated(tmp_path / "protos" / "fleet" / "v1")
    checked_in = _generated(GEN)
    protos = sorted(p.stem for p in GEN.glob("*.proto"))
    assert protos, "no .proto files found"
    # Each .proto yields exactly _pb2.py, _pb2.pyi and _pb2_grpc.py.
    expected = {f"{s}{suffix}" for s in protos for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")}
    assert set(fresh) == expected, f"generator output changed shape: {sorted(set(fresh) ^ expected)}"
    assert set(checked_in) == expected, (
        f"checked-in generated files differ from what the .proto files yield: {sorted(set(checked_in) ^ expected)}"
    )
    stale = sorted(name for name in expected if fresh[name] != checked_in[name])
    assert not stale, f"stale generated code: {stale}; run `python tools/gen_protos.py` and commit the result"
    # Nothing else appeared in the output tree.
    others = sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() and p.name not in expected
    )
    assert others == []
