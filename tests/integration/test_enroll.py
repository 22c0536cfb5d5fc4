"""Nodes join with a bootstrap token and keys they make themselves (issue 10, item 7).

Real processes on real sockets: `fleet hub serve` with TLS, two `fleet-agent`
processes of one site sharing one bootstrap token, the `fleet certs` CLI.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hub.security import certs
from tests.integration.cliharness import AGENT, FLEET, free_port, stop
from protos.fleet.v1 import agent_pb2, agent_pb2_grpc, types_pb2

SITE = "fra-1"


class TlsHub:
    """`fleet hub serve` with the fleet CA (and its key: it signs nodes' certificates)."""

    def __init__(self, tmp: Path, *, cert_ttl: str = "1h") -> None:
        self.tmp = tmp
        self.certs = tmp / "certs"
        certs.init_ca(self.certs)
        certs.issue_hub(self.certs, [])
        self.port, self.admin_port, self.enroll_port = free_port(), free_port(), free_port()
        self.data = tmp / "hub"
        self.log_path = tmp / "hub.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET")}
        self.env["FLEETCONFIG"] = str(self.data / "fleetconfig.yaml")
        self.proc = subprocess.Popen(
            [*FLEET, "hub", "serve", "--certs", str(self.certs), "--data-dir", str(self.data),
             "--listen", f"127.0.0.1:{self.port}", "--admin-listen", f"127.0.0.1:{self.admin_port}",
             "--enroll-listen", f"127.0.0.1:{self.enroll_port}", "--agent-cert-ttl", cert_ttl,
             "--heartbeat-interval", "0.5"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
        )
        self.agents: list[subprocess.Popen] = []
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.enroll_port), timeout=0.5):
                    if (self.data / "fleetconfig.yaml").exists():
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("hub did not start: " + self.log_path.read_text())

    def fleet(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*FLEET, *args], capture_output=True, text=True, timeout=60, env=self.env)

    def token(self, site: str, *extra: str) -> tuple[str, str]:
        """(token text, token id) from `fleet certs token create`."""
        out = self.fleet("certs", "token", "create", "--site", site, *extra, "-o", "json")
        assert out.returncode == 0, out.stderr
        (row,) = json.loads(out.stdout)
        return row["token"], row["id"]

    def agent(self, node: str, token_file: Path | None, *, site: str = SITE, log: Path | None = None,
              extra: tuple[str, ...] = ()) -> subprocess.Popen:
        data = self.agent_dir(site, node)
        cfg = self.tmp / f"agent-{site}-{node}.yaml"
        cfg.write_text("backoff_initial_s: 0.2\nbackoff_max_s: 0.5\n")
        args = [*AGENT, "run", "--config", str(cfg), "--hub", f"127.0.0.1:{self.port}",
                "--enroll-address", f"127.0.0.1:{self.enroll_port}", "--site", site, "--node", node,
                "--ca", str(self.certs / "ca.pem"), "--data-dir", str(data), "--no-gpu-probe",
                "--gpu", "NVIDIA L4:24:1", "-v"]
        if token_file is not None:
            args += ["--bootstrap-token-file", str(token_file)]
        args += list(extra)
        out = open(log or self.tmp / f"agent-{site}-{node}.log", "w")  # noqa: SIM115 - the process owns it
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        out.close()
        self.agents.append(p)
        return p

    def agent_dir(self, site: str, node: str) -> Path:
        return self.tmp / f"data-{site}-{node}"

    def agent_log(self, site: str, node: str) -> str:
        return (self.tmp / f"agent-{site}-{node}.log").read_text()

    def requests(self) -> list[dict]:
        out = self.fleet("certs", "requests", "-o", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def nodes(self) -> dict[str, dict]:
        out = self.fleet("get", "nodes", "-o", "json")
        assert out.returncode == 0, out.stderr
        return {f"{n['site']}/{n['node']}": n for n in json.loads(out.stdout)}

    def close(self) -> None:
        for p in self.agents:
            stop(p)
        stop(self.proc)
        self.log.close()


def wait_for(what: str, check, timeout: float = 90, on_fail=lambda: "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{on_fail()}")


def token_file(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text + "\n")
    p.chmod(0o600)
    return p


def say_hello_as(hub: TlsHub, cert: Path, key: Path, site: str, node: str) -> grpc.StatusCode | None:
    """Open AgentLink with this certificate and claim (site, node); the status code the hub ends it with."""

    async def go() -> grpc.StatusCode | None:
        creds = grpc.ssl_channel_credentials((hub.certs / "ca.pem").read_bytes(), key.read_bytes(), cert.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{hub.port}", creds) as ch:
            call = agent_pb2_grpc.AgentLinkStub(ch).Connect()
            await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(
                identity=types_pb2.AgentIdentity(site=site, node=node, agent_version="test"),
                incarnation="0" * 32)))
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            call.cancel()
            return None if first is grpc.aio.EOF or first.WhichOneof("msg") != "welcome" else grpc.StatusCode.OK

    return asyncio.run(go())


