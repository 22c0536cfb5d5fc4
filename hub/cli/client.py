"""Connecting the CLI to a hub's admin API.

Where the hub is and how to authenticate come from, in order: flags
(--hub, --token, --ca, --insecure), the environment (FLEET_HUB, FLEET_TOKEN,
FLEET_CA, FLEET_INSECURE=1), then the fleetconfig file (FLEETCONFIG, default
~/.fleet/hub/fleetconfig.yaml) that `fleet hub serve` writes (see hub.cli.fleetconfig).

The admin token is a bearer secret, so the CLI speaks TLS (verified against
the fleet CA) unless plaintext was asked for explicitly: --insecure,
FLEET_INSECURE=1, or ``insecure: true`` in the fleetconfig (which a hub
started with --insecure writes). Plaintext then comes with a warning on
stderr; with neither a CA nor an explicit opt-in the CLI refuses to connect.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from hub.cli import fleetconfig
from hub.cli.errors import CliError
from protos.fleet.v1 import admin_pb2_grpc

DEFAULT_CONFIG = fleetconfig.default_path()


@dataclass(frozen=True, slots=True)
class Target:
    hub: str
    token: str
    ca: Path | None
    """The CA that signed the hub's certificate; None only when ``insecure``."""
    insecure: bool = False
    """Plaintext, asked for explicitly (--insecure, FLEET_INSECURE=1 or the fleetconfig)."""


def config_path() -> Path:
    return fleetconfig.path()


def write_fleetconfig(path: Path, hub: str, token: str, ca: Path | None) -> None:
    """Write the CLI's config (0600, it holds the token); ``ca=None`` records an explicit ``insecure: true``.

    Written to a temporary file and renamed, so a failed start never leaves half a config behind.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump({"hub": hub, "token": token, "ca": str(ca) if ca else None, "insecure": ca is None}, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _transport(ca: str | None, insecure: bool, env: dict, file: dict) -> tuple[str | None, bool]:
    """(CA path, plaintext) from the first source that says either: flags, environment, fleetconfig."""
    if ca or insecure:
        return (ca, False) if ca else (None, True)
    if env.get("FLEET_CA"):
        return env["FLEET_CA"], False
    if env.get("FLEET_INSECURE", "").lower() in ("1", "true", "yes"):
        return None, True
    if file.get("ca"):
        return str(file["ca"]), False
    return None, file.get("insecure") is True


def resolve(hub: str | None, token: str | None, ca: str | None, insecure: bool = False) -> Target:
    path, file = fleetconfig.load()
    hub = hub or os.environ.get("FLEET_HUB") or file.get("hub")
    token = token or os.environ.get("FLEET_TOKEN") or file.get("token")
    ca, insecure = _transport(ca, insecure, dict(os.environ), file)
    if not hub:
        raise CliError("no hub address: nothing in --hub, FLEET_HUB or " + fleetconfig.describe(path),
                       fleetconfig.hint(path))
    if not token:
        raise CliError("no admin token: nothing in --token, FLEET_TOKEN or " + fleetconfig.describe(path),
                       "pass --token or set FLEET_TOKEN")
    if ca is None and not insecure:
        raise CliError(
            f"no CA to verify the hub at {hub} with (nothing in --ca, FLEET_CA or {fleetconfig.describe(path)}): the admin token "
            "would travel in plaintext; nothing was sent",
            "pass --ca with the ca.pem from `fleet certs init`, or --insecure for a hub started with --insecure "
            "on a trusted machine",
            code=2,
        )
    return Target(hub, token, Path(ca) if ca else None, insecure)


def channel(t: Target) -> grpc.Channel:
    if t.ca is None:
        assert t.insecure, "a plaintext channel needs an explicit --insecure"
        print(f"warning: insecure: plaintext connection to {t.hub}; the admin token is sent unencrypted "
              "(use --ca for TLS)", file=sys.stderr)
        return grpc.insecure_channel(t.hub)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=t.ca.read_bytes())
    except FileNotFoundError:
        raise CliError(f"CA file {t.ca} does not exist", "pass --ca with the ca.pem from `fleet certs init`") from None
    return grpc.secure_channel(t.hub, creds)


class Client:
    """A gRPC stub that adds the admin token and turns gRPC errors into CliErrors."""

    def __init__(self, t: Target, stub_class, timeout: float = 15.0) -> None:
        self.target = t
        self._channel = channel(t)
        self._stub = stub_class(self._channel)
        self._md = [("authorization", f"Bearer {t.token}")]
        self._timeout = timeout

    def __getattr__(self, name: str):
        method = getattr(self._stub, name)

        def call(request):
            try:
                return method(request, metadata=self._md, timeout=self._timeout)
            except grpc.RpcError as exc:
                raise rpc_error(exc, self.target) from None

        return call

    def close(self) -> None:
        self._channel.close()


class Admin(Client):
    """The Admin service."""

    def __init__(self, t: Target, timeout: float = 15.0) -> None:
        super().__init__(t, admin_pb2_grpc.AdminStub, timeout)


def rpc_error(exc: grpc.RpcError, t: Target) -> CliError:
    code, details = exc.code(), exc.details()  # type: ignore[attr-defined]
    details, _, hint = (details or "").partition("\nnext: ")
    if hint:  # the hub named the next command itself
        return CliError(details, hint, code=2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CliError(
            f"cannot reach the hub at {t.hub}: {details}",
            "is `fleet hub serve` running there? Check --hub/FLEET_HUB, and --ca if the hub uses TLS",
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return CliError(f"the hub refused the admin token: {details}", "use the token from the hub's data dir (admin.token)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CliError(f"the hub at {t.hub} did not answer in time", "check the hub's log; retry")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return CliError(details, "fix the input and run the command again", code=2)
    if code == grpc.StatusCode.NOT_FOUND:
        return CliError(details, "")
    if code == grpc.StatusCode.ABORTED:
        return CliError(details, "fleet get revisions")
    return CliError(f"{code.name}: {details}", "")
