"""Node enrollment on the hub: bootstrap tokens, certificate requests, approval, signing.

The way kubelets join a cluster (TLS bootstrapping): a node makes its own key,
which never leaves it, and sends a CSR with a bootstrap token over TLS that
authenticates the hub (it has no client certificate yet). The token is scoped
to one site, expires, and can be revoked; it is stored only hashed. The CSR
must name a node *of the token's site* (hub/security/csr.py checks everything
else). An admin approves (`fleet certs approve NAME`), or the token
auto-approves a node's *first* join; the hub then signs exactly the identity
it verified with the fleet CA. Before its certificate expires the node renews
over mTLS with a new key; a renewal names the caller's own identity only.

Two services: `Enrollment` for agents (served on the enrollment port and on
the agent port), `Certificates` for admins (on the admin port, behind the
bearer-token interceptor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from hub.convert import ts
from hub.security import certs
from hub.security.csr import CsrError, VerifiedCsr, verify_csr
from hub.security.tokens import TokenFormatError, new_token, parse_token, secret_matches
from hub.store import Store
from hub.store.enroll_repo import EnrollStore, RequestRecord, RequestState, TokenRecord
from hub.store.repo import AuditRecord
from protos.fleet.v1 import enroll_pb2, enroll_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_TOKEN_TTL = timedelta(hours=24)
MAX_TOKEN_TTL = timedelta(days=365)
MAX_PENDING_PER_TOKEN = 100

_STATE = {
    RequestState.PENDING: enroll_pb2.CERTIFICATE_REQUEST_STATE_PENDING,
    RequestState.APPROVED: enroll_pb2.CERTIFICATE_REQUEST_STATE_APPROVED,
    RequestState.DENIED: enroll_pb2.CERTIFICATE_REQUEST_STATE_DENIED,
}
_STATE_FROM = {v: k for k, v in _STATE.items()}


def _now() -> datetime:
    return datetime.now(UTC)


def request_name(public_key_sha256: str) -> str:
    """A request is named after its public key: the node resending its CSR finds the same request."""
    return f"csr-{public_key_sha256[:20]}"


class Signer:
    """The fleet CA as the hub holds it, if it holds the key (`ca-key.pem` in the certs directory)."""

    def __init__(self, certs_dir: Path | None, lifetime: timedelta) -> None:
        self.lifetime = lifetime
        self.ca_pem = b""
        self._ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
        self.why_not = ""
        if certs_dir is None:
            self.why_not = "this hub runs without certificates (--insecure): nodes cannot enroll"
        elif not (certs_dir / "ca-key.pem").exists():
            self.why_not = (f"this hub has no CA key ({certs_dir / 'ca-key.pem'}), so it signs no node certificates: "
                            "put the fleet CA's ca-key.pem beside ca.pem and restart the hub, "
                            "or mint certificates offline with `fleet certs agent`")
        else:
            try:
                self._ca = certs.load_ca(certs_dir)
            except (certs.CertError, ValueError) as exc:
                self.why_not = (f"cannot read the fleet CA in {certs_dir} ({exc}): fix ca.pem/ca-key.pem and "
                                "restart the hub")
                return
            self.ca_pem = (certs_dir / "ca.pem").read_bytes()

    @property
    def available(self) -> bool:
        return self._ca is not None

    def sign(self, csr: VerifiedCsr) -> tuple[str, datetime]:
        assert self._ca is not None
        cert = certs.sign_agent(self._ca[0], self._ca[1], csr.identity, csr.public_key, self.lifetime)
        return certs.pem_cert(cert).decode(), cert.not_valid_after_utc


class Refused(Exception):
    """A call refused with a status; `next` is the command to run (the CLI prints it)."""

    def __init__(self, code: grpc.StatusCode, message: str, next_step: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.next = next_step

    @property
    def details(self) -> str:
        return f"{self.message}\nnext: {self.next}" if self.next else self.message


def _pending_message(name: str) -> str:
    return f"waiting for approval: run `fleet certs approve {name}` on the hub"


def response(r: RequestRecord, ca_pem: bytes) -> enroll_pb2.CertificateResponse:
    out = enroll_pb2.CertificateResponse(name=r.name, state=_STATE[r.state])
    if r.state == RequestState.APPROVED:
        out.certificate_pem = r.certificate_pem
        out.ca_pem = ca_pem.decode()
        if r.not_after:
            out.not_after.CopyFrom(ts(r.not_after))
    elif r.state == RequestState.PENDING:
        out.message = r.reason or _pending_message(r.name)
    else:
        out.message = f"certificate request {r.name} was denied by {r.decided_by or 'an admin'}" + (
            f": {r.reason}" if r.reason else "")
    return out


def request_view(r: RequestRecord) -> enroll_pb2.CertificateRequest:
    out = enroll_pb2.CertificateRequest(
        name=r.name, site=r.site, node=r.node, state=_STATE[r.state], kind=r.kind, token_id=r.token_id,
        created_at=ts(r.created_at), decided_by=r.decided_by, reason=r.reason,
        public_key_sha256=r.public_key_sha256, peer=r.peer,
    )
    if r.decided_at:
        out.decided_at.CopyFrom(ts(r.decided_at))
    if r.not_after:
        out.not_after.CopyFrom(ts(r.not_after))
    return out


def token_view(t: TokenRecord) -> enroll_pb2.BootstrapToken:
    out = enroll_pb2.BootstrapToken(
        id=t.id, site=t.site, auto_approve=t.auto_approve, created_at=ts(t.created_at),
        expires_at=ts(t.expires_at), created_by=t.created_by, description=t.description,
    )
    if t.revoked_at:
        out.revoked_at.CopyFrom(ts(t.revoked_at))
    return out


def peer_certificate_identity(context: grpc.aio.ServicerContext) -> certs.AgentIdentity | None:
    """The identity of the caller's verified client certificate; None without one."""
    pems = (context.auth_context() or {}).get("x509_pem_cert")
    return certs.identity_from_pem(pems[0]) if pems else None


