"""Connecting to an IP address never weakens TLS verification.

The library resolves names itself and connects to the address it got, while TLS verifies the
name (libpq ``host=NAME hostaddr=IP``; PyMySQL wraps its own socket with
``server_hostname=NAME``). A TLS lab's certificates name the cluster's endpoints but no
address, so these tests tell a client that verifies the name from one that verifies (or skips)
the address: the right name works and is encrypted, a wrong name is rejected even at the right
address, and a plain driver verifying against the address itself fails.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from cryptography import x509

from aurora_smartdriver import dsn
from aurora_smartdriver.drivers import DriverAdapter, adapter_for
from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.lab import Lab, NodeInfo, _tls


@pytest.fixture(scope="module", params=["postgresql", "mariadb"])
def tls_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A private TLS lab per engine, one writer and one reader, for this module's tests."""
    lab = Lab.start(request.param, replicas=1, name="tlslab", tls=True)
    try:
        yield lab
    finally:
        lab.down()


def _spec(lab: Lab, text: str | None = None) -> ConnectionSpec:
    return dsn.parse(text if text is not None else lab.dsn)


def _adapter(spec: ConnectionSpec) -> DriverAdapter:
    return adapter_for(spec.engine)


def _connect(lab: Lab, host: str, node: NodeInfo) -> Any:
    """A connection through the library's adapter: to ``node``'s address, verifying ``host``."""
    spec = _spec(lab)
    return _adapter(spec).connect(spec, host, node.port, address=node.address, timeout=5)


