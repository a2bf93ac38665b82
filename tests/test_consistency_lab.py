"""Read-your-writes against the lab: with replicas made to lag, reads in a session never miss
the session's own writes, on both engines, through every kind of session."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime
from aurora_smartdriver.consistency import ConsistencyTokenError
from aurora_smartdriver.lab import Lab

LAG = 1.0
"""A lag a replica catches up from within a test (reads wait for it)."""
FAR = 120.0
"""A lag no step of a test outlasts however loaded the machine (reads that must miss)."""


@pytest.fixture(autouse=True)
def _close_runtimes() -> Iterator[None]:
    yield
    _runtime.close_all()


def _dsn(lab: Lab, **params: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"{lab.dsn}&cluster_id=rw-{uuid.uuid4().hex}{extra}"


def _table(lab: Lab) -> None:
    conn = asd.connect(lab.dsn, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS rw_items (id VARCHAR(64) PRIMARY KEY)")
        cur.close()
    finally:
        conn.close()
    lab.wait_replicated()


def _insert(conn: Any, key: str) -> None:
    cur = conn.cursor()
    cur.execute("INSERT INTO rw_items (id) VALUES (%s)", (key,))
    cur.close()


def _has(conn: Any, key: str) -> bool:
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM rw_items WHERE id = %s", (key,))
    row = cur.fetchone()
    cur.close()
    return bool(row and int(row[0]) == 1)


def _lag_readers(lab: Lab, seconds: float) -> None:
    for reader in lab.readers:
        lab.lag(reader, seconds)


def test_a_lagging_replica_misses_a_fresh_write_with_eventual_consistency(
    aurora_lab: Lab,
) -> None:
    """The fault is real: without a session, a read right after a write misses it."""
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    with asd.Cluster(_dsn(lab)) as cluster:
        with cluster.writer() as conn:
            _insert(conn, key)
        with cluster.reader() as conn:
            assert conn.instance_id != lab.writer.id
            assert not _has(conn, key)


def test_a_session_reads_its_writes_on_the_writer_when_replicas_lag(aurora_lab: Lab) -> None:
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    with asd.Cluster(_dsn(lab)) as cluster:
        session = cluster.session()
        keys = [uuid.uuid4().hex for _ in range(3)]
        for key in keys:
            with session.writer() as conn:
                _insert(conn, key)
            with session.reader() as conn:
                assert _has(conn, key)
                assert conn.instance_id == lab.writer.id
        assert dict(cluster.metrics().routing.session_reads) == {"writer": 3}


def test_a_session_read_waits_for_a_replica_within_consistency_wait(aurora_lab: Lab) -> None:
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, LAG)
    key = uuid.uuid4().hex
    with asd.Cluster(_dsn(lab, consistency_wait=LAG * 10)) as cluster:
        with cluster.session() as session:
            with session.writer() as conn:
                _insert(conn, key)
            with session.reader() as conn:
                assert conn.instance_id != lab.writer.id
                assert _has(conn, key)
        assert dict(cluster.metrics().routing.session_reads) == {"replica_after_wait": 1}


def test_session_reads_stay_on_replicas_when_they_keep_up(aurora_lab: Lab) -> None:
    lab = aurora_lab
    _table(lab)
    with asd.Cluster(_dsn(lab, consistency_wait=2)) as cluster:
        session = cluster.session()
        for _ in range(10):
            key = uuid.uuid4().hex
            with session.writer() as conn:
                _insert(conn, key)
            with session.reader() as conn:
                assert conn.instance_id != lab.writer.id
                assert _has(conn, key)
        served = dict(cluster.metrics().routing.session_reads)
        assert "writer" not in served and sum(served.values()) == 10


def test_a_token_carries_a_write_to_another_process(aurora_lab: Lab) -> None:
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    dsn = _dsn(lab)
    key = uuid.uuid4().hex
    script = (
        "import sys, aurora_smartdriver as asd\n"
        "with asd.Cluster(sys.argv[1]) as c:\n"
        "    s = c.session()\n"
        "    with s.writer() as conn:\n"
        "        cur = conn.cursor()\n"
        "        cur.execute('INSERT INTO rw_items (id) VALUES (%s)', (sys.argv[2],))\n"
        "    print(s.token)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, dsn, key],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    token = out.stdout.strip().splitlines()[-1]
    assert token and key not in token  # opaque: not the data, only a position
    with asd.Cluster(dsn) as cluster:
        with cluster.reader() as conn:
            assert not _has(conn, key)  # without the token: a lagging replica
        with cluster.reader(consistency_token=token) as conn:
            assert _has(conn, key)
        with cluster.session(token=token).reader() as conn:
            assert _has(conn, key)


def test_consistency_session_on_the_dsn_makes_each_thread_a_session(aurora_lab: Lab) -> None:
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    with asd.Cluster(_dsn(lab, consistency="session")) as cluster:
        with cluster.writer() as conn:
            _insert(conn, key)
        with cluster.reader() as conn:
            assert _has(conn, key)

        def other_thread() -> bool:
            with cluster.reader() as conn:
                return _has(conn, key)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            assert pool.submit(other_thread).result() is False  # not that thread's write


def test_a_write_whose_position_could_not_be_read_is_still_seen(aurora_lab: Lab) -> None:
    """Autocommit writes and the application closed the connection inside the borrow: the
    position is read from the writer before the next read instead."""
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    with asd.Cluster(_dsn(lab, autocommit="true")) as cluster:
        session = cluster.session()
        with session.writer() as conn:
            _insert(conn, key)
            conn.close()
        assert session.token == ""  # nothing known yet, only "ask the writer"
        with session.reader() as conn:
            assert _has(conn, key)
        assert session.token != ""


def test_a_commit_reads_the_sessions_position(aurora_lab: Lab) -> None:
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    with asd.Cluster(_dsn(lab)) as cluster:
        session = cluster.session()
        with session.writer() as conn:
            _insert(conn, key)
            conn.commit()
            assert session.token != ""  # read at the commit
            conn.close()
        with session.reader() as conn:
            assert _has(conn, key)


def test_tokens_of_another_cluster_or_malformed_are_refused(
    aurora_lab_postgresql: Lab,
) -> None:
    lab = aurora_lab_postgresql
    _table(lab)
    with asd.Cluster(_dsn(lab)) as one, asd.Cluster(_dsn(lab)) as other:
        session = one.session()
        with session.writer() as conn:
            _insert(conn, uuid.uuid4().hex)
        token = session.token
        with pytest.raises(ConsistencyTokenError, match="another cluster"):
            other.session(token=token)
        with pytest.raises(ConsistencyTokenError, match="malformed"):
            one.reader(consistency_token="not a token!")
        with pytest.raises(ConsistencyTokenError, match="malformed"):
            one.session(token=token[:-3])


def test_mariadb_lags_to_a_fraction_of_a_second_and_catches_up(aurora_lab_mariadb: Lab) -> None:
    """MariaDB's MASTER_DELAY counts whole seconds; Lab.lag holds the SQL thread back instead."""
    lab = aurora_lab_mariadb
    _table(lab)
    _lag_readers(lab, 2.5)
    assert all(n.lag == 2.5 for n in lab.readers)
    key = uuid.uuid4().hex
    with asd.Cluster(_dsn(lab, consistency_wait=30)) as cluster:
        session = cluster.session()
        with session.writer() as conn:
            _insert(conn, key)
        with cluster.reader() as conn:
            assert not _has(conn, key)
        with session.reader() as conn:
            assert conn.instance_id != lab.writer.id
            assert _has(conn, key)
        assert dict(cluster.metrics().routing.session_reads) == {"replica_after_wait": 1}
    _lag_readers(lab, 0)
    lab.wait_replicated(10)  # the SQL threads run again: every replica catches up


