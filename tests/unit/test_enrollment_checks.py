"""The pure checks of node enrollment: CSRs (hub/security/csr.py), tokens, identities, renewal timing."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from edge_agent.enroll import make_csr, renew_at
from hub.security import certs, tokens
from hub.security.csr import CsrError, verify_csr


def csr(key=None, cn="gpu-a.fra-1", sans=None, extra=()) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    sans = [x509.UniformResourceIdentifier("spiffe://edge-fleet/site/fra-1/node/gpu-a")] if sans is None else sans
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext in extra:
        b = b.add_extension(ext, critical=True)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_the_agents_csr_is_accepted_and_names_its_identity():
    key = ec.generate_private_key(ec.SECP256R1())
    v = verify_csr(make_csr(key, "fra-1", "gpu-a"))
    assert v.identity == certs.AgentIdentity("fra-1", "gpu-a")
    assert v.public_key == key.public_key()


@pytest.mark.parametrize(("pem", "why"), [
    (lambda: csr(sans=[x509.UniformResourceIdentifier("spiffe://edge-fleet/site/fra-1/node/gpu-a"),
                       x509.DNSName("hub.example")]), "exactly one URI SAN"),
    (lambda: csr(sans=[x509.DNSName("gpu-a")]), "exactly one URI SAN"),
    (lambda: csr(sans=[]), "exactly one URI SAN"),
    (lambda: csr(sans=[x509.UniformResourceIdentifier("spiffe://edge-fleet/site/fra-1/node/gpu-a/x")]), "is not spiffe"),
    (lambda: csr(sans=[x509.UniformResourceIdentifier("spiffe://edge-fleet/site/fra-1/node/gpu-a\n")]), "is not spiffe"),
    (lambda: csr(sans=[x509.UniformResourceIdentifier("spiffe://edge-fleet/site/FRA/node/gpu-a")], cn="gpu-a.FRA"),
     "is not spiffe"),
    (lambda: csr(sans=[x509.UniformResourceIdentifier("xspiffe://edge-fleet/site/fra-1/node/gpu-a")]), "is not spiffe"),
    (lambda: csr(cn="gpu-b.fra-1"), "subject must be exactly CN=gpu-a.fra-1"),
    (lambda: csr(extra=[x509.BasicConstraints(ca=True, path_length=None)]), "only the identity URI SAN"),
    (lambda: csr(key=ec.generate_private_key(ec.SECP192R1())), "not allowed"),
    (lambda: csr(key=rsa.generate_private_key(65537, 1024)), "not allowed"),
    (lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a PEM"),
])
def test_bad_csrs_are_refused(pem, why):
    with pytest.raises(CsrError, match=why):
        verify_csr(pem())


def test_a_tampered_csr_does_not_verify():
    good = make_csr(ec.generate_private_key(ec.SECP256R1()), "fra-1", "gpu-a")
    other = make_csr(ec.generate_private_key(ec.SECP256R1()), "fra-1", "gpu-b")
    der_good = x509.load_pem_x509_csr(good.encode())
    der_other = x509.load_pem_x509_csr(other.encode())
    # gpu-b's request body with gpu-a's signature: the signature must not verify.
    body = der_other.tbs_certrequest_bytes
    sig = der_good.signature

    def der_len(n: int) -> bytes:
        return bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")

    alg = der_good.public_bytes(serialization.Encoding.DER)
    # Rebuild SEQUENCE { tbs, algorithm, BIT STRING sig } from parts of the two requests.
    algo = alg[len(alg) - len(sig) - 3 - 12: len(alg) - len(sig) - 3]  # ecdsa-with-SHA256 AlgorithmIdentifier (12 bytes)
    bits = b"\x03" + der_len(len(sig) + 1) + b"\x00" + sig
    content = body + algo + bits
    forged = b"\x30" + der_len(len(content)) + content
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(forged) + b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(CsrError, match="signature does not verify"):
        verify_csr(pem)


def test_identity_from_uri_matches_the_whole_string():
    assert certs.identity_from_uri("spiffe://edge-fleet/site/fra-1/node/gpu-a") == certs.AgentIdentity("fra-1", "gpu-a")
    for bad in ("spiffe://edge-fleet/site/fra-1/node/gpu-a/", "spiffe://edge-fleet/site/fra-1/node/", "spiffe://edge-fleet/site//node/a",
                "spiffe://other/site/fra-1/node/gpu-a", "spiffe://edge-fleet/site/fra-1/node/gpu-a?x", "spiffe://edge-fleet/site/-a/node/b"):
        assert certs.identity_from_uri(bad) is None, bad


def test_tokens_are_stored_hashed_and_parsed_strictly():
    t = tokens.new_token()
    assert t.secret not in t.secret_sha256 and len(t.secret) == 43
    assert tokens.parse_token(t.text) == (t.id, t.secret)
    assert tokens.secret_matches(t.secret, t.secret_sha256)
    assert not tokens.secret_matches(t.secret[:-1] + ("A" if t.secret[-1] != "A" else "B"), t.secret_sha256)
    for bad in ("", t.id, f"{t.id}.", f"{t.id}.short", f"XYZ.{t.secret}", f"{t.id}.{t.secret}x"):
        with pytest.raises(tokens.TokenFormatError):
            tokens.parse_token(bad)


def test_renewal_is_due_at_70_to_90_percent_of_the_lifetime():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=30)
    rng = random.Random(3)
    fractions = [(renew_at(start, end, rng) - start) / (end - start) for _ in range(500)]
    assert all(0.7 <= f <= 0.9 for f in fractions)
    assert 0.78 < sum(fractions) / len(fractions) < 0.82
    assert max(fractions) - min(fractions) > 0.15  # jittered, so a site's nodes do not renew together
