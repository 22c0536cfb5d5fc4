"""`fleet report`: latency, throughput, cost and carbon by site, model, version and priority.

The hub merges the agents' telemetry sketches exactly (hub.report); this
command picks the grouping and the time range and prints the result, or writes
the HTML page with charts.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hub.cli.client import Admin
from hub.cli.errors import CliError
from hub.cli.output import emit
from hub.policy.units import parse_duration
from hub.report.render import TERMINAL_KEYS, UNITS
from protos.fleet.v1 import admin_pb2


def _since(text: str | None, now: datetime) -> datetime | None:
    if not text:
        return None
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--since {text!r} is neither a duration (30min, 2h) nor an ISO time (2026-11-27T10:00Z)",
                       "e.g. fleet report --since 1h", code=2) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def run(admin: Admin, args) -> int:
    by = [d.strip() for d in args.by.split(",") if d.strip()] if args.by else []
    req = admin_pb2.GetReportRequest(by=by, html=bool(args.html))
    since = _since(args.since, datetime.now(UTC))
    if since is not None:
        req.since.FromDatetime(since)
    if args.slo_ttft:
        try:
            req.slo_ttft_p95_s = parse_duration(args.slo_ttft)
        except ValueError as exc:
            raise CliError(f"--slo-ttft: {exc}", "e.g. --slo-ttft 500ms", code=2) from None
    resp = admin.GetReport(req)
    if args.html:
        path = Path(args.html)
        try:
            path.write_text(resp.html, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror}", "pass --html with a writable path") from None
        print(f"wrote {path} ({len(resp.html) // 1024} KiB); open it in a browser", file=sys.stderr)
    if args.output == "json":
        sys.stdout.write(json.dumps(json.loads(resp.report_json), indent=2) + "\n")
        return 0
    table = json.loads(resp.table_json)
    report = json.loads(resp.report_json)
    if args.output == "table" and report["payloads"] == 0:
        print("no telemetry yet: agents send it every few seconds while they serve requests")
        return 0
    dims = {*report["by"], "scope"}
    columns = [(h, k, k not in dims and k not in TERMINAL_KEYS) for h, k in table["columns"]]
    emit(table["rows"], columns, args.output, wide=args.wide)
    if args.output == "table":
        print(f"({UNITS}" + ("" if args.wide else "; -o wide for every column") + ")", file=sys.stderr)
    for s in report["skipped"]:
        print(f"skipped a payload from {s['site']}/{s['node']}: {s['reason']}", file=sys.stderr)
    return 0
