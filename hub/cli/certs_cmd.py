"""`fleet certs ...`: the fleet's CA and certificates, bootstrap tokens, and nodes' certificate requests.

Offline (no hub needed): `init` (CA + hub certificate), `hub`, `agent` (mint a
node's key and certificate here; the single-machine demo does this).
Against the hub's admin API: `token create|revoke|list`, `requests`,
`approve NAME`, `deny NAME`: how nodes join with keys they make themselves.
"""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.duration_pb2 import Duration

from hub.cli.client import Client, Target, resolve
from hub.cli.errors import CliError
from hub.cli.output import age, emit
from hub.rollout.spec import parse_duration
from hub.security import certs
from protos.fleet.v1 import enroll_pb2, enroll_pb2_grpc

OFFLINE = ("init", "hub", "agent")
_STATES = {"pending": enroll_pb2.CERTIFICATE_REQUEST_STATE_PENDING,
           "approved": enroll_pb2.CERTIFICATE_REQUEST_STATE_APPROVED,
           "denied": enroll_pb2.CERTIFICATE_REQUEST_STATE_DENIED}
_STATE_NAMES = {v: k for k, v in _STATES.items()}


class Certificates(Client):
    """The Certificates service (admin port, bearer token)."""

    def __init__(self, t: Target, timeout: float = 15.0) -> None:
        super().__init__(t, enroll_pb2_grpc.CertificatesStub, timeout)


def add_parsers(sub, client_flags) -> None:
    certs_p = sub.add_parser("certs", help="the fleet CA, bootstrap tokens and nodes' certificate requests")
    cs = certs_p.add_subparsers(dest="certs_cmd", required=True, metavar="COMMAND")
    for name, text in (("init", "create the CA and the hub certificate"), ("hub", "reissue the hub certificate"),
                       ("agent", "mint a node's key and certificate here (prefer bootstrap tokens)")):
        c = cs.add_parser(name, help=text)
        c.add_argument("--dir", default="~/.fleet/certs", help="certificate directory (default ~/.fleet/certs)")
        if name in ("init", "hub"):
            c.add_argument("--hub-host", action="append", help="DNS name or IP agents use to reach the hub (repeatable)")
        if name == "init":
            c.add_argument("--force", action="store_true", help="replace an existing CA")
        if name == "agent":
            c.add_argument("--site", required=True)
            c.add_argument("--node", required=True)

    tok = cs.add_parser("token", help="bootstrap tokens with which nodes of a site ask for their certificates")
    ts = tok.add_subparsers(dest="token_cmd", required=True, metavar="COMMAND")
    create = ts.add_parser("create", help="a new token for one site (printed once; the hub keeps only its hash)")
    create.add_argument("--site", required=True)
    create.add_argument("--ttl", default="24h", help="how long the token may be used (default 24h; max 365d)")
    create.add_argument("--auto-approve", action="store_true",
                        help="sign a node's first request at once (a node that already holds a valid "
                             "certificate still waits for `fleet certs approve`)")
    create.add_argument("--description", default="")
    create.add_argument("--author", default="", help="who (default USER@HOST)")
    client_flags(create)
    revoke = ts.add_parser("revoke", help="refuse a token from now on (and its pending requests' approval)")
    revoke.add_argument("id")
    revoke.add_argument("--author", default="", help="who (default USER@HOST)")
    client_flags(revoke)
    lst = ts.add_parser("list", help="tokens (ids, sites, expiry; never the secrets)")
    lst.add_argument("--site", default="")
    client_flags(lst)

    req = cs.add_parser("requests", help="nodes' certificate requests")
    req.add_argument("--site", default="")
    req.add_argument("--state", choices=sorted(_STATES), help="only requests in this state")
    client_flags(req)
    for name, text in (("approve", "sign a pending request's certificate"), ("deny", "refuse a pending request")):
        c = cs.add_parser(name, help=text)
        c.add_argument("name", help="request name, e.g. csr-3f2a... (see `fleet certs requests`)")
        c.add_argument("--author", default="", help="who (default USER@HOST)")
        if name == "deny":
            c.add_argument("-m", "--message", default="", help="why (the node is told)")
        client_flags(c)


def _actor(a: str) -> str:
    return a or f"{getpass.getuser()}@{socket.gethostname()}"


def _dt(ts) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


def _iso(ts) -> str:
    d = _dt(ts)
    return d.isoformat(timespec="seconds") if d else ""


def token_row(t: enroll_pb2.BootstrapToken, now: datetime) -> dict:
    revoked = _dt(t.revoked_at)
    expires = _dt(t.expires_at)
    status = "revoked" if revoked else ("expired" if expires and expires <= now else "active")
    return {"id": t.id, "site": t.site, "status": status, "auto_approve": t.auto_approve,
            "expires_at": _iso(t.expires_at), "created_by": t.created_by, "created_at": _iso(t.created_at),
            "revoked_at": _iso(t.revoked_at), "description": t.description}


def request_row(r: enroll_pb2.CertificateRequest, now: datetime) -> dict:
    return {"name": r.name, "site": r.site, "node": r.node, "state": _STATE_NAMES.get(r.state, "?"),
            "kind": r.kind, "token": r.token_id, "age": age(_dt(r.created_at), now),
            "created_at": _iso(r.created_at), "decided_by": r.decided_by, "decided_at": _iso(r.decided_at),
            "not_after": _iso(r.not_after), "reason": r.reason, "public_key_sha256": r.public_key_sha256,
            "peer": r.peer}


