"""Drop-in behaviour of the connection proxy: the drivers' own idioms, settings that follow a
connection to a new node and never to the next borrower, closed connections, threads, the
garbage collector."""

from __future__ import annotations

import gc
import threading
import time
import uuid
import warnings
from typing import Any

import psycopg
import pymysql
import pytest
from psycopg.rows import dict_row
from psycopg.types.enum import EnumInfo, register_enum

import aurora_smartdriver as asd
from aurora_smartdriver.lab import Lab


def _connect(lab: Lab, **kwargs: Any) -> Any:
    kwargs.setdefault("cluster_id", uuid.uuid4().hex)
    kwargs.setdefault("fast_refresh_interval", "0.05s")
    return asd.connect(lab.dsn, **kwargs)


def _cluster(lab: Lab, **kwargs: Any) -> asd.Cluster:
    kwargs.setdefault("cluster_id", uuid.uuid4().hex)
    kwargs.setdefault("fast_refresh_interval", "0.05s")
    return asd.Cluster(lab.dsn, **kwargs)


# -- PyMySQL ----------------------------------------------------------------------------------


def test_pymysql_execute_takes_args_by_keyword(aurora_lab_mariadb: Lab) -> None:
    conn = _connect(aurora_lab_mariadb)
    try:
        cur = conn.cursor()
        cur.execute("SELECT %s + 1", args=(41,))
        assert cur.fetchone() == (42,)
    finally:
        conn.close()


def test_pymysql_open_is_false_after_close(aurora_lab_mariadb: Lab) -> None:
    conn = _connect(aurora_lab_mariadb)
    assert conn.open is True
    conn.close()
    assert conn.open is False


# -- psycopg ----------------------------------------------------------------------------------


def test_psycopg_set_autocommit_is_seen_and_survives_a_failover(
    aurora_lab_postgresql: Lab,
) -> None:
    conn = _connect(aurora_lab_postgresql)
    try:
        conn.set_autocommit(True)
        assert conn.autocommit is True
        aurora_lab_postgresql.failover()
        with pytest.raises(asd.FailoverSucceeded):
            conn.execute("SELECT 1")
        assert conn._raw.autocommit is True
        conn.set_isolation_level(psycopg.IsolationLevel.SERIALIZABLE)
        assert conn.isolation_level == psycopg.IsolationLevel.SERIALIZABLE
    finally:
        conn.close()


def test_psycopg_closed_connection_answers_like_psycopg(aurora_lab_postgresql: Lab) -> None:
    cluster = _cluster(aurora_lab_postgresql)
    try:
        with cluster.writer() as conn:
            pass
        assert conn.closed
        assert conn.broken is False
        conn.cancel()  # psycopg: nothing to cancel
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        cluster.close()


def test_psycopg_functions_that_take_a_connection_accept_the_proxy(
    aurora_lab_postgresql: Lab,
) -> None:
    conn = _connect(aurora_lab_postgresql, autocommit="on")
    name = f"mood_{uuid.uuid4().hex[:8]}"
    try:
        conn.execute(f"CREATE TYPE {name} AS ENUM ('sad', 'happy')")
        info = EnumInfo.fetch(conn, name)
        assert info is not None
        register_enum(info, conn)
        assert conn.execute(f"SELECT 'happy'::{name}").fetchone()[0].name == "happy"
        assert isinstance(conn, psycopg.Connection)
        assert isinstance(conn, asd.Connection)
    finally:
        conn.execute(f"DROP TYPE IF EXISTS {name}")
        conn.close()


def test_psycopg_cursors_have_no_callproc(aurora_lab_postgresql: Lab) -> None:
    conn = _connect(aurora_lab_postgresql)
    try:
        assert not hasattr(conn.cursor(), "callproc")  # as psycopg 3's own cursors
    finally:
        conn.close()


def test_row_factory_follows_the_connection_through_a_failover(
    aurora_lab_postgresql: Lab,
) -> None:
    conn = _connect(aurora_lab_postgresql, autocommit="on")
    try:
        conn.row_factory = dict_row
        aurora_lab_postgresql.failover()
        with pytest.raises(asd.FailoverSucceeded):
            conn.execute("SELECT 1 AS a")
        assert conn.execute("SELECT 1 AS a").fetchone() == {"a": 1}
    finally:
        conn.close()


def test_row_factory_does_not_reach_the_next_borrower(aurora_lab_postgresql: Lab) -> None:
    cluster = _cluster(aurora_lab_postgresql, pool_max_size=1)
    try:
        with cluster.writer() as conn:
            conn.row_factory = dict_row
            conn.prepare_threshold = None
            assert conn.execute("SELECT 1 AS a").fetchone() == {"a": 1}
        with cluster.writer() as conn:
            assert conn.execute("SELECT 1 AS a").fetchone() == (1,)
            assert conn.prepare_threshold == 5
    finally:
        cluster.close()


