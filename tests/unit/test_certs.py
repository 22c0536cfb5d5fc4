"""The fleet PKI (hub/security/certs.py): CA, hub and agent certificates."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from hub.security import certs


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    certs.init_ca(d)
    certs.issue_hub(d, ["hub.example", "10.0.0.7"])
    certs.issue_agent(d, "fra-1", "gpu-a")
    return d


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def test_ca_is_a_ca_and_its_key_is_private(pki):
    ca = load(pki / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert ca.issuer == ca.subject
    assert stat.S_IMODE((pki / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "hub-key.pem").stat().st_mode) == 0o600


def test_hub_cert_serves_its_names(pki):
    ca, hub = load(pki / "ca.pem"), load(pki / "hub.pem")
    assert signed_by(hub, ca)
    sans = hub.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "hub.example"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.7")}
    eku = hub.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert hub.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_agent_cert_is_a_client_cert_with_its_identity(pki):
    cert_path, key_path = certs.agent_paths(pki, "fra-1", "gpu-a")
    assert cert_path.exists() and key_path.exists()
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = load(cert_path)
    assert signed_by(cert, load(pki / "ca.pem"))
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == ["spiffe://edge-fleet/site/fra-1/node/gpu-a"]


def test_identity_from_pem_round_trip(pki):
    for site, node in [("fra-1", "gpu-a"), ("par.2", "n0"), ("a", "b")]:
        path = certs.issue_agent(pki, site, node)
        ident = certs.identity_from_pem(path.read_bytes())
        assert ident == certs.AgentIdentity(site, node)


def test_identity_from_pem_none_for_non_agent_certs(pki):
    assert certs.identity_from_pem((pki / "hub.pem").read_bytes()) is None  # SANs but no spiffe URI
    assert certs.identity_from_pem((pki / "ca.pem").read_bytes()) is None   # no SAN at all
    assert certs.identity_from_pem(b"not a certificate") is None


@pytest.mark.parametrize(
    ("site", "node"),
    [("FRA", "a"), ("fra", "Node"), ("", "a"), ("fra", ""), ("-fra", "a"), ("fra-", "a"), ("fra/x", "a"),
     ("fra", "a/node/b"), ("x" * 64, "a"), ("fra", "a b"), ("fra", "../../etc")],
)
def test_bad_names_refused(pki, site, node):
    before = sorted(p.relative_to(pki) for p in pki.rglob("*"))
    with pytest.raises(certs.CertError, match="is not a valid name"):
        certs.issue_agent(pki, site, node)
    assert sorted(p.relative_to(pki) for p in pki.rglob("*")) == before  # nothing written


def test_existing_ca_not_overwritten_without_force(tmp_path):
    certs.init_ca(tmp_path)
    before = (tmp_path / "ca.pem").read_bytes(), (tmp_path / "ca-key.pem").read_bytes()
    with pytest.raises(certs.CertError, match="exists; pass --force"):
        certs.init_ca(tmp_path)
    assert ((tmp_path / "ca.pem").read_bytes(), (tmp_path / "ca-key.pem").read_bytes()) == before
    certs.init_ca(tmp_path, force=True)
    assert (tmp_path / "ca.pem").read_bytes() != before[0]
    assert isinstance(certs.load_ca(tmp_path)[1], ec.EllipticCurvePrivateKey)


def test_cert_from_another_ca_is_not_signed_by_ours(pki, tmp_path):
    certs.init_ca(tmp_path)
    other = certs.issue_agent(tmp_path, "fra-1", "gpu-a")
    assert not signed_by(load(other), load(pki / "ca.pem"))


def test_leaf_without_ca_says_what_to_run(tmp_path):
    with pytest.raises(certs.CertError, match="fleet certs init"):
        certs.issue_agent(tmp_path, "fra", "a")
    with pytest.raises(certs.CertError, match="fleet certs init"):
        certs.issue_hub(tmp_path, [])