async def _run(context: grpc.aio.ServicerContext, what: str, call):
    try:
        return await call()
    except Refused as r:
        log.warning("%s refused (%s): %s", what, context.peer(), r.message)
        await context.abort(r.code, r.details)
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("%s failed", what)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error in the hub; see the hub's log")


class Enrollment:
    """The decisions, independent of gRPC: used by both services."""

    def __init__(self, store: EnrollStore, audit: Store, signer: Signer, *,
                 now: Callable[[], datetime] = _now, max_pending_per_token: int = MAX_PENDING_PER_TOKEN) -> None:
        self.store = store
        self.audit = audit
        self.signer = signer
        self.now = now
        self.max_pending_per_token = max_pending_per_token

    def _require_signer(self) -> None:
        if not self.signer.available:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, self.signer.why_not)

    async def _token(self, text: str) -> TokenRecord:
        try:
            token_id, secret = parse_token(text)
        except TokenFormatError as exc:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        token = await self.store.get_token(token_id)
        if token is None or not secret_matches(secret, token.secret_sha256):
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, f"unknown bootstrap token {token_id} or wrong secret",
                          "create one on the hub: fleet certs token create --site SITE")
        why = token.usable(self.now())
        if why:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, why,
                          f"create a new one on the hub: fleet certs token create --site {token.site}")
        return token

    @staticmethod
    def _csr(pem: str) -> VerifiedCsr:
        try:
            return verify_csr(pem)
        except CsrError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"certificate signing request refused: {exc}") from None

    async def request(self, token_text: str, csr_pem: str, peer: str) -> RequestRecord:
        """A node's first certificate: create (or find again) the request of this CSR."""
        self._require_signer()
        token = await self._token(token_text)
        csr = self._csr(csr_pem)
        ident = csr.identity
        if ident.site != token.site:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"bootstrap token {token.id} is for site {token.site}, the CSR names site {ident.site}",
                          f"use a token of site {ident.site}: fleet certs token create --site {ident.site}")
        name = request_name(csr.public_key_sha256)
        existing = await self.store.get_request(name)
        if existing is not None:
            return self._same(existing, ident, token.id)
        if await self.store.pending_count(token.id) >= self.max_pending_per_token:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"bootstrap token {token.id} has {self.max_pending_per_token} pending requests",
                          "approve or deny them: fleet certs requests")
        now = self.now()
        rec, created = await self.store.add_request(RequestRecord(
            name=name, site=ident.site, node=ident.node, kind="bootstrap", token_id=token.id,
            public_key_sha256=csr.public_key_sha256, csr_pem=csr_pem, state=RequestState.PENDING, created_at=now,
            peer=peer,
        ))
        if not created:
            return self._same(rec, ident, token.id)
        log.info("certificate request %s from %s for %s/%s (token %s)", name, peer, ident.site, ident.node, token.id)
        await self.audit.append_audit([AuditRecord(now, f"token:{token.id}", "cert.request",
                                                   f"node/{ident.site}/{ident.node}", {"request": name})])
        if not token.auto_approve:
            return rec
        if await self.store.has_live_certificate(ident.site, ident.node, now):
            # A stolen token must not take over a node that already has its certificate: a re-join waits for a person.
            reason = (f"waiting for approval: {ident.site}/{ident.node} already holds a valid certificate, so the "
                      f"token does not auto-approve a second one; run `fleet certs approve {name}` on the hub "
                      "if this node really lost its key")
            log.warning("%s: %s", name, reason)
            return replace(rec, reason=reason)
        return await self._approve(rec, csr, actor=f"token:{token.id} (auto-approve)")

    @staticmethod
    def _same(existing: RequestRecord, ident: certs.AgentIdentity, token_id: str) -> RequestRecord:
        if (existing.site, existing.node) != (ident.site, ident.node) or existing.token_id != token_id:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"this key was already requested as {existing.site}/{existing.node} "
                          f"(request {existing.name}); make a new key for another identity")
        return existing

    async def _approve(self, rec: RequestRecord, csr: VerifiedCsr, actor: str) -> RequestRecord:
        pem, not_after = self.signer.sign(csr)
        now = self.now()
        after, decided = await self.store.decide(rec.name, RequestState.APPROVED, actor=actor, at=now,
                                                 certificate_pem=pem, not_after=not_after)
        if after is None or not decided:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          f"certificate request {rec.name} was decided meanwhile ({after.state if after else 'gone'})",
                          "fleet certs requests")
        log.info("certificate request %s approved by %s: %s/%s until %s", rec.name, actor, rec.site, rec.node,
                 not_after.isoformat(timespec="seconds"))
        await self.audit.append_audit([AuditRecord(now, actor, "cert.approve", f"node/{rec.site}/{rec.node}",
                                                   {"request": rec.name, "not_after": not_after.isoformat()})])
        return after

    async def renew(self, peer_identity: certs.AgentIdentity | None, csr_pem: str, peer: str) -> RequestRecord:
        """A new certificate for the caller's own identity, for a new key; approved at once."""
        if peer_identity is None:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                          "renewal needs the node's current client certificate: call RenewCertificate on the "
                          "hub's agent port (mTLS), not the enrollment port")
        self._require_signer()
        csr = self._csr(csr_pem)
        if csr.identity != peer_identity:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"the certificate is for {peer_identity.site}/{peer_identity.node} but the CSR names "
                          f"{csr.identity.site}/{csr.identity.node}: a node renews only its own identity")
        name = request_name(csr.public_key_sha256)
        existing = await self.store.get_request(name)
        if existing is not None:
            return self._same(existing, csr.identity, existing.token_id)
        rec, created = await self.store.add_request(RequestRecord(
            name=name, site=csr.identity.site, node=csr.identity.node, kind="renewal", token_id="",
            public_key_sha256=csr.public_key_sha256, csr_pem=csr_pem, state=RequestState.PENDING,
            created_at=self.now(), peer=peer,
        ))
        if not created:
            return self._same(rec, csr.identity, rec.token_id)
        return await self._approve(rec, csr, actor=f"node:{csr.identity.site}/{csr.identity.node} (renewal)")

    # -- admin ------------------------------------------------------------------

    async def create_token(self, site: str, ttl: timedelta, auto_approve: bool, description: str,
                           actor: str) -> tuple[TokenRecord, str]:
        try:
            certs.check_name("site", site)
        except certs.CertError as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        if not timedelta(0) < ttl <= MAX_TOKEN_TTL:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"token ttl must be above 0 and at most {MAX_TOKEN_TTL.days} days")
        made = new_token()
        now = self.now()
        rec = await self.store.create_token(TokenRecord(
            id=made.id, site=site, secret_sha256=made.secret_sha256, auto_approve=auto_approve, created_at=now,
            expires_at=now + ttl, description=description[:253], created_by=actor[:253],
        ))
        await self.audit.append_audit([AuditRecord(now, actor, "token.create", f"site/{site}",
                                                   {"token": rec.id, "auto_approve": auto_approve,
                                                    "expires_at": rec.expires_at.isoformat()})])
        return rec, made.text

    async def revoke_token(self, token_id: str, actor: str) -> TokenRecord:
        now = self.now()
        rec = await self.store.revoke_token(token_id, actor, now)
        if rec is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no bootstrap token {token_id!r}", "fleet certs token list")
        await self.audit.append_audit([AuditRecord(now, actor, "token.revoke", f"site/{rec.site}", {"token": rec.id})])
        return rec

    async def _pending(self, name: str) -> RequestRecord:
        rec = await self.store.get_request(name)
        if rec is None:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no certificate request {name!r}", "fleet certs requests")
        if rec.state != RequestState.PENDING:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                          f"certificate request {name} is already {rec.state.value} (by {rec.decided_by})",
                          "fleet certs requests")
        return rec

    async def approve(self, name: str, actor: str) -> RequestRecord:
        self._require_signer()
        rec = await self._pending(name)
        if rec.kind == "bootstrap":
            token = await self.store.get_token(rec.token_id)
            why = "its bootstrap token is gone" if token is None else (
                f"bootstrap token {token.id} was revoked" if token.revoked_at else "")
            if why:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION,
                              f"certificate request {name} cannot be approved: {why}",
                              f"deny it (fleet certs deny {name}); the node must join again with a new token")
        csr = self._csr(rec.csr_pem)  # checked again: what is signed is what is verified now
        return await self._approve(rec, csr, actor=actor)

    async def deny(self, name: str, actor: str, reason: str) -> RequestRecord:
        rec = await self._pending(name)
        now = self.now()
        after, decided = await self.store.decide(name, RequestState.DENIED, actor=actor, at=now, reason=reason)
        if after is None or not decided:
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"certificate request {name} was decided meanwhile",
                          "fleet certs requests")
        await self.audit.append_audit([AuditRecord(now, actor, "cert.deny", f"node/{rec.site}/{rec.node}",
                                                   {"request": name, "reason": reason})])
        return after


