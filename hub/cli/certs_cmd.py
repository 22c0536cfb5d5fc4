"""`fleet certs init|hub|agent`: mint the fleet's CA and certificates."""

from __future__ import annotations

from pathlib import Path

from hub.cli.errors import CliError
from hub.security import certs


def run(args) -> int:
    d = Path(args.dir).expanduser()
    try:
        if args.certs_cmd == "init":
            ca = certs.init_ca(d, force=args.force)
            hub = certs.issue_hub(d, args.hub_host or [])
            print(f"CA: {ca}\nhub certificate: {hub}")
            print(f"next: fleet certs agent --dir {d} --site SITE --node NODE")
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