def test_mariadb_master_delay_lag_outlives_the_process(aurora_lab_mariadb: Lab) -> None:
    """The command line's kind of lag: MASTER_DELAY on the server, whole seconds."""
    lab = aurora_lab_mariadb
    _table(lab)
    reader = lab.readers[0]
    lab.lag(reader, 30, in_process=False)
    assert lab.execute(reader, "SELECT 1") == [(1,)]
    key = uuid.uuid4().hex
    conn = asd.connect(lab.dsn, autocommit=True)
    try:
        _insert(conn, key)
    finally:
        conn.close()
    import pymysql

    direct = pymysql.connect(**lab.connect_kwargs(reader), autocommit=True)
    try:
        assert not _has(direct, key)
    finally:
        direct.close()
    lab.lag(reader, 0, in_process=False)
    lab.wait_replicated(10)


def test_a_connection_with_consistency_session_reads_its_writes_after_moving(
    aurora_lab: Lab,
) -> None:
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    key, other = uuid.uuid4().hex, uuid.uuid4().hex
    dsn = _dsn(lab)  # one cluster id: a token is for the cluster it was made on
    plain = asd.connect(dsn)
    session = asd.connect(dsn, consistency="session")
    try:
        for conn, k in ((plain, other), (session, key)):
            _insert(conn, k)
            conn.commit()
            conn.read_only = True
        assert plain.instance_id != lab.writer.id and not _has(plain, other)
        assert _has(session, key)  # no replica has it: the writer serves the session's reads
        session.rollback()
        token = session.consistency_token
        assert token
    finally:
        plain.close()
        session.close()
    with asd.Cluster(dsn) as cluster, cluster.reader(consistency_token=token) as conn:
        assert _has(conn, key)
    reader = asd.connect(dsn, role="reader", consistency_token=token)
    try:
        assert _has(reader, key)
    finally:
        reader.close()


