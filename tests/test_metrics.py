"""Metrics against the lab: the snapshot, both exporters, fastest_response fed by real timings,
and ``aurora-smartdriver watch`` with its counters. No timing assertions: only counts, and
values that must be positive or ordered."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import metrics
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.resolver import ResolveError, Resolver


def _cluster(lab: Lab, **kwargs: Any) -> asd.Cluster:
    # A cluster (and so a runtime, with counters from zero) of its own per test.
    kwargs.setdefault("cluster_id", f"metrics-{uuid.uuid4().hex[:12]}")
    kwargs.setdefault("fast_refresh_interval", "0.05s")
    return asd.Cluster(lab.dsn, **kwargs)


def _select(cluster: asd.Cluster, role: str) -> str:
    with cluster.connection(role) as conn:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        return str(conn.instance_id)


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _work_through_a_failover(lab: Lab, cluster: asd.Cluster) -> str:
    """Reads and writes, then a transaction interrupted by a lab failover and re-run."""
    for _ in range(3):
        _select(cluster, "writer")
        _select(cluster, "reader")
    attempts = [0]

    def fn(conn: Any) -> None:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        attempts[0] += 1
        if attempts[0] == 1:
            lab.failover()
            cur.execute("SELECT 1")  # the connection died: failover, then re-run

    cluster.run_transaction(fn)
    assert attempts[0] == 2
    return _select(cluster, "writer")


# -- the snapshot -----------------------------------------------------------------------------
def test_snapshot_counts_connections_borrows_routing_topology_and_dns(aurora_lab: Lab) -> None:
    cluster = _cluster(aurora_lab)
    try:
        writer = aurora_lab.writer.id
        for _ in range(5):
            assert _select(cluster, "writer") == writer
            _select(cluster, "reader")
        direct = asd.connect(aurora_lab.dsn, cluster_id=cluster.spec.settings.cluster_id)
        direct.cursor().execute("SELECT 1")
        direct.close()
        m = cluster.metrics()
        assert m.cluster == cluster.spec.settings.cluster_id
        w = m.hosts[writer]
        assert w.connections_opened >= 2  # one pooled, one of connect()
        assert w.connections_closed >= 1  # connect()'s
        assert w.connections_opened - w.connections_closed == w.pool_idle + w.pool_in_use
        assert w.borrows >= 5 and w.borrow_wait_seconds.count == w.borrows
        assert w.connect_seconds.count == w.connections_opened
        assert w.routed["writer"] == 6
        assert m.routing.decisions["writer"] == 6 and m.routing.decisions["reader"] == 5
        assert sum(h.routed.get("reader", 0) for h in m.hosts.values()) == 5
        assert set(m.hosts) >= {n.id for n in aurora_lab.nodes}
        assert m.topology.refreshes >= 1 and m.topology.version >= 1
        assert m.topology.refresh_seconds.count >= m.topology.refreshes
        assert m.dns.lookups >= 1 and m.dns.lookup_seconds.count == m.dns.lookups
        assert m.failovers.started == {}
        # Printable and JSON-able, and no secret in either.
        password = aurora_lab.state().password
        text, doc = str(m), json.dumps(m.to_json())
        assert writer in text and password not in text and password not in doc
        everything = metrics.snapshot()
        assert m.cluster in everything.clusters
        assert password not in json.dumps(everything.to_json())
    finally:
        cluster.close()
    assert cluster.spec.settings.cluster_id not in metrics.snapshot().clusters


def test_borrow_waits_and_timeouts_are_counted(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql
    cluster = _cluster(lab, pool_max_size=1, borrow_timeout="0.2s")
    writer = lab.writer.id
    try:
        _select(cluster, "writer")  # opens the one connection
        held = cluster.writer()
        held.__enter__()
        with pytest.raises(Exception, match="within"):
            _select(cluster, "writer")  # all in use: times out
        got: list[str] = []
        # A borrower that retries after each timeout until the connection is handed over.
        waiter = threading.Thread(target=lambda: got.append(_borrow_patiently(cluster)))
        waiter.start()
        assert _wait(lambda: cluster.metrics().hosts[writer].pool_waiting == 1)
        held.__exit__(None, None, None)
        waiter.join(30)
        assert got == [writer]
        w = cluster.metrics().hosts[writer]
        assert w.borrow_failures.get("timeout", 0) >= 1
        assert w.borrow_wait_seconds.count == w.borrows
        assert w.borrow_wait_seconds.max > 0.0  # the handed-over borrow waited
        assert w.pool_waiting == 0 and w.connections_opened == 1
    finally:
        cluster.close()


def _borrow_patiently(cluster: asd.Cluster) -> str:
    while True:
        try:
            return _select(cluster, "writer")
        except Exception as exc:
            if "within" not in str(exc):
                raise


def test_dns_lookups_and_failures_are_counted(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql
    resolver = Resolver([lab.dns])
    resolver.resolve(lab.state().cluster_endpoint)
    with pytest.raises(ResolveError):
        resolver.resolve(f"no-such-name.{lab.state().cluster_endpoint}")
    assert resolver.lookups == 2 and resolver.failures == 1
    assert resolver.lookup_times.snapshot().count == 2


# -- exporters --------------------------------------------------------------------------------
def test_opentelemetry_exporter_after_real_work_and_a_failover(aurora_lab: Lab) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from aurora_smartdriver.exporters import opentelemetry as asd_otel

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    handle = asd_otel.instrument(provider, max_age=0.0)
    cluster = _cluster(aurora_lab)
    name = cluster.spec.settings.cluster_id
    try:
        new_writer = _work_through_a_failover(aurora_lab, cluster)
        data = reader.get_metrics_data()
        assert data is not None
        points: dict[str, list[Any]] = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                assert sm.scope.name == "aurora_smartdriver"
                for metric in sm.metrics:
                    points.setdefault(metric.name, []).extend(
                        p for p in metric.data.data_points if p.attributes.get("cluster") == name
                    )

        def value(metric: str, **attrs: str) -> float:
            found = [
                p.value
                for p in points.get(f"aurora_smartdriver.{metric}", [])
                if all(p.attributes.get(k) == v for k, v in attrs.items())
            ]
            assert len(found) == 1, (metric, attrs, found)
            return float(found[0])

        assert value("failovers_started", role="writer") == 1
        assert value("failovers_succeeded", role="writer") == 1
        assert value("failover_causes", cause="disconnect") == 1
        assert value("failover_seconds.count", outcome="succeeded") == 1
        assert value("failover_seconds.max", outcome="succeeded") > 0
        assert value("connections_opened", instance=new_writer) >= 1
        assert value("routing_decisions", role="writer", instance=new_writer) >= 1
        assert value("topology_changes") >= 2
        assert value("dns_lookups") >= 1
        assert value("borrow_wait_seconds.count", instance=new_writer) >= 1
        collected = {n for n, found in points.items() if found}
        assert {
            "aurora_smartdriver.topology_refreshes",
            "aurora_smartdriver.dns_lookups",
        } <= collected
        assert collected <= set(handle.names)
    finally:
        cluster.close()
        handle.close()
        provider.shutdown()


def test_prometheus_collector_after_real_work_and_a_failover(aurora_lab: Lab) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from aurora_smartdriver.exporters import prometheus as asd_prom

    registry = CollectorRegistry()
    asd_prom.register(registry)
    cluster = _cluster(aurora_lab)
    name = cluster.spec.settings.cluster_id
    try:
        new_writer = _work_through_a_failover(aurora_lab, cluster)
        text = generate_latest(registry).decode()

        def value(metric: str, **labels: str) -> float | None:
            return registry.get_sample_value(
                f"aurora_smartdriver_{metric}", {"cluster": name, **labels}
            )

        assert value("failovers_started_total", role="writer") == 1
        assert value("failovers_succeeded_total", role="writer") == 1
        assert value("failover_seconds_count", outcome="succeeded") == 1
        assert value("failover_seconds_bucket", outcome="succeeded", le="+Inf") == 1
        assert (value("connections_opened_total", instance=new_writer) or 0) >= 1
        assert (value("routing_decisions_total", role="reader", instance=new_writer) or 0) >= 0
        assert (value("topology_refreshes_total") or 0) >= 1
        assert (value("dns_lookup_seconds_count") or 0) >= 1
        assert value("pool_connections", instance=new_writer, state="in_use") == 0
        assert "# TYPE aurora_smartdriver_borrow_wait_seconds histogram" in text
        assert aurora_lab.state().password not in text
    finally:
        cluster.close()


def test_exporters_name_the_extra_to_install_when_their_package_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    for module, extra in [("opentelemetry", "opentelemetry"), ("prometheus_client", "prometheus")]:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
        target = f"aurora_smartdriver.exporters.{extra}"
        monkeypatch.delitem(sys.modules, target, raising=False)
        with pytest.raises(ImportError, match=rf"aurora-smartdriver\[{extra}\]"):
            importlib.import_module(target)
        monkeypatch.delitem(sys.modules, target, raising=False)


# -- fastest_response ---------------------------------------------------------------------------
def _probe_dsn(lab: Lab, hosts: list[tuple[str, int]], **params: str) -> str:
    state = lab.state()
    scheme = "postgresql" if state.engine == "postgresql" else "mariadb"
    where = ",".join(f"{h}:{p}" for h, p in hosts)
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return (
        f"{scheme}://{quote(state.user, safe='')}:{quote(state.password, safe='')}@{where}"
        f"/{state.database}?{query}"
    )


def test_fastest_response_reads_avoid_a_slow_replica(aurora_lab: Lab) -> None:
    writer, (slow, fast) = aurora_lab.writer, aurora_lab.readers[:2]
    proxy = aurora_lab.proxy(slow.id)
    proxy.set_latency(0.05)  # each way: a ping takes 100 ms or more, the direct ones far less
    slow_host = proxy.address[0]
    dsn = _probe_dsn(
        aurora_lab,
        [(writer.address, writer.port), proxy.address, (fast.address, fast.port)],
        topology_source="probe",
        reader_strategy="fastest_response",
        refresh_interval="0.2s",
        connect_timeout="10s",
        cluster_id=f"fastest-{uuid.uuid4().hex[:12]}",
    )
    cluster = asd.Cluster(dsn)
    try:
        assert cluster.topology is not None
        ids = {h.instance_id for h in cluster.topology.hosts}
        assert slow_host in ids and fast.address in ids

        def measured() -> bool:
            hosts = cluster.metrics().hosts
            return all(hosts[i].response_ms is not None for i in (slow_host, fast.address))

        assert _wait(measured)
        chosen = {_select(cluster, "reader") for _ in range(10)}
        assert chosen == {fast.address}
        hosts = cluster.metrics().hosts
        assert hosts[slow_host].response_ms > hosts[fast.address].response_ms  # type: ignore[operator]
        assert hosts[fast.address].routed["reader"] == 10
        assert "reader" not in hosts[slow_host].routed
    finally:
        cluster.close()
        proxy.set_latency(0.0)


# -- the watch command ---------------------------------------------------------------------------
def _watch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aurora_smartdriver", "watch", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_watch_prints_counters_each_interval_and_stops_after_count(aurora_lab: Lab) -> None:
    done = _watch(aurora_lab.dsn, "--interval", "0.2", "--count", "3", "--probe")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    writer = aurora_lab.writer.id
    assert writer in lines[0] and "writer" in lines[0]  # the topology first
    assert sum(1 for line in lines if line.endswith(" counters")) == 3
    assert f"probe writer ok on {writer}" in done.stdout
    assert "probe reader ok on" in done.stdout
    assert "refreshes" in done.stdout and "dns lookups" in done.stdout
    assert aurora_lab.state().password not in done.stdout + done.stderr


def test_watch_json_reports_the_metrics(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql
    done = _watch(lab.dsn, "--interval", "0.2", "--count", "2", "--probe", "--json")
    assert done.returncode == 0, done.stderr
    docs = [json.loads(line) for line in done.stdout.splitlines()]
    reports = [d for d in docs if "metrics" in d]
    assert len(reports) == 2
    last = reports[-1]["metrics"]
    assert last["hosts"][lab.writer.id]["routed"]["writer"] == 2
    assert last["topology"]["refreshes"] >= 1
    assert docs[0]["writer"]["id"] == lab.writer.id
