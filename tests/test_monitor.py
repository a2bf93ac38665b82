"""The cluster monitor against the lab: the truth, failovers, stale DNS, load, bad answers."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from aurora_smartdriver import dsn
from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.monitor import ClusterMonitor
from aurora_smartdriver.resolver import Resolver
from aurora_smartdriver.topology import Topology


def _spec(lab: Lab, **overrides: Any) -> dsn.ConnectionSpec:
    return dsn.parse(lab.dsn, **overrides)


def _truth(lab: Lab) -> tuple[str, list[str], dict[str, str]]:
    nodes = lab.nodes
    writer = next(n.id for n in nodes if n.role == "writer")
    readers = sorted(n.id for n in nodes if n.role == "reader" and n.status == "running")
    return writer, readers, {n.id: n.host for n in nodes}


def _view(topo: Topology | None) -> tuple[str | None, list[str], dict[str, str]]:
    assert topo is not None
    hosts = {h.instance_id: h.host for h in topo.hosts}
    return (
        topo.writer.instance_id if topo.writer else None,
        sorted(r.instance_id for r in topo.readers),
        hosts,
    )


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


@pytest.fixture
def mon(aurora_lab: Lab) -> Any:
    m = ClusterMonitor(_spec(aurora_lab, refresh_interval="1s"))
    yield m
    m.close()


def test_monitor_reports_the_labs_truth_with_the_auto_detected_source(
    aurora_lab: Lab, mon: ClusterMonitor
) -> None:
    topo = mon.refresh_now()
    writer, readers, hosts = _truth(aurora_lab)
    assert _view(topo) == (writer, readers, {k: hosts[k] for k in [writer, *readers]})
    expected = "aurora-postgresql" if aurora_lab.state().engine == "postgresql" else "aurora-mysql"
    assert mon.source == expected
    assert topo is not None and topo.source == expected


@pytest.mark.parametrize("source", ["rds-multi-az"])
def test_other_sources_agree_with_the_lab(aurora_lab: Lab, source: str) -> None:
    m = ClusterMonitor(_spec(aurora_lab, topology_source=source))
    try:
        writer, readers, _ = _truth(aurora_lab)
        view = _view(m.refresh_now())
        assert (view[0], view[1]) == (writer, readers)
    finally:
        m.close()


def test_probe_source_works_on_a_plain_host_list(aurora_lab: Lab) -> None:
    state = aurora_lab.state()
    hosts = ",".join(f"{n.host}:{n.port}" for n in aurora_lab.nodes)
    scheme = "postgresql" if state.engine == "postgresql" else "mariadb"
    spec = dsn.parse(
        f"{scheme}://{state.user}:{state.password}@{hosts}/{state.database}"
        f"?dns_server={state.dns.address}:{state.dns.port}&topology_source=probe"
    )
    m = ClusterMonitor(spec)
    try:
        writer, readers, _ = _truth(aurora_lab)
        view = _view(m.refresh_now())
        assert (view[0], view[1]) == (writer, readers)
    finally:
        m.close()


def test_monitor_sees_the_new_writer_after_a_failover(aurora_lab: Lab, mon: ClusterMonitor) -> None:
    mon.refresh_now()
    changes: list[Any] = []
    mon.add_listener(lambda change, topo: changes.append(change))
    report = aurora_lab.failover()
    # The lab has published the new writer when failover() returns; fast mode must see it
    # within about one fast interval (printed, not asserted: the machine is shared).
    started = time.monotonic()
    topo = mon.wait_for_writer(timeout=15, not_id=report.old_writer)
    seen_after = time.monotonic() - started
    assert topo is not None and topo.writer is not None
    assert topo.writer.instance_id == report.new_writer
    assert any(c.writer_changed == (report.old_writer, report.new_writer) for c in changes)
    assert not mon.fast_mode
    print(f"\nnew writer seen {seen_after * 1000:.0f} ms after the metadata changed")


def test_new_connection_reaches_the_new_writer_while_dns_is_stale(
    aurora_lab: Lab, mon: ClusterMonitor
) -> None:
    state = aurora_lab.state()
    old = aurora_lab.writer
    mon.refresh_now()
    report = aurora_lab.failover(dns_lag=30.0)
    new = aurora_lab.node(report.new_writer)
    resolver = Resolver([(state.dns.address, state.dns.port)])
    assert resolver.resolve(state.cluster_endpoint).addresses == (old.address,)  # stale
    topo = mon.wait_for_writer(timeout=15, not_id=report.old_writer)
    assert topo is not None and topo.writer is not None
    assert topo.writer.instance_id == new.id
    adapter = adapter_for(mon.spec.engine)
    address = resolver.resolve(topo.writer.host).addresses[0]
    assert address == new.address
    conn = adapter.connect(mon.spec, topo.writer.host, topo.writer.port, address=address, timeout=5)
    try:
        if state.engine == "postgresql":
            sql = "SELECT aurora_db_instance_identifier(), pg_is_in_recovery()"
            [(node_id, in_recovery)] = adapter.query(conn, sql).rows
            assert (node_id, in_recovery) == (new.id, False)
        else:
            [(node_id, read_only)] = adapter.query(
                conn, "SELECT aurora_lab.aurora_server_id(), @@read_only"
            ).rows
            assert (node_id, int(read_only)) == (new.id, 0)
    finally:
        conn.close()


def test_monitor_moves_to_another_node_when_its_own_dies(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0]
    m = ClusterMonitor(dsn.parse(aurora_lab.instance_dsn(reader), refresh_interval="1s"))
    try:
        assert m.refresh_now() is not None
        assert m._conn_host == reader.host
        aurora_lab.crash(reader.id)
        assert _wait(
            lambda: m.refresh_now() is not None and m._conn_host not in (None, reader.host), 20
        )
        writer, _, _ = _truth(aurora_lab)
        assert _view(m.topology)[0] == writer
        assert m.stats().errors >= 1
    finally:
        m.close()


def test_garbage_answers_keep_the_last_good_topology(aurora_lab: Lab, mon: ClusterMonitor) -> None:
    aurora_lab.pause_heartbeat()
    time.sleep(1.2)  # let a beat already under way land
    good = mon.refresh_now()  # after the last beat: the monitor refreshes every second
    assert good is not None
    if aurora_lab.state().engine == "postgresql":
        aurora_lab.execute(
            aurora_lab.writer.id, "UPDATE aurora_lab.instances SET session_id = 'MASTER_SESSION_ID'"
        )
    else:
        aurora_lab.execute(
            aurora_lab.writer.id,
            "UPDATE aurora_lab.replica_host_status SET SESSION_ID = 'MASTER_SESSION_ID'",
        )
    aurora_lab.wait_replicated(10)
    rejected_before = mon.stats().rejected
    mon.refresh_now()
    assert mon.stats().rejected > rejected_before  # counted...
    assert mon.topology is good  # ...and the last good topology kept
    if aurora_lab.state().engine == "postgresql":
        aurora_lab.execute(aurora_lab.writer.id, "DELETE FROM aurora_lab.instances")
    else:
        aurora_lab.execute(aurora_lab.writer.id, "DELETE FROM aurora_lab.replica_host_status")
    aurora_lab.wait_replicated(10)
    mon.refresh_now()
    assert mon.topology is good
    aurora_lab.resume_heartbeat()
    # Good answers are accepted again: the same members, no new rejection.
    rejected = mon.stats().rejected
    fresh = mon.refresh_now()
    assert fresh is not None and _view(fresh)[:2] == _view(good)[:2]
    assert mon.stats().rejected == rejected


def _server_topology_queries(lab: Lab) -> int:
    """Topology queries the cluster's nodes have answered, counted on the servers."""
    total = 0
    engine = lab.state().engine
    for node in lab.nodes:
        if node.status != "running":
            continue
        if engine == "postgresql":
            rows = lab.execute(
                node.id,
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
                " WHERE funcname = 'aurora_replica_status'",
            )
        else:
            rows = lab.execute(
                node.id,
                "SELECT count(*) FROM mysql.general_log WHERE command_type = 'Query'"
                " AND argument LIKE '%FROM `aurora_lab`.replica_host_status%'"
                " AND user_host LIKE 'app[app]%'",
            )
        total += int(str(rows[0][0]))
    return total


