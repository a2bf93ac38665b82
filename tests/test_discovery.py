"""Topology discovery and the driver adapters, against the lab's clusters (and moto for AWS)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
import pytest
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from aurora_smartdriver import dsn
from aurora_smartdriver.discovery import (
    Answer,
    DiscoveryError,
    SourceContext,
    detect,
    source_for,
)
from aurora_smartdriver.discovery._values import instance_ids, reported_lag
from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.drivers._errors import mysql_kind, postgresql_kind
from aurora_smartdriver.drivers._psycopg import libpq_connect_timeout
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.lab import Lab, NodeInfo
from aurora_smartdriver.resolver import Resolver
from aurora_smartdriver.topology import Host, Rejected, Role, Topology, build_topology

T = TypeVar("T")

# -- helpers ---------------------------------------------------------------------------------


def _spec(lab: Lab, **overrides: Any) -> dsn.ConnectionSpec:
    return dsn.parse(lab.dsn, **overrides)


def _without_pattern(spec: dsn.ConnectionSpec, hosts: tuple[tuple[str, int], ...]) -> Any:
    """`spec` for other hosts, with no instance host pattern (probe and static refuse one)."""
    settings = dataclasses.replace(spec.settings, instance_host_pattern=None)
    return dataclasses.replace(spec, hosts=hosts, settings=settings)


def _resolver(lab: Lab) -> Resolver:
    return Resolver(nameservers=[lab.dns])


def _connector(lab: Lab, spec: dsn.ConnectionSpec) -> Callable[[str, int, float], Any]:
    """How the monitor will connect: resolve the name itself, connect to the address."""
    resolver = _resolver(lab)
    adapter = adapter_for(spec.engine)

    def connect(host: str, port: int, timeout: float) -> Any:
        address = resolver.resolve(host).addresses[0]
        return adapter.connect(spec, host, port, address=address, timeout=timeout)

    return connect


def _context(lab: Lab, spec: dsn.ConnectionSpec) -> SourceContext:
    return SourceContext.for_spec(spec, connect=_connector(lab, spec))


@contextlib.contextmanager
def _connected(lab: Lab, spec: dsn.ConnectionSpec, node: NodeInfo) -> Iterator[Any]:
    conn = _connector(lab, spec)(node.host, node.port, 5.0)
    try:
        yield conn
    finally:
        conn.close()


def _fetch(lab: Lab, source_name: str, node: NodeInfo, spec: dsn.ConnectionSpec) -> Answer:
    with _connected(lab, spec, node) as conn:
        return source_for(source_name).fetch(conn, _context(lab, spec))


def _aurora(lab: Lab) -> str:
    return "aurora-postgresql" if lab.state().engine == "postgresql" else "aurora-mysql"


def _rows(answer: Answer) -> set[tuple[str, str, int, Role]]:
    return {(h.instance_id, h.host, h.port, h.role) for h in answer.rows}


def _truth(lab: Lab, *, running_only: bool = False) -> set[tuple[str, str, int, Role]]:
    return {
        (n.id, n.host, n.port, Role(n.role))
        for n in lab.nodes
        if not running_only or n.status == "running"
    }


def _eventually(check: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll `check` until it returns something other than None (no timing asserted)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        time.sleep(0.2)


def _topology(answer: Answer, window: float) -> Topology:
    built = build_topology(answer.rows, source="test", now=answer.now, staleness_window=window)
    assert not isinstance(built, Rejected), built
    return built


# -- driver adapters -----------------------------------------------------------------------------


def test_adapter_connects_by_instance_name_to_the_resolved_address(aurora_lab: Lab) -> None:
    spec = _spec(aurora_lab)
    node = aurora_lab.readers[0]
    address = _resolver(aurora_lab).resolve(node.host).addresses[0]
    assert address == node.address
    adapter = adapter_for(spec.engine)
    conn = adapter.connect(spec, node.host, node.port, address=address, timeout=5.0)
    try:
        assert adapter.query(conn, "SELECT 1").rows == ((1,),)
        if spec.engine == "postgresql":
            assert (conn.info.host, conn.info.hostaddr) == (node.host, address)
        else:
            assert conn.host == node.host
            assert conn._sock.getpeername()[0] == address
    finally:
        conn.close()


def test_pymysql_connection_gets_the_users_read_timeout_back(aurora_lab_mariadb: Lab) -> None:
    lab = aurora_lab_mariadb
    spec = _spec(lab)
    with _connected(lab, spec, lab.writer) as conn:
        adapter_for("mysql").query(conn, "SELECT 1")
        assert conn._sock.gettimeout() is None  # no handshake deadline left behind
    timed = _spec(lab, read_timeout=7)
    with _connected(lab, timed, lab.writer) as conn:
        adapter_for("mysql").query(conn, "SELECT 1")
        assert conn._sock.gettimeout() == 7


def test_pymysql_connections_share_one_tls_context_when_tls_is_not_requested(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    spec = _spec(lab)
    with _connected(lab, spec, lab.writer) as first, _connected(lab, spec, lab.writer) as second:
        assert first.ssl and not first._ssl_required  # PyMySQL's preferred mode, as bare
        assert first.ctx is second.ctx


def test_pymysql_with_tls_disabled_uses_no_tls(aurora_lab_mariadb: Lab) -> None:
    lab = aurora_lab_mariadb
    with _connected(lab, _spec(lab, ssl_disabled=True), lab.writer) as conn:
        assert not conn.ssl


@pytest.mark.timeout(120)
def test_connect_to_a_hung_node_fails_instead_of_hanging(aurora_lab: Lab) -> None:
    spec = _spec(aurora_lab)
    node = aurora_lab.readers[0]
    adapter = adapter_for(spec.engine)
    aurora_lab.hang(node)
    with pytest.raises(adapter.Error) as caught:
        adapter.connect(spec, node.host, node.port, address=node.address, timeout=1.0)
    assert adapter.error_kind(caught.value) == "disconnect"


def test_connect_to_a_crashed_node_is_a_disconnect(aurora_lab: Lab) -> None:
    spec = _spec(aurora_lab)
    node = aurora_lab.readers[0]
    adapter = adapter_for(spec.engine)
    aurora_lab.crash(node)
    with pytest.raises(adapter.Error) as caught:
        adapter.connect(spec, node.host, node.port, address=node.address, timeout=2.0)
    assert adapter.error_kind(caught.value) == "disconnect"


def test_a_refused_login_is_an_auth_error_without_the_password(aurora_lab: Lab) -> None:
    password = f"wrong-{uuid.uuid4().hex}"
    spec = dataclasses.replace(_spec(aurora_lab), password=password)
    node = aurora_lab.writer
    adapter = adapter_for(spec.engine)
    with pytest.raises(adapter.Error) as caught:
        adapter.connect(spec, node.host, node.port, address=node.address, timeout=5.0)
    assert adapter.error_kind(caught.value) == "auth"
    assert password not in str(caught.value)
    assert password not in repr(caught.value)


def test_a_write_on_a_reader_is_a_read_only_error(aurora_lab: Lab) -> None:
    spec = _spec(aurora_lab)
    adapter = adapter_for(spec.engine)
    with _connected(aurora_lab, spec, aurora_lab.readers[0]) as conn:
        with pytest.raises(adapter.Error) as caught:
            adapter.query(conn, "CREATE TABLE discovery_read_only_probe (x INT)")
        assert adapter.error_kind(caught.value) == "read_only"


def test_error_kinds_follow_the_tables() -> None:
    assert postgresql_kind("08006", operational=True) == "disconnect"
    assert postgresql_kind("57P01", operational=True) == "disconnect"
    assert postgresql_kind("25006", operational=False) == "read_only"
    assert postgresql_kind("28P01", operational=True) == "auth"
    assert postgresql_kind("23505", operational=False) == "other"
    assert postgresql_kind(None, operational=True) == "disconnect"
    assert postgresql_kind(None, operational=False) == "other"
    assert mysql_kind(2013) == "disconnect"
    assert mysql_kind(1836) == "read_only"
    assert mysql_kind(1045) == "auth"
    assert mysql_kind(1062) == "other"
    assert mysql_kind("2013") == "other"


@given(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3))
def test_every_connection_exception_sqlstate_is_a_disconnect(rest: str) -> None:
    assert postgresql_kind("08" + rest, operational=False) == "disconnect"


@given(st.floats(min_value=0.001, max_value=1e6))
def test_libpq_timeout_never_shortens_the_deadline(timeout: float) -> None:
    seconds = libpq_connect_timeout(timeout)
    assert isinstance(seconds, int)
    assert seconds >= max(2, timeout)
    assert seconds < max(2, timeout) + 1


def test_adapter_for_an_unknown_engine_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown engine"):
        adapter_for("oracle")


# -- metadata sources against the lab -------------------------------------------------------------


def test_aurora_source_rows_are_the_labs_nodes(aurora_lab: Lab) -> None:
    spec = _spec(aurora_lab)
    for node in aurora_lab.nodes:
        answer = _fetch(aurora_lab, _aurora(aurora_lab), node, spec)
        assert _rows(answer) == _truth(aurora_lab)
        assert (answer.instance_id, answer.role) == (node.id, Role(node.role))
        writer = next(h for h in answer.rows if h.role is Role.WRITER)
        assert writer.lag_ms == 0.0
        assert all(h.last_update is not None and h.cpu is not None for h in answer.rows)


def test_aurora_source_reports_the_new_writer_after_failover(aurora_lab: Lab) -> None:
    spec = _spec(aurora_lab)
    old = aurora_lab.writer
    report = aurora_lab.failover()
    new = aurora_lab.writer
    assert new.id == report.new_writer != old.id
    answer = _fetch(aurora_lab, _aurora(aurora_lab), new, spec)
    assert _rows(answer) == _truth(aurora_lab)
    assert (answer.instance_id, answer.role) == (new.id, Role.WRITER)
    survivor = next(n for n in aurora_lab.readers if n.status == "running")

    def survivor_sees_new_writer() -> Answer | None:
        seen = _fetch(aurora_lab, _aurora(aurora_lab), survivor, spec)
        return seen if _rows(seen) == _truth(aurora_lab) else None

    assert _eventually(survivor_sees_new_writer).role is Role.READER


def test_rds_multi_az_source_rows_are_the_labs_nodes_before_and_after_failover(
    aurora_lab: Lab,
) -> None:
    spec = _spec(aurora_lab)
    for node in (aurora_lab.writer, aurora_lab.readers[0]):
        answer = _fetch(aurora_lab, "rds-multi-az", node, spec)
        assert _rows(answer) == _truth(aurora_lab)
        assert (answer.instance_id, answer.role) == (node.id, Role(node.role))
        assert all(h.lag_ms is None for h in answer.rows)
    aurora_lab.failover()
    survivor = next(n for n in aurora_lab.readers if n.status == "running")
    for node in (aurora_lab.writer, survivor):

        def sees_new_writer(node: NodeInfo = node) -> Answer | None:
            answer = _fetch(aurora_lab, "rds-multi-az", node, spec)
            return answer if _rows(answer) == _truth(aurora_lab) else None

        assert _eventually(sees_new_writer).instance_id == node.id


def test_a_crashed_readers_row_is_dropped_after_the_staleness_window(aurora_lab: Lab) -> None:
    spec = _spec(aurora_lab)
    crashed, alive = aurora_lab.readers[0], aurora_lab.readers[1]
    aurora_lab.crash(crashed)

    def dropped() -> Topology | None:
        answer = _fetch(aurora_lab, _aurora(aurora_lab), aurora_lab.writer, spec)
        assert crashed.id in {h.instance_id for h in answer.rows}  # the row stays, aging
        topology = _topology(answer, window=2.0)
        return topology if topology.host(crashed.id) is None else None

    topology = _eventually(dropped)
    assert topology.writer is not None and topology.writer.instance_id == aurora_lab.writer.id
    assert [r.instance_id for r in topology.readers] == [alive.id]


def test_a_crashed_writers_stale_row_is_kept(aurora_lab: Lab) -> None:
    spec = _spec(aurora_lab)
    writer, reader = aurora_lab.writer, aurora_lab.readers[0]
    aurora_lab.crash(writer)  # nothing refreshes the metadata any more

    def writer_row_stale() -> Answer | None:
        answer = _fetch(aurora_lab, _aurora(aurora_lab), reader, spec)
        row = next(h for h in answer.rows if h.instance_id == writer.id)
        assert row.last_update is not None
        return answer if answer.now - row.last_update > 2.0 else None

    topology = _topology(_eventually(writer_row_stale), window=2.0)
    assert topology.writer is not None and topology.writer.instance_id == writer.id


def test_a_missing_instance_host_pattern_is_a_config_error(aurora_lab: Lab) -> None:
    spec = _spec(aurora_lab)
    node = aurora_lab.writer
    plain = _without_pattern(spec, ((node.address, node.port),))
    with (
        _connected(aurora_lab, spec, node) as conn,
        pytest.raises(ConfigError, match="instance_host_pattern") as caught,
    ):
        source_for(_aurora(aurora_lab)).fetch(conn, _context(aurora_lab, plain))
    assert caught.value.parameter == "instance_host_pattern"


# -- garbage answers ----------------------------------------------------------------------------


@pytest.fixture
def mariadb_schema(aurora_lab_mariadb: Lab) -> Iterator[str]:
    """A scratch schema on the MariaDB lab's writer, dropped afterwards."""
    lab = aurora_lab_mariadb
    schema = f"garbage_{uuid.uuid4().hex[:8]}"
    writer = lab.writer
    lab.execute(writer, f"CREATE DATABASE {schema}")
    try:
        yield schema
    finally:
        lab.execute(writer, f"DROP DATABASE {schema}")


