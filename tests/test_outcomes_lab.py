"""Exact outcomes against the lab: each row of DESIGN.md's "Failure semantics" table and each
case where the application used to be told "run it again" about work that had committed (or
lost the "unknown" signal)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import Any

import psycopg
import pymysql
import pytest
from sqlalchemy import create_engine, text

import aurora_smartdriver as asd
from aurora_smartdriver.lab import Lab


def _pg(lab: Lab) -> bool:
    return lab.state().engine == "postgresql"


def _driver(lab: Lab) -> Any:
    return psycopg if _pg(lab) else pymysql


def _connect(lab: Lab, **kwargs: Any) -> Any:
    kwargs.setdefault("cluster_id", uuid.uuid4().hex)
    kwargs.setdefault("fast_refresh_interval", "0.05s")
    return asd.connect(lab.dsn, **kwargs)


def _autocommit(lab: Lab) -> dict[str, Any]:
    return {"autocommit": "on" if _pg(lab) else True}


def _query(conn: Any, sql: str, params: Any = None) -> list[Any]:
    cur = conn.cursor()
    cur.execute(sql, params)
    return list(cur.fetchall()) if cur.description else []


def _table(lab: Lab) -> None:
    conn = asd.connect(lab.dsn, cluster_id=uuid.uuid4().hex)
    try:
        _query(conn, "CREATE TABLE IF NOT EXISTS outcome_ops (op VARCHAR(64))")
        conn.commit()
    finally:
        conn.close()
    lab.wait_replicated()


def _count(lab: Lab, op: str) -> int:
    rows = lab.execute(lab.writer.id, f"SELECT count(*) FROM outcome_ops WHERE op = '{op}'")
    return int(str(rows[0][0]))


def _failovers(conn: Any) -> int:
    return int(conn._runtime.metrics.failovers_started.total())


def _in_thread(fn: Any) -> tuple[threading.Thread, list[BaseException | None]]:
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    return worker, result


def test_application_begin_on_an_autocommit_connection_is_reported_rolled_back(
    aurora_lab: Lab,
) -> None:
    _table(aurora_lab)
    conn = _connect(aurora_lab, **_autocommit(aurora_lab))
    try:
        op = uuid.uuid4().hex
        _query(conn, "BEGIN")
        _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (op,))
        aurora_lab.failover()
        with pytest.raises(asd.FailoverSucceeded) as caught:
            _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (uuid.uuid4().hex,))
        assert caught.value.transaction_rolled_back is True
        assert _count(aurora_lab, op) == 0
    finally:
        conn.close()


def test_a_psycopg_transaction_block_is_reported_rolled_back(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql
    _table(lab)
    conn = _connect(lab, autocommit="on")
    op = uuid.uuid4().hex
    try:
        with pytest.raises(asd.FailoverSucceeded) as caught, conn.transaction():
            _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (op,))
            lab.failover()
            _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (uuid.uuid4().hex,))
        assert caught.value.transaction_rolled_back is True
        assert _count(lab, op) == 0
        with conn.transaction():  # the next block runs on the new writer
            _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (op,))
        assert _count(lab, op) == 1
    finally:
        conn.close()


def test_a_textual_commit_interrupted_is_outcome_unknown(aurora_lab: Lab) -> None:
    _table(aurora_lab)
    conn = _connect(aurora_lab, **_autocommit(aurora_lab))
    try:
        _query(conn, "BEGIN")
        _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (uuid.uuid4().hex,))
        aurora_lab.hang(aurora_lab.writer.id)
        worker, result = _in_thread(lambda: _query(conn, "COMMIT"))
        time.sleep(0.5)  # COMMIT is on the wire; the writer does not answer
        aurora_lab.failover()  # the hung writer is killed with the COMMIT's connection
        worker.join(30)
        assert len(result) == 1
        assert isinstance(result[0], asd.TransactionOutcomeUnknown), result
    finally:
        conn.close()


def test_commit_lost_and_no_writer_is_still_outcome_unknown(aurora_lab: Lab) -> None:
    _table(aurora_lab)
    conn = _connect(aurora_lab, failover_timeout="1.5s")
    try:
        _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (uuid.uuid4().hex,))
        writer = aurora_lab.writer.id
        aurora_lab.hang(writer)
        worker, result = _in_thread(conn.commit)
        time.sleep(0.5)
        aurora_lab.crash(writer)  # and nobody promotes a replica
        worker.join(30)
        assert len(result) == 1
        unknown = result[0]
        assert isinstance(unknown, asd.TransactionOutcomeUnknown), result
        assert isinstance(unknown, _driver(aurora_lab).OperationalError)
        assert isinstance(unknown.__cause__, asd.NoWriterAvailable)
        started = time.monotonic()
        conn.rollback()  # cleanup: no second failover procedure
        assert time.monotonic() - started < 1.0
    finally:
        conn.close()


def test_a_connection_whose_failover_failed_tries_again_at_its_next_statement(
    aurora_lab: Lab,
) -> None:
    # backoff_max bounds how long the monitor waits between refreshes once the outage has
    # lasted failover_timeout: shorter than failover_timeout here, so the retry sees the writer.
    conn = _connect(
        aurora_lab, failover_timeout="1.5s", backoff_max="0.3s", **_autocommit(aurora_lab)
    )
    try:
        aurora_lab.crash(aurora_lab.writer.id)
        with pytest.raises(asd.NoWriterAvailable):
            _query(conn, "SELECT 1")
        aurora_lab.failover()  # a replica is promoted at last
        assert _query(conn, "SELECT 1") == [(1,)]
        assert conn.instance_id == aurora_lab.writer.id
    finally:
        conn.close()


def test_rollback_after_a_failed_statement_does_not_fail_over_again(aurora_lab: Lab) -> None:
    _table(aurora_lab)
    conn = _connect(aurora_lab, failover_timeout="3s")
    try:
        _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (uuid.uuid4().hex,))
        aurora_lab.crash(aurora_lab.writer.id)
        with pytest.raises(asd.NoWriterAvailable):
            _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (uuid.uuid4().hex,))
        before = _failovers(conn)
        started = time.monotonic()
        conn.rollback()
        assert time.monotonic() - started < 1.5  # not another failover_timeout
        assert _failovers(conn) == before
    finally:
        conn.close()


def test_run_transaction_on_an_autocommit_dsn_runs_fn_in_one_transaction(aurora_lab: Lab) -> None:
    _table(aurora_lab)
    cluster = asd.Cluster(
        aurora_lab.dsn,
        cluster_id=uuid.uuid4().hex,
        fast_refresh_interval="0.05s",
        **_autocommit(aurora_lab),
    )
    op = uuid.uuid4().hex
    attempts: list[int] = []

    def transfer(conn: Any) -> None:
        attempts.append(1)
        _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (op,))
        if len(attempts) == 1:
            aurora_lab.failover()
        _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (op + "-2",))

    try:
        cluster.run_transaction(transfer)
        assert len(attempts) == 2
        assert _count(aurora_lab, op) == 1  # the first attempt's insert was rolled back
        assert _count(aurora_lab, op + "-2") == 1
    finally:
        cluster.close()


def test_a_commit_succeeds_when_the_move_to_a_reader_after_it_fails(aurora_lab: Lab) -> None:
    _table(aurora_lab)
    conn = _connect(aurora_lab, reader_fallback="fail")
    op = uuid.uuid4().hex
    try:
        _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (op,))
        conn.read_only = True  # moves at the end of this transaction
        for reader in aurora_lab.readers:
            aurora_lab.crash(reader.id)
        conn._runtime.monitor.refresh_now(5)
        conn.commit()  # committed: no error about the move that could not happen
        assert _count(aurora_lab, op) == 1
        with pytest.raises(asd.NoHostAvailable):
            _query(conn, "SELECT 1")  # the next statement needs a reader: there is none
    finally:
        conn.close()


def test_a_write_on_a_reader_connection_is_the_drivers_read_only_error(aurora_lab: Lab) -> None:
    _table(aurora_lab)
    conn = _connect(aurora_lab, role="reader", **_autocommit(aurora_lab))
    try:
        where = conn.instance_id
        assert where != aurora_lab.writer.id
        with pytest.raises(_driver(aurora_lab).Error) as caught:
            _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (uuid.uuid4().hex,))
        assert not isinstance(caught.value, asd.AuroraSmartDriverError)
        if _pg(aurora_lab):
            assert isinstance(caught.value, psycopg.errors.ReadOnlySqlTransaction)
        else:
            assert caught.value.args[0] in (1290, 1836)
        assert conn.instance_id == where  # not moved, not closed
        assert _failovers(conn) == 0
        assert _query(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()


def test_a_write_with_read_only_on_the_writer_fails_at_once(aurora_lab: Lab) -> None:
    _table(aurora_lab)
    for reader in aurora_lab.readers:
        aurora_lab.crash(reader.id)
    conn = _connect(aurora_lab, failover_timeout="10s")  # transactions: psycopg makes them
    try:  # READ ONLY (it leaves autocommit statements alone)
        conn._runtime.monitor.refresh_now(5)
        conn.read_only = True  # no reader: falls back to the writer, read-only
        assert conn.instance_id == aurora_lab.writer.id
        started = time.monotonic()
        with pytest.raises(_driver(aurora_lab).Error) as caught:
            _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (uuid.uuid4().hex,))
        assert time.monotonic() - started < 5.0
        assert not isinstance(caught.value, asd.AuroraSmartDriverError)
        assert _failovers(conn) == 0
        assert not conn._runtime.monitor.fast_mode
    finally:
        conn.close()


def test_a_sqlalchemy_read_only_session_writing_gets_the_drivers_error(aurora_lab: Lab) -> None:
    _table(aurora_lab)
    scheme = "postgresql+aurora_psycopg" if _pg(aurora_lab) else "mariadb+aurora_pymysql"
    url = aurora_lab.dsn.split("://", 1)[1]
    engine = create_engine(f"{scheme}://{url}&cluster_id={uuid.uuid4().hex}")
    try:
        readers = engine.execution_options(aurora_role="reader")
        with readers.connect() as conn:
            with pytest.raises(Exception) as caught:
                conn.execute(text("INSERT INTO outcome_ops VALUES ('x')"))
            orig = getattr(caught.value, "orig", caught.value)
            assert not isinstance(orig, asd.AuroraSmartDriverError), orig
            assert isinstance(orig, _driver(aurora_lab).Error)
    finally:
        engine.dispose()


def test_sqlalchemy_gives_back_a_reader_connection_without_waiting_for_the_writer(
    aurora_lab: Lab,
) -> None:
    scheme = "postgresql+aurora_psycopg" if _pg(aurora_lab) else "mariadb+aurora_pymysql"
    url = aurora_lab.dsn.split("://", 1)[1]
    engine = create_engine(
        f"{scheme}://{url}&cluster_id={uuid.uuid4().hex}&failover_timeout=5s", pool_size=2
    )
    try:
        readers = engine.execution_options(aurora_role="reader")
        with readers.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
            aurora_lab.crash(aurora_lab.writer.id)  # and nobody promotes a replica
            started = time.monotonic()
        assert time.monotonic() - started < 2.0  # the checkin did not wait for a writer
        assert engine.pool.checkedin() == 1  # and did not invalidate the connection
        with readers.connect() as conn:  # reads go on while the writer is down
            assert conn.execute(text("SELECT 2")).scalar() == 2
    finally:
        engine.dispose()


def test_a_pymysql_connection_the_driver_closed_fails_over(aurora_lab_mariadb: Lab) -> None:
    lab = aurora_lab_mariadb
    conn = _connect(lab, autocommit=True)
    try:
        cur = conn.cursor(pymysql.cursors.SSCursor)
        cur.execute("SELECT seq FROM seq_1_to_5000000")
        assert cur.fetchone() is not None
        lab.failover()
        with pytest.raises(pymysql.MySQLError):  # unbuffered rows: the driver's own path
            while cur.fetchone() is not None:
                pass
        # PyMySQL closed its socket; the library must see a lost connection, not "other".
        with contextlib.suppress(asd.FailoverSucceeded):
            _query(conn, "SELECT 1")
        assert _query(conn, "SELECT 1") == [(1,)]
        assert conn.instance_id == lab.writer.id
    finally:
        conn.close()


def test_pymysql_begin_after_a_failover_runs_on_the_new_writer(aurora_lab_mariadb: Lab) -> None:
    lab = aurora_lab_mariadb
    _table(lab)
    conn = _connect(lab, autocommit=True)
    op = uuid.uuid4().hex
    try:
        lab.failover()
        conn.begin()  # a lost BEGIN changed nothing: sent again on the new writer
        _query(conn, "INSERT INTO outcome_ops VALUES (%s)", (op,))
        conn.commit()
        assert _count(lab, op) == 1
    finally:
        conn.close()


def test_a_cursor_of_a_closed_connection_is_not_a_failover(aurora_lab: Lab) -> None:
    conn = _connect(aurora_lab)
    cur = conn.cursor()
    opened = conn._runtime.metrics.opened.total()
    conn.close()
    with pytest.raises(_driver(aurora_lab).Error) as caught:
        cur.execute("SELECT 1")
    assert not isinstance(caught.value, asd.AuroraSmartDriverError)
    assert conn._runtime.metrics.opened.total() == opened


def test_pool_errors_are_the_drivers_operational_errors(aurora_lab: Lab) -> None:
    cluster = asd.Cluster(
        aurora_lab.dsn, cluster_id=uuid.uuid4().hex, pool_max_size=1, borrow_timeout="0.3s"
    )
    try:
        with cluster.writer(), pytest.raises(asd.PoolTimeout) as caught, cluster.writer():
            pass
        assert isinstance(caught.value, _driver(aurora_lab).OperationalError)
    finally:
        cluster.close()


def test_a_write_committed_before_the_connection_died_is_never_said_to_be_rerunnable(
    aurora_lab_postgresql: Lab,
) -> None:
    # The statement commits its insert, then keeps the connection busy: the writer dies after
    # the commit (synchronously replicated), before the reply. "Run it again" would apply it
    # twice; only "unknown" is true.
    lab = aurora_lab_postgresql
    _table(lab)
    conn = _connect(lab, autocommit="on")
    op = uuid.uuid4().hex
    try:
        sql = f"INSERT INTO outcome_ops VALUES ('{op}'); COMMIT; SELECT pg_sleep(5)"
        worker, result = _in_thread(lambda: _query(conn, sql))
        deadline = time.monotonic() + 5
        while _count(lab, op) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        lab.failover()
        worker.join(30)
        assert len(result) == 1
        assert isinstance(result[0], asd.TransactionOutcomeUnknown), result
        assert _count(lab, op) == 1  # committed: an obedient application reads it back
    finally:
        conn.close()


def test_a_sqlalchemy_failover_logs_no_error_for_handled_work(
    aurora_lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    scheme = "postgresql+aurora_psycopg" if _pg(aurora_lab) else "mariadb+aurora_pymysql"
    url = aurora_lab.dsn.split("://", 1)[1]
    engine = create_engine(f"{scheme}://{url}&cluster_id={uuid.uuid4().hex}", pool_size=4)
    readers = engine.execution_options(aurora_role="reader")
    try:
        for _ in range(4):  # reader connections parked in SQLAlchemy's pool
            with readers.connect() as conn:
                conn.execute(text("SELECT 1"))
        with caplog.at_level("ERROR"):
            aurora_lab.failover()
            for _ in range(8):
                try:
                    with engine.connect() as conn:
                        conn.execute(text("SELECT 1"))
                except Exception as exc:  # told once per connection: that is handled work
                    assert isinstance(getattr(exc, "orig", exc), asd.FailoverSucceeded), exc
                with readers.connect() as conn:
                    conn.execute(text("SELECT 1"))
        errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
        assert errors == [], [r.getMessage() for r in errors]
    finally:
        engine.dispose()


def test_a_transaction_opened_by_a_statement_returning_rows_is_committed_by_run_transaction(
    aurora_lab_mariadb: Lab,
) -> None:
    # PyMySQL's status flags come from OK packets only: after INSERT ... RETURNING they still
    # said "no transaction", so the transaction was never committed.
    lab = aurora_lab_mariadb
    _table(lab)
    cluster = asd.Cluster(lab.dsn, cluster_id=uuid.uuid4().hex, pool_max_size=1)
    op = uuid.uuid4().hex
    try:

        def insert(conn: Any) -> None:
            cur = conn.cursor()
            cur.execute("INSERT INTO outcome_ops VALUES (%s) RETURNING op", (op,))
            cur.fetchall()

        cluster.run_transaction(insert)
        assert _count(lab, op) == 1
    finally:
        cluster.close()


def test_a_commit_lost_after_a_statement_returning_rows_is_outcome_unknown(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    _table(lab)
    conn = _connect(lab)
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO outcome_ops VALUES (%s) RETURNING op", (uuid.uuid4().hex,))
        cur.fetchall()
        lab.hang(lab.writer.id)
        worker, result = _in_thread(conn.commit)
        time.sleep(0.5)
        lab.failover()
        worker.join(30)
        assert len(result) == 1
        assert isinstance(result[0], asd.TransactionOutcomeUnknown), result
    finally:
        conn.close()


def test_a_commit_lost_in_a_psycopg_pipeline_is_not_a_success(
    aurora_lab_postgresql: Lab,
) -> None:
    lab = aurora_lab_postgresql
    _table(lab)
    conn = _connect(lab)
    op = uuid.uuid4().hex
    try:
        with pytest.raises(psycopg.Error) as caught, conn.pipeline():
            cur = conn.cursor()
            cur.execute("INSERT INTO outcome_ops VALUES (%s)", (op,))
            cur.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            conn.commit()
        assert not isinstance(caught.value, asd.FailoverSucceeded), caught.value
        assert _count(lab, op) == 0  # the server ended the session before the COMMIT
    finally:
        conn.close()


def test_ctrl_c_while_a_write_waits_for_a_new_writer_stays_a_keyboard_interrupt(
    aurora_lab: Lab,
) -> None:
    """An autocommit write whose node died has an unknown outcome; the library then waits for
    a new writer. A Ctrl-C meanwhile is the user's: it must reach the program as it is, not
    come out as TransactionOutcomeUnknown (which a retry loop would catch and go on with)."""
    import os
    import signal

    lab = aurora_lab
    conn = _connect(lab, failover_timeout=30, **_autocommit(lab))
    table = f"ctrlc_{uuid.uuid4().hex[:8]}"
    try:
        _query(conn, f"CREATE TABLE {table} (id VARCHAR(64))")
        lab.crash(lab.writer)  # no writer: the failover waits
        timer = threading.Timer(1.0, os.kill, args=(os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                _query(conn, f"INSERT INTO {table} VALUES ('x')")
        finally:
            timer.cancel()
    finally:
        conn.close()
        lab.failover()
