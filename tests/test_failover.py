"""Failure semantics against the lab: what the application sees when its node dies or is demoted."""

from __future__ import annotations

import faulthandler
import sys
import threading
import time
import uuid
from typing import Any

import psycopg
import pymysql
import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import events
from aurora_smartdriver.lab import Lab, partition_available


def _driver(lab: Lab) -> Any:
    return psycopg if lab.state().engine == "postgresql" else pymysql


def _connect(lab: Lab, **kwargs: Any) -> Any:
    # A cluster of its own per test: settings such as failover_timeout belong to the first user.
    kwargs.setdefault("cluster_id", uuid.uuid4().hex)
    kwargs.setdefault("fast_refresh_interval", "0.05s")
    return asd.connect(lab.dsn, **kwargs)


def _autocommit(lab: Lab) -> dict[str, Any]:
    return {"autocommit": "on" if lab.state().engine == "postgresql" else True}


def _query(conn: Any, sql: str, params: Any = None) -> list[Any]:
    cur = conn.cursor()
    cur.execute(sql, params)
    return list(cur.fetchall()) if cur.description else []


def _table(conn: Any) -> None:
    _query(conn, "CREATE TABLE IF NOT EXISTS fo_rows (id VARCHAR(64) PRIMARY KEY)")
    conn.commit()


def test_autocommit_read_after_writer_crash_raises_failover_succeeded(aurora_lab: Lab) -> None:
    conn = _connect(aurora_lab, **_autocommit(aurora_lab))
    try:
        old = conn.instance_id
        report = aurora_lab.failover()
        with pytest.raises(asd.FailoverSucceeded) as caught:
            _query(conn, "SELECT 1")
        assert isinstance(caught.value, _driver(aurora_lab).OperationalError)
        assert caught.value.transaction_rolled_back is False
        assert conn.instance_id == report.new_writer != old
        assert _query(conn, "SELECT 1") == [(1,)]  # the caller re-runs it
    finally:
        conn.close()


def test_autocommit_write_lost_in_flight_is_outcome_unknown(aurora_lab: Lab) -> None:
    # The statement was its own transaction: the server may have committed it before it died,
    # so "run it again" could apply it twice.
    conn = _connect(aurora_lab, **_autocommit(aurora_lab))
    try:
        _table(conn)
        report = aurora_lab.failover()
        key = uuid.uuid4().hex
        with pytest.raises(asd.TransactionOutcomeUnknown) as caught:
            _query(conn, "INSERT INTO fo_rows VALUES (%s)", (key,))
        assert isinstance(caught.value, _driver(aurora_lab).OperationalError)
        assert conn.instance_id == report.new_writer
        # Resolved by reading it back: here it never reached the old writer.
        assert _query(conn, "SELECT id FROM fo_rows WHERE id = %s", (key,)) == []
    finally:
        conn.close()


def test_open_transaction_is_reported_rolled_back(aurora_lab: Lab) -> None:
    conn = _connect(aurora_lab)
    try:
        _table(conn)
        key = uuid.uuid4().hex
        _query(conn, "INSERT INTO fo_rows VALUES (%s)", (key,))  # not committed
        aurora_lab.failover()
        with pytest.raises(asd.FailoverSucceeded) as caught:
            _query(conn, "SELECT 1")
        assert caught.value.transaction_rolled_back is True
        assert _query(conn, "SELECT id FROM fo_rows WHERE id = %s", (key,)) == []
    finally:
        conn.close()


def test_connection_lost_during_commit_is_outcome_unknown(aurora_lab: Lab) -> None:
    conn = _connect(aurora_lab)
    try:
        _table(conn)
        _query(conn, "INSERT INTO fo_rows VALUES (%s)", (uuid.uuid4().hex,))
        aurora_lab.hang(aurora_lab.writer.id)
        outcome: list[BaseException | None] = []

        def commit() -> None:
            try:
                conn.commit()
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=commit)
        worker.start()
        time.sleep(0.5)  # COMMIT is on the wire, the writer does not answer
        aurora_lab.failover()  # the hung writer is killed: the COMMIT's connection dies
        worker.join(30)
        assert len(outcome) == 1
        assert isinstance(outcome[0], asd.TransactionOutcomeUnknown)
        assert isinstance(outcome[0], _driver(aurora_lab).OperationalError)
        assert conn.instance_id == aurora_lab.writer.id  # ready for the next transaction
    finally:
        conn.close()