def test_aurora_mysql_pointed_at_a_table_with_other_columns_says_so(
    aurora_lab_mariadb: Lab, mariadb_schema: str
) -> None:
    lab = aurora_lab_mariadb
    lab.execute(lab.writer, f"CREATE TABLE {mariadb_schema}.replica_host_status (a INT)")
    spec = _spec(lab, replica_status_schema=mariadb_schema)
    with pytest.raises(DiscoveryError, match="replica_status_schema"):
        _fetch(lab, "aurora-mysql", lab.writer, spec)


def test_aurora_mysql_rejects_rows_of_the_wrong_types(
    aurora_lab_mariadb: Lab, mariadb_schema: str
) -> None:
    lab = aurora_lab_mariadb
    lab.execute(
        lab.writer,
        f"CREATE TABLE {mariadb_schema}.replica_host_status (SERVER_ID TEXT, SESSION_ID TEXT,"
        " CPU TEXT, REPLICA_LAG_IN_MILLISECONDS DOUBLE, LAST_UPDATE_TIMESTAMP DATETIME)",
    )
    lab.execute(
        lab.writer,
        f"INSERT INTO {mariadb_schema}.replica_host_status VALUES"
        " ('a', 'MASTER_SESSION_ID', 'lots', 0, NOW())",
    )
    lab.execute(
        lab.writer,
        f"CREATE FUNCTION {mariadb_schema}.aurora_server_id() RETURNS TEXT RETURN 'a'",
    )
    spec = _spec(lab, replica_status_schema=mariadb_schema)
    with pytest.raises(DiscoveryError, match=r"row 0: CPU must be a number, got 'lots'"):
        _fetch(lab, "aurora-mysql", lab.writer, spec)


