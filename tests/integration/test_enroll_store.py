"""Enrollment decisions on the real store (SQLite and PostgreSQL): tokens, requests, approvals, renewals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.enroll import make_csr
from hub.security import certs
from hub.security.enrollment import Enrollment, Refused, Signer
from hub.store import Database, Store
from hub.store.enroll_repo import EnrollStore, RequestState


class Clock:
    def __init__(self) -> None:
        self.t = datetime.now(UTC)  # the signer dates certificates by the real clock

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture
async def enrollment(db_url, tmp_path):
    d = tmp_path / "certs"
    certs.init_ca(d)
    db = Database(db_url)
    db.migrate()
    clock = Clock()
    try:
        yield Enrollment(EnrollStore(db), Store(db), Signer(d, timedelta(hours=1)), now=clock), clock
    finally:
        await db.close()


def csr(site: str, node: str) -> str:
    return make_csr(ec.generate_private_key(ec.SECP256R1()), site, node)


async def refused(code: grpc.StatusCode, coro) -> Refused:
    with pytest.raises(Refused) as r:
        await coro
    assert r.value.code == code, r.value.message
    return r.value


async def test_request_waits_for_approval_and_is_found_again_by_its_key(enrollment):
    e, _ = enrollment
    token, text = await e.create_token("fra-1", timedelta(hours=1), False, "", "ops")
    pem = csr("fra-1", "gpu-a")
    r = await e.request(text, pem, "ipv4:10.0.0.1:5000")
    assert r.state == RequestState.PENDING and r.token_id == token.id
    assert (await e.request(text, pem, "ipv4:10.0.0.1:5001")).name == r.name  # polled, not duplicated
    assert len(await e.store.list_requests("fra-1")) == 1
    approved = await e.approve(r.name, "ops")
    assert approved.state == RequestState.APPROVED
    assert certs.identity_from_pem(approved.certificate_pem.encode()) == certs.AgentIdentity("fra-1", "gpu-a")
    again = await e.request(text, pem, "ipv4:10.0.0.1:5002")
    assert again.certificate_pem == approved.certificate_pem
    await refused(grpc.StatusCode.FAILED_PRECONDITION, e.approve(r.name, "ops"))  # decided once
    await refused(grpc.StatusCode.FAILED_PRECONDITION, e.deny(r.name, "ops", "late"))
    # The stored token is its hash only.
    stored = await e.store.get_token(token.id)
    assert stored is not None and text.split(".")[1] not in stored.secret_sha256


async def test_tokens_are_checked_site_expiry_revocation(enrollment):
    e, clock = enrollment
    token, text = await e.create_token("fra-1", timedelta(hours=1), True, "", "ops")
    r = await refused(grpc.StatusCode.PERMISSION_DENIED, e.request(text, csr("par-1", "gpu-a"), "p"))
    assert "is for site fra-1" in r.message and "--site par-1" in r.next
    await refused(grpc.StatusCode.UNAUTHENTICATED, e.request(text[:-1] + ("A" if text[-1] != "A" else "B"),
                                                             csr("fra-1", "gpu-a"), "p"))
    await refused(grpc.StatusCode.UNAUTHENTICATED, e.request("not-a-token", csr("fra-1", "gpu-a"), "p"))
    await refused(grpc.StatusCode.INVALID_ARGUMENT, e.request(text, "garbage", "p"))
    clock.t += timedelta(hours=2)
    r = await refused(grpc.StatusCode.UNAUTHENTICATED, e.request(text, csr("fra-1", "gpu-a"), "p"))
    assert "expired" in r.message
    clock.t -= timedelta(hours=2)
    await e.revoke_token(token.id, "ops")
    r = await refused(grpc.StatusCode.UNAUTHENTICATED, e.request(text, csr("fra-1", "gpu-a"), "p"))
    assert "revoked" in r.message
    assert await e.store.list_requests() == []
    await refused(grpc.StatusCode.NOT_FOUND, e.revoke_token("000000000000", "ops"))


async def test_auto_approve_only_first_joins_and_revocation_blocks_pending_approval(enrollment):
    e, _ = enrollment
    _, auto = await e.create_token("fra-1", timedelta(hours=1), True, "", "ops")
    first = await e.request(auto, csr("fra-1", "gpu-a"), "p")
    assert first.state == RequestState.APPROVED and "auto-approve" in first.decided_by
    # Someone else with the token asks for the same node: it waits for a person.
    second = await e.request(auto, csr("fra-1", "gpu-a"), "p")
    assert second.state == RequestState.PENDING and "already holds a valid certificate" in second.reason
    manual, text = await e.create_token("fra-1", timedelta(hours=1), False, "", "ops")
    pending = await e.request(text, csr("fra-1", "gpu-b"), "p")
    await e.revoke_token(manual.id, "ops")
    r = await refused(grpc.StatusCode.FAILED_PRECONDITION, e.approve(pending.name, "ops"))
    assert "revoked" in r.message and f"fleet certs deny {pending.name}" in r.next
    denied = await e.deny(pending.name, "ops", "revoked token")
    assert denied.state == RequestState.DENIED
    audit = [a.action for a in await e.audit.list_audit()]
    assert audit.count("cert.approve") == 1 and "token.revoke" in audit and "cert.deny" in audit


async def test_renewal_names_only_the_callers_own_identity(enrollment):
    e, _ = enrollment
    me = certs.AgentIdentity("fra-1", "gpu-a")
    await refused(grpc.StatusCode.UNAUTHENTICATED, e.renew(None, csr("fra-1", "gpu-a"), "p"))
    await refused(grpc.StatusCode.PERMISSION_DENIED, e.renew(me, csr("fra-1", "gpu-b"), "p"))
    await refused(grpc.StatusCode.PERMISSION_DENIED, e.renew(me, csr("par-1", "gpu-a"), "p"))
    pem = csr("fra-1", "gpu-a")
    r = await e.renew(me, pem, "p")
    assert r.state == RequestState.APPROVED and r.kind == "renewal"
    assert (await e.renew(me, pem, "p")).certificate_pem == r.certificate_pem  # idempotent per key
    # A key renewed as gpu-a cannot be enrolled as anything through a token.
    _, text = await e.create_token("fra-1", timedelta(hours=1), True, "", "ops")
    await refused(grpc.StatusCode.PERMISSION_DENIED, e.request(text, pem, "p"))


async def test_without_the_ca_key_nothing_is_signed(db_url, tmp_path):
    d = tmp_path / "certs"
    certs.init_ca(d)
    (d / "ca-key.pem").unlink()
    db = Database(db_url)
    db.migrate()
    try:
        e = Enrollment(EnrollStore(db), Store(db), Signer(d, timedelta(hours=1)))
        _, text = await e.create_token("fra-1", timedelta(hours=1), True, "", "ops")
        r = await refused(grpc.StatusCode.FAILED_PRECONDITION, e.request(text, csr("fra-1", "gpu-a"), "p"))
        assert "no CA key" in r.message
    finally:
        await db.close()
