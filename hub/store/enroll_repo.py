"""Repository of node enrollment: bootstrap tokens and certificate requests.

Plain records in and out, as in `repo.py`. Decisions on a request are
conditional updates (only a PENDING request can be approved or denied), so two
admins, or an admin and a hub replica, cannot both decide it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from hub.store.db import Database, runs_to_completion
from hub.store.enroll_tables import BootstrapTokenRow, CertRequestRow
from hub.store.repo import utc


class RequestState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"

    @classmethod
    def decided(cls) -> frozenset[RequestState]:
        return frozenset({cls.APPROVED, cls.DENIED})


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: str
    site: str
    secret_sha256: str
    auto_approve: bool
    created_at: datetime
    expires_at: datetime
    description: str = ""
    created_by: str = ""
    revoked_at: datetime | None = None
    revoked_by: str = ""

    def usable(self, now: datetime) -> str:
        """"" when the token may be used now, else why not."""
        if self.revoked_at is not None:
            return f"bootstrap token {self.id} was revoked"
        if now >= self.expires_at:
            return f"bootstrap token {self.id} expired at {self.expires_at.isoformat(timespec='seconds')}"
        return ""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    name: str
    site: str
    node: str
    kind: str
    token_id: str
    public_key_sha256: str
    csr_pem: str
    state: RequestState
    created_at: datetime
    decided_at: datetime | None = None
    decided_by: str = ""
    reason: str = ""
    certificate_pem: str = ""
    not_after: datetime | None = None
    peer: str = ""


def _token(r: BootstrapTokenRow) -> TokenRecord:
    return TokenRecord(
        id=r.id, site=r.site, secret_sha256=r.secret_sha256, auto_approve=r.auto_approve,
        created_at=utc(r.created_at), expires_at=utc(r.expires_at), description=r.description,
        created_by=r.created_by, revoked_at=utc(r.revoked_at) if r.revoked_at else None, revoked_by=r.revoked_by,
    )


def _request(r: CertRequestRow) -> RequestRecord:
    return RequestRecord(
        name=r.name, site=r.site, node=r.node, kind=r.kind, token_id=r.token_id,
        public_key_sha256=r.public_key_sha256, csr_pem=r.csr_pem, state=RequestState(r.state),
        created_at=utc(r.created_at), decided_at=utc(r.decided_at) if r.decided_at else None,
        decided_by=r.decided_by, reason=r.reason, certificate_pem=r.certificate_pem,
        not_after=utc(r.not_after) if r.not_after else None, peer=r.peer,
    )


@runs_to_completion
class EnrollStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- tokens -----------------------------------------------------------------

    async def create_token(self, t: TokenRecord) -> TokenRecord:
        async with self.db.sessions.begin() as s:
            s.add(BootstrapTokenRow(
                id=t.id, site=t.site, secret_sha256=t.secret_sha256, auto_approve=t.auto_approve,
                description=t.description, created_by=t.created_by, created_at=t.created_at,
                expires_at=t.expires_at, revoked_at=None, revoked_by="",
            ))
        return t

    async def get_token(self, token_id: str) -> TokenRecord | None:
        async with self.db.sessions() as s:
            row = await s.get(BootstrapTokenRow, token_id)
            return _token(row) if row else None

    async def list_tokens(self, site: str = "") -> list[TokenRecord]:
        q = select(BootstrapTokenRow).order_by(BootstrapTokenRow.created_at, BootstrapTokenRow.id)
        if site:
            q = q.where(BootstrapTokenRow.site == site)
        async with self.db.sessions() as s:
            return [_token(r) for r in (await s.execute(q)).scalars()]

    async def revoke_token(self, token_id: str, actor: str, at: datetime) -> TokenRecord | None:
        """Revoke (idempotent: a revoked token keeps its first revocation); None if unknown."""
        async with self.db.sessions.begin() as s:
            await s.execute(
                update(BootstrapTokenRow)
                .where(BootstrapTokenRow.id == token_id, BootstrapTokenRow.revoked_at.is_(None))
                .values(revoked_at=at, revoked_by=actor)
            )
            row = await s.get(BootstrapTokenRow, token_id)
            return _token(row) if row else None

    # -- requests ---------------------------------------------------------------

    async def get_request(self, name: str) -> RequestRecord | None:
        async with self.db.sessions() as s:
            row = await s.get(CertRequestRow, name)
            return _request(row) if row else None

    async def add_request(self, r: RequestRecord) -> tuple[RequestRecord, bool]:
        """Insert a request; (the stored one, True) or (the one already there by that name, False)."""
        try:
            async with self.db.sessions.begin() as s:
                s.add(CertRequestRow(
                    name=r.name, site=r.site, node=r.node, kind=r.kind, token_id=r.token_id,
                    public_key_sha256=r.public_key_sha256, csr_pem=r.csr_pem, state=r.state.value,
                    created_at=r.created_at, decided_at=r.decided_at, decided_by=r.decided_by, reason=r.reason,
                    certificate_pem=r.certificate_pem, not_after=r.not_after, peer=r.peer[:253],
                ))
            return r, True
        except IntegrityError:
            existing = await self.get_request(r.name)
            if existing is None:  # pragma: no cover - a race with a delete we never do
                raise
            return existing, False

    async def list_requests(self, site: str = "", state: RequestState | None = None) -> list[RequestRecord]:
        q = select(CertRequestRow).order_by(CertRequestRow.created_at, CertRequestRow.name)
        if site:
            q = q.where(CertRequestRow.site == site)
        if state is not None:
            q = q.where(CertRequestRow.state == state.value)
        async with self.db.sessions() as s:
            return [_request(r) for r in (await s.execute(q)).scalars()]

    async def decide(
        self, name: str, state: RequestState, *, actor: str, at: datetime, reason: str = "",
        certificate_pem: str = "", not_after: datetime | None = None,
    ) -> tuple[RequestRecord | None, bool]:
        """Approve or deny a PENDING request: (the request afterwards, whether this call decided it)."""
        assert state in RequestState.decided()
        async with self.db.sessions.begin() as s:
            res = await s.execute(
                update(CertRequestRow)
                .where(CertRequestRow.name == name, CertRequestRow.state == RequestState.PENDING.value)
                .values(state=state.value, decided_at=at, decided_by=actor, reason=reason,
                        certificate_pem=certificate_pem, not_after=not_after)
            )
            row = await s.get(CertRequestRow, name)
            return (_request(row) if row else None), res.rowcount == 1

    async def pending_count(self, token_id: str) -> int:
        async with self.db.sessions() as s:
            return (await s.execute(
                select(func.count()).select_from(CertRequestRow).where(
                    CertRequestRow.token_id == token_id, CertRequestRow.state == RequestState.PENDING.value)
            )).scalar_one()

    async def has_live_certificate(self, site: str, node: str, now: datetime) -> bool:
        """Whether this node identity holds a certificate signed here that has not expired."""
        async with self.db.sessions() as s:
            n = (await s.execute(
                select(func.count()).select_from(CertRequestRow).where(
                    CertRequestRow.site == site, CertRequestRow.node == node,
                    CertRequestRow.state == RequestState.APPROVED.value, CertRequestRow.not_after > now)
            )).scalar_one()
            return n > 0
