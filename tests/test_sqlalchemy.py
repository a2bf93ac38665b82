"""The SQLAlchemy dialects: URLs, aurora_role routing, reset on return, pools across failover."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy.exc
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from aurora_smartdriver import ConfigError, dsn
from aurora_smartdriver import psycopg as asd_psycopg
from aurora_smartdriver import pymysql as asd_pymysql
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.sqlalchemy import (
    AuroraMariaDBDialect_pymysql,
    AuroraMySQLDialect_pymysql,
    AuroraPGDialect_psycopg,
    engine_url,
)
from aurora_smartdriver.sqlalchemy._options import ROLES, role_of
from tests.test_dsn import LAB_MYSQL, LAB_PG, specs

FOUND_ROWS = 2


def _url(lab: Lab, **query: str) -> Any:
    # A cluster of its own per engine: the first user of a cluster decides its pool settings.
    query.setdefault("cluster_id", uuid.uuid4().hex)
    query.setdefault("fast_refresh_interval", "0.05s")
    return engine_url(lab.dsn).update_query_dict(query)


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def _engine(lab: Lab, made: list[Engine], query: dict[str, str] | None = None, **kw: Any) -> Engine:
    engine = create_engine(_url(lab, **(query or {})), **kw)
    made.append(engine)
    return engine


def _is_replica_sql(lab: Lab) -> str:
    return "SELECT pg_is_in_recovery()" if lab.engine.name == "postgresql" else "SELECT @@read_only"


def _instance_sql(lab: Lab) -> str:
    if lab.engine.name == "postgresql":
        return "SELECT aurora_db_instance_identifier()"
    return "SELECT aurora_lab.aurora_server_id()"


def _where(lab: Lab, conn: Any) -> tuple[bool, str]:
    """(is the server a replica, its instance id), as the server itself says."""
    replica = bool(conn.execute(text(_is_replica_sql(lab))).scalar())
    return replica, str(conn.execute(text(_instance_sql(lab))).scalar())


def _reader_ids(lab: Lab) -> set[str]:
    return {node.id for node in lab.readers}


# -- entry points and URLs (no database) --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "dialect", "dbapi"),
    [
        ("postgresql+aurora_psycopg://u:p@h.example/app", AuroraPGDialect_psycopg, asd_psycopg),
        ("mysql+aurora_pymysql://u:p@h.example/app", AuroraMySQLDialect_pymysql, asd_pymysql),
        ("mariadb+aurora_pymysql://u:p@h.example/app", AuroraMariaDBDialect_pymysql, asd_pymysql),
    ],
)
def test_entry_points_give_the_dialects_over_the_library_dbapi(
    url: str, dialect: type[Any], dbapi: Any
) -> None:
    engine = create_engine(url)
    assert type(engine.dialect) is dialect
    assert engine.dialect.loaded_dbapi is dbapi


def test_mariadb_url_is_the_mariadb_flavour() -> None:
    engine = create_engine("mariadb+aurora_pymysql://u:p@h.example/app")
    assert engine.dialect.name == "mariadb"
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    assert dsn.parse("mariadb://", **kwargs).mariadb


def test_library_parameters_in_the_query_reach_the_settings() -> None:
    engine = create_engine(
        "postgresql+aurora_psycopg://app:pw@h.example:5433/app?failover_timeout=7"
        "&reader_strategy=random&pool_max_size=30&instance_host_pattern=?.x.example"
    )
    cargs, kwargs = engine.dialect.create_connect_args(engine.url)
    spec = dsn.parse(*cargs, **kwargs)
    assert spec.hosts == (("h.example", 5433),)
    assert (spec.user, spec.password, spec.database) == ("app", "pw", "app")
    assert spec.settings.failover_timeout == 7
    assert spec.settings.reader_strategy == "random"
    assert spec.settings.pool_max_size == 30
    assert spec.settings.instance_host_pattern == "?.x.example"


def test_driver_parameters_pass_through_and_pymysql_gets_found_rows() -> None:
    pg = create_engine("postgresql+aurora_psycopg://h.example/app?sslmode=require")
    _, kwargs = pg.dialect.create_connect_args(pg.url)
    assert dsn.parse("postgresql://", **kwargs).driver_params == {"sslmode": "require"}
    my = create_engine("mysql+aurora_pymysql://h.example/app?charset=utf8mb4&client_flag=1")
    _, kwargs = my.dialect.create_connect_args(my.url)
    params = dsn.parse("mysql://", **kwargs).driver_params
    assert params == {"charset": "utf8mb4", "client_flag": 1 | FOUND_ROWS}


def test_several_hosts_go_in_repeated_host_items() -> None:
    engine = create_engine("postgresql+aurora_psycopg:///app?host=a.example:5432&host=b.example")
    cargs, kwargs = engine.dialect.create_connect_args(engine.url)
    assert dsn.parse(*cargs, **kwargs).hosts == (("a.example", 5432), ("b.example", 5432))


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("failover_timout=30", "failover_timeout"),  # a typo of a library parameter
        ("ssl_check_hostname=true", None),  # SQLAlchemy's own PyMySQL spelling: not the library's
        ("sslmode=require", None),  # a libpq parameter on a MySQL URL
    ],
)
def test_unknown_query_parameter_is_a_config_error_at_create_engine(
    query: str, names: str | None
) -> None:
    scheme = "postgresql+aurora_psycopg" if "timout" in query else "mysql+aurora_pymysql"
    with pytest.raises(ConfigError) as caught:
        create_engine(f"{scheme}://app:S3cret@h.example/app?{query}")
    assert caught.value.parameter == query.split("=", maxsplit=1)[0]
    assert "S3cret" not in str(caught.value)
    if names:
        assert names in str(caught.value)


def test_engine_url_keeps_the_secrets_out_of_its_text() -> None:
    url = engine_url(LAB_PG)
    assert url.drivername == "postgresql+aurora_psycopg"
    assert "S3cr3t-x" not in str(url) and "S3cr3t-x" not in repr(url)
    assert url.render_as_string(hide_password=False).count("S3cr3t-x") == 1
    assert engine_url(LAB_MYSQL).drivername == "mysql+aurora_pymysql"


@settings(max_examples=80, deadline=None)
@given(specs())
def test_engine_url_means_what_the_dsn_means(spec: dsn.ConnectionSpec) -> None:
    url = engine_url(spec.to_dsn())
    dialect = create_engine(url).dialect
    cargs, kwargs = dialect.create_connect_args(url)
    back = dsn.parse(*cargs, **kwargs)
    if spec.engine == "mysql":
        flag = int(spec.driver_params.get("client_flag", 0)) | FOUND_ROWS
        spec = spec.with_overrides(client_flag=flag)
    assert back == spec


@given(st.one_of(st.text(max_size=10), st.sampled_from([*ROLES, " Reader ", "WRITER"])))
def test_aurora_role_accepts_writer_and_reader_only(value: str) -> None:
    if value.strip().lower() in ROLES:
        assert role_of(value) == value.strip().lower()
    else:
        with pytest.raises(ConfigError):
            role_of(value)


@pytest.mark.parametrize("exc_name", ["FailoverSucceeded", "TransactionOutcomeUnknown"])
@pytest.mark.parametrize("module", [asd_psycopg, asd_pymysql], ids=["psycopg", "pymysql"])
def test_failover_outcomes_are_not_disconnects(module: Any, exc_name: str) -> None:
    url = (
        "postgresql+aurora_psycopg://h/a" if module is asd_psycopg else "mysql+aurora_pymysql://h/a"
    )
    dialect = create_engine(url).dialect
    assert not dialect.is_disconnect(getattr(module, exc_name)("moved"), None, None)


@pytest.mark.parametrize("exc_name", ["NoHostAvailable", "NoWriterAvailable"])
@pytest.mark.parametrize("module", [asd_psycopg, asd_pymysql], ids=["psycopg", "pymysql"])
def test_no_host_is_a_disconnect(module: Any, exc_name: str) -> None:
    url = (
        "postgresql+aurora_psycopg://h/a" if module is asd_psycopg else "mysql+aurora_pymysql://h/a"
    )
    dialect = create_engine(url).dialect
    assert dialect.is_disconnect(getattr(module, exc_name)("gone"), None, None)


# -- routing on the lab -------------------------------------------------------------------------


def test_default_connection_is_on_the_writer(aurora_lab: Lab, engines: list[Engine]) -> None:
    engine = _engine(aurora_lab, engines)
    with engine.connect() as conn:
        assert _where(aurora_lab, conn) == (False, aurora_lab.writer.id)


def test_aurora_role_reader_on_a_connection_reaches_a_replica(
    aurora_lab: Lab, engines: list[Engine]
) -> None:
    engine = _engine(aurora_lab, engines)
    with engine.connect() as conn:
        conn.execution_options(aurora_role="reader")
        replica, instance = _where(aurora_lab, conn)
        assert replica and instance in _reader_ids(aurora_lab)
        conn.rollback()
        conn.execution_options(aurora_role="writer")
        assert _where(aurora_lab, conn) == (False, aurora_lab.writer.id)


def test_aurora_role_reader_on_an_engine_reaches_a_replica(
    aurora_lab: Lab, engines: list[Engine]
) -> None:
    readers = _engine(aurora_lab, engines).execution_options(aurora_role="reader")
    with readers.connect() as conn:
        replica, instance = _where(aurora_lab, conn)
    assert replica and instance in _reader_ids(aurora_lab)


def test_read_only_session_reads_from_a_replica(aurora_lab: Lab, engines: list[Engine]) -> None:
    engine = _engine(aurora_lab, engines)
    ReadSession = sessionmaker(bind=engine.execution_options(aurora_role="reader"))
    with ReadSession() as session:
        replica, instance = _where(aurora_lab, session)
    assert replica and instance in _reader_ids(aurora_lab)
    with Session(engine) as session:
        assert _where(aurora_lab, session) == (False, aurora_lab.writer.id)


def test_postgresql_readonly_routes_to_a_replica(
    aurora_lab_postgresql: Lab, engines: list[Engine]
) -> None:
    lab = aurora_lab_postgresql
    engine = _engine(lab, engines)
    with engine.connect().execution_options(postgresql_readonly=True) as conn:
        replica, instance = _where(lab, conn)
    assert replica and instance in _reader_ids(lab)


def test_connection_back_in_the_pool_is_on_the_writer(
    aurora_lab: Lab, engines: list[Engine]
) -> None:
    engine = _engine(aurora_lab, engines, pool_size=1, max_overflow=0)
    readers = engine.execution_options(aurora_role="reader")
    with readers.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert _where(aurora_lab, conn)[0]  # left with a transaction open
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is dbapi  # the same pooled connection
        assert _where(aurora_lab, conn) == (False, aurora_lab.writer.id)


def test_raw_read_only_switch_is_undone_on_return(aurora_lab: Lab, engines: list[Engine]) -> None:
    engine = _engine(aurora_lab, engines, pool_size=1, max_overflow=0)
    raw = engine.raw_connection()
    raw.dbapi_connection.read_only = True  # type: ignore[union-attr]
    raw.close()
    with engine.connect() as conn:
        assert _where(aurora_lab, conn) == (False, aurora_lab.writer.id)


def test_aurora_role_cannot_change_inside_a_transaction(
    aurora_lab: Lab, engines: list[Engine]
) -> None:
    engine = _engine(aurora_lab, engines)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        with pytest.raises(sqlalchemy.exc.InvalidRequestError, match="aurora_role"):
            conn.execution_options(aurora_role="reader")


def test_invalid_aurora_role_is_a_config_error(aurora_lab: Lab, engines: list[Engine]) -> None:
    engine = _engine(aurora_lab, engines)
    with engine.connect() as conn, pytest.raises(ConfigError, match="aurora_role"):
        conn.execution_options(aurora_role="primary")


def test_mysql_isolation_level_follows_a_move(
    aurora_lab_mariadb: Lab, engines: list[Engine]
) -> None:
    engine = _engine(aurora_lab_mariadb, engines, isolation_level="SERIALIZABLE")
    with engine.connect() as conn:
        conn.execution_options(aurora_role="reader")
        level = conn.execute(text("SELECT @@session.tx_isolation")).scalar()
        assert _where(aurora_lab_mariadb, conn)[0]
    assert level == "SERIALIZABLE"


# -- pools across failover ----------------------------------------------------------------------


class PoolWatch:
    """Counts SQLAlchemy pool events of an engine."""

    def __init__(self, engine: Engine) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        for name in ("connect", "invalidate", "soft_invalidate", "close"):
            event.listen(engine.pool, name, self._count(name))

    def _count(self, name: str) -> Any:
        def listener(*args: Any) -> None:
            with self._lock:
                self.counts[name] += 1

        return listener


def _table(lab: Lab, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS sa_fo (id VARCHAR(64) PRIMARY KEY)"))


def test_pool_of_20_survives_a_failover_without_invalidations(
    aurora_lab: Lab, engines: list[Engine]
) -> None:
    threads_n = 20
    engine = _engine(aurora_lab, engines, pool_size=threads_n, max_overflow=0)
    watch = PoolWatch(engine)
    _table(aurora_lab, engine)
    failed_over = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()
    seen: list[list[tuple[str, str, bool]]] = [[] for _ in range(threads_n)]
    acked: list[str] = []
    barrier = threading.Barrier(threads_n + 1)

    def work(i: int) -> None:
        with engine.connect() as conn:  # all 20 connections are open before the failover
            conn.execute(text("SELECT 1"))
            barrier.wait(60)
        while not stop.is_set():
            key = uuid.uuid4().hex
            after = failed_over.is_set()
            try:
                with engine.begin() as conn:
                    conn.execute(text("INSERT INTO sa_fo (id) VALUES (:id)"), {"id": key})
                    instance = conn.connection.dbapi_connection.instance_id  # type: ignore[union-attr]
                with lock:
                    acked.append(key)
                seen[i].append(("ok", instance, after))
            except sqlalchemy.exc.DBAPIError as exc:
                seen[i].append((type(exc.orig).__name__, "", after))
            time.sleep(0.01)

    workers = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads_n)]
    for worker in workers:
        worker.start()
    barrier.wait(60)
    connects_before = watch.counts["connect"]
    old_writer = aurora_lab.writer.id
    time.sleep(0.5)  # the threads write on the old writer for a moment
    before = [list(s) for s in seen]  # what the threads saw before the writer died
    report = aurora_lab.failover()
    failed_over.set()

    def settled() -> bool:
        new = report.new_writer
        return all(sum(k == "ok" and inst == new and aft for k, inst, aft in s) >= 3 for s in seen)

    deadline = time.monotonic() + 90
    while not settled() and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for worker in workers:
        worker.join(30)

    outcomes = Counter(kind for s in seen for kind, _, _ in s)
    assert set(outcomes) <= {"ok", "FailoverSucceeded", "TransactionOutcomeUnknown"}, outcomes
    assert settled(), seen
    assert all(inst == old_writer for s in before for kind, inst, _ in s if kind == "ok")
    # Healthy connections stay: no invalidation, and the pool opened no connection after the
    # failover (each library connection moved to the new writer underneath).
    assert connects_before == threads_n
    assert watch.counts["connect"] == threads_n
    assert watch.counts["invalidate"] == 0 and watch.counts["soft_invalidate"] == 0
    with engine.connect() as conn:
        stored = {row[0] for row in conn.execute(text("SELECT id FROM sa_fo"))}
    assert set(acked) <= stored  # nothing acknowledged was lost


def test_no_writer_invalidates_the_connection(aurora_lab: Lab, engines: list[Engine]) -> None:
    engine = _engine(aurora_lab, engines, {"failover_timeout": "1s"}, pool_size=2)
    watch = PoolWatch(engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.rollback()
        aurora_lab.crash(aurora_lab.writer)  # and no failover: no writer
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            conn.execute(text("SELECT 1"))
    assert type(caught.value.orig).__name__ == "NoWriterAvailable"
    assert caught.value.connection_invalidated
    assert watch.counts["invalidate"] == 1


def test_failover_succeeded_keeps_the_connection(aurora_lab: Lab, engines: list[Engine]) -> None:
    engine = _engine(aurora_lab, engines, pool_size=1, max_overflow=0)
    watch = PoolWatch(engine)
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        conn.execute(text("SELECT 1"))
        report = aurora_lab.failover()
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            conn.execute(text("SELECT 1"))
        assert type(caught.value.orig).__name__ == "FailoverSucceeded"
        assert not caught.value.connection_invalidated
        conn.rollback()
        assert _where(aurora_lab, conn) == (False, report.new_writer)
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is dbapi
    assert watch.counts["invalidate"] == 0


def test_pre_ping_counts_a_failed_over_connection_as_alive(
    aurora_lab: Lab, engines: list[Engine]
) -> None:
    engine = _engine(aurora_lab, engines, pool_size=1, max_overflow=0, pool_pre_ping=True)
    watch = PoolWatch(engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    report = aurora_lab.failover()
    with engine.connect() as conn:  # the ping fails over; the checkout goes on
        assert _where(aurora_lab, conn) == (False, report.new_writer)
    assert watch.counts["invalidate"] == 0
    assert watch.counts["connect"] == 1
