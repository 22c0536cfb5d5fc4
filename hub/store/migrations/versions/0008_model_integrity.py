"""Model versions in stored revisions state how agents check their weights.

A Model version now carries its weights ``digest`` or states ``integrity: none``
(hub/policy/schema.py), and a bundle without either is refused. Revisions stored before
this migration were applied when agents checked nothing, so each of their Model versions
gets ``integrity: none`` (and ``digest: null``, as the canonical JSON writes it): they read
back, diff and roll back exactly as before, and a rollback to one serves unverified
weights, as it did. The revision's digest is taken again over the rewritten JSON, so it
still names the stored bundle. Downgrade removes the two keys again.

Revision ID: 0008
Revises: 0005
Create Date: 2026-11-30
"""

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0005"
branch_labels = None
depends_on = None

_revisions = sa.table("revisions", sa.column("number", sa.Integer()), sa.column("bundle", sa.Text()),
                      sa.column("digest", sa.String(64)))


def _canonical(items) -> str:
    return json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _rewrite(change) -> None:
    conn = op.get_bind()
    for number, text in conn.execute(sa.select(_revisions.c.number, _revisions.c.bundle)).all():
        items = json.loads(text)
        touched = False
        for item in items:
            if isinstance(item, dict) and item.get("kind") == "Model":
                for version in (item.get("spec") or {}).get("versions") or []:
                    touched |= change(version)
        if touched:
            new = _canonical(items)
            conn.execute(sa.update(_revisions).where(_revisions.c.number == number)
                         .values(bundle=new, digest=hashlib.sha256(new.encode()).hexdigest()))


def _add(version: dict) -> bool:
    if "integrity" in version or "digest" in version:
        return False
    version["integrity"] = "none"
    version["digest"] = None
    return True


def _remove(version: dict) -> bool:
    found = "integrity" in version or "digest" in version
    version.pop("integrity", None)
    version.pop("digest", None)
    return found


def upgrade() -> None:
    _rewrite(_add)


def downgrade() -> None:
    _rewrite(_remove)