def test_one_topology_query_per_refresh_however_many_connections(aurora_lab: Lab) -> None:
    """50 connections and 5 pools open on one cluster: one monitor, one query per refresh."""
    import aurora_smartdriver as asd
    from aurora_smartdriver import _runtime

    engine = aurora_lab.state().engine
    _runtime.close_all()  # earlier tests' monitors must not add to the servers' count
    if engine == "mariadb":
        for node in aurora_lab.nodes:
            aurora_lab.execute(node.id, "SET GLOBAL log_output = 'TABLE'")
            aurora_lab.execute(node.id, "TRUNCATE mysql.general_log")
            aurora_lab.execute(node.id, "SET GLOBAL general_log = 1")
    before = _server_topology_queries(aurora_lab)
    state = aurora_lab.state()
    # The source is named, so the count is of refreshes only (auto-detection asks once more).
    source = "aurora-postgresql" if engine == "postgresql" else "aurora-mysql"
    base = aurora_lab.dsn + f"&refresh_interval=1s&topology_source={source}"
    # Five clusters (five pools each), through different names of the same cluster...
    names = [state.cluster_endpoint, state.reader_endpoint, *(n.host for n in aurora_lab.nodes)]
    started = time.monotonic()
    clusters = [asd.Cluster(base.replace(state.cluster_endpoint, name, 1)) for name in names[:5]]
    runtime = clusters[0]._runtime
    # Each Cluster keeps its own settings (a runtime of its own) on one monitor per cluster.
    assert all(c._runtime.monitor is runtime.monitor for c in clusters)
    # ...and 50 connections, half on the writer, half on readers, all held open.
    conns = [asd.connect(base, role="writer" if i % 2 else "reader") for i in range(50)]
    borrowed = []
    for cluster in clusters:
        ctx = cluster.reader()
        borrowed.append((ctx, ctx.__enter__()))
    time.sleep(3.5)
    refreshes = runtime.monitor.stats().refreshes
    elapsed = time.monotonic() - started  # opening 50 connections takes longer when loaded
    for ctx, _conn in borrowed:
        ctx.__exit__(None, None, None)
    for conn in conns:
        conn.close()
    for cluster in clusters:
        cluster.close()
    _runtime.close_all()
    if engine == "postgresql":
        time.sleep(0.5)  # the closed backend flushes its statistics on exit
    counted = _server_topology_queries(aurora_lab) - before
    if engine == "mariadb":
        for node in aurora_lab.nodes:
            aurora_lab.execute(node.id, "SET GLOBAL general_log = 0")
    print(
        f"\n{engine}: 50 connections + 5 pooled clusters, {refreshes} refreshes, "
        f"{counted} topology queries seen by the servers in about 3.5 s at a 1 s interval"
    )
    assert counted == refreshes
    # One refresh per interval (1 s) while it ran, not one per connection or pool; a couple
    # more for the first answer and the refresh in flight when counted.
    assert 2 <= refreshes <= elapsed + 3