def test_aurora_postgresql_rejects_rows_of_the_wrong_types(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql
    spec = _spec(lab)
    schema = f"garbage_{uuid.uuid4().hex[:8]}"
    adapter = adapter_for("postgresql")
    with _connected(lab, spec, lab.writer) as conn:
        adapter.query(conn, f"CREATE SCHEMA {schema}")
        try:
            adapter.query(
                conn,
                f"CREATE FUNCTION {schema}.aurora_replica_status() RETURNS TABLE (server_id text,"
                " session_id text, cpu text, replica_lag_in_msec real,"
                " last_update_timestamp timestamptz) LANGUAGE sql AS"
                " $$ SELECT 'a', 'MASTER_SESSION_ID', 'lots', 0::real, now() $$",
            )
            # Ahead of pg_catalog, the stand-in shadows the lab's function on this connection.
            adapter.query(conn, f"SET search_path = {schema}, pg_catalog")
            with pytest.raises(DiscoveryError, match=r"row 0: cpu must be a number, got 'lots'"):
                source_for("aurora-postgresql").fetch(conn, _context(lab, spec))
        finally:
            adapter.query(conn, f"DROP SCHEMA {schema} CASCADE")


# -- probe and static ---------------------------------------------------------------------------


def _instance_hosts(lab: Lab) -> tuple[tuple[str, int], ...]:
    return tuple((n.host, n.port) for n in lab.nodes)


def test_probe_asks_every_listed_host_for_its_role(aurora_lab: Lab) -> None:
    spec = _without_pattern(_spec(aurora_lab), _instance_hosts(aurora_lab))
    answer = source_for("probe").fetch(None, _context(aurora_lab, spec))
    assert _rows(answer) == _truth(aurora_lab)
    # A replica whose threads are (re)connecting reports no lag (None): unknown, never negative.
    assert all(h.lag_ms is None or h.lag_ms >= 0 for h in answer.rows)
    assert [h.lag_ms for h in answer.rows if h.role is Role.WRITER] == [0.0]


def test_probe_leaves_out_the_crashed_writer_after_failover(aurora_lab: Lab) -> None:
    spec = _without_pattern(_spec(aurora_lab), _instance_hosts(aurora_lab))
    aurora_lab.failover()
    answer = source_for("probe").fetch(None, _context(aurora_lab, spec))
    assert _rows(answer) == _truth(aurora_lab, running_only=True)
    assert [h.instance_id for h in answer.rows if h.role is Role.WRITER] == [aurora_lab.writer.id]


@pytest.mark.timeout(120)
def test_probe_leaves_out_a_hung_host(aurora_lab: Lab) -> None:
    hung = aurora_lab.readers[0]
    spec = _without_pattern(_spec(aurora_lab, connect_timeout=3), _instance_hosts(aurora_lab))
    aurora_lab.hang(hung)
    answer = source_for("probe").fetch(None, _context(aurora_lab, spec))
    assert _rows(answer) == {row for row in _truth(aurora_lab) if row[0] != hung.id}


def test_static_takes_the_first_host_as_writer(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0]
    hosts = ((reader.host, reader.port), (aurora_lab.writer.host, aurora_lab.writer.port))
    spec = _without_pattern(_spec(aurora_lab), hosts)
    answer = source_for("static").fetch(None, _context(aurora_lab, spec))
    assert [(h.instance_id, h.role) for h in answer.rows] == [
        (reader.id, Role.WRITER),
        (aurora_lab.writer.id, Role.READER),
    ]


# -- auto-detection ------------------------------------------------------------------------------


def test_detect_picks_the_aurora_source_on_the_lab(
    aurora_lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    spec = _spec(aurora_lab)
    caplog.set_level(logging.INFO, logger="aurora_smartdriver.discovery")
    with _connected(aurora_lab, spec, aurora_lab.readers[0]) as conn:
        source = detect(conn, spec.engine, _context(aurora_lab, spec))
    assert source.name == _aurora(aurora_lab)
    assert f"topology source for {spec.hosts[0][0]}" in caplog.text
    assert source.name in caplog.text
    assert spec.password is not None and spec.password not in caplog.text


def test_detect_picks_rds_multi_az_without_aurora_metadata(aurora_lab: Lab) -> None:
    postgresql = aurora_lab.state().engine == "postgresql"
    # MySQL: the configured replica_host_status table does not exist.
    spec = _spec(aurora_lab) if postgresql else _spec(aurora_lab, replica_status_schema="nope")
    with _connected(aurora_lab, spec, aurora_lab.writer) as conn:
        if postgresql:  # this session's rds.extensions no longer lists aurora_stat_utils
            adapter_for(spec.engine).query(conn, "SET rds.extensions = 'rds_tools'")
        assert detect(conn, spec.engine, _context(aurora_lab, spec)).name == "rds-multi-az"


def test_detect_falls_back_to_probe_without_any_metadata(aurora_lab_mariadb: Lab) -> None:
    lab = aurora_lab_mariadb
    user = f"plain_{uuid.uuid4().hex[:8]}"
    lab.execute(lab.writer, f"CREATE USER '{user}'@'%' IDENTIFIED BY 'plain-password'")
    try:
        lab.execute(lab.writer, f"GRANT SELECT ON app.* TO '{user}'@'%'")
        spec = dataclasses.replace(
            _spec(lab, replica_status_schema="no_such_schema"),
            user=user,
            password="plain-password",
        )
        with _connected(lab, spec, lab.writer) as conn:
            assert detect(conn, "mysql", _context(lab, spec)).name == "probe"
    finally:
        lab.execute(lab.writer, f"DROP USER '{user}'@'%'")


def test_source_for_refuses_unknown_names_and_other_engines() -> None:
    with pytest.raises(ConfigError, match="unknown topology source"):
        source_for("auto")
    with pytest.raises(ConfigError, match="does not fit a postgresql cluster"):
        source_for("aurora-mysql", "postgresql")
    assert source_for("rds-multi-az", "mysql").name == "rds-multi-az"


@given(st.booleans(), st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)))
def test_reported_lag_is_never_negative_and_zero_for_the_writer(
    is_writer: bool, lag: float | None
) -> None:
    reported = reported_lag(is_writer, lag)
    if is_writer:
        assert reported == 0.0
    else:
        assert reported == (lag if lag is not None and lag >= 0 else None)


