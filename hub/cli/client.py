"""Connecting the CLI to a hub's admin API.

Where the hub is and how to authenticate come from, in order: flags
(--hub, --token, --ca), the environment (FLEET_HUB, FLEET_TOKEN, FLEET_CA),
then the fleetconfig file (FLEETCONFIG, default ~/.fleet/hub/fleetconfig.yaml) that
`fleet hub serve` writes (see hub.cli.fleetconfig).
"""

from __future__ import annotations

import os
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
    ca: Path | None  # None: plaintext (hub started with --insecure)


def config_path() -> Path:
    return fleetconfig.path()


def write_fleetconfig(path: Path, hub: str, token: str, ca: Path | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump({"hub": hub, "token": token, "ca": str(ca) if ca else None}, f)


def resolve(hub: str | None, token: str | None, ca: str | None) -> Target:
    path, file = fleetconfig.load()
    hub = hub or os.environ.get("FLEET_HUB") or file.get("hub")
    token = token or os.environ.get("FLEET_TOKEN") or file.get("token")
    ca = ca or os.environ.get("FLEET_CA") or file.get("ca")
    if not hub:
        raise CliError("no hub address: nothing in --hub, FLEET_HUB or " + fleetconfig.describe(path),
                       fleetconfig.hint(path))
    if not token:
        raise CliError("no admin token: nothing in --token, FLEET_TOKEN or " + fleetconfig.describe(path),
                       "pass --token or set FLEET_TOKEN")
    return Target(hub, token, Path(ca) if ca else None)


def channel(t: Target) -> grpc.Channel:
    if t.ca is None:
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
