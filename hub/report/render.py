"""Report output: rows for ``-o table|json|yaml``, a JSON document, and one HTML page.

:func:`table_rows` returns ``(rows, columns)`` for :func:`hub.cli.output.emit`:
rows are plain dicts in display units (latencies in ms, rates as %), the
same dicts serve the JSON and YAML views. :func:`to_json` keeps SI units
(seconds, USD, J, gCO2e) and says how each figure was computed.

:func:`render_html` writes a single self-contained page (no script, no
external CSS, fonts or images: inline SVG drawn here) with

- TTFT and ITL distributions: the cumulative distribution read from each
  merged sketch's bins, on a log time axis, with the 50/95/99 % lines;
- p95 TTFT per site as bars, against the SLO when one is given;
- cost per 1k requests and gCO2e per 1k requests per site;
- the table, and the payloads that were skipped with their reasons.

Every string that came from a payload is escaped (``html.escape``) in text
and in attributes; charts carry ``<title>``/``<desc>``, axis labels and
units, and do not rely on colour alone (values are printed, over-SLO bars
are marked).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape
from typing import Optional

from ddsketch.ddsketch import BaseDDSketch

from hub.report.aggregate import Report, Row

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MAX_SERIES = 8
"""Most curves per distribution chart (the busiest rows are drawn)."""

# (header, key) of the table view; keys of table_rows' dicts. Units (ms, USD, gCO2e) are in the caption
# (HTML) and the CLI's footnote, so headers stay short.
_METRIC_COLUMNS = (
    ("REQS", "requests"),
    ("ERR%", "errorPct"),
    ("REJ", "rejected"),
    ("FORBID", "forbidden"),
    ("TTFT P50", "ttftP50Ms"),
    ("TTFT P95", "ttftP95Ms"),
    ("TTFT P99", "ttftP99Ms"),
    ("ITL P50", "itlP50Ms"),
    ("ITL P95", "itlP95Ms"),
    ("ITL P99", "itlP99Ms"),
    ("TPOT P95", "tpotP95Ms"),
    ("QUEUE P95", "queueP95Ms"),
    ("E2E P95", "e2eP95Ms"),
    ("TOK/S", "tokensPerS"),
    ("$/1M TOK", "usdPer1MOutputTokens"),
    ("$/1K REQ", "usdPer1kRequests"),
    ("GCO2E/1K REQ", "gco2ePer1kRequests"),
    ("ENERGY KWH", "energyKwh"),
)
TERMINAL_KEYS = frozenset({"requests", "errorPct", "ttftP95Ms", "itlP95Ms", "tokensPerS", "usdPer1kRequests"})
"""The metric columns a terminal table shows by default (with the dimensions); `-o wide` shows every one."""
UNITS = "latencies in ms; error rate in %; cost in USD; carbon in gCO2e; energy in kWh"
"""What the short headers of the table measure in."""


def _round(x: Optional[float], digits: int = 3) -> Optional[float]:
    """Round to ``digits`` significant digits (None stays None)."""
    if x is None:
        return None
    if x == 0 or not math.isfinite(x):
        return float(x)
    return round(x, max(0, digits - 1 - math.floor(math.log10(abs(x)))))


def _ms(row: Row, metric: str, q: float) -> Optional[float]:
    v = row.quantile(metric, q)
    return _round(v * 1000.0) if v is not None else None


def _display_row(report: Report, row: Row, total: bool) -> dict:
    out: dict = {d: row.value(d) if not total else (TOTAL if i == 0 else "") for i, d in enumerate(report.by)}
    if not report.by:
        out["scope"] = TOTAL
    out.update({
        "requests": row.requests,
        "errorPct": _round(row.error_rate * 100) if row.error_rate is not None else None,
        "rejected": row.rejected,
        "forbidden": row.forbidden,
        "ttftP50Ms": _ms(row, "ttftS", 0.50),
        "ttftP95Ms": _ms(row, "ttftS", 0.95),
        "ttftP99Ms": _ms(row, "ttftS", 0.99),
        "itlP50Ms": _ms(row, "itlS", 0.50),
        "itlP95Ms": _ms(row, "itlS", 0.95),
        "itlP99Ms": _ms(row, "itlS", 0.99),
        "tpotP95Ms": _ms(row, "tpotS", 0.95),
        "queueP95Ms": _ms(row, "queueS", 0.95),
        "e2eP95Ms": _ms(row, "e2eS", 0.95),
        "tokensPerS": _round(row.tokens_per_s),
        "usdPer1MOutputTokens": _round(row.cost_per_1m_output_tokens),
        "usdPer1kRequests": _round(row.cost_per_1k_requests),
        "gco2ePer1kRequests": _round(row.carbon_g_per_1k_requests),
        "energyKwh": _round(row.energy_kwh),
    })
    return out


TOTAL = "TOTAL"
"""First dimension value of the total row in the table view."""


def table_rows(report: Report) -> tuple[list[dict], list[tuple[str, str]]]:
    """Rows then the total row, and the ``(header, key)`` columns, for :func:`hub.cli.output.emit`."""
    rows = [_display_row(report, r, False) for r in report.rows]
    rows.append(_display_row(report, report.total, True))
    dims = [(d.upper(), d) for d in report.by] or [("SCOPE", "scope")]
    return rows, dims + list(_METRIC_COLUMNS)


def _iso(t: Optional[datetime]) -> Optional[str]:
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


def _row_json(row: Row) -> dict:
    q = row.quantile
    return {
        **dict(row.key),
        "requests": row.requests,
        "errors": row.errors,
        "errorRate": row.error_rate,
        "rejected": row.rejected,
        "cancelled": row.cancelled,
        "forbidden": row.forbidden,
        "promptTokens": row.prompt_tokens,
        "outputTokens": row.output_tokens,
        "ttftS": {"p50": q("ttftS", 0.5), "p95": q("ttftS", 0.95), "p99": q("ttftS", 0.99)},
        "itlS": {"p50": q("itlS", 0.5), "p95": q("itlS", 0.95), "p99": q("itlS", 0.99)},
        "tpotS": {"p95": q("tpotS", 0.95)},
        "queueS": {"p95": q("queueS", 0.95)},
        "e2eS": {"p95": q("e2eS", 0.95)},
        "coveredS": row.covered_s,
        "windowStart": _iso(row.window_start),
        "windowEnd": _iso(row.window_end),
        "tokensPerS": row.tokens_per_s,
        "gpuSeconds": row.gpu_seconds,
        "costUsd": row.cost_usd,
        "costUsdPer1MOutputTokens": row.cost_per_1m_output_tokens,
        "costUsdPer1kRequests": row.cost_per_1k_requests,
        "carbonG": row.carbon_g,
        "carbonGPer1kRequests": row.carbon_g_per_1k_requests,
        "energyJ": row.energy_j,
        "energyKwh": row.energy_kwh,
        "groups": row.groups,
    }


DEFINITIONS = {
    "errorRate": "errors / requests",
    "tokensPerS": "output tokens / seconds covered by the union of the report windows of the row",
    "costUsdPer1MOutputTokens": "cost USD / output tokens x 1e6",
    "costUsdPer1kRequests": "cost USD / requests x 1e3",
    "carbonGPer1kRequests": "gCO2e / requests x 1e3",
    "quantiles": "from DDSketches merged exactly; relative error <= 1 %",
    "timeRange": "a payload counts when since < windowEnd <= until",
}


def to_json(report: Report) -> dict:
    """The report as a JSON-ready dict (SI units; ``None`` where undefined)."""
    return {
        "by": list(report.by),
        "since": _iso(report.since),
        "until": _iso(report.until),
        "payloads": report.payloads,
        "outside": report.outside,
        "rows": [_row_json(r) for r in report.rows],
        "total": _row_json(report.total),
        "skipped": [{"index": s.index, "site": s.site, "node": s.node, "reason": s.reason} for s in report.skipped],
        "definitions": dict(DEFINITIONS),
    }


# ------------------------------------------------------------------ SVG


def _fmt_s(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def _fmt_num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def nice_ticks(vmax: float, target: int = 5) -> list[float]:
    """Round axis ticks from 0 covering ``vmax``: steps of 1, 2, 2.5 or 5 times a power of ten."""
    if not vmax > 0 or not math.isfinite(vmax):
        return [0.0, 1.0]
    raw = vmax / (target - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    n = math.ceil(vmax / step - 1e-9)
    return [round(i * step, 12) for i in range(n + 1)]


class _Ids:
    """Unique element ids within one page (for aria-labelledby)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, stem: str) -> str:
        self.n += 1
        return f"{stem}-{self.n}"


