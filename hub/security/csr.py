"""Checking a node's certificate signing request before anything is signed.

Pure functions: a CSR is accepted only if its signature is valid (the node
holds the key), its key is of an allowed type and size, its subject is exactly
CN=<node>.<site>, and it asks for exactly one thing besides: one URI SAN
naming the fleet identity, matched as a whole string. No DNS, IP or e-mail
names, no other extensions (a CA flag, key usages): the hub signs only the
identity verified here (hub/security/certs.py `sign_agent`), never fields
copied from the request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from hub.security.certs import AgentIdentity, identity_from_uri

MAX_CSR_BYTES = 16 * 1024
_CURVES = (ec.SECP256R1, ec.SECP384R1)
_RSA_BITS = (2048, 8192)


class CsrError(ValueError):
    """The CSR is refused; the message says why."""


@dataclass(frozen=True, slots=True)
class VerifiedCsr:
    identity: AgentIdentity
    public_key: object
    public_key_sha256: str
    """SHA-256 of the public key's DER (SubjectPublicKeyInfo): names the request."""


def public_key_sha256(public_key) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _check_key(key) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _CURVES):
            raise CsrError(f"EC key on curve {key.curve.name} is not allowed: use P-256 or P-384")
        return
    if isinstance(key, rsa.RSAPublicKey):
        if not _RSA_BITS[0] <= key.key_size <= _RSA_BITS[1]:
            raise CsrError(f"RSA key of {key.key_size} bits is not allowed: use {_RSA_BITS[0]}-{_RSA_BITS[1]} bits")
        return
    raise CsrError(f"{type(key).__name__} keys are not allowed: use an EC P-256/P-384 or RSA key")


def verify_csr(pem: str | bytes) -> VerifiedCsr:
    """The identity and key of a well-formed CSR, or CsrError."""
    data = pem.encode() if isinstance(pem, str) else pem
    if len(data) > MAX_CSR_BYTES:
        raise CsrError(f"CSR larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise CsrError("not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise CsrError("CSR signature does not verify: the request was not made with its key")
    key = csr.public_key()
    _check_key(key)
    names: list[x509.GeneralName] = []
    for ext in csr.extensions:
        if not isinstance(ext.value, x509.SubjectAlternativeName):
            raise CsrError(f"CSR asks for extension {ext.oid.dotted_string} ({ext.oid._name}): only the identity "
                           "URI SAN is allowed")
        names.extend(ext.value)
    uris = [n for n in names if isinstance(n, x509.UniformResourceIdentifier)]
    if len(names) != 1 or len(uris) != 1:
        raise CsrError(f"CSR must name exactly one URI SAN (the node's identity), it names {len(names)} "
                       f"subject alternative names")
    ident = identity_from_uri(uris[0].value)
    if ident is None:
        raise CsrError(f"CSR SAN {uris[0].value!r} is not spiffe://edge-fleet/site/<site>/node/<node> with valid names")
    attrs = list(csr.subject)
    want = f"{ident.node}.{ident.site}"
    if len(attrs) != 1 or attrs[0].oid != NameOID.COMMON_NAME or attrs[0].value != want:
        raise CsrError(f"CSR subject must be exactly CN={want}, got {csr.subject.rfc4514_string()!r}")
    return VerifiedCsr(ident, key, public_key_sha256(key))
