"""Rendering rows as a table, JSON or YAML (`-o table|wide|json|yaml`).

Tables are kubectl-style aligned text: a value is never cut or folded, at any
terminal width. What fits a terminal is decided by the columns a view shows by
default; ``-o wide`` adds the rest (columns marked ``wide``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import yaml
from rich.console import Console

FORMATS = ("table", "wide", "json", "yaml")
GAP = "   "
"""Between two columns, as kubectl prints them."""

Column = tuple[str, str] | tuple[str, str, bool]
"""(header, key) or (header, key, wide_only) of a table view."""


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


def shown(columns: Sequence[Sequence], wide: bool) -> list[tuple[str, str]]:
    """The (header, key) pairs a table shows: wide-only columns with ``-o wide`` alone."""
    return [(c[0], c[1]) for c in columns if wide or not (len(c) > 2 and c[2])]


def aligned(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """kubectl-style text: columns padded to their widest cell, nothing cut.

    A cell with line breaks spans several lines of its row; the last column is
    not padded (no trailing blanks).
    """
    cells = [[str(c).split("\n") for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, lines in enumerate(r):
            widths[i] = max(widths[i], *(len(x) for x in lines))
    out = [GAP.join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for r in cells:
        for n in range(max((len(lines) for lines in r), default=1)):
            out.append(GAP.join((lines[n] if n < len(lines) else "").ljust(w)
                                for lines, w in zip(r, widths)).rstrip())
    return "\n".join(out)


def emit(rows: Sequence[dict], columns: Sequence[Column], fmt: str, *, title: str | None = None,
         wide: bool = False) -> None:
    """rows: dicts for json/yaml; columns: (header, key[, wide_only]) for the table view."""
    if fmt == "json":
        sys.stdout.write(json.dumps(list(rows), indent=2, default=str) + "\n")
        return
    if fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(json.loads(json.dumps(list(rows), default=str)), sort_keys=False))
        return
    cols = shown(columns, wide or fmt == "wide")
    text = aligned([h for h, _ in cols], [[str(_get(r, key)) for _, key in cols] for r in rows])
    sys.stdout.write((f"{title}\n" if title else "") + text + "\n")
    sys.stdout.flush()


def _get(row: dict, key: str):
    cur = row
    for part in key.split("."):
        cur = cur.get(part, "") if isinstance(cur, dict) else ""
    return cur if cur not in (None, "") else "-"