def _encrypted(lab: Lab, conn: Any) -> bool:
    """Whether the server says this session is TLS-encrypted."""
    spec = _spec(lab)
    if spec.engine == "postgresql":
        result = _adapter(spec).query(
            conn, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        return result.rows == ((True,),)
    [(_name, cipher)] = _adapter(spec).query(conn, "SHOW SESSION STATUS LIKE 'Ssl_cipher'").rows
    return bool(cipher)


def _rejected(lab: Lab, host: str, node: NodeInfo) -> str:
    """The adapter's error connecting to ``node``'s address while verifying ``host``."""
    spec = _spec(lab)
    with pytest.raises(_adapter(spec).Error) as caught:
        _connect(lab, host, node).close()
    return str(caught.value)


def test_the_dsn_asks_for_verification(tls_lab: Lab) -> None:
    ca = tls_lab.state().tls_ca
    assert ca is not None and Path(ca).is_file()
    params = _spec(tls_lab).driver_params
    if _spec(tls_lab).engine == "postgresql":
        assert params["sslmode"] == "verify-full"
        assert params["sslrootcert"] == ca
    else:
        assert params["ssl_ca"] == ca
        assert params["ssl_verify_identity"] is True


def test_certificates_name_the_endpoints_and_no_address(tls_lab: Lab) -> None:
    state = tls_lab.state()
    for node in state.nodes:
        cert = x509.load_pem_x509_certificate(_tls.server_files(state, node).cert.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [
            state.instance_endpoint(node.id),
            state.cluster_endpoint,
            state.reader_endpoint,
            f"*.{state.proxy_domain}",  # RDS Proxy's wildcard certificates
            f"*.endpoint.{state.proxy_domain}",
        ]
        assert names.get_values_for_type(x509.IPAddress) == []
        for name in names.get_values_for_type(x509.DNSName):
            with pytest.raises(ValueError):
                ipaddress.ip_address(name)


def test_instance_name_at_the_node_address_verifies_and_encrypts(tls_lab: Lab) -> None:
    for node in tls_lab.nodes:
        conn = _connect(tls_lab, node.host, node)
        try:
            assert _encrypted(tls_lab, conn)
        finally:
            conn.close()


def test_cluster_and_reader_endpoints_verify_at_their_nodes(tls_lab: Lab) -> None:
    state = tls_lab.state()
    writer, [reader] = tls_lab.writer, tls_lab.readers
    for host, node in [(state.cluster_endpoint, writer), (state.reader_endpoint, reader)]:
        conn = _connect(tls_lab, host, node)
        try:
            assert _encrypted(tls_lab, conn)
        finally:
            conn.close()


def test_rds_proxy_endpoints_verify_through_the_lab_proxy(tls_lab: Lab) -> None:
    """The library connects to a proxy endpoint's address, verifying the proxy's name."""
    import aurora_smartdriver as asd

    tls_lab.add_rds_proxy_endpoint("ro", "read_only")
    for text, role in [
        (tls_lab.rds_proxy_dsn(), "writer"),
        (tls_lab.rds_proxy_dsn("ro"), "reader"),
    ]:
        conn = asd.connect(text + "&cluster_id=tls-proxy-" + role, role=role)
        try:
            assert _encrypted(tls_lab, conn._raw)
        finally:
            conn.close()


def test_a_name_not_in_the_certificate_is_rejected_at_the_right_address(tls_lab: Lab) -> None:
    message = _rejected(tls_lab, "other.example.test", tls_lab.writer)
    assert "certificate" in message
    assert "other.example.test" in message


def test_another_instance_name_is_rejected(tls_lab: Lab) -> None:
    # The reader's certificate does not cover the writer's instance endpoint: an address that
    # belongs to another instance than the name (a wrong or stale answer) is caught by TLS.
    writer, [reader] = tls_lab.writer, tls_lab.readers
    message = _rejected(tls_lab, writer.host, reader)
    assert "certificate" in message
    assert writer.host in message


def test_a_plain_driver_verifying_the_address_itself_fails(tls_lab: Lab) -> None:
    # Why the name must be kept: the certificate names no address, so a driver told to
    # connect to the IP and verify fails, however right the IP is.
    state = tls_lab.state()
    node = tls_lab.writer
    kwargs = tls_lab.connect_kwargs(node)
    if state.engine == "postgresql":
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(
                **kwargs, sslmode="verify-full", sslrootcert=state.tls_ca, connect_timeout=5
            ).close()
        assert "does not match host name" in str(caught.value)
    else:
        with pytest.raises(pymysql.OperationalError) as caught:
            pymysql.connect(
                **kwargs,
                ssl_ca=state.tls_ca,
                ssl_verify_identity=True,
                connect_timeout=5,
                read_timeout=5,
                write_timeout=5,
            ).close()
        assert "certificate verify failed" in str(caught.value)
    assert node.address in str(caught.value)


def _topology(dsn_text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aurora_smartdriver", "topology", dsn_text, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_topology_through_the_tls_dsn(tls_lab: Lab) -> None:
    done = _topology(tls_lab.dsn)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["writer"]["id"] == tls_lab.writer.id
    assert [r["id"] for r in doc["readers"]] == [r.id for r in tls_lab.readers]


def test_topology_verifies_the_certificate(tls_lab: Lab, tmp_path: Path) -> None:
    # The same DSN trusting another CA fails: the monitor's connections verify too.
    ca = tls_lab.state().tls_ca
    assert ca is not None
    foreign = _tls.make_ca(tmp_path / "foreign-ca.pem", "not the lab's CA")
    done = _topology(tls_lab.dsn.replace(ca, str(foreign)))
    assert done.returncode == 1
    assert "certificate verify failed" in done.stderr


def test_an_added_replica_gets_a_certificate(tls_lab: Lab) -> None:
    # After the topology tests: the lab's heartbeat may list a removed node for about a beat.
    node = tls_lab.add_replica()
    try:
        conn = _connect(tls_lab, node.host, node)
        try:
            assert _encrypted(tls_lab, conn)
        finally:
            conn.close()
    finally:
        tls_lab.remove(node)


def test_a_rejoined_former_writer_serves_a_verified_certificate(tls_lab: Lab) -> None:
    # Last in the module: it changes the writer. rejoin() re-creates the node's directory,
    # certificate included; the new writer's certificate still covers the cluster endpoint.
    old = tls_lab.writer
    report = tls_lab.failover()
    tls_lab.restore()
    state = tls_lab.state()
    for host, node in [
        (old.host, tls_lab.node(old.id)),
        (state.cluster_endpoint, tls_lab.node(report.new_writer)),
    ]:
        conn = _connect(tls_lab, host, node)
        try:
            assert _encrypted(tls_lab, conn)
        finally:
            conn.close()
