"""Every topology source confirms a writer by what the node says of itself, against the lab.

The sources without metadata (probe, static) learn the writer from the DSN's host list; a
failover must still end with a writer borrow on the new writer well within
``failover_timeout``, and the monitor must leave fast mode once the writer answers as one.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime, dsn
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.monitor import ClusterMonitor

# Generous: the fix lands within about a second; before it, a borrow waits the whole
# failover_timeout and raises NoWriterAvailable.
FAILOVER_TIMEOUT = 20.0
BOUND = 10.0


def _query(conn: Any, sql: str) -> list[Any]:
    cur = conn.cursor()
    cur.execute(sql)
    return list(cur.fetchall()) if cur.description else []


def address_dsn(lab: Lab, source: str, *, hosts: list[str] | None = None, **params: Any) -> str:
    """A DSN whose host list is the lab's node addresses (a self-managed cluster's view)."""
    state = lab.state()
    scheme = "postgresql" if state.engine == "postgresql" else "mariadb"
    listed = hosts if hosts is not None else [f"{n.address}:{n.port}" for n in lab.nodes]
    query = {
        "topology_source": source,
        "cluster_id": uuid.uuid4().hex,  # a runtime of its own: its settings are this test's
        "failover_timeout": f"{FAILOVER_TIMEOUT:g}s",
        "connect_timeout": "2s",
        **params,
    }
    return (
        f"{scheme}://{state.user}:{state.password}@{','.join(listed)}/{state.database}?"
        + "&".join(f"{k}={v}" for k, v in query.items())
    )


def _prepare(cluster: asd.Cluster) -> None:
    with cluster.writer() as conn:
        _query(conn, "CREATE TABLE IF NOT EXISTS src_rows (id VARCHAR(64) PRIMARY KEY)")


def _first_write(cluster: asd.Cluster, lab: Lab) -> tuple[float, str]:
    """Seconds until a write commits after the failover, and the node it committed on.

    A pooled connection that was on the dead writer reports `FailoverSucceeded` (nothing
    committed): the work is run again, as the library asks.
    """
    started = time.monotonic()
    while True:
        try:
            with cluster.writer() as conn:
                _query(conn, f"INSERT INTO src_rows VALUES ('{uuid.uuid4().hex}')")
                node = _server_id(lab, conn)
            return time.monotonic() - started, node
        except asd.FailoverSucceeded:
            assert time.monotonic() - started < BOUND


@pytest.fixture(autouse=True)
def _close_runtimes() -> Any:
    yield
    _runtime.close_all()


def test_probe_writer_borrow_reaches_the_new_writer_soon_after_a_failover(aurora_lab: Lab) -> None:
    cluster = asd.Cluster(address_dsn(aurora_lab, "probe"))
    try:
        _prepare(cluster)
        report = aurora_lab.failover()
        took, node = _first_write(cluster, aurora_lab)
        print(f"\nprobe: first write after failover took {took * 1000:.0f} ms")
        assert node == report.new_writer
        assert took < BOUND
        monitor = cluster._runtime.monitor
        deadline = time.monotonic() + BOUND
        while monitor.fast_mode and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not monitor.fast_mode  # the new writer answered as the writer: fast mode ends
    finally:
        cluster.close()


def test_static_writer_is_confirmed_by_asking_it(aurora_lab: Lab) -> None:
    """static's writer is the first host; a role check on it ends fast mode and the wait."""
    state = aurora_lab.state()
    # The first host is the cluster endpoint (a name that follows the writer), then readers.
    hosts = [f"{state.cluster_endpoint}:{state.port}"] + [
        f"{n.address}:{n.port}" for n in aurora_lab.readers
    ]
    dsn_text = address_dsn(
        aurora_lab,
        "static",
        hosts=hosts,
        dns_server=f"{state.dns.address}:{state.dns.port}",
        dns_ttl_cap="0s",
    )
    cluster = asd.Cluster(dsn_text)
    try:
        _prepare(cluster)
        report = aurora_lab.failover(dns_lag=0.0)
        took, node = _first_write(cluster, aurora_lab)
        print(f"\nstatic: first write after failover took {took * 1000:.0f} ms")
        assert node == report.new_writer
        assert took < BOUND
        monitor = cluster._runtime.monitor
        deadline = time.monotonic() + BOUND
        while monitor.fast_mode and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not monitor.fast_mode
    finally:
        cluster.close()


