"""The rds-api source: bounded waits on AWS (moto and a silent endpoint), and its writer
confirmed by asking the member RDS names (moto for the control plane, the lab for the nodes)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from aurora_smartdriver import dsn
from aurora_smartdriver.discovery import DiscoveryError, SourceContext, Unreachable, source_for
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.monitor import ClusterMonitor

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in _AWS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP listener that completes the handshake and never answers (a stalled API)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def test_rds_api_gives_up_on_a_stalled_api_within_its_bounds(
    aws_env: None, silent_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3's defaults (60 s reads, several retries) would hold the monitor for minutes."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_RDS", silent_endpoint)
    spec = dsn.parse(
        "postgresql://app@10.1.2.3/app?topology_source=rds-api&cluster_id=orders"
        "&region=us-east-1&connect_timeout=1s"
    )
    outcome: list[BaseException | None] = []

    def fetch() -> None:
        try:
            source_for("rds-api").fetch(None, SourceContext.for_spec(spec))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(30)  # generous: connect_timeout=1s and two attempts take a few seconds
    took = time.monotonic() - started
    assert not worker.is_alive(), f"still waiting on the stalled API after {took:.0f}s"
    assert len(outcome) == 1 and isinstance(outcome[0], DiscoveryError)
    assert isinstance(outcome[0], Unreachable)  # no answer, not a wrong one
    assert "orders" in str(outcome[0])


def _lab_rds(lab: Lab, writer: str) -> Any:
    """A moto RDS cluster whose members are the lab's nodes, ``writer`` its writer."""
    client = boto3.client("rds", region_name="us-east-1")
    client.create_db_cluster(
        DBClusterIdentifier="lab",
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="not-a-secret-123",
    )
    # moto makes the first instance created the writer.
    for node in sorted(lab.nodes, key=lambda n: n.id != writer):
        client.create_db_instance(
            DBInstanceIdentifier=node.id,
            DBClusterIdentifier="lab",
            Engine="aurora-postgresql",
            DBInstanceClass="db.r6g.large",
        )
    return client


def _rds_api_monitor(lab: Lab) -> ClusterMonitor:
    return ClusterMonitor(
        dsn.parse(
            lab.dsn,
            topology_source="rds-api",
            cluster_id="lab",
            region="us-east-1",
            fast_refresh_interval="0.1s",
            refresh_interval="5s",
        )
    )


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_rds_api_writer_is_confirmed_by_asking_it(
    aurora_lab_postgresql: Lab, aws_env: None
) -> None:
    lab = aurora_lab_postgresql
    with mock_aws():
        _lab_rds(lab, lab.writer.id)
        monitor = _rds_api_monitor(lab)
        try:
            topo = monitor.wait_for_writer(timeout=15)
            assert topo is not None and topo.writer is not None, monitor.stats()
            assert topo.writer.instance_id == lab.writer.id
            assert _wait(lambda: not monitor.fast_mode, 10)  # fast mode ends
        finally:
            monitor.close()


def test_rds_api_writer_that_says_it_is_a_reader_is_not_confirmed(
    aurora_lab_postgresql: Lab, aws_env: None
) -> None:
    """The control plane names a reader as the writer (it lags a failover): not believed."""
    lab = aurora_lab_postgresql
    with mock_aws():
        _lab_rds(lab, lab.readers[0].id)
        monitor = _rds_api_monitor(lab)
        try:
            assert monitor.wait_for_writer(timeout=2) is None
            assert monitor.fast_mode
            assert "says it is not the writer" in (monitor.stats().last_error or "")
        finally:
            monitor.close()
