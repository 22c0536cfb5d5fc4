"""Bootstrap tokens: what a node presents, once, to ask for its first certificate.

A token is "<id>.<secret>": the id names it in listings and `fleet certs token
revoke ID`; the secret is 256 random bits. The hub stores only the SHA-256 of
the secret (a fast hash is enough for a uniformly random 256-bit secret: there
is nothing to guess from it) and compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

_ID = re.compile(r"[0-9a-f]{12}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")


class TokenFormatError(ValueError):
    """Not a bootstrap token at all (wrong shape)."""


@dataclass(frozen=True, slots=True)
class NewToken:
    id: str
    secret: str
    secret_sha256: str

    @property
    def text(self) -> str:
        """What the node is given: shown once, never stored."""
        return f"{self.id}.{self.secret}"


def new_token() -> NewToken:
    secret = secrets.token_urlsafe(32)  # 43 characters, 256 bits
    return NewToken(secrets.token_hex(6), secret, hash_secret(secret))


def parse_token(text: str) -> tuple[str, str]:
    """(id, secret) of a token's text; TokenFormatError if it has not the shape of one."""
    token_id, dot, secret = text.strip().partition(".")
    if not dot or not _ID.fullmatch(token_id) or not _SECRET.fullmatch(secret):
        raise TokenFormatError("not a bootstrap token: expected '<12 hex digits>.<43 characters>' "
                               "as printed by `fleet certs token create`")
    return token_id, secret


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_sha256: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_sha256)
