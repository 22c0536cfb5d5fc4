"""`fleet autoscale status [SERVICE]`: measured demand, the plan and the forecast per service and region.

The hub adds up the agents' demand reports (hub.autoscale.demand) and sets
them beside the latest revision's autoscale settings and plan; columns the
autoscaler fills (forecast, planned replicas, next change) show "-" with the
reason while it has nothing to say.
"""

from __future__ import annotations

import sys

from google.protobuf.json_format import MessageToDict

from hub.cli.client import Admin
from hub.cli.errors import CliError
from hub.cli.output import emit
from hub.policy.units import parse_duration
from protos.fleet.v1 import admin_pb2

COLUMNS = [
    ("SERVICE", "service"), ("REGION", "region"), ("AUTOSCALE", "autoscaleText"),
    ("OBSERVED", "observedText"), ("DECLARED", "declaredText"), ("REPLICAS", "replicasNow"),
    ("FORECAST", "forecastText"), ("PLANNED", "plannedText"), ("NEXT CHANGE", "nextChange"),
    ("SHED", "shedText", True), ("REFUSED", "refusedText", True), ("PROMPT TOK", "promptText", True),
    ("OUTPUT TOK", "outputText", True), ("PLAN RPS", "planText", True), ("WHY", "reason"),
]


def add_parsers(sub, client_flags) -> None:
    au = sub.add_parser("autoscale", help="measured demand, plan and forecast per service and region")
    ss = au.add_subparsers(dest="autoscale_cmd", required=True, metavar="COMMAND")
    st = ss.add_parser("status", help="per service and region: observed rate, replicas now, forecast, planned")
    st.add_argument("service", nargs="?", default="", help="default: every service")
    st.add_argument("--window", default="5min",
                    help="observed rate over the last DURATION of measured demand (default 5min)")
    client_flags(st)


def window_s(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise CliError(f"--window: {exc}", "e.g. --window 5min", code=2) from None


def _rps(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g} rps" if v else "0 rps"


def row(r: admin_pb2.AutoscaleRegionStatus) -> dict:
    """The JSON/YAML row (the response's fields) plus the table's text cells."""
    out = MessageToDict(r, preserving_proto_field_name=False, always_print_fields_with_no_presence=True)
    opt = {f: getattr(r, f) if r.HasField(f) else None for f in (
        "min_replicas", "max_replicas", "target_quantile", "declared_rps", "observed_rps", "mean_prompt_tokens",
        "mean_output_tokens", "forecast_rps", "planned_replicas")}
    if opt["min_replicas"] is None:
        auto = "-"
    else:
        bound = f"{opt['min_replicas']}..{opt['max_replicas'] if opt['max_replicas'] is not None else 'any'}"
        auto = f"{'on' if r.autoscale_enabled else 'off'} {bound} q{opt['target_quantile']:g}"
    text = {
        "autoscaleText": auto, "observedText": _rps(opt["observed_rps"]), "declaredText": _rps(opt["declared_rps"]),
        "forecastText": _rps(opt["forecast_rps"]),
        "plannedText": "-" if opt["planned_replicas"] is None else str(opt["planned_replicas"]),
        "shedText": f"{r.shed:.0f}", "refusedText": f"{r.refused:.0f}",
        "promptText": "-" if opt["mean_prompt_tokens"] is None else f"{opt['mean_prompt_tokens']:.0f}",
        "outputText": "-" if opt["mean_output_tokens"] is None else f"{opt['mean_output_tokens']:.0f}",
        "planText": _rps(r.planned_rps),
    }
    return {**{k: v for k, v in out.items()}, "_text": text}


def run(admin: Admin, args) -> int:
    req = admin_pb2.AutoscaleStatusRequest(service=args.service, window_s=window_s(args.window))
    resp = admin.AutoscaleStatus(req)
    rows = [row(r) for r in resp.regions]
    for why in resp.skipped:
        print(f"skipped a demand report: {why}", file=sys.stderr)
    if args.output in ("json", "yaml"):
        emit([{k: v for k, v in r.items() if k != "_text"} for r in rows], [], args.output)
        return 0
    if not rows:
        print("no services yet: `fleet apply -f DIR` applies a revision" if not resp.revision
              else "no service in the latest revision declares or measured demand")
        return 0
    emit([{**r, **r["_text"]} for r in rows], COLUMNS, args.output, wide=args.wide,
         title=f"revision {resp.revision}; observed over the last {args.window}" if resp.revision else None)
    return 0