def test_a_sqlalchemy_session_reads_its_writes_on_readers(aurora_lab: Lab) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from aurora_smartdriver.sqlalchemy import ReadYourWrites, engine_url

    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    engine = create_engine(engine_url(_dsn(lab)))  # one cluster id for the engine's life
    try:
        rw = ReadYourWrites()
        key = uuid.uuid4().hex
        with Session(engine.execution_options(aurora_read_your_writes=rw)) as orm:
            orm.execute(text("INSERT INTO rw_items (id) VALUES (:k)"), {"k": key})
            orm.commit()
            reads = orm.connection(execution_options={"aurora_role": "reader"})
            found = reads.execute(text("SELECT count(*) FROM rw_items WHERE id = :k"), {"k": key})
            assert found.scalar() == 1
            orm.commit()
        assert rw.token
        with Session(engine.execution_options(aurora_role="reader")) as orm:  # no session
            found = orm.execute(text("SELECT count(*) FROM rw_items WHERE id = :k"), {"k": key})
            assert found.scalar() == 0
        later = ReadYourWrites(token=rw.token)  # the next request, given the token
        with engine.connect().execution_options(
            aurora_read_your_writes=later, aurora_role="reader"
        ) as conn:
            found = conn.execute(text("SELECT count(*) FROM rw_items WHERE id = :k"), {"k": key})
            assert found.scalar() == 1
    finally:
        engine.dispose()


def test_role_any_in_a_session_reads_its_writes(aurora_lab: Lab) -> None:
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    with asd.Cluster(_dsn(lab)) as cluster:
        session = cluster.session()
        for _ in range(4):
            key = uuid.uuid4().hex
            with session.writer() as conn:
                _insert(conn, key)
            with session.connection("any") as conn:
                assert _has(conn, key)


def test_a_token_asked_inside_a_transaction_is_refused_and_after_it_covers(
    aurora_lab: Lab,
) -> None:
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    dsn = _dsn(lab)
    key = uuid.uuid4().hex
    with asd.Cluster(dsn) as cluster:
        session = cluster.session()
        with session.writer() as conn:
            _insert(conn, key)
            with pytest.raises(Exception, match="commit first") as refused:
                conn.consistency_token  # noqa: B018 - the property is the call
            assert isinstance(refused.value, conn._runtime.module.ProgrammingError)
        token = session.token
    with asd.Cluster(dsn) as elsewhere, elsewhere.reader(consistency_token=token) as conn:
        assert _has(conn, key)


def test_writes_on_a_connection_that_lost_its_node_are_still_seen(aurora_lab: Lab) -> None:
    """Autocommit write acknowledged, the writer dies, the failover finds none: the position
    was never read. When the writer is back, reads of the session still see the write."""
    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    conn = asd.connect(_dsn(lab, consistency="session", failover_timeout=1), autocommit=True)
    try:
        _insert(conn, key)
        writer = lab.writer
        lab.crash(writer)
        with pytest.raises((asd.NoWriterAvailable, asd.TransactionOutcomeUnknown)):
            _insert(conn, uuid.uuid4().hex)  # the failover finds no writer
        lab.restart(writer)
        conn.read_only = True
        assert _has(conn, key)
    finally:
        conn.close()


def test_a_token_given_to_reader_adds_to_the_threads_own_session(aurora_lab: Lab) -> None:
    lab = aurora_lab
    _table(lab)
    dsn = _dsn(lab, consistency="session")
    with asd.Cluster(dsn) as cluster:
        older = cluster.session()
        with older.writer() as conn:
            _insert(conn, uuid.uuid4().hex)
        token = older.token
        _lag_readers(lab, FAR)
        key = uuid.uuid4().hex
        with cluster.writer() as conn:  # the thread's own session
            _insert(conn, key)
        with cluster.reader(consistency_token=token) as conn:
            assert _has(conn, key)