def _svg_open(ids: _Ids, width: int, height: int, title: str, desc: str) -> str:
    t, d = ids("t"), ids("d")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-labelledby="{t} {d}" font-family="system-ui, sans-serif" '
            f'font-size="12"><title id="{t}">{escape(title)}</title><desc id="{d}">{escape(desc)}</desc>')


def cdf_points(sketch: BaseDDSketch) -> list[tuple[float, float]]:
    """(value, share of values <= value) at each non-empty positive bin of a sketch, in order.

    Zero values count from the start (a log axis cannot show them).
    """
    total = float(sketch.count)
    if total <= 0:
        return []
    store = sketch._store
    cum = float(sketch._zero_count + sketch._negative_store.count)
    out = []
    for i, c in enumerate(store.bins):
        if c:
            cum += c
            out.append((float(sketch._mapping.value(i + store.offset)), min(1.0, cum / total)))
    return out


def _cdf_chart(ids: _Ids, series: Sequence[tuple[str, BaseDDSketch]], title: str, what: str,
               unit: str = "requests") -> str:
    width, height = 720, 330
    left, right, top, bottom = 60, 44, 30, 50
    curves = [(label, cdf_points(s), s) for label, s in series]
    curves = [c for c in curves if c[1]]
    if not curves:
        return f'<p class="empty">{escape(title)}: no {escape(what)} values in this report.</p>'
    xs = [x for _, pts, _ in curves for x, _ in pts if x > 0]
    lo, hi = math.floor(math.log10(min(xs))), math.ceil(math.log10(max(xs)))
    if hi <= lo:
        hi = lo + 1
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + (math.log10(max(v, 10 ** lo)) - lo) / (hi - lo) * pw

    def py(f: float) -> float:
        return top + (1 - f) * ph

    desc = "; ".join(
        f"{label}: p50 {_fmt_s(s.get_quantile_value(0.5))}, p95 {_fmt_s(s.get_quantile_value(0.95))}, "
        f"p99 {_fmt_s(s.get_quantile_value(0.99))} over {s.count:,.0f} values"
        for label, _, s in curves
    )
    parts = [_svg_open(ids, width, height, title, f"Cumulative distribution of {what}, log time axis. {desc}")]
    parts.append(f'<text x="{left}" y="18" font-weight="600">{escape(title)}</text>')
    for decade in range(lo, hi + 1):
        x = px(10 ** decade)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#ddd"/>'
                     f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{escape(_fmt_s(10 ** decade))}'
                     f'</text>')
    for f in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" y1="{py(f):.1f}" x2="{left + pw}" y2="{py(f):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{py(f) + 4:.1f}" text-anchor="end">{f:.0%}</text>')
    # The quantile lines are labelled in the right margin, each label at least a line below the one above
    # (p99 and p95 lie 4 % of the height apart: labels on the lines themselves overlap); 16 units clear a
    # 12-unit font's box.
    label_y = quantile_label_positions([py(f) + 4 for f in QUANTILE_LINES], min_gap=16)
    for f, y in zip(QUANTILE_LINES, label_y):
        parts.append(f'<line x1="{left}" y1="{py(f):.1f}" x2="{left + pw}" y2="{py(f):.1f}" stroke="#888" '
                     f'stroke-dasharray="3 3"/><text class="q-label" x="{left + pw + 4}" y="{y:.1f}" '
                     f'fill="#555">p{f * 100:g}</text>')
    for i, (label, pts, _) in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        path = [f"{px(pts[0][0]):.1f},{py(0):.1f}"]
        prev = 0.0
        for x, f in pts:  # a step curve: the share jumps at each bin
            path.append(f"{px(x):.1f},{py(prev):.1f}")
            path.append(f"{px(x):.1f},{py(f):.1f}")
            prev = f
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(path)}">'
                     f'<title>{escape(label)}</title></polyline>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{escape(what)} (log scale)</text>')
    parts.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
                 f'share of {escape(unit)} at or below</text>')
    parts.append("</svg>")
    legend = "".join(
        f'<li><span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>{escape(label)}</li>'
        for i, (label, _, _) in enumerate(curves)
    )
    return "".join(parts) + f'<ul class="legend">{legend}</ul>'