def test_retry_reads_reruns_an_autocommit_read_transparently(aurora_lab: Lab) -> None:
    conn = _connect(aurora_lab, retry_reads="on", **_autocommit(aurora_lab))
    try:
        aurora_lab.failover()
        assert _query(conn, "SELECT 42") == [(42,)]  # no exception: re-run on the new writer
        assert conn.instance_id == aurora_lab.writer.id
    finally:
        conn.close()


def test_retry_reads_never_reruns_a_write(aurora_lab: Lab) -> None:
    conn = _connect(aurora_lab, retry_reads="on", **_autocommit(aurora_lab))
    try:
        _table(conn)
        aurora_lab.failover()
        with pytest.raises(asd.TransactionOutcomeUnknown):
            _query(conn, "INSERT INTO fo_rows VALUES (%s)", (uuid.uuid4().hex,))
    finally:
        conn.close()


def test_write_refused_as_read_only_is_a_failover_signal_not_a_success(aurora_lab: Lab) -> None:
    conn = _connect(aurora_lab, **_autocommit(aurora_lab))
    try:
        _table(conn)
        old = aurora_lab.writer.id
        # The writer turns read-only under the connection (Aurora's demoted writer).
        if aurora_lab.state().engine == "postgresql":
            aurora_lab.execute(old, "ALTER SYSTEM SET default_transaction_read_only = on")
            aurora_lab.execute(old, "SELECT pg_reload_conf()")
            time.sleep(0.3)
        else:
            aurora_lab.execute(old, "SET GLOBAL read_only = 1")
        threading.Timer(1.0, aurora_lab.failover).start()  # then the cluster promotes another
        # Refused by the server as read-only: it did not write, so nothing of it committed.
        with pytest.raises(asd.FailoverSucceeded):
            _query(conn, "INSERT INTO fo_rows VALUES (%s)", (uuid.uuid4().hex,))
        assert conn.instance_id != old
        key = uuid.uuid4().hex
        _query(conn, "INSERT INTO fo_rows VALUES (%s)", (key,))
        assert _query(conn, "SELECT id FROM fo_rows WHERE id = %s", (key,)) == [(key,)]
    finally:
        conn.close()


def test_no_writer_within_the_timeout_raises_no_writer_available(aurora_lab: Lab) -> None:
    conn = _connect(aurora_lab, failover_timeout="1.5s", **_autocommit(aurora_lab))
    try:
        aurora_lab.crash(aurora_lab.writer.id)  # and nobody promotes a replica
        with pytest.raises(asd.NoWriterAvailable) as caught:
            _query(conn, "SELECT 1")
        assert isinstance(caught.value, _driver(aurora_lab).OperationalError)
        assert aurora_lab.state().password not in str(caught.value)
    finally:
        conn.close()


def test_a_writer_borrowed_during_a_failover_waits_for_the_new_writer(aurora_lab: Lab) -> None:
    cluster = asd.Cluster(
        aurora_lab.dsn,
        cluster_id=uuid.uuid4().hex,
        fast_refresh_interval="0.05s",
        validate_after_idle="0s",  # a borrow checks its connection: the pool learns of the crash
    )
    try:
        with cluster.writer() as conn:  # the pool and the topology know the writer
            _table(conn)
        old = aurora_lab.writer.id
        aurora_lab.crash(old)
        promotion = threading.Timer(1.0, aurora_lab.failover)
        promotion.start()
        # Both a borrow from the dead writer's pool and a connection of its own wait for the
        # promotion instead of failing with "no host" while the topology still names the dead one.
        with cluster.writer() as conn:
            _query(conn, "INSERT INTO fo_rows VALUES (%s)", (uuid.uuid4().hex,))
            assert conn.instance_id != old
        promotion.join()
        direct = _connect(aurora_lab, **_autocommit(aurora_lab))
        try:
            assert direct.instance_id == aurora_lab.writer.id
        finally:
            direct.close()
    finally:
        cluster.close()