class EnrollmentService(enroll_pb2_grpc.EnrollmentServicer):
    """Agent-facing; on the enrollment port (no client certificate) and on the agent port (mTLS)."""

    def __init__(self, enrollment: Enrollment) -> None:
        self.e = enrollment

    async def RequestCertificate(self, request, context):  # noqa: N802 - gRPC method name
        async def call():
            rec = await self.e.request(request.bootstrap_token, request.csr_pem, context.peer())
            return response(rec, self.e.signer.ca_pem)
        return await _run(context, "certificate request", call)

    async def RenewCertificate(self, request, context):  # noqa: N802
        async def call():
            rec = await self.e.renew(peer_certificate_identity(context), request.csr_pem, context.peer())
            return response(rec, self.e.signer.ca_pem)
        return await _run(context, "certificate renewal", call)


class CertificatesService(enroll_pb2_grpc.CertificatesServicer):
    """Admin-facing; the admin server's bearer-token interceptor guards every call."""

    def __init__(self, enrollment: Enrollment) -> None:
        self.e = enrollment

    async def CreateBootstrapToken(self, request, context):  # noqa: N802
        async def call():
            ttl = request.ttl.ToTimedelta() if request.HasField("ttl") else DEFAULT_TOKEN_TTL
            rec, text = await self.e.create_token(request.site, ttl, request.auto_approve, request.description,
                                                  request.actor or "admin")
            return enroll_pb2.CreateBootstrapTokenResponse(token=token_view(rec), secret=text)
        return await _run(context, "creating a bootstrap token", call)

    async def RevokeBootstrapToken(self, request, context):  # noqa: N802
        async def call():
            return token_view(await self.e.revoke_token(request.id, request.actor or "admin"))
        return await _run(context, "revoking a bootstrap token", call)

    async def ListBootstrapTokens(self, request, context):  # noqa: N802
        async def call():
            return enroll_pb2.ListBootstrapTokensResponse(
                tokens=[token_view(t) for t in await self.e.store.list_tokens(request.site)])
        return await _run(context, "listing bootstrap tokens", call)

    async def ListCertificateRequests(self, request, context):  # noqa: N802
        async def call():
            state = _STATE_FROM.get(request.state)
            recs = await self.e.store.list_requests(request.site, state)
            return enroll_pb2.ListCertificateRequestsResponse(requests=[request_view(r) for r in recs])
        return await _run(context, "listing certificate requests", call)

    async def ApproveCertificateRequest(self, request, context):  # noqa: N802
        async def call():
            return request_view(await self.e.approve(request.name, request.actor or "admin"))
        return await _run(context, "approving a certificate request", call)

    async def DenyCertificateRequest(self, request, context):  # noqa: N802
        async def call():
            return request_view(await self.e.deny(request.name, request.actor or "admin", request.reason))
        return await _run(context, "denying a certificate request", call)