def test_sqlalchemy_read_your_writes_given_after_the_role_still_holds(aurora_lab: Lab) -> None:
    from sqlalchemy import create_engine, text

    from aurora_smartdriver.sqlalchemy import ReadYourWrites, engine_url

    lab = aurora_lab
    _table(lab)
    _lag_readers(lab, FAR)
    engine = create_engine(engine_url(_dsn(lab)))
    try:
        rw = ReadYourWrites()
        key = uuid.uuid4().hex
        with engine.connect().execution_options(aurora_read_your_writes=rw) as conn:
            conn.execute(text("INSERT INTO rw_items (id) VALUES (:k)"), {"k": key})
            conn.commit()
        assert rw.token  # read at the commit, not at the checkin
        readers = engine.execution_options(aurora_role="reader")
        for _ in range(3):  # pooled connections attached to a reader, or detached
            with readers.connect() as plain:
                plain.execute(text("SELECT 1"))
                plain.commit()
                held = plain.execution_options(aurora_read_your_writes=rw)
                found = held.execute(
                    text("SELECT count(*) FROM rw_items WHERE id = :k"), {"k": key}
                )
                assert found.scalar() == 1
    finally:
        engine.dispose()


def test_a_session_pays_one_position_read_per_write_transaction(
    aurora_lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most one round trip per write transaction, none for reads with nothing to wait for
    (counted on the library's position queries; PostgreSQL's run without a ROLLBACK)."""
    from aurora_smartdriver import _causal

    lab = aurora_lab
    _table(lab)
    calls: list[str] = []
    real = _causal._row

    def counted(adapter: Any, raw: Any, engine: Any, sql: str, params: Any = None) -> Any:
        calls.append(sql)
        return real(adapter, raw, engine, sql, params)

    monkeypatch.setattr(_causal, "_row", counted)
    with asd.Cluster(_dsn(lab)) as cluster:
        session = cluster.session()
        with session.reader() as conn:
            _has(conn, "nothing")
        assert calls == []  # nothing written: nothing to read or wait for
        with session.writer() as conn:
            _insert(conn, uuid.uuid4().hex)
        assert len(calls) == 1  # the commit's
        with session.writer() as conn:
            conn.commit()  # an empty transaction still reads it (cannot tell it from a write)
        calls.clear()
        with session.reader() as conn:
            _has(conn, "x")
        assert len(calls) <= 1  # the replica's position, unless seen a moment ago


def test_the_lab_publishes_each_replicas_own_position(aurora_lab: Lab) -> None:
    """The Aurora metadata's per-instance read positions come from the nodes themselves: a
    lagging replica's stays behind the writer's durable position, an up-to-date one reaches it."""
    import time

    lab = aurora_lab
    _table(lab)
    lagging, current = lab.readers[0], lab.readers[1]
    lab.lag(lagging, FAR)
    conn = asd.connect(_dsn(lab), autocommit=True)
    try:
        for _ in range(5):
            _insert(conn, uuid.uuid4().hex)
    finally:
        conn.close()
    if lab.state().engine == "postgresql":
        text = str(lab.execute(lab.writer, "SELECT pg_current_wal_lsn()::text")[0][0])
        high, low = text.split("/")
        written = (int(high, 16) << 32) | int(low, 16)
        sql = "SELECT server_id, current_read_lsn FROM aurora_replica_status()"
    else:
        text = str(lab.execute(lab.writer, "SELECT @@gtid_binlog_pos")[0][0])
        written = max(int(part.rsplit("-", 1)[1]) for part in text.split(","))
        sql = "SELECT SERVER_ID, CURRENT_READ_POINT FROM aurora_lab.replica_host_status"
    deadline = time.monotonic() + 30
    while True:
        rows = {str(r[0]): r[1] for r in lab.execute(lab.writer, sql)}
        if rows[current.id] is not None and int(str(rows[current.id])) >= written:
            break
        assert time.monotonic() < deadline, f"{current.id} never published {written}: {rows}"
        time.sleep(0.2)
    assert rows[lagging.id] is not None and int(str(rows[lagging.id])) < written, rows


def test_a_psycopg_transaction_block_in_a_session_is_read_by_the_session(
    aurora_lab_postgresql: Lab,
) -> None:
    """psycopg's ``with conn.transaction()`` commits without ``conn.commit()``: the session
    still takes its position (else a reader would be lent on any replica)."""
    lab = aurora_lab_postgresql
    _table(lab)
    _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    with asd.Cluster(_dsn(lab)) as cluster:
        session = cluster.session()
        with session.writer() as conn, conn.transaction():
            _insert(conn, key)
        assert session.token != ""
        with session.reader() as conn:
            assert _has(conn, key)
