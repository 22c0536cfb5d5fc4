"""`fleet drift [SERVICE] [--since]`: what drifted, where, by how much, since when, against which reference.

One row per (service, version, fleet or site, signal). ``fleet`` rows compare the
version's latest requests with its reference window (its first requests after it
rolled out, or the operator's pinned interval); site rows compare one site's latest
requests with the rest of the fleet serving the same version (a site-local fault).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

from hub.cli.client import Admin
from hub.cli.output import emit
from hub.cli.report_cmd import _since
from protos.fleet.v1 import admin_pb2

COLUMNS = [
    ("SERVICE", "service"), ("VERSION", "version"), ("WHERE", "site"), ("SIGNAL", "signal"), ("STATUS", "status"),
    ("TEST", "test"), ("SCORE", "scoreText"), ("PSI", "psiText"), ("REF MEAN", "refMeanText"),
    ("NOW MEAN", "curMeanText"), ("SINCE", "since"),
    ("MODEL", "model", True), ("N REF", "nReference", True), ("N NOW", "nCurrent", True),
    ("AGAINST", "reference.against", True), ("REFERENCE", "referenceText", True), ("RAISED", "raised", True),
    ("NOTE", "note", True),
]


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}"


def table_row(r: dict) -> dict:
    """Display fields beside the JSON ones: the score with the rule it was held to, PSI with its band."""
    rule = "<" if r["test"] in ("ks", "chi2") else ">"
    ref = r.get("reference") or {}
    return {**r, "scoreText": f"{_num(r['score'])} ({rule}{r['threshold']:g})",
            "psiText": f"{_num(r['psi'])} {r['psiBand']}", "refMeanText": _num(r.get("referenceMean")),
            "curMeanText": _num(r.get("currentMean")), "since": r.get("since") or "-",
            "referenceText": (f"{ref.get('from')}..{ref.get('to')} ({ref.get('requests', 0)} req)" if ref.get("from")
                              else f"latest requests of the other sites ({ref.get('requests', 0)} req)")}


def run(admin: Admin, args) -> int:
    req = admin_pb2.GetDriftRequest(service=args.service or "")
    since = _since(args.since, datetime.now(UTC))
    if since is not None:
        req.since.FromDatetime(since)
    out = json.loads(admin.GetDrift(req).drift_json)
    rows = sorted(out["rows"], key=lambda r: (r["status"] != "Drifted", r["service"], r["version"], r["site"],
                                               r["signal"]))
    for s in out.get("skipped", []):
        print(f"skipped a drift report from {s}", file=sys.stderr)
    if args.output in ("json", "yaml"):
        emit(rows, [], args.output)
        return 0
    if not rows:
        what = f" for service {args.service!r}" if args.service else ""
        print(f"no drift verdicts yet{what}: a version needs its reference window "
              "(3000 requests by default) and then a current window of requests")
        return 0
    emit([table_row(r) for r in rows], COLUMNS, args.output, wide=args.wide)
    drifted = sum(r["status"] == "Drifted" for r in rows)
    print(f"({drifted} drifted of {len(rows)} signals; SCORE: p-value for ks/chi2, distance otherwise"
          + ("" if args.wide else "; -o wide for the reference and sample sizes") + ")", file=sys.stderr)
    return 0
