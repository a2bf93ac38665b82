"""Drop-in behaviour of the connection proxy: the drivers' own idioms, settings that follow a
connection to a new node and never to the next borrower, closed connections, threads, the
garbage collector."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import socket
import subprocess
import sys
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
from aurora_smartdriver import _runtime
from aurora_smartdriver import psycopg as asd_psycopg
from aurora_smartdriver import pymysql as asd_pymysql
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


def _thread_id(conn: Any) -> int:
    cur = conn.cursor()
    cur.execute("SELECT CONNECTION_ID()")
    return int(cur.fetchone()[0])


def _session_gone(lab: Lab, thread_id: int) -> bool:
    """Whether the server ended session ``thread_id`` (waits a little: a QUIT is asynchronous)."""
    sql = f"SELECT COUNT(*) FROM information_schema.processlist WHERE id = {thread_id}"
    deadline = time.monotonic() + 10
    while int(str(lab.execute(lab.writer.id, sql)[0][0])) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not int(str(lab.execute(lab.writer.id, sql)[0][0]))


def _balance(conn: Any) -> int:
    """Connections of ``connect()`` opened and not closed, in this cluster's metrics."""
    counts = conn._runtime.metrics
    return int(counts.opened.total() - counts.closed.total())


@pytest.mark.parametrize("front", ["pymysql", "asd"])
def test_pymysql_defer_connect_connects_at_connect(aurora_lab_mariadb: Lab, front: str) -> None:
    opener = asd_pymysql.connect if front == "pymysql" else asd.connect
    conn = opener(aurora_lab_mariadb.dsn, cluster_id=uuid.uuid4().hex, defer_connect=True)
    try:
        assert conn.open is False  # nothing connected yet, as PyMySQL's
        assert _balance(conn) == 0
        conn.connect()
        assert conn.open is True
        assert conn.instance_id == aurora_lab_mariadb.writer.id
        assert _thread_id(conn) > 0
    finally:
        conn.close()
    assert _balance(conn) == 0


def test_pymysql_a_deferred_connection_closed_unconnected_lets_its_cluster_go(
    aurora_lab_mariadb: Lab,
) -> None:
    conn = asd_pymysql.connect(
        aurora_lab_mariadb.dsn, cluster_id=uuid.uuid4().hex, defer_connect=True
    )
    key = conn._runtime.shared.key
    assert _runtime._registry[key].users == 1
    conn.close()
    assert _runtime._registry[key].users == 0
    conn.close()  # idempotent, as every close of the library's (PyMySQL's would raise)
    assert _runtime._registry[key].users == 0


