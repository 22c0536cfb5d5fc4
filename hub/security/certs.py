"""Minting the fleet's private PKI with the `cryptography` package.

Layout of a certificate directory (what `fleet certs` writes):

    ca.pem, ca-key.pem              the fleet CA (ca-key.pem: only where certificates are signed)
    hub.pem, hub-key.pem            the hub's serving certificate
    agents/<site>/<node>.pem, ...-key.pem   client certificates minted here (`fleet certs agent`,
                                    the demo); nodes that join with a bootstrap token make
                                    their own key instead and the hub signs their CSR
                                    (hub/security/enrollment.py)

An agent certificate names its node in exactly one URI SAN,
`spiffe://edge-fleet/site/<site>/node/<node>`; the hub reads the identity from
there (the whole URI must match, both names valid) and refuses an agent that
claims another site or node.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "edge-fleet"
_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
_IDENTITY_URI = re.compile(rf"spiffe://{TRUST_DOMAIN}/site/([^/]+)/node/([^/]+)")


class CertError(Exception):
    """A certificate cannot be made or read; the message says what to do."""


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    site: str
    node: str

    @property
    def uri(self) -> str:
        return f"spiffe://{TRUST_DOMAIN}/site/{self.site}/node/{self.node}"


def check_name(kind: str, value: str) -> str:
    if not _NAME.fullmatch(value):  # whole string: "fra-1\n" is not a name
        raise CertError(
            f"{kind} name {value!r} is not a valid name: use lower-case letters, digits, '-' and '.', "
            "1-63 characters, starting and ending with a letter or digit"
        )
    return value


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca-key.pem").read_bytes(), password=None)
    except FileNotFoundError:
        raise CertError(f"no fleet CA in {directory}: run `fleet certs init --dir {directory}` first") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{directory / 'ca-key.pem'} is not an EC private key")
    return cert, key


def init_ca(directory: Path, *, days: int = 3650, force: bool = False) -> Path:
    """Create the fleet CA; refuses to overwrite one unless `force`."""
    if (directory / "ca.pem").exists() and not force:
        raise CertError(f"{directory / 'ca.pem'} exists; pass --force to replace the CA (every certificate then needs reissuing)")
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-fleet"), x509.NameAttribute(NameOID.COMMON_NAME, "edge-fleet CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / "ca-key.pem", _pem_key(key), private=True)
    _write(directory / "ca.pem", _pem_cert(cert))
    return directory / "ca.pem"


def _build_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: ExtendedKeyUsageOID,
    lifetime: dt.timedelta,
) -> x509.Certificate:
    now = _now()
    # Back-dated a little for clock skew, but never by more than a tenth of a short lifetime.
    skew = min(dt.timedelta(minutes=5), lifetime / 10)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-fleet"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - skew)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _leaf(
    directory: Path,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: ExtendedKeyUsageOID,
    days: int,
) -> tuple[bytes, bytes]:
    ca_cert, ca_key = load_ca(directory)
    key = _key()
    cert = _build_leaf(ca_cert, ca_key, key.public_key(), common_name, sans, usage, dt.timedelta(days=days))
    return _pem_cert(cert), _pem_key(key)


def sign_agent(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    ident: AgentIdentity,
    public_key,
    lifetime: dt.timedelta,
) -> x509.Certificate:
    """A client certificate for a key the node made itself, naming exactly `ident`.

    Only the identity the caller verified goes in (hub/security/csr.py); nothing
    else from the node's request is copied.
    """
    check_name("site", ident.site)
    check_name("node", ident.node)
    return _build_leaf(
        ca_cert, ca_key, public_key, f"{ident.node}.{ident.site}",
        [x509.UniformResourceIdentifier(ident.uri)], ExtendedKeyUsageOID.CLIENT_AUTH, lifetime,
    )


def issue_hub(directory: Path, hosts: list[str], *, days: int = 825) -> Path:
    """The hub's serving certificate, valid for the given DNS names and IPs."""
    sans: list[x509.GeneralName] = []
    for h in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert, key = _leaf(directory, "fleet-hub", sans, ExtendedKeyUsageOID.SERVER_AUTH, days)
    _write(directory / "hub-key.pem", key, private=True)
    _write(directory / "hub.pem", cert)
    return directory / "hub.pem"


def agent_paths(directory: Path, site: str, node: str) -> tuple[Path, Path]:
    base = directory / "agents" / site
    return base / f"{node}.pem", base / f"{node}-key.pem"


def issue_agent(directory: Path, site: str, node: str, *, days: int = 365) -> Path:
    """A client certificate whose identity is exactly (site, node)."""
    ident = AgentIdentity(check_name("site", site), check_name("node", node))
    cert, key = _leaf(
        directory, f"{node}.{site}", [x509.UniformResourceIdentifier(ident.uri)], ExtendedKeyUsageOID.CLIENT_AUTH, days
    )
    cert_path, key_path = agent_paths(directory, site, node)
    _write(key_path, key, private=True)
    _write(cert_path, cert)
    return cert_path


def identity_from_uri(uri: str) -> AgentIdentity | None:
    """The identity a SPIFFE URI names: the whole string must match, with valid names."""
    m = _IDENTITY_URI.fullmatch(uri)
    if m is None or not _NAME.fullmatch(m.group(1)) or not _NAME.fullmatch(m.group(2)):
        return None
    return AgentIdentity(m.group(1), m.group(2))


def identity_from_pem(pem: bytes) -> AgentIdentity | None:
    """The (site, node) an agent certificate names, or None if it names none.

    A certificate naming two fleet identities names none (our CA never signs one).
    """
    try:
        cert = x509.load_pem_x509_certificate(pem)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    prefix = f"spiffe://{TRUST_DOMAIN}/"
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(prefix)]
    if len(uris) != 1:
        return None
    return identity_from_uri(uris[0])


def pem_cert(cert: x509.Certificate) -> bytes:
    return _pem_cert(cert)