# -- both -------------------------------------------------------------------------------------


def test_a_cursor_keeps_its_rows_and_works_after_a_move_to_a_reader(aurora_lab: Lab) -> None:
    engine = aurora_lab.state().engine
    conn = _connect(aurora_lab, autocommit="on" if engine == "postgresql" else True)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1 UNION ALL SELECT 2")
        assert cur.fetchone() == (1,)
        conn.read_only = True  # moves to a reader now: no transaction open
        assert conn.instance_id != aurora_lab.writer.id
        assert cur.fetchone() == (2,)  # fetched before the move: still there
        cur.execute("SELECT 3")  # runs on the reader
        assert cur.fetchone() == (3,)
    finally:
        conn.close()


def test_two_threads_on_one_connection_fail_over_once(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql
    cluster = _cluster(lab, pool_max_size=4)
    try:
        with cluster.writer() as conn:
            conn.autocommit = True
            barrier = threading.Barrier(2)
            seen: list[BaseException | None] = []

            def work() -> None:
                barrier.wait()
                try:
                    conn.execute("SELECT 1")
                    seen.append(None)
                except BaseException as exc:
                    seen.append(exc)

            lab.failover()
            threads = [threading.Thread(target=work) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert len(seen) == 2
            # The thread that waited behind the other's statement cannot know what that one
            # did: unknown is the honest answer there.
            told = (asd.FailoverSucceeded, asd.TransactionOutcomeUnknown)
            assert all(e is None or isinstance(e, told) for e in seen), seen
            assert conn.instance_id == lab.writer.id
        stats = cluster.stats()["pools"]
        assert sum(p.in_use for p in stats.values()) == 0
    finally:
        cluster.close()


def test_a_connection_never_closed_is_given_back_outside_the_garbage_collector(
    aurora_lab: Lab,
) -> None:
    cluster_id = uuid.uuid4().hex
    keep = _connect(aurora_lab, cluster_id=cluster_id)  # keeps the cluster's runtime alive
    try:
        closed = keep._runtime.metrics.closed
        before = closed.total()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            for _ in range(20):
                conn = _connect(aurora_lab, cluster_id=cluster_id)
                conn.cursor().execute("SELECT 1")
                del conn
                gc.collect()
        ours = [w for w in caught if "was never closed" in str(w.message)]
        assert len(ours) == 20
        _connect(aurora_lab, cluster_id=cluster_id).close()  # gives back the abandoned ones
        assert closed.total() - before == 21
    finally:
        keep.close()


def test_pymysql_error_after_a_driver_closed_socket_is_not_other() -> None:
    from aurora_smartdriver.drivers import adapter_for

    assert adapter_for("mysql").error_kind(pymysql.err.InterfaceError(0, "")) == "disconnect"


def test_pymysql_error_numbers_survive_a_failover(aurora_lab_mariadb: Lab) -> None:
    conn = _connect(aurora_lab_mariadb, autocommit=True)
    try:
        aurora_lab_mariadb.failover()
        with pytest.raises(pymysql.OperationalError) as caught:
            conn.cursor().execute("SELECT 1")
        assert isinstance(caught.value, asd.FailoverSucceeded)
        assert caught.value.args[0] in (2006, 2013)  # what PyMySQL code tests
        assert "reconnected to" in caught.value.args[1]
    finally:
        conn.close()


def test_psycopg_error_details_survive_a_failover(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql
    conn = _connect(lab, autocommit="on")
    try:
        old = lab.writer.id
        lab.execute(old, "ALTER SYSTEM SET default_transaction_read_only = on")
        lab.execute(old, "SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while lab.execute(old, "SHOW default_transaction_read_only")[0][0] != "on":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        threading.Timer(1.0, lab.failover).start()
        with pytest.raises(asd.FailoverSucceeded) as caught:
            conn.execute("CREATE TEMPORARY TABLE t_details (a int)")
        assert caught.value.sqlstate == "25006"
        assert caught.value.diag.sqlstate == "25006"
    finally:
        conn.close()


def test_a_refused_read_only_switch_is_not_reported_as_done(aurora_lab_postgresql: Lab) -> None:
    conn = _connect(aurora_lab_postgresql, role="reader")
    try:
        conn.execute("SELECT 1")  # a transaction is open: psycopg refuses the switch
        with pytest.raises(psycopg.ProgrammingError):
            conn.read_only = True
        assert conn.read_only is False
    finally:
        conn.close()


def test_cluster_reset_undoes_sql_session_state_before_the_next_borrower(
    aurora_lab_postgresql: Lab,
) -> None:
    resets: list[Any] = []

    def reset(raw: Any) -> None:
        resets.append(raw)
        raw.execute("RESET search_path")

    cluster = _cluster(aurora_lab_postgresql, pool_max_size=1, reset=reset)
    try:
        with cluster.writer() as conn:
            conn.execute("SET search_path TO pg_catalog")
        with cluster.writer() as conn:
            assert conn.execute("SHOW search_path").fetchone()[0] != "pg_catalog"
        assert len(resets) == 2
    finally:
        cluster.close()


def test_cluster_reset_must_be_a_function(aurora_lab_postgresql: Lab) -> None:
    with pytest.raises(asd.ConfigError, match="reset"):
        asd.Cluster(aurora_lab_postgresql.dsn, reset="DISCARD ALL")  # type: ignore[arg-type]


def test_pymysql_no_writer_carries_a_connection_error_number(aurora_lab_mariadb: Lab) -> None:
    conn = _connect(aurora_lab_mariadb, failover_timeout="1s", autocommit=True)
    try:
        aurora_lab_mariadb.crash(aurora_lab_mariadb.writer.id)
        with pytest.raises(asd.NoWriterAvailable) as caught:
            conn.cursor().execute("SELECT 1")
        assert caught.value.args[0] in (2003, 2006, 2013)
        assert "failover_timeout" in caught.value.args[1]
    finally:
        conn.close()


def test_a_pymysql_cursor_is_its_own_iterator(aurora_lab_mariadb: Lab) -> None:
    conn = _connect(aurora_lab_mariadb)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1 UNION ALL SELECT 2")
        assert iter(cur) is cur
        assert next(cur) == (1,)
        assert list(cur) == [(2,)]
    finally:
        conn.close()


def test_a_failover_with_a_full_pool_does_not_wait_for_its_own_slot(
    aurora_lab_postgresql: Lab,
) -> None:
    lab = aurora_lab_postgresql
    cluster = _cluster(lab, pool_max_size=1, failover_timeout="10s")
    try:
        with cluster.writer() as conn:
            conn.autocommit = True
            lab.execute(lab.writer.id, f"SELECT pg_terminate_backend({conn.pgconn.backend_pid})")
            started = time.monotonic()
            with pytest.raises(asd.FailoverSucceeded):
                conn.execute("SELECT 1")  # the node is alive: a new connection to it at once
            assert time.monotonic() - started < 5.0  # not failover_timeout for its own slot
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        cluster.close()


def test_attributes_set_while_on_no_node_do_not_reach_the_next_borrower(
    aurora_lab_postgresql: Lab,
) -> None:
    lab = aurora_lab_postgresql
    cluster = _cluster(lab, pool_max_size=1)
    try:
        with cluster.writer() as conn:
            lab.execute(lab.writer.id, f"SELECT pg_terminate_backend({conn.pgconn.backend_pid})")
            conn.rollback()  # the connection was lost: it lets go, on no node now
            with conn.transaction():  # made while on no node: connects first
                pass
            conn.row_factory = dict_row
            assert conn.execute("SELECT 1 AS x").fetchall() == [{"x": 1}]
        with cluster.writer() as other:
            assert other.execute("SELECT 1 AS x").fetchall() == [(1,)]
    finally:
        cluster.close()


def test_copy_on_a_cursor_carried_to_a_reader_runs_on_the_reader(
    aurora_lab_postgresql: Lab,
) -> None:
    conn = _connect(aurora_lab_postgresql, autocommit="on")
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        conn.read_only = True
        with cur.copy("COPY (SELECT pg_is_in_recovery()) TO STDOUT") as copy:
            rows = [bytes(row) for row in copy]
        assert rows == [b"t\n"]  # a replica answered, not the writer the cursor came from
    finally:
        conn.close()


def test_a_connection_collected_unclosed_ends_its_session_and_locks(
    aurora_lab_postgresql: Lab,
) -> None:
    lab = aurora_lab_postgresql
    key = int(uuid.uuid4().int % 1_000_000)
    conn = _connect(lab)
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del conn
        gc.collect()

    def held() -> bool:
        rows = lab.execute(
            lab.writer.id,
            f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            f"AND objid = {key} AND granted",
        )
        return int(str(rows[0][0])) > 0

    deadline = time.monotonic() + 10
    while held() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not held()  # the session ended with the connection, as a bare driver's would