# -- instance ids for host lists --------------------------------------------------------------

_label = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
_name = st.lists(_label, min_size=1, max_size=3).map(".".join)
_ipv4 = st.ip_addresses(v=4).map(str)
_host = st.one_of(_name, _ipv4, st.sampled_from(["::1", "fe80::1"]))
_hosts = st.lists(st.tuples(_host, st.integers(1, 65535)), min_size=1, max_size=6)


@given(_hosts)
def test_distinct_hosts_get_distinct_instance_ids(hosts: list[tuple[str, int]]) -> None:
    ids = instance_ids(hosts)
    by_pair: dict[tuple[str, int], str] = {}
    for (host, port), instance_id in zip(hosts, ids, strict=True):
        assert by_pair.setdefault((host.lower(), port), instance_id) == instance_id
    assert len(set(by_pair.values())) == len(by_pair)


def test_rds_instance_endpoints_get_their_instance_ids() -> None:
    hosts = [
        ("orders-1.abc123.us-east-1.rds.amazonaws.com", 5432),
        ("orders-2.abc123.us-east-1.rds.amazonaws.com", 5432),
        ("10.0.0.7", 5432),
        ("db.east.example", 5432),
        ("db.west.example", 5432),
    ]
    assert instance_ids(hosts) == [
        "orders-1",
        "orders-2",
        "10.0.0.7",
        "db.east.example",
        "db.west.example",
    ]


