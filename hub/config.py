"""The hub's typed configuration (flags and environment map onto this)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub.sync import LivenessPolicy


class Limits(BaseModel):
    """Bounds that keep one misbehaving agent from hurting the others."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Largest message the hub accepts from an agent, in bytes (default 4 MiB)."""
    max_reports_per_batch: int = Field(1000, ge=1)
    """Most reports in one ReportBatch (default 1000)."""
    messages_per_second: float = Field(200.0, gt=0)
    """Sustained messages per second per agent (token bucket; default 200)."""
    burst: int = Field(2000, ge=1)
    """Messages an agent may send at once above the sustained rate (default 2000)."""
    send_queue: int = Field(1000, ge=1)
    """Messages queued for an agent that is not reading before its stream is closed (default 1000)."""
    hello_timeout_s: float = Field(10.0, gt=0)
    """Seconds an agent has to send Hello after opening the stream (default 10)."""
    pending_streams: int = Field(20_000, ge=100)
    """Agent streams gRPC may hold before the hub takes them up (default 20,000). gRPC's own default (1,000,
    hard limit 3,000) sheds the rest of a reconnect storm after a hub restart; shed agents back off for up
    to 30 s, so a 10,000-agent fleet took minutes to come back. Size it to the fleet; each waiting stream
    costs gRPC core a few kB."""


class HubConfig(BaseModel):
    """Everything `fleet hub serve` needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    db_url: str
    """SQLAlchemy URL of the store: sqlite:///path (default in the data dir) or postgresql://..."""
    agent_listen: str = "0.0.0.0:7443"
    """host:port for agents (mTLS unless insecure). Port 0 picks a free port."""
    admin_listen: str = "127.0.0.1:7444"
    """host:port for the admin API used by the `fleet` CLI (TLS + bearer token)."""
    enroll_listen: str | None = None
    """host:port where nodes without a certificate yet ask for one with a bootstrap token: TLS that
    authenticates the hub, no client certificate, only the Enrollment service (hub/security/enrollment.py).
    Default none (`fleet hub serve` listens on 0.0.0.0:7445). Port 0 picks a free port. Not with insecure."""
    agent_cert_ttl_s: float = Field(30 * 86400.0, ge=10)
    """Lifetime of the node certificates the hub signs, in seconds (default 30 days); agents renew
    at about 80 % of it."""
    insecure: bool = False
    """Serve plaintext without client certificates. For local development only."""
    certs_dir: Path | None = None
    """Directory made by `fleet certs init` (ca.pem, hub.pem, hub-key.pem). Required unless insecure."""
    admin_token: str = Field(min_length=16)
    """Bearer token the admin API requires."""
    heartbeat_interval_s: float = Field(5.0, gt=0)
    """How often agents heartbeat, in seconds (default 5)."""
    stale_after_s: float = Field(15.0, gt=0)
    """Heartbeat age after which a node is Stale (default 15 s)."""
    unreachable_after_s: float = Field(60.0, gt=0)
    """Heartbeat age after which a node is Unreachable (default 60 s)."""
    poll_interval_s: float = Field(0.1, gt=0)
    """How often each hub process looks for desired-state changes made by other processes (default 0.1 s)."""
    flush_interval_s: float = Field(0.1, gt=0)
    """How often batched heartbeats and applied-acks are written (default 0.1 s)."""
    rollout_tick_s: float = Field(2.0, gt=0)
    """How often the rollout controller ticks each active rollout, in seconds (default 2)."""
    rollout_lease_s: float = Field(15.0, gt=0)
    """How long a hub process's claim to drive a rollout lasts without renewal; another replica (or this
    one restarted) takes over after it (default 15 s, at least two ticks)."""
    metrics_listen: str | None = None
    """HOST:PORT of the hub's Prometheus ``/metrics`` (hub.metrics; port 0: any free port); None: not served
    (default). Only the admin-serving process serves it."""
    metrics_refresh_s: float = Field(5.0, gt=0)
    """How often the metrics are read from the store, in seconds (default 5)."""
    drift_interval_s: float = Field(30.0, ge=0)
    """How often the admin-serving process evaluates drift (audit events, gauges), in seconds; 0: never
    (``fleet drift`` still evaluates on demand). Default 30."""
    limits: Limits = Limits()

    @model_validator(mode="after")
    def _tls(self) -> HubConfig:
        if self.insecure and self.enroll_listen:
            raise ValueError("enroll_listen needs TLS: nodes enroll only with a hub that proves who it is (drop --insecure)")
        if not self.insecure:
            if self.certs_dir is None:
                raise ValueError("certs_dir is required unless insecure: run `fleet certs init --dir DIR` and pass --certs DIR")
            for f in ("ca.pem", "hub.pem", "hub-key.pem"):
                if not (self.certs_dir / f).exists():
                    raise ValueError(f"{self.certs_dir / f} is missing: run `fleet certs init --dir {self.certs_dir}`")
        LivenessPolicy(
            timedelta(seconds=self.heartbeat_interval_s),
            timedelta(seconds=self.stale_after_s),
            timedelta(seconds=self.unreachable_after_s),
        )
        return self

    @property
    def liveness(self) -> LivenessPolicy:
        return LivenessPolicy(
            timedelta(seconds=self.heartbeat_interval_s),
            timedelta(seconds=self.stale_after_s),
            timedelta(seconds=self.unreachable_after_s),
        )