QUANTILE_LINES = (0.99, 0.95, 0.5)
"""Quantiles marked on the distribution charts, top to bottom."""


def quantile_label_positions(ys: Sequence[float], min_gap: float) -> list[float]:
    """Baselines for labels wanted at ``ys`` (ascending), moved down so that no two are closer than ``min_gap``."""
    out: list[float] = []
    for y in ys:
        out.append(max(y, out[-1] + min_gap) if out else y)
    return out


def _bar_chart(ids: _Ids, bars: Sequence[tuple[str, Optional[float]]], title: str, axis: str,
               fmt: Callable[[float], str], ref: Optional[tuple[float, str]] = None) -> str:
    bars = [(label, v) for label, v in bars if v is not None]
    if not bars:
        return f'<p class="empty">{escape(title)}: no data in this report.</p>'
    label_w, right, top, bar_h, gap = 170, 130, 46, 22, 8
    width = 720
    height = top + len(bars) * (bar_h + gap) + 50
    pw = width - label_w - right
    ticks = nice_ticks(max([v for _, v in bars] + ([ref[0]] if ref else [])))
    vmax = ticks[-1]

    def px(v: float) -> float:
        return label_w + v / vmax * pw

    desc = "; ".join(f"{label}: {fmt(v)}" for label, v in bars)
    if ref:
        desc += f". {ref[1]}: {fmt(ref[0])}"
    parts = [_svg_open(ids, width, height, title, desc),
             f'<text x="10" y="18" font-weight="600">{escape(title)}</text>']
    for i, (label, v) in enumerate(bars):
        y = top + i * (bar_h + gap)
        over = ref is not None and v > ref[0]
        color = "#D55E00" if over else "#0072B2"
        mark = " ▲ over" if over else ""
        short = label if len(label) <= 26 else label[:25] + "…"
        parts.append(f'<text x="{label_w - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">{escape(short)}'
                     f'<title>{escape(label)}</title></text>'
                     f'<rect x="{label_w}" y="{y}" width="{max(1.0, px(v) - label_w):.1f}" height="{bar_h}" '
                     f'fill="{color}"><title>{escape(label)}: {escape(fmt(v))}</title></rect>'
                     f'<text x="{px(v) + 6:.1f}" y="{y + bar_h * 0.7:.1f}">{escape(fmt(v) + mark)}</text>')
    axis_y = top + len(bars) * (bar_h + gap)
    parts.append(f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + pw}" y2="{axis_y}" stroke="#888"/>')
    for v in ticks:
        parts.append(f'<text x="{px(v):.1f}" y="{axis_y + 16}" text-anchor="middle">{escape(fmt(v))}</text>')
    if ref:
        x = px(ref[0])
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{axis_y}" stroke="#000" '
                     f'stroke-width="2" stroke-dasharray="6 3"/><text x="{x + 4:.1f}" y="{top - 10}">'
                     f'{escape(ref[1])} {escape(fmt(ref[0]))}</text>')
    parts.append(f'<text x="{label_w + pw / 2}" y="{height - 8}" text-anchor="middle">{escape(axis)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:1.5rem 2rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:.75rem}.card{border:1px solid #ddd;border-radius:6px;padding:.5rem .8rem}
.card b{display:block;font-size:1.2rem}.meta{color:#555}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,560px),1fr));gap:1rem 2rem}
figure{margin:.5rem 0;min-width:0}figcaption{font-weight:600;margin-bottom:.25rem}
svg{display:block;width:100%;height:auto}
.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4rem 1rem;font-size:.85rem}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.3em;vertical-align:middle}
table{border-collapse:collapse;font-size:.8rem;width:100%;margin:.5rem 0 1.5rem}
caption{caption-side:top;text-align:left;color:#555;padding:.25rem 0;white-space:normal}
th{white-space:normal;vertical-align:bottom}
th,td{padding:.25rem .45rem;border-bottom:1px solid #eee;text-align:right}
td{white-space:nowrap}
th:not(.n),td:not(.n){text-align:left}tr.total td{font-weight:600;border-top:2px solid #888}
.empty{color:#777;font-style:italic}
@media print{
  @page{size:A4 landscape;margin:10mm}
  body{margin:0;font-size:9pt}
  .charts{grid-template-columns:1fr 1fr}
  figure,tr,.card{break-inside:avoid}
  table{font-size:7pt}
  h2{break-after:avoid}
}
"""

LATENCY_KEYS = ("requests", "errorPct", "rejected", "forbidden", "ttftP50Ms", "ttftP95Ms", "ttftP99Ms", "itlP50Ms",
                "itlP95Ms", "itlP99Ms", "tpotP95Ms", "queueP95Ms", "e2eP95Ms")
"""Columns of the page's first table (traffic and latency); the second has throughput, cost and carbon."""


def _series(report: Report, metric: str, priority: Optional[str] = None) -> list[tuple[str, BaseDDSketch]]:
    """Curves for a distribution chart: per site/model where the report has both, else per row; only the
    traffic of one priority class when ``priority`` is given (interactive and batch latencies differ by
    design: one chart mixing them shows neither)."""
    dims = tuple(d for d in ("site", "model") if d in report.by)
    by = dims + (("priority",) if priority is not None else ())
    rows = report.regroup(by).rows if by else report.rows
    if priority is not None:
        rows = tuple(r for r in rows if r.value("priority") == priority)
    if not rows:
        return []
    ranked = sorted(rows, key=lambda r: (-r.count(metric), r.label))[:MAX_SERIES]

    def label(r) -> str:
        return " / ".join(r.value(d) for d in dims) if dims else r.label

    return [(label(r), r.sketches[metric]) for r in ranked]


def _priorities(report: Report) -> list[Optional[str]]:
    """The priority classes to chart separately (``[None]``: the report is not grouped by priority)."""
    if "priority" not in report.by:
        return [None]
    return sorted({r.value("priority") for r in report.regroup(("priority",)).rows}, key=lambda p: (p != "interactive", p))


def _distribution_charts(ids: _Ids, report: Report) -> list[str]:
    out = []
    for metric, name, what, unit in (("ttftS", "Time to first token (TTFT)", "TTFT", "requests"),
                                     ("itlS", "Inter-token latency (ITL)", "ITL", "token gaps")):
        figs = []
        for prio in _priorities(report):
            title = name + (f", {prio} traffic" if prio else "")
            figs.append(f'<figure>{_cdf_chart(ids, _series(report, metric, prio), title, what, unit)}</figure>')
        out.append('<div class="charts">' + "".join(figs) + "</div>")
    return out


def _table(report: Report, rows: list[dict], columns: list[tuple[str, str]], caption: str) -> str:
    dims = set(report.by) | {"scope"}
    out = [f"<table><caption>{escape(caption)}</caption><thead><tr>"]
    out.extend(f'<th scope="col"{"" if key in dims else " class=n"}>{escape(h)}</th>' for h, key in columns)
    out.append("</tr></thead><tbody>")
    for i, r in enumerate(rows):
        cls = ' class="total"' if i == len(rows) - 1 else ""
        out.append(f"<tr{cls}>" + "".join(
            f'<td{"" if key in dims else " class=n"}>{escape(_cell(r.get(key)))}</td>' for _, key in columns)
            + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(report: Report, title: str = "Fleet report", slo_ttft_p95_s: Optional[float] = None,
                generated_at: Optional[datetime] = None) -> str:
    """One self-contained HTML page for a report (no external resources, no script)."""
    ids = _Ids()
    t = report.total
    span = (f"{_iso(t.window_start)} to {_iso(t.window_end)}" if t.windows else "no traffic")
    cards = [
        ("requests", f"{t.requests:,}"),
        ("error rate", f"{t.error_rate:.2%}" if t.error_rate is not None else "-"),
        ("p95 TTFT", _fmt_s(t.quantile("ttftS", 0.95)) if t.count("ttftS") else "-"),
        ("p95 ITL", _fmt_s(t.quantile("itlS", 0.95)) if t.count("itlS") else "-"),
        ("output tokens/s", _fmt_num(t.tokens_per_s) if t.tokens_per_s is not None else "-"),
        ("USD per 1k requests", _fmt_num(t.cost_per_1k_requests) if t.cost_per_1k_requests is not None else "-"),
        ("gCO2e per 1k requests",
         _fmt_num(t.carbon_g_per_1k_requests) if t.carbon_g_per_1k_requests is not None else "-"),
        ("energy", f"{_fmt_num(t.energy_kwh)} kWh"),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">Traffic {escape(span)}; {report.payloads:,} payloads counted, '
        f'{len(report.skipped):,} skipped, {report.outside:,} outside the time range; grouped by '
        f'{escape(", ".join(report.by) or "nothing")}.'
        + (f" Generated {escape(_iso(generated_at) or '')}." if generated_at else "") + "</p>",
        '<section class="cards" aria-label="Fleet totals">'
        + "".join(f'<div class="card">{escape(k)}<b>{escape(v)}</b></div>' for k, v in cards)
        + "</section>",
        "<h2>Latency distributions</h2>",
        '<p class="meta">Cumulative share of requests (of gaps between tokens for ITL) at or below each latency, '
        "read from the "
        "merged sketches (relative error at most 1 %). Further right is slower.</p>",
        *_distribution_charts(ids, report),
        "<h2>Per site</h2>",
    ]
    if "site" in report.by:
        sites = report.regroup(("site",)).rows
        ref = (slo_ttft_p95_s * 1e3, "SLO p95 TTFT") if slo_ttft_p95_s is not None else None
        out.append('<div class="charts">')
        out.append("<figure>" + _bar_chart(
            ids, [(r.value("site"), (lambda v: v * 1e3 if v is not None else None)(r.quantile("ttftS", 0.95)))
                  for r in sites],
            "p95 time to first token per site", "p95 TTFT (ms)", lambda v: f"{v:.4g} ms", ref) + "</figure>")
        out.append("<figure>" + _bar_chart(
            ids, [(r.value("site"), r.cost_per_1k_requests) for r in sites],
            "Cost per 1,000 requests per site", "cost per 1k requests (USD)", lambda v: f"${v:.4g}") + "</figure>")
        out.append("<figure>" + _bar_chart(
            ids, [(r.value("site"), r.carbon_g_per_1k_requests) for r in sites],
            "Carbon per 1,000 requests per site", "emissions per 1k requests (gCO2e)",
            lambda v: f"{v:.4g} g") + "</figure>")
        out.append("</div>")
    else:
        out.append('<p class="empty">This report is not grouped by site; build it with site in --by for '
                   "per-site charts.</p>")
    rows, columns = table_rows(report)
    dims = [c for c in columns if c[1] in set(report.by) | {"scope"}]
    per = ", ".join(report.by) or "fleet"
    out.append("<h2>Table</h2>")
    # Two tables, each as wide as the page at most: traffic and latency, then throughput, cost and carbon.
    out.append(_table(report, rows, dims + [c for c in columns if c[1] in LATENCY_KEYS],
                      f"Traffic and latency per {per} (latencies in ms; error rate in %)"))
    out.append(_table(report, rows, dims + [c for c in columns if c not in dims and c[1] not in LATENCY_KEYS],
                      f"Throughput, cost and carbon per {per} (output tokens/s; cost in USD; carbon in gCO2e; "
                      "energy in kWh)"))
    if report.skipped:
        out.append(f"<h2>Skipped payloads ({len(report.skipped)})</h2><ul>")
        out.extend(f"<li>#{s.index} {escape(s.site or '?')}/{escape(s.node or '?')}: {escape(s.reason)}</li>"
                   for s in report.skipped)
        out.append("</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def _cell(v: object) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return _fmt_num(v)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
