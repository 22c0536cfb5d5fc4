"""The agent's typed configuration: a YAML file, flags, or both (flags win)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(Exception):
    """The agent cannot start as configured; the message says what to change."""


class GpuSpec(BaseModel):
    """GPUs declared in config, used when neither NVML nor torch sees any."""

    model_config = ConfigDict(extra="forbid")
    model: str
    """Product name, e.g. "NVIDIA L4"."""
    memory_gib: float = Field(gt=0)
    """Memory per device in GiB."""
    count: int = Field(1, ge=1)
    """Identical devices on the node."""


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hub: str
    """Hub address host:port for agents (dialled out; works behind NAT)."""
    site: str = Field(min_length=1, max_length=63)
    """Site (edge cluster) this node belongs to, e.g. "fra-1"."""
    node: str = Field(min_length=1, max_length=63)
    """Node name within the site."""
    data_dir: Path
    """Directory for the agent's local state: applied objects and the report outbox."""
    insecure: bool = False
    """Plaintext without certificates. Local development only."""
    ca: Path | None = None
    """CA certificate that signed the hub's certificate (ca.pem)."""
    cert: Path | None = None
    """This node's client certificate, when minted elsewhere (`fleet certs agent`). Default: none, and the
    node holds its own key and certificate in <data_dir>/tls, enrolled with a bootstrap token and renewed
    before expiry (edge_agent/enroll.py)."""
    key: Path | None = None
    """Private key of `cert` (both or neither)."""
    bootstrap_token_file: Path | None = None
    """File holding a bootstrap token (`fleet certs token create --site SITE`), used when <data_dir>/tls has
    no valid certificate ($FLEET_BOOTSTRAP_TOKEN_FILE; or the token itself in $FLEET_BOOTSTRAP_TOKEN).
    Default: none."""
    enroll_address: str = ""
    """host:port of the hub's enrollment listener (TLS without a client certificate); default: the host of
    `hub` with port 7445."""
    server_name: str | None = None
    """Name to verify in the hub's certificate when `hub` is an address it does not list."""
    region: str = ""
    """Network region label, e.g. "eu-central"."""
    country: str = ""
    """ISO 3166-1 alpha-2 country code, e.g. "DE"."""
    jurisdiction: str = ""
    """Legal jurisdiction label, e.g. "EU"."""
    labels: dict[str, str] = {}
    """Free-form node labels."""
    gpus: list[GpuSpec] = []
    """GPUs to report when none can be detected (NVML, torch)."""
    backoff_initial_s: float = Field(0.5, gt=0)
    """First reconnect delay ceiling in seconds (full jitter; default 0.5)."""
    backoff_max_s: float = Field(30.0, gt=0)
    """Largest reconnect delay ceiling in seconds (default 30)."""
    report_batch: int = Field(500, ge=1, le=1000)
    """Most reports per batch sent to the hub (default 500; the hub accepts up to 1000)."""
    report_window: int = Field(4, ge=1)
    """Batches in flight without an ack (default 4)."""
    kubernetes: bool = False
    """Run as a Kubernetes pod: inventory and cordon from this node's Node object
    (`node` must be the Node's name, $NODE_NAME), health endpoints on `health_port`."""
    kubeconfig: Path | None = None
    """kubeconfig file; default: the pod's service account, else $KUBECONFIG or ~/.kube/config."""
    namespace: str = ""
    """Namespace of the model servers and Events; default $POD_NAMESPACE, else the
    pod's or the kubeconfig context's namespace, else "edge-fleet"."""
    pod_name: str = ""
    """This agent's Pod ($POD_NAME); its DaemonSet becomes the owner of the model servers. Default: none."""
    runtime_mode: Literal["local", "external"] = "local"
    """"local": the in-process engine serves; "external": OpenAI-compatible servers do,
    which with `kubernetes` the agent runs as Deployments ($FLEET_RUNTIME_MODE; default local)."""
    model_server_image: str = Field("vllm/vllm-openai:v0.11.0", min_length=1)
    """Image of the managed model servers in external mode (OpenAI-compatible, takes --model and --port)."""
    health_port: int | None = Field(None, ge=0, le=65535)
    """Port of /healthz and /readyz; default 9400 with `kubernetes`, else off; 0 picks a free port."""
    serve_port: int | None = Field(None, ge=0, le=65535)
    """OpenAI-compatible HTTP port of the serving layer (/v1/..., /healthz, /readyz, /metrics);
    0 picks a free one (written to <data_dir>/serve.json); default: no serving."""
    serve_host: str = "127.0.0.1"
    """Address the serving HTTP and gRPC servers bind (default 127.0.0.1; 0.0.0.0 for all)."""
    grpc_port: int | None = Field(None, ge=0, le=65535)
    """gRPC fleet.v1.Inference port; 0 picks a free one; default: no gRPC serving."""
    models_dir: Path | None = None
    """Local mode: models live in <models_dir>/<model>/<version>/; default <data_dir>/models."""
    external_url: str = ""
    """External mode without Kubernetes: base URL of the OpenAI-compatible server the
    serving layer forwards to, e.g. http://127.0.0.1:8000 (default: none)."""
    default_data_class: str = ""
    """Residency data class of requests that name none (X-Fleet-Data-Class); default
    empty: such requests are refused (fail-closed)."""
    default_priority_class: str = ""
    """PriorityClass of requests whose request and service name none; default empty (priority 0)."""
    model_load_timeout_s: float = Field(900.0, gt=0)
    """Seconds a Placement's apply (loading and warming its models) may take before it is abandoned:
    acked as failed, the previous version keeps serving (default 900; `--model-load-timeout`).
    Policy objects never wait for it: they apply on their own path."""
    telemetry_interval_s: float = Field(5.0, gt=0)
    """Seconds between telemetry reports to the hub (default 5; idle windows send nothing)."""
    demand_interval_s: float = Field(60.0, ge=1, le=3600)
    """Seconds per demand report (arrivals and tokens per service and region of origin, for the
    hub's autoscaler): windows end on multiples of it in wall-clock time, so every agent's
    windows line up (default 60; `--demand-interval`; 1..3600)."""
    drain_timeout_s: float = Field(5.0, ge=0)
    """Seconds in-flight requests get to finish when the agent stops (SIGTERM); then they
    are cancelled. Idle connections close at once (default 5)."""

    @property
    def serving(self) -> bool:
        """Whether the serving layer runs (an HTTP or gRPC port is set)."""
        return self.serve_port is not None or self.grpc_port is not None

    @model_validator(mode="after")
    def _external(self) -> AgentConfig:
        if self.serving and self.runtime_mode == "external" and not self.kubernetes and not self.external_url:
            raise ValueError("runtime_mode external with serve_port/grpc_port needs external_url "
                             "(--external-url http://HOST:PORT of the OpenAI-compatible server), or --kube")
        return self

    @model_validator(mode="after")
    def _tls(self) -> AgentConfig:
        if self.insecure:
            if self.bootstrap_token_file is not None:
                raise ValueError("a bootstrap token needs TLS: drop --insecure and pass --ca")
            return self
        if self.ca is None:
            raise ValueError(
                "ca required for TLS: pass --ca with the fleet CA (ca.pem from `fleet certs init` on the hub), "
                "or --insecure for local development"
            )
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: pass both --cert and --key, or neither (then the node "
                             f"enrolls with --bootstrap-token-file and keeps its key in {self.data_dir / 'tls'})")
        # (A missing bootstrap token file is no error here: a node that holds its certificate needs none.)
        for n in ("ca", "cert", "key"):
            p = getattr(self, n)
            if p is not None and not p.exists():
                raise ValueError(f"{n} file {p} does not exist")
        return self

    @property
    def enrolls(self) -> bool:
        """Whether this node holds its own key and certificate (<data_dir>/tls) rather than given ones."""
        return not self.insecure and self.cert is None

    @property
    def enroll_target(self) -> str:
        """Where to enroll: `enroll_address`, else the hub's host with port 7445."""
        if self.enroll_address:
            return self.enroll_address
        host = self.hub.rsplit(":", 1)[0] if ":" in self.hub else self.hub
        return f"{host}:7445"


HOW_TO_SET = {
    "hub": "--hub HOST:PORT (the hub's agent address, e.g. --hub hub.example.net:7443)",
    "site": "--site NAME (the edge site this node belongs to, e.g. --site fra-1)",
    "node": "--node NAME or $NODE_NAME (this node's name, e.g. --node gpu-a)",
    "data_dir": "--data-dir DIR (local state: applied objects and the report outbox, e.g. /var/lib/fleet-agent)",
}
"""How to give each required setting, for the error when it is missing."""


def _describe(e: dict, where: str) -> str:
    loc = ".".join(str(p) for p in e["loc"]) or "(config)"
    if e["type"] == "missing" and loc in HOW_TO_SET:
        also = f", or `{loc}:` in {where.rstrip(': ')}" if where else ", or `" + loc + ":` in a --config FILE"
        return f"{where}{loc} is required: set it with {HOW_TO_SET[loc]}{also}"
    return f"{where}{loc}: {e['msg']}"


def load(path: Path | None, overrides: dict) -> AgentConfig:
    """Merge a YAML file (if any) with flag overrides (None values ignored) and validate."""
    data: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        where = f"{path}: " if path else ""
        lines = [_describe(e, where) for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