def test_monitor_thread_never_keeps_the_process_alive(aurora_lab: Lab) -> None:
    script = (
        "import sys\n"
        "import aurora_smartdriver as asd\n"
        "conn = asd.connect(sys.argv[1])\n"
        "assert conn.instance_id\n"
        "print('ok', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, aurora_lab.dsn],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_monitor_started_during_stale_dns_finds_the_cluster_through_readers(
    aurora_lab: Lab,
) -> None:
    report = aurora_lab.failover(dns_lag=30.0)
    m = ClusterMonitor(_spec(aurora_lab))  # its only host, the cluster endpoint, is stale
    try:
        topo = m.wait_for_writer(timeout=15, not_id=report.old_writer)
        assert topo is not None and topo.writer is not None, m.stats()
        assert topo.writer.instance_id == report.new_writer
    finally:
        m.close()


def test_unreachable_cluster_gives_no_topology_and_a_clear_error(aurora_lab: Lab) -> None:
    state = aurora_lab.state()
    spec = dsn.parse(
        aurora_lab.dsn.replace(
            state.cluster_endpoint, f"nope.cluster-{state.cluster_hash}.lab.aurora.test"
        )
        + "&connect_timeout=2"
    )
    m = ClusterMonitor(spec)
    try:
        assert m.refresh_now(timeout=10) is None
        error = m.stats().last_error or ""
        assert "no node reachable" in error
        assert state.password not in error
    finally:
        m.close()
