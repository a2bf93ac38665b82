"""TLS for the lab: one certificate authority per lab and one server certificate per node.

The library connects to the IP address it resolved itself while TLS verifies the host name
(libpq ``host=NAME hostaddr=IP``; PyMySQL wraps its socket with ``server_hostname=NAME``). A lab
started with ``tls=True`` lets tests prove that this never weakens verification, so its
certificates name a node the way Aurora's do and never by address:

- the subject's common name is the node's instance endpoint (RDS puts the instance endpoint in
  the CN);
- the subjectAltNames are the instance endpoint, the cluster endpoint and the reader endpoint.
  Aurora documents ``sslmode=verify-full`` / ``ssl-mode=VERIFY_IDENTITY`` through the cluster
  and reader endpoints, which land on any instance, so every instance's certificate must cover
  the cluster's names too. (Aurora's certificates also cover custom endpoints; the lab has none.)
- no IP address: a client that verified against the address it connected to would be rejected,
  which is exactly what the tests need to see.

Keys are ECDSA P-256 (RDS offers ECDSA certificates too, with ``rds-ca-ecc384-g1``): quick to
generate, so a node that is re-created (``rejoin``, ``add_replica``) simply gets a new one.
The CA's private key stays in the lab's directory, readable by its owner only; it exists only
to sign the nodes' certificates and is deleted with the lab.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aurora_smartdriver.lab import _procs
from aurora_smartdriver.lab._engine import node_dir
from aurora_smartdriver.lab._state import LabState, NodeState

CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=825)
CLOCK_SKEW = datetime.timedelta(hours=1)
"""Certificates start this long before now, so a slightly wrong clock does not reject them."""


@dataclass(frozen=True, slots=True)
class ServerFiles:
    """Where a node's certificate and private key (both PEM) are."""

    cert: Path
    key: Path


def ca_path(lab_dir: Path) -> Path:
    """The lab CA's certificate (what clients trust: ``sslrootcert`` / ``ssl_ca``)."""
    return lab_dir / "tls" / "ca.pem"


def _ca_key_path(ca_cert: Path) -> Path:
    return ca_cert.with_name("ca.key")


def server_files(lab: LabState, node: NodeState) -> ServerFiles:
    """A node's certificate and key, in its own directory (outside the data directory, so a
    replica cloned from the writer never carries the writer's key)."""
    directory = node_dir(lab, node) / "tls"
    return ServerFiles(cert=directory / "server.pem", key=directory / "server.key")


def server_names(lab: LabState, node: NodeState) -> list[str]:
    """The DNS names a node's certificate covers: its instance endpoint first, then the
    cluster and reader endpoints (any instance may answer for those, as on Aurora), and the
    RDS Proxy endpoints by wildcard (the lab's proxy passes TLS through to the node)."""
    return [
        lab.instance_endpoint(node.id),
        lab.cluster_endpoint,
        lab.reader_endpoint,
        f"*.{lab.proxy_domain}",
        f"*.endpoint.{lab.proxy_domain}",
    ]


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file created with ``mode`` (never briefly more open than that)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(cert_path: Path, common_name: str) -> Path:
    """Create a self-signed CA: its certificate at ``cert_path`` (0644) and its key beside it as
    ``ca.key`` (0600). Returns ``cert_path``. Also what a test uses to make a CA that is *not*
    the lab's."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aurora_smartdriver lab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(_ca_key_path(cert_path), _private_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path


def create_ca(lab: LabState) -> Path:
    """Create the lab's CA at ``lab.tls_ca`` (the lab must have been started with TLS)."""
    if lab.tls_ca is None:
        raise ValueError(f"lab {lab.name!r} was not started with TLS")
    return make_ca(Path(lab.tls_ca), f"aurora_smartdriver lab CA {lab.name}-{lab.cluster_hash}")


def issue(lab: LabState, node: NodeState) -> ServerFiles:
    """Create a node's key and certificate, signed by the lab's CA, in the node's directory.

    The key is mode 0600 and owned by the account the server runs as (``postgres`` when the
    lab runs as root), which is what PostgreSQL demands of ``ssl_key_file``.
    """
    if lab.tls_ca is None:
        raise ValueError(f"lab {lab.name!r} was not started with TLS")
    ca_cert_path = Path(lab.tls_ca)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
    ca_key = serialization.load_pem_private_key(_ca_key_path(ca_cert_path).read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{_ca_key_path(ca_cert_path)} is not the lab's (ECDSA) CA key")
    names = server_names(lab, node)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aurora_smartdriver lab"),
                    x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = server_files(lab, node)
    files.cert.parent.mkdir(parents=True, exist_ok=True)
    _write(files.key, _private_pem(key), 0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _procs.chown_tree(files.cert.parent, lab.server_user)
    return files