def test_a_new_connection_with_no_writer_raises_no_writer_available(aurora_lab: Lab) -> None:
    cluster = asd.Cluster(aurora_lab.dsn, cluster_id=uuid.uuid4().hex, failover_timeout="1.5s")
    try:
        with cluster.writer() as conn:
            _query(conn, "SELECT 1")
        aurora_lab.crash(aurora_lab.writer.id)  # and nobody promotes a replica
        with pytest.raises(asd.NoWriterAvailable) as caught, cluster.writer() as conn:
            _query(conn, "SELECT 1")
        assert "failover_timeout=1.5s" in str(caught.value)
        assert aurora_lab.state().password not in str(caught.value)
    finally:
        cluster.close()


def test_new_connections_go_to_the_new_writer_while_dns_is_stale(aurora_lab: Lab) -> None:
    report = aurora_lab.failover(dns_lag=30.0)
    aurora_lab.rejoin(report.old_writer)  # the stale address answers again, as a reader
    conn = _connect(aurora_lab, **_autocommit(aurora_lab))
    try:
        assert conn.instance_id == report.new_writer
        _table(conn)
        _query(conn, "INSERT INTO fo_rows VALUES (%s)", (uuid.uuid4().hex,))
    finally:
        conn.close()


def test_a_reader_connection_moves_to_another_reader(aurora_lab: Lab) -> None:
    conn = _connect(aurora_lab, role="reader", **_autocommit(aurora_lab))
    try:
        first = conn.instance_id
        aurora_lab.crash(first)
        with pytest.raises(asd.FailoverSucceeded):
            _query(conn, "SELECT 1")
        assert conn.instance_id != first
        assert conn.instance_id in {r.id for r in aurora_lab.readers}
        assert _query(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()


def test_failover_steps_are_events(aurora_lab: Lab) -> None:
    seen: list[events.Event] = []
    events.subscribe(seen.append)
    conn = _connect(aurora_lab, **_autocommit(aurora_lab))
    try:
        aurora_lab.failover()
        with pytest.raises(asd.FailoverSucceeded):
            _query(conn, "SELECT 1")
    finally:
        conn.close()
        events.unsubscribe(seen.append)
    names = [e.name for e in seen]
    assert names[:3] == ["failover_started", "writer_found", "connection_moved"]
    assert seen[1].fields["after_s"] >= 0


def test_pooled_writer_connections_survive_a_failover(aurora_lab: Lab) -> None:
    cluster = asd.Cluster(
        aurora_lab.dsn, cluster_id=uuid.uuid4().hex, fast_refresh_interval="0.05s"
    )
    try:
        with cluster.writer() as conn:
            _table(conn)
        report = aurora_lab.failover()
        done = False
        for _attempt in range(3):
            try:
                with cluster.writer() as conn:
                    _query(conn, "INSERT INTO fo_rows VALUES (%s)", (uuid.uuid4().hex,))
                    assert conn.instance_id == report.new_writer
                done = True
                break
            except asd.FailoverSucceeded:
                continue
        assert done
    finally:
        cluster.close()


def test_error_table_in_docs_matches_the_code() -> None:
    from pathlib import Path

    from aurora_smartdriver._error_table import error_table_markdown

    docs = Path(__file__).parent.parent / "docs" / "errors.md"
    assert docs.read_text() == error_table_markdown(), (
        "docs/errors.md is out of date: python -m aurora_smartdriver._error_table > docs/errors.md"
    )


def test_run_transaction_reruns_after_failover_succeeded(aurora_lab: Lab) -> None:
    cluster = asd.Cluster(
        aurora_lab.dsn, cluster_id=uuid.uuid4().hex, fast_refresh_interval="0.05s"
    )
    try:
        with cluster.writer() as conn:
            _table(conn)
        attempts: list[str] = []
        key = uuid.uuid4().hex

        def work(conn: Any) -> str:
            attempts.append(conn.instance_id)
            _query(conn, "INSERT INTO fo_rows VALUES (%s)", (key,))
            if len(attempts) == 1:
                aurora_lab.failover()  # the writer dies in the middle of the transaction
                _query(conn, "SELECT 1")
            return str(conn.instance_id)

        where = cluster.run_transaction(work, retries=2)
        assert len(attempts) == 2
        assert where == aurora_lab.writer.id != attempts[0]
        with cluster.writer() as conn:
            assert _query(conn, "SELECT id FROM fo_rows WHERE id = %s", (key,)) == [(key,)]
    finally:
        cluster.close()


def test_run_transaction_does_not_rerun_an_unknown_outcome(aurora_lab: Lab) -> None:
    cluster = asd.Cluster(
        aurora_lab.dsn, cluster_id=uuid.uuid4().hex, fast_refresh_interval="0.05s"
    )
    calls: list[int] = []
    timers: list[threading.Timer] = []

    def work(conn: Any) -> None:
        calls.append(1)
        _query(conn, "INSERT INTO fo_rows VALUES (%s)", (uuid.uuid4().hex,))
        aurora_lab.hang(aurora_lab.writer.id)
        timers.append(threading.Timer(0.5, aurora_lab.failover))
        timers[-1].start()
        # leaving the block commits; the COMMIT hangs, then its connection dies

    try:
        with cluster.writer() as conn:
            _table(conn)
        with pytest.raises(asd.TransactionOutcomeUnknown):
            cluster.run_transaction(work, retries=3)
        assert len(calls) == 1
    finally:
        for timer in timers:
            timer.join()
        cluster.close()


def _wait_until_probing(conn: Any, instance_id: str, timeout: float = 10.0) -> None:
    """Wait until the hung-host watchdog's probe to ``instance_id`` is connected."""
    watchdog = conn._runtime.watchdog
    deadline = time.monotonic() + timeout
    while not watchdog.probing(instance_id):
        assert time.monotonic() < deadline, f"no watchdog probe to {instance_id} in {timeout}s"
        time.sleep(0.01)


def test_a_statement_on_a_hung_reader_is_cut_within_the_detection_time(aurora_lab: Lab) -> None:
    seen: list[events.Event] = []
    events.subscribe(seen.append)
    conn = _connect(
        aurora_lab, role="reader", failure_detection_time="1.5s", **_autocommit(aurora_lab)
    )
    worker: threading.Thread | None = None
    try:
        hung = conn.instance_id
        # Only a probe that was connected and then went silent is evidence: a node that hangs
        # while the probe is still being opened is never judged. Hang it once the probe is up.
        _wait_until_probing(conn, hung)
        aurora_lab.hang(hung)
        outcome: list[BaseException | None] = []

        def read() -> None:
            try:
                _query(conn, "SELECT 1")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=read)
        worker.start()
        # Without detection the statement would wait for the node to come back; the probe
        # declares it dead after 1.5 s of silence and cuts the connection.
        worker.join(20)
        if worker.is_alive():  # show where every thread waits, for the report
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        assert not worker.is_alive(), "the statement on the hung node was never cut"
        assert isinstance(outcome[0], asd.FailoverSucceeded)
        assert conn.instance_id != hung
        assert _query(conn, "SELECT 1") == [(1,)]
    finally:
        if worker is not None and worker.is_alive():
            # Never close a connection under a thread still in the driver (psycopg crashes the
            # process): let the node answer, so the statement ends, then close.
            aurora_lab.resume(hung)
            worker.join(30)
        conn.close()
        events.unsubscribe(seen.append)
    assert any(e.name == "host_unresponsive" and e.fields["instance"] == hung for e in seen)


