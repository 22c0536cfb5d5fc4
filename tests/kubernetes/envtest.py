"""A real kube-apiserver and etcd on loopback for integration tests.

Like controller-runtime's envtest: no kubelet, no controller-manager, no
scheduler; just the API server (RBAC and Node authorisation on) and its etcd,
so tests talk to the real API machinery: validation, admission, RBAC,
server-side apply, watches, resource versions.

The binaries are built from source by ``tools/kube/build.sh`` (pinned release
in ``tools/kube/go.mod``) and cached under
``${XDG_CACHE_HOME:-~/.cache}/edge-fleet/kube/<version>/``.

Processes run in their own session (process group) and are killed as a group
on teardown; where ``setpriv`` exists they also get SIGKILL if the test
process dies without tearing down.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "kube" / "build.sh"
BIN_DIR_ENV = "EDGE_FLEET_KUBE_BIN_DIR"
"""Environment variable: a directory holding kube-apiserver, etcd and kubectl
to use instead of the tools/kube/build.sh cache (default: unset)."""

ADMIN_USER = "edge-fleet-test-admin"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
READY_TIMEOUT_S = 90.0
"""Seconds to wait for etcd health and the API server's /readyz."""


def require_kubernetes_client() -> None:
    """Skip the calling test module when the ``kubernetes`` package is
    missing; under CI=true fail instead, so CI never passes by skipping."""
    try:
        import kubernetes  # noqa: F401
    except ImportError as exc:
        reason = f"the kubernetes Python client is not installed (pip install kubernetes): {exc}"
        if os.environ.get("CI", "").lower() == "true":
            raise ImportError(f"CI=true: {reason}") from exc
        import pytest

        pytest.skip(reason, allow_module_level=True)


class KubeBinariesUnavailable(RuntimeError):
    """The binaries are not cached and cannot be built here (no Go)."""


@dataclass(frozen=True)
class KubeBinaries:
    """Paths of the three binaries at one Kubernetes release."""

    directory: Path
    kube_apiserver: Path
    etcd: Path
    kubectl: Path

    @classmethod
    def in_directory(cls, directory: Path) -> KubeBinaries:
        bins = cls(
            directory=directory,
            kube_apiserver=directory / "kube-apiserver",
            etcd=directory / "etcd",
            kubectl=directory / "kubectl",
        )
        missing = [p.name for p in (bins.kube_apiserver, bins.etcd, bins.kubectl) if not os.access(p, os.X_OK)]
        if missing:
            raise KubeBinariesUnavailable(f"{directory} lacks {', '.join(missing)}")
        return bins


def locate_binaries(build_log: Path | None = None) -> KubeBinaries:
    """Find the binaries: ``$EDGE_FLEET_KUBE_BIN_DIR``, else build.sh's cache.

    build.sh returns at once when its cache is up to date; otherwise it builds
    (10-30 minutes cold, needs Go). Raises KubeBinariesUnavailable when Go is
    missing, RuntimeError when the build fails.
    """
    override = os.environ.get(BIN_DIR_ENV)
    if override:
        return KubeBinaries.in_directory(Path(override))
    log = build_log.open("wb") if build_log else subprocess.DEVNULL
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT), "--print-dir"],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    finally:
        if build_log:
            log.close()  # type: ignore[union-attr]
    tail = build_log.read_text(errors="replace")[-3000:] if build_log else ""
    if proc.returncode == 3:
        raise KubeBinariesUnavailable(
            "kube-apiserver is not built and Go is missing or too old, so tools/kube/build.sh "
            f"cannot build it: {tail.strip()}"
        )
    if proc.returncode != 0:
        raise RuntimeError(f"tools/kube/build.sh failed (exit {proc.returncode}):\n{tail}")
    return KubeBinaries.in_directory(Path(proc.stdout.decode().strip().splitlines()[-1]))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- #
