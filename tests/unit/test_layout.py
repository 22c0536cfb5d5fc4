"""`hub` and `edge_agent` never import each other; both may import `protos`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported anywhere in a file (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            # `from hub import x` names hub; `from hub.store import y` too.
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            # importlib.import_module("hub....") / __import__("hub...")
            name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                if isinstance(node.args[0].value, str):
                    out.append((node.lineno, node.args[0].value))
    return out


def violations(package: str, forbidden: str) -> list[str]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    bad = []
    for f in files:
        for line, mod in imported_modules(f):
            if mod == forbidden or mod.startswith(forbidden + "."):
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    return bad


@pytest.mark.parametrize(("package", "forbidden"), [("hub", "edge_agent"), ("edge_agent", "hub")])
def test_no_cross_imports(package, forbidden):
    assert violations(package, forbidden) == []


def test_both_share_protos():
    # The check above is only meaningful if the scanner sees real imports.
    for package in ("hub", "edge_agent"):
        mods = {m for f in (ROOT / package).rglob("*.py") for _, m in imported_modules(f)}
        assert any(m == "protos" or m.startswith("protos.") for m in mods), package


def test_scanner_catches_every_form(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "import edge_agent.link\n"
        "from edge_agent import state\n"
        "def f():\n    from edge_agent.config import AgentConfig\n"
        "import importlib\nimportlib.import_module('edge_agent.cli')\n"
        "import edge_agentx\nfrom . import edge_agent\n"
    )
    mods = [m for _, m in imported_modules(f) if m == "edge_agent" or m.startswith("edge_agent.")]
    assert sorted(mods) == sorted(["edge_agent.link", "edge_agent", "edge_agent.config", "edge_agent.cli"])


@pytest.mark.parametrize("forbidden", ["hub", "edge_agent"])
def test_contract_imports_neither_side(forbidden):
    """`fleet_contract` holds what both sides decide alike; it may import neither (both may import it)."""
    assert violations("fleet_contract", forbidden) == []


def test_both_share_the_residency_contract():
    for package in ("hub", "edge_agent"):
        mods = {m for f in (ROOT / package).rglob("*.py") for _, m in imported_modules(f)}
        assert "fleet_contract.residency" in mods, package