def _server_id(lab: Lab, conn: Any) -> str:
    if lab.state().engine == "postgresql":
        [(node_id,)] = _query(conn, "SELECT aurora_db_instance_identifier()")
    else:
        [(node_id,)] = _query(conn, "SELECT aurora_lab.aurora_server_id()")
    return str(node_id)


@pytest.fixture
def silent_host() -> Iterator[str]:
    """``host:port`` of a listener that completes TCP handshakes and never answers, as a
    hung or cut-off node looks to a client."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def test_probe_in_fast_mode_does_not_wait_for_a_silent_host_once_a_writer_answered(
    aurora_lab: Lab, silent_host: str
) -> None:
    """A cut-off node is silent until connect_timeout; once the new writer has answered, fast
    mode's probe does not wait for it (it would hold every probe connect_timeout long)."""
    hosts = [f"{n.address}:{n.port}" for n in aurora_lab.nodes] + [silent_host]
    spec = dsn.parse(address_dsn(aurora_lab, "probe", hosts=hosts, connect_timeout="6s"))
    monitor = ClusterMonitor(spec)
    try:
        assert monitor.refresh_now(timeout=20) is not None  # waits for the silent host once
        report = aurora_lab.failover()
        monitor.enter_fast_mode("test: the writer failed over")
        started = time.monotonic()
        topo = monitor.wait_for_writer(
            timeout=20, not_id=aurora_lab.node(report.old_writer).address
        )
        took = time.monotonic() - started
        print(f"\nnew writer confirmed {took * 1000:.0f} ms after fast mode began")
        assert topo is not None and topo.writer is not None
        assert topo.writer.instance_id == aurora_lab.node(report.new_writer).address
        assert took < 3.0  # connect_timeout is 6 s: the silent host was not waited for
        # The readers that answered are still there; the silent host never was.
        readers = {r.instance_id for r in topo.readers}
        assert readers == {n.address for n in aurora_lab.readers if n.status == "running"}
    finally:
        monitor.close()


def test_a_static_writer_is_not_asked_at_an_address_the_watchdog_found_silent(
    aurora_lab: Lab,
) -> None:
    """After the watchdog's verdict on the address a static writer's name leads to (DNS has
    not moved yet after a failover), fast mode does not connect there for
    ``failure_detection_time``: each confirmation attempt fails at once and the next one, at
    fast mode's pace, follows the name wherever it leads by then, instead of one attempt
    waiting out a connection on the silent node (TCP_USER_TIMEOUT, connect_timeout)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # TCP handshakes, no answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    silent.setblocking(False)
    address, port = silent.getsockname()
    hosts = [f"{address}:{port}"] + [f"{n.address}:{n.port}" for n in aurora_lab.readers]
    spec = dsn.parse(address_dsn(aurora_lab, "static", hosts=hosts, failure_detection_time="30s"))
    monitor = ClusterMonitor(spec)
    try:
        assert monitor.refresh_now(timeout=20) is not None
        monitor.host_silent(address, (address,))
        asked = monitor.stats().refreshes
        monitor.enter_fast_mode("test: the writer fell silent")
        deadline = time.monotonic() + 30
        while monitor.stats().refreshes < asked + 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert monitor.stats().refreshes >= asked + 3
        attempts = 0
        while True:
            try:
                silent.accept()[0].close()
            except BlockingIOError:
                break
            attempts += 1
        assert attempts == 0, "the monitor connected to the silent address"
    finally:
        monitor.close()
        silent.close()