# -- rds-api with moto ----------------------------------------------------------------------------


@pytest.fixture
def rds(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A moto RDS with cluster `orders` of three instances, `orders-1` the writer."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("rds", region_name="us-east-1")
        client.create_db_cluster(
            DBClusterIdentifier="orders",
            Engine="aurora-postgresql",
            MasterUsername="admin",
            MasterUserPassword="not-a-secret-123",
        )
        for index in (1, 2, 3):
            client.create_db_instance(
                DBInstanceIdentifier=f"orders-{index}",
                DBClusterIdentifier="orders",
                Engine="aurora-postgresql",
                DBInstanceClass="db.r6g.large",
            )
        yield client


def _rds_api_rows(spec: dsn.ConnectionSpec) -> set[tuple[str, str, int, Role]]:
    return _rows(source_for("rds-api").fetch(None, SourceContext.for_spec(spec)))


def test_rds_api_lists_the_members_through_the_pattern(rds: Any) -> None:
    endpoint = rds.describe_db_clusters(DBClusterIdentifier="orders")["DBClusters"][0]["Endpoint"]
    spec = dsn.parse(f"postgresql://app@{endpoint}:5432/app")
    domain = endpoint.split(".", 1)[1].removeprefix("cluster-")
    expected = {
        (f"orders-{i}", f"orders-{i}.{domain}", 5432, Role.WRITER if i == 1 else Role.READER)
        for i in (1, 2, 3)
    }
    assert _rds_api_rows(spec) == expected
    rds.failover_db_cluster(DBClusterIdentifier="orders", TargetDBInstanceIdentifier="orders-3")
    assert {(i, r) for i, _, _, r in _rds_api_rows(spec)} == {
        ("orders-1", Role.READER),
        ("orders-2", Role.READER),
        ("orders-3", Role.WRITER),
    }


def test_rds_api_without_a_pattern_takes_the_instances_endpoints(rds: Any) -> None:
    spec = dsn.parse("postgresql://app@10.1.2.3:5432/app?cluster_id=orders&region=us-east-1")
    endpoints = {
        i["DBInstanceIdentifier"]: (i["Endpoint"]["Address"], i["Endpoint"]["Port"])
        for i in rds.describe_db_instances()["DBInstances"]
    }
    assert _rds_api_rows(spec) == {
        (i, *endpoints[i], Role.WRITER if i == "orders-1" else Role.READER) for i in endpoints
    }


def test_rds_api_for_an_unknown_cluster_says_so(rds: Any) -> None:
    spec = dsn.parse("postgresql://app@10.1.2.3/app?cluster_id=nope&region=us-east-1")
    with pytest.raises(DiscoveryError, match="'nope'"):
        _rds_api_rows(spec)


def test_rds_api_needs_a_region_and_a_cluster_id(rds: Any) -> None:
    with pytest.raises(ConfigError, match="region") as caught:
        _rds_api_rows(dsn.parse("postgresql://app@10.1.2.3/app?cluster_id=orders"))
    assert caught.value.parameter == "region"
    with pytest.raises(ConfigError, match="cluster identifier") as caught:
        _rds_api_rows(dsn.parse("postgresql://app@10.1.2.3/app?region=us-east-1"))
    assert caught.value.parameter == "cluster_id"


# -- which writer an answer confirms (pure) -------------------------------------------------------

_roles = st.sampled_from([Role.WRITER, Role.READER])
_answer_rows = st.lists(_roles, max_size=5).map(
    lambda roles: tuple(
        Host(f"i{index}", f"10.0.0.{index + 1}", 5432, role) for index, role in enumerate(roles)
    )
)


@given(
    _answer_rows,
    st.one_of(st.none(), st.sampled_from(["i0", "i1", "x"])),
    st.sampled_from(list(Role)),
    st.booleans(),
)
def test_an_answer_confirms_only_a_writer_that_said_so_itself(
    rows: tuple[Host, ...], answerer: str | None, role: Role, self_reported: bool
) -> None:
    answer = Answer(rows, 0.0, answerer, role, self_reported=self_reported)
    confirmed = answer.confirmed_writer
    writers = [h.instance_id for h in rows if h.role is Role.WRITER]
    if role is Role.WRITER and answerer is not None:
        assert confirmed == answerer  # the instance that answered says it is the writer
    elif self_reported and len(writers) == 1:
        assert confirmed == writers[0]  # it told the probe so itself
    else:
        assert confirmed is None  # metadata alone, or no single writer: not confirmed


def test_static_and_rds_api_rows_confirm_no_writer_and_probe_needs_no_monitor_connection() -> None:
    spec = dsn.parse("postgresql://app@10.0.0.1,10.0.0.2/app?topology_source=static")
    answer = source_for("static").fetch(None, SourceContext.for_spec(spec))
    assert answer.rows[0].role is Role.WRITER
    assert answer.confirmed_writer is None  # the DSN's word, not the node's: ask it
    assert [source_for(n).uses_connection for n in ("probe", "static", "rds-api")] == [
        False,
        False,
        False,
    ]
    assert all(source_for(n).uses_connection for n in ("aurora-postgresql", "rds-multi-az"))