def test_library_writers_lose_nothing_through_a_failover_with_stale_dns(aurora_lab: Lab) -> None:
    """The chaos check in the suite: writers through Cluster, a crash, DNS 30 s behind."""
    cluster = asd.Cluster(
        aurora_lab.dsn, cluster_id=uuid.uuid4().hex, fast_refresh_interval="0.05s"
    )
    acked: list[tuple[str, float]] = []
    errors: list[str] = []
    stop = threading.Event()

    def writer(client: int) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            key = f"chaos-{uuid.uuid4().hex[:8]}-{client}-{seq}"
            try:
                with cluster.writer() as conn:
                    _query(conn, "INSERT INTO fo_rows VALUES (%s)", (key,))
                acked.append((key, time.time()))
            except asd.AuroraSmartDriverError as exc:  # FailoverSucceeded, OutcomeUnknown, ...
                errors.append(type(exc).__name__)

    try:
        with cluster.writer() as conn:
            _table(conn)
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        report = aurora_lab.failover(dns_lag=30.0)
        time.sleep(3.0)
        stop.set()
        for t in threads:
            t.join(30)
        after = [at for _key, at in acked if at > report.writable_at]
        assert after, "no write was acknowledged on the new writer"
        rows = {r[0] for r in aurora_lab.execute(aurora_lab.writer.id, "SELECT id FROM fo_rows")}
        lost = [key for key, _at in acked if key not in rows]
        print(
            f"\n{aurora_lab.state().engine}: {len(acked)} acknowledged, {len(lost)} lost, "
            f"first write {min(after) - report.writable_at:.3f}s after the new writer took writes, "
            f"client errors {sorted(set(errors))}"
        )
        assert lost == []
    finally:
        stop.set()
        cluster.close()


