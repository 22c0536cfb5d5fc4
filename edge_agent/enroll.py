"""The node's own identity: its key, made here and never sent; its certificate, signed by the hub.

Like a kubelet's TLS bootstrap: when <data_dir>/tls holds no valid certificate,
the agent makes a key (0600), sends a CSR naming its site and node with a
bootstrap token over TLS that authenticates the hub (no client certificate),
waits with backoff while the request is pending ("run `fleet certs approve
NAME` on the hub"), checks what comes back (its key, its identity, signed by
the fleet CA) and installs it. Then the agent connects with mTLS as always.

A background task renews at a jittered 70-90 % of the certificate's lifetime
(~80 %), over mTLS with the current certificate and a CSR for a new key, and
the link redials with the new one.

Files (all in <data_dir>/tls, 0700):
    pending-key.pem     the key of a bootstrap CSR in flight (kept across
                        restarts, so a resent CSR finds its request again)
    renewal-key.pem     the same for a renewal
    gen-<serial>/       key.pem (0600) and cert.pem of one certificate
    current             symlink to the gen-* in use, swapped atomically
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.config import AgentConfig
from protos.fleet.v1 import enroll_pb2, enroll_pb2_grpc

log = logging.getLogger(__name__)

TRUST_DOMAIN = "edge-fleet"
_URI = re.compile(rf"spiffe://{TRUST_DOMAIN}/site/([^/]+)/node/([^/]+)")
_FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT,
          grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED}


class EnrollError(Exception):
    """The node cannot get its certificate; `next` says what to do."""

    def __init__(self, message: str, next_step: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.next = next_step


def bootstrap_token(cfg: AgentConfig) -> str | None:
    """The token from --bootstrap-token-file, else $FLEET_BOOTSTRAP_TOKEN; None without either."""
    if cfg.bootstrap_token_file is not None:
        try:
            text = cfg.bootstrap_token_file.read_text().strip()
        except FileNotFoundError:
            # E.g. the token's Secret was removed after the site joined: fine while the node holds its certificate.
            return os.environ.get("FLEET_BOOTSTRAP_TOKEN", "").strip() or None
        if not text:
            raise EnrollError(f"bootstrap token file {cfg.bootstrap_token_file} is empty",
                              f"put the token from `fleet certs token create --site {cfg.site}` in it")
        return text
    return os.environ.get("FLEET_BOOTSTRAP_TOKEN", "").strip() or None


def renew_at(not_before: datetime, not_after: datetime, rng: random.Random) -> datetime:
    """When to renew: at 70-90 % of the lifetime (uniform jitter, ~80 %), so a site's nodes spread out."""
    return not_before + (not_after - not_before) * rng.uniform(0.7, 0.9)


def make_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, site: str, node: str) -> str:
    """The CSR the hub accepts: CN=<node>.<site> and one URI SAN, nothing else."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node}.{site}")]))
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}/site/{site}/node/{node}")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def cert_identity(cert: x509.Certificate) -> tuple[str, str] | None:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = [m.groups() for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if (m := _URI.fullmatch(u))]
    return found[0] if len(found) == 1 else None


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 from the first byte (never briefly readable by others)."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Held:
    """The certificate in use and its key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path