def key_fingerprints(key_path: Path) -> list[bytes]:
    """Byte strings that would show a private key leaked: its PEM body lines, its DER, the scalar."""
    pem = key_path.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    body = [ln for ln in pem.splitlines() if ln and not ln.startswith(b"-----")]
    return [der, scalar, base64.b64encode(der), scalar.hex().encode(), *body]


def hub_bytes(hub: TlsHub) -> bytes:
    """Everything the hub wrote: its store (SQLite and WAL) and its log."""
    hub.log.flush()
    out = b""
    for p in [*hub.data.glob("fleet*.db*"), hub.log_path]:
        out += p.read_bytes()
    return out


@pytest.fixture
def hub(tmp_path):
    h = TlsHub(tmp_path)
    try:
        yield h
    finally:
        h.close()


def test_two_nodes_join_with_one_token_and_own_distinct_keys(hub: TlsHub, tmp_path: Path) -> None:
    text, token_id = hub.token(SITE)
    tf = token_file(tmp_path, "fra-1.token", text)
    a, b = hub.agent("gpu-a", tf), hub.agent("gpu-b", tf)

    # Both wait, pending, and say which command approves them.
    pending = wait_for("two pending requests", lambda: [r for r in hub.requests() if r["state"] == "pending"]
                       if len([r for r in hub.requests() if r["state"] == "pending"]) == 2 else None,
                       on_fail=lambda: hub.agent_log(SITE, "gpu-a"))
    assert {(r["site"], r["node"], r["token"]) for r in pending} == {(SITE, "gpu-a", token_id), (SITE, "gpu-b", token_id)}
    for r in pending:
        wait_for(f"{r['node']} to log how to approve it",
                 lambda r=r: f"run `fleet certs approve {r['name']}` on the hub" in hub.agent_log(SITE, r["node"]))
    assert a.poll() is None and b.poll() is None
    for r in pending:
        out = hub.fleet("certs", "approve", r["name"])
        assert out.returncode == 0, out.stderr
        assert f"{SITE}/{r['node']}" in out.stdout

    wait_for("both nodes connected with mTLS",
             lambda: all(hub.nodes().get(f"{SITE}/{n}", {}).get("connected") for n in ("gpu-a", "gpu-b")),
             on_fail=lambda: hub.agent_log(SITE, "gpu-a") + hub.log_path.read_text()[-3000:])

    # Distinct certificates, each naming its own node, from the fleet CA, for a key made on the node.
    ca = x509.load_pem_x509_certificate((hub.certs / "ca.pem").read_bytes())
    held = {}
    for node in ("gpu-a", "gpu-b"):
        tls = hub.agent_dir(SITE, node) / "tls"
        cert = x509.load_pem_x509_certificate((tls / "current" / "cert.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert certs.identity_from_pem((tls / "current" / "cert.pem").read_bytes()) == certs.AgentIdentity(SITE, node)
        assert stat.S_IMODE((tls / "current" / "key.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE(tls.stat().st_mode) == 0o700
        assert not (tls / "pending-key.pem").exists()
        held[node] = (cert, tls / "current" / "cert.pem", tls / "current" / "key.pem")
    assert held["gpu-a"][0].serial_number != held["gpu-b"][0].serial_number
    assert held["gpu-a"][0].public_key() != held["gpu-b"][0].public_key()

    # Neither private key ever reached the hub: not in its database, not in its log.
    seen = hub_bytes(hub)
    for node in ("gpu-a", "gpu-b"):
        for needle in key_fingerprints(held[node][2]):
            assert needle not in seen, f"{node}'s private key material found in the hub's store or log"
    # (The check can fail: the hub's own serving key is in its certs directory, not its store.)
    assert key_fingerprints(hub.certs / "hub-key.pem")[0] not in seen

    # One node's certificate cannot say hello as the other.
    _, cert_a, key_a = held["gpu-a"]
    assert say_hello_as(hub, cert_a, key_a, SITE, "gpu-b") == grpc.StatusCode.PERMISSION_DENIED
    assert say_hello_as(hub, cert_a, key_a, SITE, "gpu-a") == grpc.StatusCode.OK

    # The state stays on the node: the agent restarted without any token keeps its identity.
    stop(a)
    a2 = hub.agent("gpu-a", None, log=tmp_path / "gpu-a-restart.log")
    wait_for("gpu-a back without a token",
             lambda: "connected to hub" in (tmp_path / "gpu-a-restart.log").read_text(),
             on_fail=lambda: (tmp_path / "gpu-a-restart.log").read_text())
    assert x509.load_pem_x509_certificate(held["gpu-a"][1].read_bytes()).serial_number == held["gpu-a"][0].serial_number
    assert a2.poll() is None


def test_revoked_token_and_other_sites_token_are_refused(hub: TlsHub, tmp_path: Path) -> None:
    text, token_id = hub.token(SITE, "--auto-approve")
    other, _ = hub.token("par-1", "--auto-approve")

    # A token of another site: refused, nothing signed, the agent exits and says why.
    p = hub.agent("gpu-x", token_file(tmp_path, "par.token", other))
    assert p.wait(90) == 2
    log = hub.agent_log(SITE, "gpu-x")
    assert "PERMISSION_DENIED" in log and "is for site par-1" in log, log
    assert not (hub.agent_dir(SITE, "gpu-x") / "tls" / "current").exists()

    # The same token works while valid (auto-approved) ...
    ok = hub.agent("gpu-c", token_file(tmp_path, "fra.token", text))
    wait_for("gpu-c connected", lambda: hub.nodes().get(f"{SITE}/gpu-c", {}).get("connected"),
             on_fail=lambda: hub.agent_log(SITE, "gpu-c"))
    assert ok.poll() is None
    # ... and not once revoked.
    out = hub.fleet("certs", "token", "revoke", token_id)
    assert out.returncode == 0, out.stderr
    p = hub.agent("gpu-d", token_file(tmp_path, "fra2.token", text))
    assert p.wait(90) == 2
    log = hub.agent_log(SITE, "gpu-d")
    assert "UNAUTHENTICATED" in log and f"bootstrap token {token_id} was revoked" in log, log
    assert "next: " in log
    assert not (hub.agent_dir(SITE, "gpu-d") / "tls" / "current").exists()
    names = {(r["node"], r["state"]) for r in hub.requests()}
    assert names == {("gpu-c", "approved")}, names

    # The CLI's errors name the next command.
    bad = hub.fleet("certs", "approve", "csr-nosuchrequest")
    assert bad.returncode != 0 and "next: fleet certs requests" in bad.stderr, bad.stderr
    gone = hub.fleet("certs", "token", "revoke", "000000000000")
    assert gone.returncode != 0 and "next: fleet certs token list" in gone.stderr, gone.stderr


def test_a_pod_waiting_for_approval_is_alive_but_not_ready(hub: TlsHub, tmp_path: Path) -> None:
    """With --kube, kubelet's probes: liveness passes while the request waits (no restart loop), readiness not."""
    import urllib.error
    import urllib.request

    text, _ = hub.token(SITE)
    port = free_port()
    p = hub.agent("gpu-k", token_file(tmp_path, "k.token", text),
                  extra=("--kube", "--health-port", str(port), "--kubeconfig", str(tmp_path / "no-kubeconfig")))

    def status(path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    wait_for("the request pending", lambda: [r for r in hub.requests() if r["node"] == "gpu-k"],
             on_fail=lambda: hub.agent_log(SITE, "gpu-k"))
    wait_for("health endpoints", lambda: status("/healthz") == 200, on_fail=lambda: hub.agent_log(SITE, "gpu-k"))
    assert status("/readyz") == 503
    assert p.poll() is None


def test_agent_without_certificate_or_token_says_what_to_do(tmp_path: Path) -> None:
    ca = tmp_path / "certs"
    certs.init_ca(ca)
    out = subprocess.run(
        [*AGENT, "run", "--hub", "127.0.0.1:1", "--site", SITE, "--node", "n1", "--ca", str(ca / "ca.pem"),
         "--data-dir", str(tmp_path / "data"), "--no-gpu-probe"],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("FLEET")},
    )
    assert out.returncode == 2, out.stderr
    assert "no bootstrap token" in out.stderr and f"fleet certs token create --site {SITE}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


async def test_agent_renews_before_expiry_and_redials_with_the_new_certificate(tmp_path: Path) -> None:
    """Short-lived certificates (10 s): the agent renews at 70-90 % with a new key over mTLS, installs it,
    and its link redials; once the first certificate has expired the link still connects (with the new one)."""
    import random
    from datetime import timedelta

    from edge_agent.agent import Agent
    from edge_agent.config import AgentConfig
    from edge_agent.enroll import IdentityFiles, Rotator, ensure_identity
    from hub.config import HubConfig
    from hub.server import Hub
    from hub.store.enroll_repo import RequestState

    d = tmp_path / "certs"
    certs.init_ca(d)
    certs.issue_hub(d, [])
    hub = Hub(HubConfig(db_url=f"sqlite:///{tmp_path / 'fleet.db'}", agent_listen="127.0.0.1:0",
                        admin_listen="127.0.0.1:0", enroll_listen="127.0.0.1:0", certs_dir=d,
                        admin_token="t" * 32, agent_cert_ttl_s=10, heartbeat_interval_s=0.5))
    ports = await hub.start()
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    try:
        _, text = await hub.enrollment.create_token(SITE, timedelta(hours=1), True, "", "test")
        cfg = AgentConfig(hub=f"127.0.0.1:{ports.agent}", enroll_address=f"127.0.0.1:{ports.enroll}", site=SITE,
                          node="gpu-r", data_dir=tmp_path / "agent", ca=d / "ca.pem",
                          backoff_initial_s=0.1, backoff_max_s=0.5)
        files = IdentityFiles(cfg.data_dir)
        assert await ensure_identity(cfg, files, text, stop)
        first = files.load()
        assert first is not None
        agent_cfg = cfg.model_copy(update={"cert": files.cert_path, "key": files.key_path})
        agent = Agent(agent_cfg, probe_gpus=False)
        rotator = Rotator(agent_cfg, files, agent.link.reconnect, rng=random.Random(7))
        tasks = [asyncio.create_task(agent.run(stop)), asyncio.create_task(rotator.run(stop))]

        async def until(what: str, check, timeout: float = 60) -> None:
            async with asyncio.timeout(timeout):
                while not check():
                    for t in tasks:
                        if t.done():
                            t.result()
                    await asyncio.sleep(0.05)

        await until("first session", lambda: agent.link.status.connected)
        await until("a renewal and a new session", lambda: rotator.rotations >= 1 and agent.link.status.connects >= 2)
        renewed = files.load()
        assert renewed is not None
        assert renewed.cert.serial_number != first.cert.serial_number
        assert renewed.cert.public_key() != first.cert.public_key()  # a new key, not the old one re-signed
        # Renewed before the first certificate expired.
        reqs = await hub.enrollment.store.list_requests(SITE)
        renewal = [r for r in reqs if r.kind == "renewal"]
        assert renewal and all(r.state == RequestState.APPROVED for r in renewal)
        assert renewal[0].created_at < first.cert.not_valid_after_utc
        assert any(r.certificate_pem.encode() == renewed.cert_path.read_bytes() for r in renewal)
        # After the first certificate expired the link still gets in: it dials with the current one.
        await until("the first certificate expired", lambda: datetime.now(UTC) > first.cert.not_valid_after_utc)
        before = agent.link.status.connects
        agent.link.reconnect()
        await until("a session after expiry", lambda: agent.link.status.connects > before and agent.link.status.connected)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub.stop(grace=0.5)


async def test_enrollment_port_serves_enrollment_only_and_the_agent_port_still_requires_a_certificate(
        tmp_path: Path) -> None:
    from edge_agent.enroll import make_csr
    from hub.config import HubConfig
    from hub.server import Hub
    from protos.fleet.v1 import enroll_pb2, enroll_pb2_grpc

    d = tmp_path / "certs"
    certs.init_ca(d)
    certs.issue_hub(d, [])
    hub = Hub(HubConfig(db_url=f"sqlite:///{tmp_path / 'fleet.db'}", agent_listen="127.0.0.1:0",
                        admin_listen="127.0.0.1:0", enroll_listen="127.0.0.1:0", certs_dir=d, admin_token="t" * 32))
    ports = await hub.start()
    try:
        server_only = grpc.ssl_channel_credentials((d / "ca.pem").read_bytes())
        csr = make_csr(ec.generate_private_key(ec.SECP256R1()), SITE, "gpu-a")
        async with grpc.aio.secure_channel(f"127.0.0.1:{ports.enroll}", server_only) as ch:
            call = agent_pb2_grpc.AgentLinkStub(ch).Connect()
            with pytest.raises(grpc.aio.AioRpcError) as no_link:
                await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(
                    identity=types_pb2.AgentIdentity(site=SITE, node="gpu-a"))))
                await call.read()
            assert no_link.value.code() == grpc.StatusCode.UNIMPLEMENTED
            with pytest.raises(grpc.aio.AioRpcError) as no_renew:
                await enroll_pb2_grpc.EnrollmentStub(ch).RenewCertificate(enroll_pb2.RenewCertificateRequest(csr_pem=csr))
            assert no_renew.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Without a client certificate the agent port does not even finish the handshake.
        async with grpc.aio.secure_channel(f"127.0.0.1:{ports.agent}", server_only) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as no_cert:
                await enroll_pb2_grpc.EnrollmentStub(ch).RequestCertificate(
                    enroll_pb2.RequestCertificateRequest(bootstrap_token="x", csr_pem=csr), timeout=10)
            assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await hub.stop(grace=0.5)