@pytest.mark.skipif(not partition_available(), reason="needs root and iptables")
def test_a_partitioned_writer_is_left_behind_within_bounded_time(aurora_lab: Lab) -> None:
    conn = _connect(
        aurora_lab, failure_detection_time="1.5s", connect_timeout=2, **_autocommit(aurora_lab)
    )
    timers: list[threading.Timer] = []
    try:
        old = conn.instance_id
        aurora_lab.partition(old)  # packets to and from the writer are dropped: silence
        timers.append(threading.Timer(0.5, aurora_lab.failover))
        timers[-1].start()
        with pytest.raises(asd.FailoverSucceeded):
            _query(conn, "SELECT 1")  # cut by the probe, then moved to the new writer
        assert conn.instance_id != old
        assert _query(conn, "SELECT 1") == [(1,)]
    finally:
        for timer in timers:
            timer.join()
        conn.close()


def test_pymysql_ping_fails_over_instead_of_reconnecting_to_the_dead_address(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    conn = _connect(lab, autocommit=True)
    try:
        _table(conn)
        old = conn.instance_id
        report = lab.failover(dns_lag=30.0)
        conn.ping()  # PyMySQL alone would reopen a socket to the dead writer's address and fail
        assert conn.instance_id == report.new_writer != old
        _query(conn, "INSERT INTO fo_rows VALUES (%s)", (uuid.uuid4().hex,))
    finally:
        conn.close()


def test_pymysql_ping_after_losing_an_open_transaction_says_so(aurora_lab_mariadb: Lab) -> None:
    lab = aurora_lab_mariadb
    conn = _connect(lab)  # autocommit off, as PyMySQL's default
    try:
        _table(conn)
        _query(conn, "INSERT INTO fo_rows VALUES (%s)", (uuid.uuid4().hex,))  # opens a transaction
        lab.failover()
        with pytest.raises(asd.FailoverSucceeded) as caught:
            conn.ping()
        assert caught.value.transaction_rolled_back
        conn.ping()  # now on the new writer, nothing open
        assert conn.instance_id == lab.writer.id
    finally:
        conn.close()
