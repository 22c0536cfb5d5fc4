"""Rendering rows as a table, JSON or YAML (`-o table|json|yaml`)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import yaml
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "json", "yaml")


def console() -> Console:
    # Piped output is not cut at 80 columns: scripts read it whole.
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def age(dt: datetime | None, now: datetime | None = None) -> str:
    """kubectl-style age: 5s, 3m, 2h, 4d."""
    if dt is None:
        return "-"
    secs = max(0, int(((now or datetime.now(UTC)) - dt).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def emit(rows: Sequence[dict], columns: Sequence[tuple[str, str]], fmt: str, *, title: str | None = None) -> None:
    """rows: dicts for json/yaml; columns: (header, key) for the table view."""
    if fmt == "json":
        sys.stdout.write(json.dumps(list(rows), indent=2, default=str) + "\n")
        return
    if fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(json.loads(json.dumps(list(rows), default=str)), sort_keys=False))
        return
    table = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for header, _ in columns:
        table.add_column(header)
    for r in rows:
        table.add_row(*(str(_get(r, key)) for _, key in columns))
    console().print(table)


def _get(row: dict, key: str):
    cur = row
    for part in key.split("."):
        cur = cur.get(part, "") if isinstance(cur, dict) else ""
    return cur if cur not in (None, "") else "-"