TOKEN_COLUMNS = [("ID", "id"), ("SITE", "site"), ("STATUS", "status"), ("AUTO-APPROVE", "auto_approve"),
                 ("EXPIRES", "expires_at"), ("CREATED BY", "created_by")]
REQUEST_COLUMNS = [("NAME", "name"), ("SITE", "site"), ("NODE", "node"), ("STATE", "state"), ("KIND", "kind"),
                   ("TOKEN", "token"), ("AGE", "age"), ("DECIDED BY", "decided_by"), ("NOT AFTER", "not_after")]


def _offline(args) -> int:
    d = Path(args.dir).expanduser()
    try:
        if args.certs_cmd == "init":
            ca = certs.init_ca(d, force=args.force)
            hub = certs.issue_hub(d, args.hub_host or [])
            print(f"CA: {ca}\nhub certificate: {hub}")
            print(f"next: fleet hub serve --certs {d}   (nodes then join with `fleet certs token create --site SITE`)")
        elif args.certs_cmd == "hub":
            print(f"hub certificate: {certs.issue_hub(d, args.hub_host or [])}")
        elif args.certs_cmd == "agent":
            cert = certs.issue_agent(d, args.site, args.node)
            _, key = certs.agent_paths(d, args.site, args.node)
            print(f"agent certificate: {cert}\nkey: {key}")
            print(f"next: fleet-agent run --hub HUB:7443 --site {args.site} --node {args.node} "
                  f"--ca {d / 'ca.pem'} --cert {cert} --key {key} --data-dir DIR")
    except certs.CertError as exc:
        raise CliError(str(exc), code=2) from None
    return 0


def run(args) -> int:
    if args.certs_cmd in OFFLINE:
        return _offline(args)
    ttl = None
    if args.certs_cmd == "token" and args.token_cmd == "create":
        try:
            certs.check_name("site", args.site)
            ttl = parse_duration(args.ttl)
        except (certs.CertError, ValueError) as exc:
            raise CliError(str(exc), "e.g. `fleet certs token create --site fra-1 --ttl 24h`", code=2) from None
    c = Certificates(resolve(args.hub, args.token, args.ca, getattr(args, "insecure", False)))
    now = datetime.now(UTC)
    try:
        if args.certs_cmd == "token":
            if args.token_cmd == "create":
                d = Duration()
                d.FromNanoseconds(int(ttl * 1e9))
                resp = c.CreateBootstrapToken(enroll_pb2.CreateBootstrapTokenRequest(
                    site=args.site, ttl=d, auto_approve=args.auto_approve, description=args.description,
                    actor=_actor(args.author)))
                if args.output != "table":
                    emit([{**token_row(resp.token, now), "token": resp.secret}], [], args.output)
                    return 0
                print(resp.secret)
                print(f"bootstrap token {resp.token.id} for site {resp.token.site}, valid until "
                      f"{_iso(resp.token.expires_at)}{', auto-approving first joins' if resp.token.auto_approve else ''}.\n"
                      "It is shown only now. Give it to the site's agents as a file (never on a command line):\n"
                      f"  fleet-agent run --site {resp.token.site} --bootstrap-token-file FILE --ca ca.pem ...\n"
                      f"revoke it with: fleet certs token revoke {resp.token.id}", file=sys.stderr)
                return 0
            if args.token_cmd == "revoke":
                t = c.RevokeBootstrapToken(enroll_pb2.RevokeBootstrapTokenRequest(id=args.id, actor=_actor(args.author)))
                print(f"bootstrap token {t.id} (site {t.site}) revoked at {_iso(t.revoked_at)}")
                return 0
            rows = [token_row(t, now) for t in c.ListBootstrapTokens(
                enroll_pb2.ListBootstrapTokensRequest(site=args.site)).tokens]
            emit(rows, TOKEN_COLUMNS, args.output)
            return 0
        if args.certs_cmd == "requests":
            state = _STATES[args.state] if args.state else enroll_pb2.CERTIFICATE_REQUEST_STATE_UNSPECIFIED
            rows = [request_row(r, now) for r in c.ListCertificateRequests(
                enroll_pb2.ListCertificateRequestsRequest(site=args.site, state=state)).requests]
            emit(rows, REQUEST_COLUMNS, args.output)
            if args.output == "table" and any(r["state"] == "pending" for r in rows):
                print("next: fleet certs approve NAME (or fleet certs deny NAME -m why)")
            return 0
        if args.certs_cmd == "approve":
            r = c.ApproveCertificateRequest(enroll_pb2.DecideCertificateRequest(name=args.name, actor=_actor(args.author)))
            print(f"certificate request {r.name} approved: {r.site}/{r.node}, valid until {_iso(r.not_after)}; "
                  "the node picks it up on its next poll")
            return 0
        if args.certs_cmd == "deny":
            r = c.DenyCertificateRequest(enroll_pb2.DecideCertificateRequest(
                name=args.name, actor=_actor(args.author), reason=args.message))
            print(f"certificate request {r.name} denied: {r.site}/{r.node}")
            return 0
    finally:
        c.close()
    raise argparse.ArgumentError(None, f"unknown certs command {args.certs_cmd}")  # pragma: no cover
