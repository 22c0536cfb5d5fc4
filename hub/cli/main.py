"""`fleet`: entry point, argument parsing and error handling.

Errors print one line and the next thing to run; FLEET_DEBUG=1 shows the
traceback too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from google.protobuf.struct_pb2 import Struct

from hub.cli import autoscale_cmd, certs_cmd, drift_cmd, model_cmd, policy_cmd, report_cmd, rollout_cmd, views
from hub.cli.client import Admin, resolve
from hub.cli.errors import CliError
from hub.cli.fleetconfig import DEFAULT_DATA_DIR, FILENAME
from hub.cli.output import FORMATS
from hub.cli.suggest import Parser, resource_type
from hub.publish import MANAGED_KINDS
from protos.fleet.v1 import admin_pb2


GET_RESOURCES = ("sites", "nodes", "objects", "revisions", "rollouts")


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub", help="admin address HOST:PORT (default: FLEET_HUB or the fleetconfig)")
    p.add_argument("--token", help="admin bearer token (default: FLEET_TOKEN or the fleetconfig)")
    p.add_argument("--ca", help="CA that signed the hub's certificate (default: FLEET_CA or the fleetconfig)")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext, no TLS: the admin token travels unencrypted (a hub started with --insecure, "
                        "on a trusted machine only; default: FLEET_INSECURE=1 or the fleetconfig)")
    p.add_argument("-o", "--output", choices=FORMATS, default="table",
                   help="output format; wide adds columns to the table (default: table)")
    p.add_argument("--request-timeout", type=_seconds, default=None, metavar="SECONDS",
                   help="how long to wait for the hub's answer (default: 300 for plan, apply and rollback, "
                        "which plan the whole fleet; 15 for the rest)")


#: Commands whose answer waits for the placement planner: a large fleet plans for minutes, not seconds.
PLANNING_COMMANDS = ("plan", "apply", "rollback")


def request_timeout(args: argparse.Namespace) -> float:
    """Seconds the CLI waits for the hub: --request-timeout, else by what the command waits for."""
    given = getattr(args, "request_timeout", None)
    if given:
        return given
    return 300.0 if args.cmd in PLANNING_COMMANDS else 15.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (0 < value <= 86_400):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds above 0 and at most 86400")
    return value


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="fleet", description="Edge-fleet federation manager for LLM inference: the hub CLI.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    hub = sub.add_parser("hub", help="run the hub").add_subparsers(dest="hub_cmd", required=True)
    serve = hub.add_parser("serve", help="serve agents and the admin API until interrupted")
    serve.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                       help=f"state directory: SQLite store, admin token, and the {FILENAME} the CLI reads "
                            f"(default {DEFAULT_DATA_DIR})")
    serve.add_argument("--db", help="database URL: sqlite:///PATH (default: DATA_DIR/fleet.db) or postgresql://...")
    serve.add_argument("--listen", default="0.0.0.0:7443", help="agent address (default 0.0.0.0:7443)")
    serve.add_argument("--admin-listen", default="127.0.0.1:7444", help="admin API address (default 127.0.0.1:7444)")
    serve.add_argument("--certs", help="directory from `fleet certs init` (CA, hub certificate; with ca-key.pem the "
                                        "hub signs the certificates of nodes that join with bootstrap tokens)")
    serve.add_argument("--enroll-listen", default="0.0.0.0:7445",
                       help="address where nodes without a certificate yet enroll with a bootstrap token "
                            "(TLS, no client certificate; default 0.0.0.0:7445; 'off' to disable)")
    serve.add_argument("--agent-cert-ttl", default="30d",
                       help="lifetime of the node certificates the hub signs (default 30d; nodes renew at ~80%%)")
    serve.add_argument("--insecure", action="store_true", help="plaintext, no client certificates (local development only)")
    serve.add_argument("--workers", type=int, default=1, help="hub processes sharing the agent port (default 1)")
    serve.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds between agent heartbeats (default 5)")
    serve.add_argument("--rollout-tick", type=float, default=2.0, help="seconds between rollout controller ticks (default 2)")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="serve the hub's Prometheus /metrics here, e.g. 127.0.0.1:9464 (default: not served)")
    serve.add_argument("--rollout-lease", type=float, default=15.0,
                       help="seconds a hub's claim to drive a rollout lasts unrenewed (default 15)")

    certs_cmd.add_parsers(sub, _client_flags)

    get = sub.add_parser("get", help="list sites, nodes, desired objects, policy revisions or rollouts")
    get.add_argument("what", type=resource_type(GET_RESOURCES), metavar="RESOURCE",
                     help="sites (site, st), nodes (node, no), objects (object, obj), revisions (revision, rev) "
                          "or rollouts (rollout, ro)")
    get.add_argument("--site", default="", help="only this site (nodes)")
    get.add_argument("--kind", default="", help="only this kind (objects)")
    _client_flags(get)

    desc = sub.add_parser("describe", help="everything about one site or node")
    desc.add_argument("what", type=resource_type(("sites", "nodes")), metavar="RESOURCE", help="site or node")
    desc.add_argument("name", help="SITE, or SITE/NODE for a node")
    _client_flags(desc)

    put = sub.add_parser("set", help="publish a desired-state object (e.g. a Config) to agents")
    put.add_argument("kind", help="object kind, e.g. Config")
    put.add_argument("name")
    put.add_argument("values", nargs="*", metavar="KEY=VALUE", help="spec entries; VALUE parsed as JSON when it can be")
    put.add_argument("--site", default="", help="only this site (default: every site)")
    put.add_argument("--node", default="", help="only this node (default: every node)")
    _client_flags(put)

    rm = sub.add_parser("delete", help="delete a desired-state object")
    rm.add_argument("kind")
    rm.add_argument("name")
    _client_flags(rm)

    def bundle_flags(c: argparse.ArgumentParser) -> None:
        c.add_argument("-f", "--filename", action="append", required=True, metavar="PATH",
                       help="YAML file or directory of fleet resources (repeatable)")
        c.add_argument("--solver", choices=["auto", "greedy", "exact"], default="auto",
                       help="placement solver (default auto: exact on small fleets, fast on large)")
        _client_flags(c)

    pl = sub.add_parser("plan", help="dry run: what applying these files would change (nothing is stored)")
    bundle_flags(pl)
    ap = sub.add_parser("apply", help="validate, plan and store the files as a new revision, and publish placements")
    bundle_flags(ap)
    for c in (ap,):
        c.add_argument("-m", "--message", default="", help="why (kept with the revision)")
    rb = sub.add_parser("rollback", help="restore an earlier revision's bundle and placement as a new revision")
    rb.add_argument("revision", type=int)
    rb.add_argument("-m", "--message", default="")
    _client_flags(rb)
    for c in (ap, rb):
        c.add_argument("--author", default="", help="who (default USER@HOST)")
        c.add_argument("--base-revision", type=int, help="refuse unless this is still the latest revision")
    df = sub.add_parser("diff", help="resource and placement changes between two revisions")
    df.add_argument("rev1", type=int)
    df.add_argument("rev2", type=int, nargs="?", default=0, help="default: the latest")
    _client_flags(df)
    ex = sub.add_parser("explain", help="why a service is placed where it is, site by site")
    ex.add_argument("what", choices=["service"])
    ex.add_argument("name")
    ex.add_argument("--revision", type=int, default=0, help="default: the latest")
    _client_flags(ex)

    rp = sub.add_parser("report", help="TTFT/ITL percentiles, tokens/s, cost and carbon per site, model, version, priority")
    rp.add_argument("--by", default="", help="comma-separated dimensions: site,node,model,version,priority "
                                             "(default site,model,version,priority)")
    rp.add_argument("--since", help="only telemetry from the last DURATION (e.g. 1h) or since an ISO time")
    rp.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with charts")
    rp.add_argument("--slo-ttft", help="draw this p95 TTFT objective on the chart, e.g. 500ms")
    _client_flags(rp)

    dr = sub.add_parser("drift", help="drift of each service's version against its reference, and of each site "
                                      "against the rest of the fleet")
    dr.add_argument("service", nargs="?", default="", help="only this service (default: all)")
    dr.add_argument("--since", help="only drifts raised in the last DURATION (e.g. 1h) or since an ISO time")
    _client_flags(dr)

    rollout_cmd.add_parsers(sub, _client_flags)
    autoscale_cmd.add_parsers(sub, _client_flags)
    model_cmd.add_parsers(sub)

    demo = sub.add_parser("demo", help="a hub and four edge sites on this machine, end to end")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.add_argument("--agents-timeout", type=float, default=120.0, help="seconds to wait for agents (default 120)")
    demo.add_argument("--html", metavar="FILE", help="write the report page with charts here")
    demo.add_argument("--requests", type=int, default=12, help="requests per agent in the load step (default 12)")
    demo.add_argument("--scenario", choices=["fleet", "rollout"], default="fleet",
                      help="fleet: plan, serve, measure and report the shipped fleet (default); rollout: a canary "
                           "to a slower version caught and rolled back by its gate, then a good version in waves")
    return p


def _spec(values: list[str]) -> Struct:
    s = Struct()
    for kv in values:
        if "=" not in kv:
            raise CliError(f"{kv!r} is not KEY=VALUE", "e.g. `fleet set Config settings logLevel=debug`", code=2)
        k, v = kv.split("=", 1)
        try:
            s.update({k: json.loads(v)})
        except json.JSONDecodeError:
            s.update({k: v})
    return s


def dispatch(args) -> int:
    if args.cmd == "hub":
        from hub.cli.serve import serve

        return serve(args)
    if args.cmd == "certs":
        return certs_cmd.run(args)
    if args.cmd == "model":
        return model_cmd.run(args)
    if args.cmd == "demo":
        from hub.cli.demo_cmd import run_demo

        return run_demo(args)
    if args.cmd == "autoscale":
        autoscale_cmd.window_s(args.window)  # a bad --window: exit 2 before any connection
    if args.cmd in ("plan", "apply"):
        args.bundle = policy_cmd.load(args.filename)  # bad files: exit 2 before any connection
    if args.cmd == "rollout" and args.rollout_cmd == "start":
        rollout_cmd.spec_from_args(args)  # bad flags: exit 2 before any connection
    if args.cmd == "get" and args.what == "rollouts":
        args.rollout_cmd, args.service, args.watch = "status", "", False
        return rollout_cmd.run(resolve(args.hub, args.token, args.ca, args.insecure), args)
    if args.cmd in ("rollout", "audit"):
        return rollout_cmd.run(resolve(args.hub, args.token, args.ca, args.insecure), args)
    if args.cmd in ("set", "delete") and args.kind in MANAGED_KINDS:
        raise CliError(f"{args.kind} objects belong to policy revisions and change only through them; nothing was sent",
                       "edit the YAML and run `fleet apply -f ...` (or `fleet rollback REVISION`)", code=2)
    admin = Admin(resolve(args.hub, args.token, args.ca, args.insecure), timeout=request_timeout(args))
    try:
        if args.cmd == "get" and args.what == "revisions":
            return policy_cmd.get_revisions(admin, args.output, wide=args.wide)
        if args.cmd in ("plan", "apply", "rollback", "diff", "explain"):
            run = {"plan": policy_cmd.plan, "apply": policy_cmd.apply, "rollback": policy_cmd.rollback,
                   "diff": policy_cmd.diff_revisions, "explain": policy_cmd.explain_service}[args.cmd]
            return run(admin, args)
        if args.cmd == "report":
            return report_cmd.run(admin, args)
        if args.cmd == "autoscale":
            return autoscale_cmd.run(admin, args)
        if args.cmd == "drift":
            return drift_cmd.run(admin, args)
        if args.cmd == "get":
            return views.get(admin, args.what, args.output, site=args.site, kind=args.kind, wide=args.wide)
        if args.cmd == "describe":
            return views.describe(admin, args.what.removesuffix("s"), args.name, args.output)
        if args.cmd == "set":
            resp = admin.PutObject(admin_pb2.PutObjectRequest(
                kind=args.kind, name=args.name, spec=_spec(args.values),
                target=admin_pb2.ObjectTarget(site=args.site, node=args.node)))
            print(f"{resp.object.kind}/{resp.object.name} set at version {resp.object.version}; "
                  f"watch it apply: fleet get objects")
            return 0
        if args.cmd == "delete":
            resp = admin.DeleteObject(admin_pb2.DeleteObjectRequest(kind=args.kind, name=args.name))
            print(f"{args.kind}/{args.name} deleted at version {resp.version}")
            return 0
    finally:
        admin.close()
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # -o wide is the table with every column: views that have none extra print their table.
    args.wide = getattr(args, "output", None) == "wide"
    if args.wide:
        args.output = "table"
    debug = os.environ.get("FLEET_DEBUG") == "1"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if args.verbose or args.cmd == "hub" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return dispatch(args)
    except CliError as exc:
        if debug:
            raise
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  next: {exc.hint}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort, still no traceback by default
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  next: rerun with FLEET_DEBUG=1 for the traceback, and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
