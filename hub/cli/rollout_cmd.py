"""`fleet rollout start|status|pause|resume|abort|undo|history` and `fleet audit`."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from datetime import UTC, datetime, timedelta

import yaml
from pydantic import ValidationError
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.text import Text

from hub.cli.client import Client, Target
from hub.cli.errors import CliError
from hub.cli.output import aligned, age, console, emit
from hub.rollout.machine import Phase, RolloutState, SiteStatus
from hub.rollout.spec import RolloutSpec, cli_errors, parse_duration
from protos.fleet.v1 import rollout_pb2, rollout_pb2_grpc

MARK = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "insufficient": "[yellow]waiting[/]"}


class Rollouts(Client):
    """The Rollouts service."""

    def __init__(self, t: Target, timeout: float = 30.0) -> None:
        super().__init__(t, rollout_pb2_grpc.RolloutsStub, timeout)


def add_parsers(sub, client_flags) -> None:
    ro = sub.add_parser("rollout", help="roll a service out to a model version in waves or as a canary")
    rs = ro.add_subparsers(dest="rollout_cmd", required=True, metavar="COMMAND")

    def client(p: argparse.ArgumentParser) -> None:
        client_flags(p)

    st = rs.add_parser("start", help="start a rollout (gated on measured SLOs; safe defaults)")
    st.add_argument("service")
    st.add_argument("--to", required=True, dest="to_version", metavar="VERSION", help="model version to roll out")
    st.add_argument("--strategy", choices=["waves", "canary"], default=None,
                    help="waves: SLO gate after each wave; canary: the first wave is also compared with the old "
                         "version (default waves)")
    st.add_argument("--waves", help="cumulative wave targets (default 1,10%%,50%%,100%%)")
    st.add_argument("--max-unavailable", help="sites applying at once, N or N%% (default 1)")
    st.add_argument("--allow-full-unavailability", action="store_true", help="allow --max-unavailable 100%%")
    st.add_argument("--max-failures", type=int, help="sites that may fail before the breach action (default 1)")
    st.add_argument("--min-success-time", help="real traffic each wave serves before its gate (default 10m)")
    st.add_argument("--progress-deadline", help="time a site has to apply, and a gate to get traffic (default 30m)")
    st.add_argument("--min-requests", type=int, help="requests the SLO gate needs (default 100)")
    st.add_argument("--on-breach", choices=["pause", "rollback"], help="on an SLO breach (default pause)")
    st.add_argument("--canary-sites", help="canary wave size, N or N%% (default 1; --strategy canary)")
    st.add_argument("--canary-min-requests", type=int, help="requests per version before comparing (default 200)")
    st.add_argument("--schedule", help="crontab (UTC) of update windows, e.g. '0 2 * * *'")
    st.add_argument("--window", help="length of each window, e.g. 2h (with --schedule)")
    st.add_argument("--author", default="", help="who (default USER@HOST)")
    client(st)

    s = rs.add_parser("status", help="phase, waves, per-site state and the last gate verdicts")
    s.add_argument("service", nargs="?", default="", help="default: every rollout")
    s.add_argument("--watch", "-w", action="store_true",
                   help="redraw until the rollout finishes; exit 0 if it completed, 3 otherwise")
    client(s)

    for name, text in (("pause", "stop publishing (sites already published keep applying)"),
                       ("resume", "continue a paused rollout (its wave soaks again)"),
                       ("abort", "stop for good; updated sites keep the new version"),
                       ("undo", "revert every updated site to the previous version")):
        c = rs.add_parser(name, help=text)
        c.add_argument("service")
        c.add_argument("-m", "--message", default="", help="why (kept in the audit trail)")
        c.add_argument("--author", default="", help="who (default USER@HOST)")
        client(c)

    h = rs.add_parser("history", help="a service's rollouts and every recorded action")
    h.add_argument("service", nargs="?", default="")
    client(h)

    au = sub.add_parser("audit", help="the append-only audit trail and the agents' residency refusals "
                                      "(export with -o json or -o yaml)")
    au.add_argument("--since", help="only records from the last DURATION (e.g. 1h) or since an ISO time")
    au.add_argument("--subject", default="", help="only this subject, e.g. rollout/ID or site/SITE")
    au.add_argument("--site", default="", help="only the agents' residency refusals at this site")
    au.add_argument("--data-class", default="", help="only the agents' residency refusals of this data class")
    client(au)


def _author(a: str) -> str:
    return a or f"{getpass.getuser()}@{socket.gethostname()}"


def spec_from_args(args) -> RolloutSpec:
    """Validate on the client: one line per problem, named by its flag."""
    fields = {"service": args.service, "to_version": args.to_version}
    for name in ("strategy", "waves", "max_unavailable", "max_failures", "min_success_time", "progress_deadline",
                 "min_requests", "on_breach", "schedule", "window"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    if args.allow_full_unavailability:
        fields["allow_full_unavailability"] = True
    canary = {}
    if args.canary_sites is not None:
        canary["sites"] = args.canary_sites
    if args.canary_min_requests is not None:
        canary["min_requests"] = args.canary_min_requests
    if canary:
        fields["canary"] = canary
    try:
        return RolloutSpec(**fields)
    except ValidationError as exc:
        raise CliError("invalid rollout:\n  " + "\n  ".join(cli_errors(exc)),
                       "fix the flags above; `fleet rollout start --help` lists them", code=2) from None


# ------------------------------------------------------------------ views


def one(obj: dict, fmt: str) -> None:
    """One object as JSON or YAML (``emit`` writes lists)."""
    text = json.dumps(obj, indent=2, default=str)
    sys.stdout.write(text + "\n" if fmt == "json" else yaml.safe_dump(json.loads(text), sort_keys=False))


def rollout_dict(r: rollout_pb2.Rollout) -> dict:
    return {"id": r.id, "service": r.service, "from": r.from_version, "to": r.to_version, "phase": r.phase,
            "status": r.status, "createdBy": r.created_by, "createdAt": r.created_at.ToDatetime(tzinfo=UTC),
            "updatedAt": r.updated_at.ToDatetime(tzinfo=UTC), "driver": r.driver, "state": json.loads(r.state_json)}


def _progress(state: RolloutState) -> tuple[int, int]:
    n = len(state.sites)
    if state.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK):
        touched = state.count(SiteStatus.REVERTING, SiteStatus.REVERTED)
        return state.count(SiteStatus.REVERTED), touched or 1
    return state.count(SiteStatus.APPLIED), n


def render(r: rollout_pb2.Rollout) -> Group:
    state = RolloutState.from_dict(json.loads(r.state_json))
    now = datetime.now(UTC)
    head = Text.from_markup(
        f"[bold]Rollout {r.id}[/] of [bold]{r.service}[/]: {r.from_version} -> {r.to_version} "
        f"({state.spec.strategy}, started by {r.created_by} {age(r.created_at.ToDatetime(tzinfo=UTC), now)} ago"
        + (f", driven by {r.driver}" if r.driver else "") + ")")
    done, total = _progress(state)
    bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=40),
                   TextColumn("{task.completed}/{task.total} sites"), console=console())
    what = "reverted" if state.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK) else "on " + r.to_version
    bar.add_task(f"{r.phase:<12} {what}", total=total, completed=done)
    status = Text(f"Status: {r.status}")
    waves = Text("Waves: " + " | ".join(f"{i + 1}: {', '.join(w)}" for i, w in enumerate(state.waves)))
    # Aligned text, never folded or cut at the terminal's width (a long reason runs on).
    sites = Text(aligned(("SITE", "WAVE", "STATE", "SINCE", "REASON"),
                         [(rec.site, str(rec.wave + 1), rec.status.value, age(rec.since, now), rec.reason or "-")
                          for rec in state.sites]), no_wrap=True, overflow="ignore")
    parts = [head, status, bar, waves, sites]
    if state.excluded:
        parts.append(Text("Not in the rollout: " + "; ".join(f"{s} ({why})" for s, why in state.excluded)))
    if state.verdicts:
        judged = state.verdicts_wave if state.verdicts_wave is not None else state.wave
        parts.append(Text.from_markup("[bold]Last gate verdicts[/] (wave "
                                      f"{min(judged, len(state.waves) - 1) + 1}):"))
        for v in state.verdicts:
            parts.append(Text.from_markup(f"  {MARK.get(v.outcome.value, v.outcome.value)} {v.gate}: ")
                         + Text(v.sentence))
    if state.reason and state.phase is not Phase.PROGRESSING:
        parts.append(Text(f"Why {state.phase.value}: {state.reason}"))
    nxt = _next(state, r.service)
    if nxt:
        parts.append(Text(f"next: {nxt}", style="dim"))
    return Group(*parts)


def _next(state: RolloutState, svc: str) -> str:
    p = state.phase
    if p is Phase.PAUSED:
        return f"fleet rollout resume {svc}  or  fleet rollout undo {svc}"
    if p in (Phase.PROGRESSING, Phase.PENDING, Phase.SCHEDULED):
        return f"fleet rollout status {svc} --watch;  fleet rollout pause|abort {svc}"
    if p is Phase.COMPLETED:
        return f"fleet rollout history {svc};  fleet rollout undo {svc} to go back"
    return ""


def status(api: Rollouts, args) -> int:
    if not args.service:
        rows = []
        for r in api.List(rollout_pb2.ListRolloutsRequest()).rollouts:
            st = json.loads(r.state_json)
            rows.append({**rollout_dict(r), "wave": f"{st['wave'] + 1}/{len(st['waves'])}",
                         "age": age(r.created_at.ToDatetime(tzinfo=UTC))})
        if args.output != "table":
            for row in rows:
                row.pop("age")
            emit(rows, [], args.output)
            return 0
        if not rows:
            print("no rollouts yet; start one: fleet rollout start SERVICE --to VERSION")
            return 0
        emit(rows, [("ID", "id"), ("SERVICE", "service"), ("FROM", "from"), ("TO", "to"), ("PHASE", "phase"),
                    ("WAVE", "wave"), ("AGE", "age"), ("STATUS", "status")], "table")
        return 0
    req = rollout_pb2.GetRolloutRequest(service=args.service)
    r = api.Get(req)
    if args.output != "table":
        one(rollout_dict(r), args.output)
        return 0
    if not args.watch:
        console().print(render(r), crop=False)  # a long reason runs on; the terminal wraps it whole
        return 0
    with Live(render(r), console=console(), refresh_per_second=4) as live:
        while r.phase not in {p.value for p in Phase.terminal()}:
            time.sleep(1.0)
            r = api.Get(req)
            live.update(render(r))
    return 0 if r.phase == Phase.COMPLETED.value else 3


def start(api: Rollouts, args) -> int:
    spec = spec_from_args(args)
    r = api.Start(rollout_pb2.StartRolloutRequest(spec_json=json.dumps(spec.to_dict()), actor=_author(args.author)))
    if args.output != "table":
        one(rollout_dict(r), args.output)
        return 0
    state = RolloutState.from_dict(json.loads(r.state_json))
    print(f"rollout {r.id} of {r.service} {r.from_version} -> {r.to_version} started: "
          f"{len(state.sites)} site(s) in {len(state.waves)} wave(s) "
          f"({' + '.join(str(len(w)) for w in state.waves)}), at most {state.max_unavailable} updating at once")
    for site, why in state.excluded:
        print(f"  not included: {site} ({why})")
    for w in state.warnings:
        print(f"  warning: {w}")
    print(f"  watch it: fleet rollout status {r.service} --watch")
    return 0


def command(api: Rollouts, args) -> int:
    req = rollout_pb2.RolloutCommandRequest(service=args.service, actor=_author(args.author), note=args.message)
    r = getattr(api, args.rollout_cmd.capitalize())(req)
    if args.output != "table":
        one(rollout_dict(r), args.output)
        return 0
    print(f"{args.rollout_cmd}: rollout {r.id} of {r.service} is {r.phase}")
    print(f"  {r.status}")
    return 0


def _audit_rows(records) -> list[dict]:
    return [{"id": a.id, "at": a.at.ToDatetime(tzinfo=UTC).isoformat(), "actor": a.actor, "action": a.action,
             "subject": a.subject, "details": json.loads(a.details_json or "{}")} for a in records]


def _audit_table(rows: list[dict], title: str | None = None) -> None:
    flat = []
    for r in rows:
        d = r["details"]
        what = d.get("message", "")
        for g in d.get("gates", ()):
            what += f"\n    {g['outcome']}: {g['sentence']}"
        flat.append({**r, "what": what})
    emit(flat, [("AT", "at"), ("ACTOR", "actor"), ("ACTION", "action"), ("SUBJECT", "subject"), ("WHAT", "what")],
         "table", title=title)


def history(api: Rollouts, args) -> int:
    resp = api.History(rollout_pb2.RolloutHistoryRequest(service=args.service))
    rows = _audit_rows(resp.records)
    if args.output != "table":
        one({"rollouts": [rollout_dict(r) for r in resp.rollouts], "records": rows}, args.output)
        return 0
    if not resp.rollouts:
        print("no rollouts yet; start one: fleet rollout start SERVICE --to VERSION")
        return 0
    emit([rollout_dict(r) | {"age": age(r.created_at.ToDatetime(tzinfo=UTC))} for r in resp.rollouts],
         [("ID", "id"), ("SERVICE", "service"), ("FROM", "from"), ("TO", "to"), ("PHASE", "phase"),
          ("BY", "createdBy"), ("AGE", "age")], "table", title="Rollouts")
    _audit_table(rows, title="Actions")
    return 0


def audit(api: Rollouts, args) -> int:
    req = rollout_pb2.AuditRequest(subject=args.subject, site=args.site, data_class=args.data_class)
    if args.since:
        since = _since(args.since)
        req.since.FromDatetime(since)
    rows = _audit_rows(api.Audit(req).records)
    if args.output != "table":
        emit(rows, [], args.output)
        return 0
    _audit_table(rows)
    return 0


def _since(text: str) -> datetime:
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--since {text!r} is neither a duration (1h) nor an ISO time", "e.g. --since 1h",
                       code=2) from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def run(target: Target, args) -> int:
    spec = spec_from_args(args) if args.cmd == "rollout" and args.rollout_cmd == "start" else None
    del spec  # validated before connecting: bad flags exit 2 without a hub
    api = Rollouts(target)
    try:
        return _run(api, args)
    finally:
        api.close()


def _run(api: Rollouts, args) -> int:
    if args.cmd == "audit":
        return audit(api, args)
    return {"start": start, "status": status, "history": history}.get(args.rollout_cmd, command)(api, args)