class IdentityFiles:
    """The node's key and certificate on disk (<data_dir>/tls); see the module docstring."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # (an existing one keeps its mode)
        self.dir = data_dir / "tls"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)

    @property
    def current(self) -> Path:
        return self.dir / "current"

    @property
    def cert_path(self) -> Path:
        return self.current / "cert.pem"

    @property
    def key_path(self) -> Path:
        return self.current / "key.pem"

    def load(self) -> Held | None:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            return None
        return Held(cert, key, self.cert_path, self.key_path)

    def pending_key(self, purpose: str = "pending") -> ec.EllipticCurvePrivateKey:
        """The key of the CSR in flight ("pending": bootstrap, "renewal"): the same after a restart, else new."""
        path = self.dir / f"{purpose}-key.pem"
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return key
        except (FileNotFoundError, ValueError):
            pass
        key = make_key()
        _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return key

    def install(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        """Make (cert, key) current in one atomic step, then forget the pending key and older generations."""
        gen = self.dir / f"gen-{cert.serial_number:x}"
        gen.mkdir(mode=0o700, exist_ok=True)
        _write_private(gen / "key.pem", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        _write_private(gen / "cert.pem", cert.public_bytes(serialization.Encoding.PEM))
        previous = os.readlink(self.current) if self.current.is_symlink() else None
        link = self.dir / "current.tmp"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        os.symlink(gen.name, link)
        os.replace(link, self.current)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for purpose in ("pending", "renewal"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"{purpose}-key.pem").unlink()
        # Keep the previous generation (a connection may still be reading it); remove older ones.
        for old in self.dir.glob("gen-*"):
            if old.name not in (gen.name, previous):
                shutil.rmtree(old, ignore_errors=True)


def _check_issued(resp: enroll_pb2.CertificateResponse, key: ec.EllipticCurvePrivateKey, cfg: AgentConfig,
                  ca: x509.Certificate) -> x509.Certificate:
    """What the hub signed is for our key and our identity, and from the fleet CA we trust."""
    try:
        cert = x509.load_pem_x509_certificate(resp.certificate_pem.encode())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrollError(f"the hub returned a certificate not signed by the fleet CA in {cfg.ca}: {exc}",
                          "check that --ca is the fleet CA of this hub") from None
    if cert.public_key() != key.public_key():
        raise EnrollError("the hub returned a certificate for another key", "report this; the hub log names the request")
    if cert_identity(cert) != (cfg.site, cfg.node):
        raise EnrollError(f"the hub returned a certificate for {cert_identity(cert)}, not {cfg.site}/{cfg.node}",
                          "check --site/--node")
    return cert


def _channel(target: str, cfg: AgentConfig, held: Held | None = None) -> grpc.aio.Channel:
    assert cfg.ca is not None
    if held is None:  # no client certificate yet: TLS authenticates the hub only
        creds = grpc.ssl_channel_credentials(root_certificates=cfg.ca.read_bytes())
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=cfg.ca.read_bytes(), private_key=held.key_path.read_bytes(),
            certificate_chain=held.cert_path.read_bytes())
    opts: list[tuple[str, object]] = [("grpc.enable_retries", 0)]
    if cfg.server_name:
        opts.append(("grpc.ssl_target_name_override", cfg.server_name))
    return grpc.aio.secure_channel(target, creds, options=opts)


def _load_ca(cfg: AgentConfig) -> x509.Certificate:
    assert cfg.ca is not None
    try:
        return x509.load_pem_x509_certificate(cfg.ca.read_bytes())
    except ValueError:
        raise EnrollError(f"{cfg.ca} is not a PEM certificate", "pass --ca with the fleet CA (ca.pem)") from None


def usable(held: Held | None, cfg: AgentConfig, ca: x509.Certificate, now: datetime) -> str:
    """"" when the held certificate can be used now, else why not."""
    if held is None:
        return "no certificate yet"
    try:
        held.cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "its certificate is not from the fleet CA given with --ca"
    if now >= held.cert.not_valid_after_utc:
        return f"its certificate expired at {held.cert.not_valid_after_utc.isoformat(timespec='seconds')}"
    return ""


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep unless stopped; True if stopped."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await stop.wait()
    return stop.is_set()


async def bootstrap(cfg: AgentConfig, files: IdentityFiles, token: str, stop: asyncio.Event,
                    rng: random.Random | None = None) -> bool:
    """Get the first certificate with the bootstrap token; False if stopped first. EnrollError when refused."""
    rng = rng or random.Random()
    ca = _load_ca(cfg)
    key = files.pending_key()
    csr = make_csr(key, cfg.site, cfg.node)
    target = cfg.enroll_target
    attempt = 0
    told = ""
    last_told = 0.0
    while not stop.is_set():
        try:
            async with _channel(target, cfg) as ch:
                resp = await enroll_pb2_grpc.EnrollmentStub(ch).RequestCertificate(
                    enroll_pb2.RequestCertificateRequest(bootstrap_token=token, csr_pem=csr), timeout=30)
        except grpc.aio.AioRpcError as exc:
            details, _, hint = (exc.details() or "").partition("\nnext: ")
            if exc.code() in _FATAL:
                raise EnrollError(f"the hub at {target} refused the certificate request: {exc.code().name}: {details}",
                                  hint or f"get a new token: `fleet certs token create --site {cfg.site}` on the hub") from None
            log.warning("cannot reach the hub's enrollment port %s: %s: %s", target, exc.code().name, details)
        else:
            if resp.state == enroll_pb2.CERTIFICATE_REQUEST_STATE_APPROVED:
                cert = _check_issued(resp, key, cfg, ca)
                files.install(cert, key)
                log.warning("certificate %s for %s/%s installed (valid until %s)", resp.name, cfg.site, cfg.node,
                            cert.not_valid_after_utc.isoformat(timespec="seconds"))
                return True
            if resp.state == enroll_pb2.CERTIFICATE_REQUEST_STATE_DENIED:
                raise EnrollError(resp.message or f"certificate request {resp.name} was denied",
                                  f"ask the hub's admin; to ask again with a new key, delete {files.dir / 'pending-key.pem'}")
            # Pending: say so, loudly once and then every minute, with the command that approves it.
            if resp.message != told or time.monotonic() - last_told > 60:
                log.warning("%s", resp.message or f"waiting for approval: run `fleet certs approve {resp.name}` on the hub")
                told, last_told = resp.message, time.monotonic()
        attempt += 1
        delay = rng.uniform(0.5, 1.0) * min(cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** min(attempt, 20))
        if await _sleep(stop, delay):
            return False
    return False


async def renew(cfg: AgentConfig, files: IdentityFiles, held: Held) -> Held:
    """A certificate for a new key, over mTLS with the held one; installed. Raises on failure."""
    ca = _load_ca(cfg)
    key = files.pending_key("renewal")
    async with _channel(cfg.hub, cfg, held) as ch:
        resp = await enroll_pb2_grpc.EnrollmentStub(ch).RenewCertificate(
            enroll_pb2.RenewCertificateRequest(csr_pem=make_csr(key, cfg.site, cfg.node)), timeout=30)
    if resp.state != enroll_pb2.CERTIFICATE_REQUEST_STATE_APPROVED:
        raise EnrollError(f"renewal {resp.name} not approved: {resp.message}")
    cert = _check_issued(resp, key, cfg, ca)
    files.install(cert, key)
    new = files.load()
    assert new is not None
    return new


class Rotator:
    """Renews the node's certificate before it expires; calls `on_rotated` after each new one."""

    def __init__(self, cfg: AgentConfig, files: IdentityFiles, on_rotated, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.files = files
        self.on_rotated = on_rotated
        self.rng = rng or random.Random()
        self.rotations = 0

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        due: datetime | None = None
        while not stop.is_set():
            held = self.files.load()
            if held is None:
                log.error("no certificate in %s to renew; restart the agent with a bootstrap token", self.files.dir)
                return
            now = datetime.now(UTC)
            if due is None:
                due = renew_at(held.cert.not_valid_before_utc, held.cert.not_valid_after_utc, self.rng)
                log.info("certificate valid until %s; renewing at %s",
                         held.cert.not_valid_after_utc.isoformat(timespec="seconds"), due.isoformat(timespec="seconds"))
            if now < due:
                if await _sleep(stop, (due - now).total_seconds()):
                    return
                continue
            if now >= held.cert.not_valid_after_utc:
                log.error("the node's certificate expired before it could be renewed; restart the agent with a "
                          "bootstrap token (fleet certs token create --site %s)", self.cfg.site)
                return
            try:
                new = await renew(self.cfg, self.files, held)
            except Exception as exc:  # noqa: BLE001 - the rotation loop never dies; it retries
                attempt += 1
                left = (held.cert.not_valid_after_utc - now).total_seconds()
                delay = self.rng.uniform(0.5, 1.0) * min(self.cfg.backoff_max_s, max(0.5, left / 10),
                                                         self.cfg.backoff_initial_s * 2 ** min(attempt, 20))
                msg = exc.message if isinstance(exc, EnrollError) else (
                    f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else repr(exc))
                log.warning("renewing the node's certificate failed (retry in %.1fs): %s", delay, msg)
                if await _sleep(stop, delay):
                    return
                continue
            attempt, due = 0, None
            self.rotations += 1
            log.warning("certificate renewed: new key, valid until %s",
                        new.cert.not_valid_after_utc.isoformat(timespec="seconds"))
            self.on_rotated()


async def ensure_identity(cfg: AgentConfig, files: IdentityFiles, token: str | None, stop: asyncio.Event) -> bool:
    """A usable certificate in <data_dir>/tls, enrolling with the token if needed; False if stopped first."""
    ca = _load_ca(cfg)
    held = files.load()
    if held is not None and cert_identity(held.cert) not in (None, (cfg.site, cfg.node)):
        site, node = cert_identity(held.cert)  # type: ignore[misc]
        raise EnrollError(f"{files.dir} holds the certificate of {site}/{node}, but this agent runs as "
                          f"{cfg.site}/{cfg.node}", f"use --site {site} --node {node}, or another --data-dir")
    why = usable(held, cfg, ca, datetime.now(UTC))
    if not why:
        return True
    if token is None:
        missing = (f" ({cfg.bootstrap_token_file} does not exist)"
                   if cfg.bootstrap_token_file is not None and not cfg.bootstrap_token_file.exists() else "")
        raise EnrollError(f"this node has no usable certificate in {files.dir} ({why}) and no bootstrap token{missing}",
                          f"on the hub: `fleet certs token create --site {cfg.site}`; then pass "
                          "--bootstrap-token-file FILE (or set FLEET_BOOTSTRAP_TOKEN_FILE)")
    log.warning("enrolling %s/%s with the hub at %s (%s)", cfg.site, cfg.node, cfg.enroll_target, why)
    return await bootstrap(cfg, files, token, stop)


async def _main(cfg: AgentConfig, token: str | None, probe_gpus: bool) -> None:
    from edge_agent.agent import Agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    files = IdentityFiles(cfg.data_dir)
    health = None
    if cfg.kubernetes:
        # While it waits for approval the pod is alive (kubelet must not restart it) but not ready.
        from edge_agent.health import DEFAULT_PORT, HealthServer

        health = HealthServer(DEFAULT_PORT if cfg.health_port is None else cfg.health_port,
                              lambda: "waiting for the node's certificate (fleet certs requests)")
        await health.start()
    try:
        if not await ensure_identity(cfg, files, token, stop):
            return
    finally:
        if health is not None:
            await health.stop()
    agent_cfg = cfg.model_copy(update={"cert": files.cert_path, "key": files.key_path})
    agent = Agent(agent_cfg, probe_gpus=probe_gpus)
    rotator = Rotator(agent_cfg, files, agent.link.reconnect)
    task = asyncio.create_task(rotator.run(stop), name="cert-rotation")
    try:
        await agent.run(stop)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def run(cfg: AgentConfig, token: str | None, *, probe_gpus: bool = True) -> None:
    """`fleet-agent run` for a node that holds its own identity (no --cert/--key)."""
    asyncio.run(_main(cfg, token, probe_gpus))