# certificates and keys
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Pki:
    """Files the API server and its clients need, all under one directory."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    sa_signing_key: Path
    sa_public_key: Path
    admin_client_cert: Path
    admin_client_key: Path


def make_pki(directory: Path, service_ip: str) -> Pki:
    """A throwaway CA, a serving cert for 127.0.0.1, a client cert for the
    admin user, and an RSA key pair that signs service-account tokens."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def write_key(path: Path, key: Any) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("edge-fleet-test-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName] | None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    serving_key, serving_cert = leaf(
        name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.DNSName("kubernetes.default.svc.cluster.local"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address(service_ip)),
        ],
    )
    admin_key, admin_cert = leaf(
        name(ADMIN_USER, "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, None
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pki = Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        sa_signing_key=directory / "sa.key",
        sa_public_key=directory / "sa.pub",
        admin_client_cert=directory / "admin.crt",
        admin_client_key=directory / "admin.key",
    )
    pem = serialization.Encoding.PEM
    pki.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    write_key(pki.ca_key, ca_key)
    pki.serving_cert.write_bytes(serving_cert.public_bytes(pem))
    write_key(pki.serving_key, serving_key)
    pki.admin_client_cert.write_bytes(admin_cert.public_bytes(pem))
    write_key(pki.admin_client_key, admin_key)
    write_key(pki.sa_signing_key, sa_key)
    pki.sa_public_key.write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pki


# --------------------------------------------------------------------------- #
# processes
# --------------------------------------------------------------------------- #


@dataclass
class _Proc:
    """One child process in its own session, logging to a file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        prefix: list[str] = []
        setpriv = shutil.which("setpriv")
        # SIGKILL the child if the test process dies without tearing down.
        # The signal follows the *thread* that forks, so only from the main
        # thread: a worker thread's exit would otherwise kill the server.
        if setpriv and threading.current_thread() is threading.main_thread():
            prefix = [setpriv, "--pdeathsig", "KILL", "--"]
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                prefix + self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        if self.popen is None:
            return
        pgid = self.popen.pid  # leader of its own session
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                self.popen.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                logger.warning("%s did not exit within %.0fs of %s", self.name, wait, sig.name)
        # Reap anything else left in the group (it has no other members normally).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.popen = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


@dataclass
class KubeAPIServer:
    """A running kube-apiserver + etcd pair; see the ``kube_apiserver`` fixture.

    Attributes a test uses:
      url           https://127.0.0.1:<port>
      kubeconfig    admin kubeconfig file (bearer token, system:masters)
      ca_file       the CA that signed the serving certificate
      admin_token   the admin user's bearer token
      version       the pinned release, e.g. "v1.37.2"
      binaries      paths of kube-apiserver, etcd, kubectl
    """

    binaries: KubeBinaries
    workdir: Path
    version: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    etcd_client_port: int = 0
    etcd_peer_port: int = 0
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    pki: Pki | None = None
    kubeconfig: Path = Path()
    _etcd: _Proc | None = None
    _apiserver: _Proc | None = None

    # -- properties --------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_client_port}"

    @property
    def ca_file(self) -> Path:
        assert self.pki is not None
        return self.pki.ca_cert

    @property
    def kubectl_path(self) -> Path:
        return self.binaries.kubectl

    @property
    def apiserver_log(self) -> Path:
        return self.workdir / "kube-apiserver.log"

    @property
    def etcd_log(self) -> Path:
        return self.workdir / "etcd.log"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Generate PKI, start etcd, start the API server, wait until ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        service_ip = str(next(ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE).hosts()))
        self.pki = make_pki(self.workdir / "pki", service_ip)
        (self.workdir / "tokens.csv").write_text(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        (self.workdir / "tokens.csv").chmod(0o600)
        self._start_etcd()
        for attempt in range(3):  # the free port may be taken before the server binds it
            self.port = free_port()
            try:
                self.start_apiserver()
                break
            except RuntimeError:
                self.stop_apiserver()
                if attempt == 2:
                    raise
        self.kubeconfig = self.write_kubeconfig(self.workdir / "admin.kubeconfig", token=self.admin_token)
        self.version = self.request_json("GET", "/version").get("gitVersion", "")

    def close(self) -> None:
        """Stop the API server, then etcd. Idempotent."""
        if self._apiserver:
            self._apiserver.stop()
        if self._etcd:
            self._etcd.stop()

    def _start_etcd(self, attempts: int = 3) -> None:
        data_dir = self.workdir / "etcd-data"
        for attempt in range(attempts):
            self.etcd_client_port, self.etcd_peer_port = free_port(), free_port()
            peer = f"http://127.0.0.1:{self.etcd_peer_port}"
            self._etcd = _Proc(
                "etcd",
                [
                    str(self.binaries.etcd),
                    "--name=default",
                    f"--data-dir={data_dir}",
                    f"--listen-client-urls={self.etcd_url}",
                    f"--advertise-client-urls={self.etcd_url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=default={peer}",
                    "--initial-cluster-state=new",
                    "--unsafe-no-fsync=true",  # test data: speed over durability
                    "--log-level=warn",
                ],
                self.etcd_log,
            )
            self._etcd.start()
            try:
                self._wait(lambda: self._etcd_healthy(), "etcd /health", self._etcd)
                return
            except RuntimeError:
                self._etcd.stop()
                shutil.rmtree(data_dir, ignore_errors=True)
                if attempt == attempts - 1:
                    raise

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
                return json.load(resp).get("health") == "true"
        except (OSError, ValueError):
            return False

    def apiserver_argv(self) -> list[str]:
        assert self.pki is not None
        pki = self.pki
        return [
            str(self.binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.host}",
            f"--advertise-address={self.host}",
            f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'certs'}",
            f"--tls-cert-file={pki.serving_cert}",
            f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki.sa_public_key}",
            f"--service-account-signing-key-file={pki.sa_signing_key}",
            # No controller-manager runs, so nothing creates the "default"
            # ServiceAccount that this plugin would demand for every pod.
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            "--profiling=false",
            "--endpoint-reconciler-type=none",
            "--v=1",
        ]

    def start_apiserver(self) -> None:
        """Start kube-apiserver (same port, same etcd) and wait for /readyz."""
        if self._apiserver and self._apiserver.alive():
            raise RuntimeError("kube-apiserver is already running")
        self._apiserver = _Proc("kube-apiserver", self.apiserver_argv(), self.apiserver_log)
        self._apiserver.start()
        self._wait(self.ready, "kube-apiserver /readyz", self._apiserver)

    def stop_apiserver(self, grace: float = 10.0) -> None:
        """Stop kube-apiserver; etcd and its data stay."""
        if self._apiserver:
            self._apiserver.stop(grace)

    def restart_apiserver(self, downtime: float = 0.0, grace: float = 10.0) -> None:
        """Stop the API server, stay down ``downtime`` seconds, start it again
        on the same port with the same etcd data. Open watches break."""
        self.stop_apiserver(grace)
        if downtime:
            time.sleep(downtime)
        self.start_apiserver()

    def _wait(self, probe: Any, what: str, proc: _Proc, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited before {what} was ready; log tail:\n{proc.log_tail()}")
            if probe():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} not ready after {timeout:.0f}s; log tail:\n{proc.log_tail()}")

    # -- clients -----------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request_json(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """One HTTP request with the stdlib, as admin unless ``token`` is given."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=self.ssl_context(), timeout=10) as resp:
            return json.load(resp)

    def ready(self) -> bool:
        """True when GET /readyz answers 200."""
        req = urllib.request.Request(self.url + "/readyz")
        req.add_header("Authorization", f"Bearer {self.admin_token}")
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=2) as resp:
                return resp.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def write_kubeconfig(
        self, path: Path, *, token: str | None = None, user: str = "admin", namespace: str = "default"
    ) -> Path:
        """Write a kubeconfig for this server authenticating with ``token``
        (default: the admin token). JSON is valid YAML."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "envtest", "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}
            ],
            "users": [{"name": user, "user": {"token": token or self.admin_token}}],
            "contexts": [
                {"name": "envtest", "context": {"cluster": "envtest", "user": user, "namespace": namespace}}
            ],
            "current-context": "envtest",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def service_account_token(self, namespace: str, name: str, expiration_seconds: int = 3600) -> str:
        """A bound token for an existing ServiceAccount (TokenRequest API)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": expiration_seconds},
        }
        resp = self.request_json("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
        return resp["status"]["token"]

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, input: bytes | None = None, check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run the pinned kubectl against this server (admin unless ``kubeconfig``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env["HOME"] = str(self.workdir)  # no ~/.kube/cache or kuberc from the user
        proc = subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            env=env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.decode(errors='replace')}"
            )
        return proc

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A new ``kubernetes.client.ApiClient`` (admin unless ``kubeconfig``);
        the caller closes it (or use the ``kube_client`` fixture)."""
        from kubernetes import config as kube_config

        return kube_config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))