def test_pymysql_ping_reconnect_reopens_a_closed_connection_with_its_settings(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    conn = _connect(lab)
    try:
        conn.autocommit(True)
        cur = conn.cursor()  # made before the close: PyMySQL's cursors work after a reopen
        first = _thread_id(conn)
        conn.close()
        assert _session_gone(lab, first)
        with pytest.raises(pymysql.err.Error):
            conn.ping()  # as PyMySQL 1.2: no reopen unless asked
        with pytest.raises(pymysql.err.Error):
            conn.ping(reconnect=False)
        conn.ping(reconnect=True)
        assert conn.open is True
        assert conn.instance_id == lab.writer.id
        cur.execute("SELECT @@autocommit, CONNECTION_ID()")
        autocommit, second = cur.fetchone()
        assert autocommit == 1  # replayed on the new session
        assert second != first
    finally:
        conn.close()
    assert _session_gone(lab, second)
    assert _balance(conn) == 0


def test_pymysql_connect_reopens_a_closed_connection_on_the_role_asked_for(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    conn = _connect(lab, autocommit=True)
    try:
        conn.read_only = True
        conn.close()
        conn.connect()  # through the library: a reader, as the connection asks for
        assert conn.open is True
        assert conn.instance_id in {node.id for node in lab.readers}
        cur = conn.cursor()
        cur.execute("SELECT @@global.read_only")
        assert cur.fetchone() == (1,)
    finally:
        conn.close()
    assert _balance(conn) == 0


def test_pymysql_a_pooled_connection_reopened_in_its_block_is_given_back_once(
    aurora_lab_mariadb: Lab,
) -> None:
    cluster = _cluster(aurora_lab_mariadb, pool_max_size=2)
    try:
        with cluster.writer() as conn:
            conn.close()
            conn.ping(reconnect=True)  # borrowed again from the writer's pool
            assert conn.open is True
            assert _thread_id(conn) > 0
            assert sum(p.in_use for p in cluster.stats()["pools"].values()) == 1
        assert sum(p.in_use for p in cluster.stats()["pools"].values()) == 0
    finally:
        cluster.close()


def test_pymysql_a_deferred_connection_dropped_unclosed_lets_its_cluster_go(
    aurora_lab_mariadb: Lab,
) -> None:
    conn = asd_pymysql.connect(
        aurora_lab_mariadb.dsn, cluster_id=uuid.uuid4().hex, defer_connect=True
    )
    key = conn._runtime.shared.key
    del conn
    gc.collect()
    _runtime.give_back_abandoned()  # outside the garbage collector, as at the next borrow
    assert _runtime._registry[key].users == 0


def test_pymysql_connect_on_an_open_connection_starts_a_new_session_without_a_leak(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    conn = _connect(lab, autocommit=True)
    try:
        first = _thread_id(conn)
        conn.connect()
        second = _thread_id(conn)
        assert second != first
        assert _session_gone(lab, first)  # the old session is closed, not left behind
        assert conn.instance_id == lab.writer.id
    finally:
        conn.close()
    assert _session_gone(lab, second)
    assert _balance(conn) == 0


FORK_CONNECT_SCRIPT = r"""
import json, os, sys
import aurora_smartdriver as asd

dsn, cluster_id, table = sys.argv[1:4]
cluster = asd.Cluster(dsn, cluster_id=cluster_id)
with cluster.writer() as conn:  # autocommit off: the INSERT below opens a transaction
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {table} (v INT)")
    conn.commit()
    cur.execute(f"INSERT INTO {table} VALUES (1)")
    cur.execute("SELECT CONNECTION_ID()")
    parent_session = cur.fetchall()[0][0]
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the child asks for a connection of its own, through the inherited one
        try:
            conn.connect()
            child_cur = conn.cursor()
            child_cur.execute("SELECT CONNECTION_ID()")
            own = child_cur.fetchall()[0][0] != parent_session
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            own = False
        os._exit(0 if own else 1)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    conn.commit()  # the parent's transaction, untouched by the child
    cur.execute(f"SELECT count(*) FROM {table}")
    rows = cur.fetchall()[0][0]
    cur.execute(f"DROP TABLE {table}")
cluster.close()
print(json.dumps({"child_code": code, "rows": rows}), flush=True)
"""


def test_pymysql_connect_in_a_forked_child_leaves_the_parents_session_alone(
    aurora_lab_mariadb: Lab,
) -> None:
    table = f"forkc_{uuid.uuid4().hex[:12]}"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            FORK_CONNECT_SCRIPT,
            aurora_lab_mariadb.dsn,
            uuid.uuid4().hex,
            table,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"child_code": 0, "rows": 1}, done.stderr[-3000:]


def test_pymysql_connect_with_a_socket_of_the_application_is_refused(
    aurora_lab_mariadb: Lab,
) -> None:
    conn = asd_pymysql.connect(
        aurora_lab_mariadb.dsn, cluster_id=uuid.uuid4().hex, defer_connect=True
    )
    try:
        with socket.socket() as sock, pytest.raises(pymysql.err.NotSupportedError):
            conn.connect(sock)
        assert conn.open is False
    finally:
        conn.close()


def test_pymysql_ping_without_reconnect_on_a_lost_session_raises_the_driver_error(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    conn = _connect(lab, autocommit=True)
    try:
        lab.execute(lab.writer.id, f"KILL {_thread_id(conn)}")
        with pytest.raises(pymysql.OperationalError) as caught:
            conn.ping(reconnect=False)  # "is it alive?": no, and nothing reconnected
        assert not isinstance(caught.value, asd.AuroraSmartDriverError)
        assert caught.value.args[0] in (1927, 2006, 2013)
        conn.ping()  # the library's default: continue on a live session
        assert conn.open is True
        assert _thread_id(conn) > 0
    finally:
        conn.close()


def test_pymysql_a_transaction_lost_at_a_ping_without_reconnect_is_reported_at_the_next_use(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    table = f"dropin_{uuid.uuid4().hex[:8]}"
    conn = _connect(lab)  # autocommit off, as PyMySQL's default
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table} (v VARCHAR(40) PRIMARY KEY)")
        # Rows returned: PyMySQL's status flags do not show the transaction this opened.
        cur.execute(f"INSERT INTO {table} VALUES ('first') RETURNING v")
        assert cur.fetchall() == (("first",),)
        lab.execute(lab.writer.id, f"KILL {_thread_id(conn)}")
        with pytest.raises(pymysql.OperationalError):
            conn.ping(reconnect=False)
        with pytest.raises(asd.FailoverSucceeded) as caught:
            cur.execute(f"INSERT INTO {table} VALUES ('second')")
        assert caught.value.transaction_rolled_back  # never the second half alone
        conn.commit()
        cur.execute(f"SELECT v FROM {table}")
        assert cur.fetchall() == ()
    finally:
        with contextlib.suppress(Exception):
            lab.execute(lab.writer.id, f"DROP TABLE IF EXISTS {lab.state().database}.{table}")
        conn.close()


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


def test_psycopg_transaction_gives_psycopgs_transaction_with_the_proxy_as_connection(
    aurora_lab_postgresql: Lab,
) -> None:
    conn = _connect(aurora_lab_postgresql)
    try:
        with conn.transaction(savepoint_name="sp") as tx:
            assert isinstance(tx, psycopg.Transaction)
            assert tx.connection is conn
            assert tx.savepoint_name == "sp"
            assert tx.status == tx.Status.ACTIVE
            assert "[INTRANS]" in repr(tx)
            with pytest.raises(AttributeError):
                tx.savepoint_name = "other"  # type: ignore[misc]
            with conn.transaction() as inner:
                assert inner.savepoint_name == "_pg3_2"  # nested: a savepoint, as psycopg's
        assert tx.status == tx.Status.COMMITTED
        with pytest.raises(TypeError), tx:
            pass  # as psycopg: a block is used once
    finally:
        conn.close()


def test_psycopg_rollback_naming_an_outer_block_ends_that_block(
    aurora_lab_postgresql: Lab,
) -> None:
    conn = _connect(aurora_lab_postgresql)
    try:
        conn.execute("CREATE TEMPORARY TABLE dropin_tx (v int)")
        conn.commit()
        with conn.transaction() as outer:
            conn.execute("INSERT INTO dropin_tx VALUES (1)")
            with conn.transaction():
                conn.execute("INSERT INTO dropin_tx VALUES (2)")
                raise psycopg.Rollback(outer)  # ends the outer block, quietly
        with conn.transaction() as tx:
            conn.execute("INSERT INTO dropin_tx VALUES (3)")
            raise psycopg.Rollback(tx)
        assert tx.status == tx.Status.ROLLED_BACK_EXPLICITLY
        assert conn.execute("SELECT count(*) FROM dropin_tx").fetchone() == (0,)
    finally:
        conn.close()


def test_psycopg_set_result_and_results_give_the_librarys_cursor(
    aurora_lab_postgresql: Lab,
) -> None:
    conn = _connect(aurora_lab_postgresql, autocommit="on")
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1; SELECT 2")
        assert cur.set_result(0) is cur
        assert cur.fetchall() == [(1,)]
        assert list(cur.results()) == [cur, cur]
        assert cur.set_result(-1).fetchall() == [(2,)]
    finally:
        conn.close()


def test_psycopg_a_cursor_carried_to_a_reader_keeps_its_next_result_sets(
    aurora_lab_postgresql: Lab,
) -> None:
    conn = _connect(aurora_lab_postgresql, autocommit="on")
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1; SELECT 2")
        conn.read_only = True  # moves to a reader now
        assert conn.instance_id != aurora_lab_postgresql.writer.id
        assert cur.fetchall() == [(1,)]
        assert cur.nextset() is True  # received with the statement: still there
        assert cur.fetchall() == [(2,)]
    finally:
        conn.close()


def test_psycopg_connection_execute_binary_sets_the_cursor_format(
    aurora_lab_postgresql: Lab,
) -> None:
    conn = _connect(aurora_lab_postgresql)
    try:
        cur = conn.execute("SELECT %s::int", [7], binary=True)
        assert cur.format == psycopg.pq.Format.BINARY
        assert cur.fetchone() == (7,)
    finally:
        conn.close()


def test_psycopg_session_switches_read_back_as_psycopgs(aurora_lab_postgresql: Lab) -> None:
    conn = _connect(aurora_lab_postgresql)
    try:
        assert conn.read_only is None  # psycopg: None until set (the server's default)
        conn.isolation_level = 4
        assert conn.isolation_level is psycopg.IsolationLevel.SERIALIZABLE
        with pytest.raises(ValueError):
            conn.set_isolation_level(5)
        conn.deferrable = 0
        assert conn.deferrable is False
        conn.read_only = False
        assert conn.read_only is False
    finally:
        conn.close()


def test_psycopg_repr_carries_the_driver_status_and_no_secret(
    aurora_lab_postgresql: Lab,
) -> None:
    conn = _connect(aurora_lab_postgresql)
    try:
        assert "[IDLE]" in repr(conn)
        conn.execute("SELECT 1")
        assert "[INTRANS]" in repr(conn)
        assert aurora_lab_postgresql.state().password not in repr(conn)
    finally:
        conn.close()
    assert "[BAD]" in repr(conn)


def test_psycopg_connect_refuses_an_unknown_parameter_as_psycopg_does() -> None:
    with pytest.raises(psycopg.ProgrammingError) as caught:
        asd_psycopg.connect("postgresql://app@db.example.test/app", nosuchparam=42)
    assert isinstance(caught.value, asd.ConfigError)
    assert caught.value.parameter == "nosuchparam"


def test_psycopg_a_private_driver_attribute_patched_through_the_proxy_reaches_the_driver(
    aurora_lab_postgresql: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = _cluster(aurora_lab_postgresql, pool_max_size=1)
    try:
        with cluster.writer() as conn:
            seen: list[bytes] = []
            original = conn._exec_command

            def spy(command: Any, *args: Any, **kwargs: Any) -> Any:
                seen.append(bytes(command))
                return original(command, *args, **kwargs)

            monkeypatch.setattr(conn, "_exec_command", spy)
            with conn.transaction():
                pass
            assert seen == [b"BEGIN", b"COMMIT"]
            pid = conn.pgconn.backend_pid
        with cluster.writer() as other:  # the patched driver connection is not lent again
            assert other.pgconn.backend_pid != pid
            assert "_exec_command" not in vars(other._raw)
    finally:
        cluster.close()


def test_psycopg_a_failed_rollback_at_the_end_of_a_with_block_does_not_hide_the_error(
    aurora_lab_postgresql: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aurora_smartdriver")  # whatever ran before
    with pytest.raises(ZeroDivisionError), _connect(aurora_lab_postgresql) as conn:
        block = conn.transaction()
        block.__enter__()  # a block left open: psycopg refuses rollback() inside it
        1 / 0  # noqa: B018
    assert "error ignored in rollback" in caplog.text  # logged, as psycopg does
    assert conn.closed


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
        # One warning each: the library's, or for a psycopg connection of its own the
        # driver's (psycopg warns for its own connection collected open).
        unclosed = ("was never closed", "was deleted while still open")
        warned = [w for w in caught if any(text in str(w.message) for text in unclosed)]
        assert len(warned) == 20
        _connect(aurora_lab, cluster_id=cluster_id).close()  # gives back the abandoned ones
        assert closed.total() - before == 21
    finally:
        keep.close()


def _live_objects() -> int:
    """Objects the collector tracks, at the quietest of a few looks: the library's own threads
    (monitor, watchdog) hold a few objects while they work, never for long."""
    counts = []
    for _ in range(5):
        gc.collect()
        counts.append(len(gc.get_objects()))
        time.sleep(0.01)
    return min(counts)


def test_connections_opened_and_closed_leave_no_objects_behind(aurora_lab: Lab) -> None:
    # What psycopg's own leak checks look for, without their exact counts (which the
    # library's background threads move by a few either way): no growth with the cycles.
    cluster_id = uuid.uuid4().hex
    engine = aurora_lab.state().engine

    def work() -> None:
        conn = _connect(aurora_lab, cluster_id=cluster_id)
        try:
            cur = conn.cursor()
            cur.execute("SELECT 1 UNION ALL SELECT 2")
            cur.fetchall()
            if engine == "postgresql":
                with conn.transaction(force_rollback=True):
                    conn.execute("SELECT 3").fetchall()
            conn.rollback()
        finally:
            conn.close()

    for _ in range(30):
        work()  # caches, pools of type info, the cluster's machinery: made by now
    settled = _live_objects()
    for _ in range(150):
        work()
    assert _live_objects() - settled < 75  # one object left per cycle would be 150


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
        assert conn.read_only is None  # as psycopg: the value before the refused switch
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
