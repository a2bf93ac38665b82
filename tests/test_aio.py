"""aurora_smartdriver.aio against the lab, both engines: routing, pools, and DESIGN.md's failure
table (what the application is told when the writer dies under it) for the async path."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import warnings
from collections import Counter
from typing import Any

import psycopg
import pymysql
import pytest

import aurora_smartdriver.aio as aio
from aurora_smartdriver.aio.connection import PsycopgAsyncConnection
from aurora_smartdriver.lab import Lab

pytestmark = pytest.mark.asyncio


def _pg(lab: Lab) -> bool:
    return lab.state().engine == "postgresql"


def _driver(lab: Lab) -> Any:
    return psycopg if _pg(lab) else pymysql


def _settings(lab: Lab, *, autocommit: bool = False, **kwargs: Any) -> dict[str, Any]:
    # A cluster of its own per test: settings such as failover_timeout belong to the first user.
    kwargs.setdefault("cluster_id", uuid.uuid4().hex)
    kwargs.setdefault("fast_refresh_interval", "0.05s")
    if autocommit:
        kwargs["autocommit"] = "on" if _pg(lab) else True
    return kwargs


async def _connect(lab: Lab, **kwargs: Any) -> Any:
    return await aio.connect(lab.dsn, **_settings(lab, **kwargs))


async def _query(conn: Any, sql: str, params: Any = None) -> list[Any]:
    cur = conn.cursor() if isinstance(conn, PsycopgAsyncConnection) else await conn.cursor()
    await cur.execute(sql, params)
    return [tuple(row) for row in await cur.fetchall()] if cur.description else []


async def _close(conn: Any) -> None:
    if isinstance(conn, PsycopgAsyncConnection):
        await conn.close()
    else:
        await conn.ensure_closed()


async def _table(lab: Lab) -> None:
    conn = await _connect(lab)
    try:
        with warnings.catch_warnings():  # MariaDB: "Table 'aio_rows' already exists"
            warnings.simplefilter("ignore")
            await _query(conn, "CREATE TABLE IF NOT EXISTS aio_rows (id VARCHAR(64))")
        await conn.commit()
    finally:
        await _close(conn)
    await asyncio.to_thread(lab.wait_replicated)


def _count(lab: Lab, key: str) -> int:
    rows = lab.execute(lab.writer.id, f"SELECT count(*) FROM aio_rows WHERE id = '{key}'")
    return int(str(rows[0][0]))


async def test_connect_goes_to_the_writer_and_behaves_like_the_driver(aurora_lab: Lab) -> None:
    conn = await _connect(aurora_lab)
    try:
        assert conn.instance_id == aurora_lab.writer.id
        assert await _query(conn, "SELECT 1") == [(1,)]
    finally:
        await _close(conn)
    assert conn.closed


async def test_reader_requests_go_to_readers(aurora_lab: Lab) -> None:
    cluster = aio.Cluster(aurora_lab.dsn, **_settings(aurora_lab))
    readers = {n.id for n in aurora_lab.readers}
    try:
        seen = set()
        for _ in range(6):
            async with cluster.reader() as conn:
                seen.add(conn.instance_id)
                await _query(conn, "SELECT 1")
        assert seen <= readers and seen
        async with cluster.writer() as conn:
            assert conn.instance_id == aurora_lab.writer.id
    finally:
        await cluster.close()


async def test_pooled_connections_are_reused_and_reset(aurora_lab: Lab) -> None:
    cluster = aio.Cluster(aurora_lab.dsn, **_settings(aurora_lab))
    try:
        async with cluster.writer() as conn:
            first = conn._raw
            await _query(conn, "SELECT 1")  # leaves a transaction open: rolled back on return
        async with cluster.writer() as conn:
            assert conn._raw is first
            in_transaction = (
                conn._raw.pgconn.transaction_status != 0
                if isinstance(conn, PsycopgAsyncConnection)
                else conn._raw.get_transaction_status()
            )
            assert not in_transaction
    finally:
        await cluster.close()


async def test_a_borrowed_connection_goes_back_as_it_was_lent_and_the_reset_hook_always_runs(
    aurora_lab: Lab,
) -> None:
    resets: list[Any] = []

    async def reset(raw: Any) -> None:
        resets.append(raw)

    cluster = aio.Cluster(aurora_lab.dsn, reset=reset, **_settings(aurora_lab))
    try:
        async with cluster.writer() as conn:
            first = conn._raw
            if isinstance(conn, PsycopgAsyncConnection):
                await conn.set_autocommit(True)
            else:
                await conn.autocommit(True)
        async with cluster.writer() as conn:
            assert conn._raw is first
            if isinstance(conn, PsycopgAsyncConnection):
                assert first.autocommit is False
            else:
                assert first.get_autocommit() is False
        async with cluster.writer() as conn:  # nothing changed: the hook runs all the same
            assert conn._raw is first
        assert resets == [first, first, first]
    finally:
        await cluster.close()


async def test_autocommit_read_after_writer_crash_raises_failover_succeeded(
    aurora_lab: Lab,
) -> None:
    conn = await _connect(aurora_lab, autocommit=True)
    try:
        old = conn.instance_id
        report = await asyncio.to_thread(aurora_lab.failover)
        with pytest.raises(aio.FailoverSucceeded) as caught:
            await _query(conn, "SELECT 1")
        assert isinstance(caught.value, _driver(aurora_lab).OperationalError)
        assert caught.value.transaction_rolled_back is False
        assert conn.instance_id == report.new_writer != old
        assert await _query(conn, "SELECT 1") == [(1,)]
    finally:
        await _close(conn)


async def test_autocommit_write_lost_in_flight_is_outcome_unknown(aurora_lab: Lab) -> None:
    await _table(aurora_lab)
    conn = await _connect(aurora_lab, autocommit=True)
    try:
        report = await asyncio.to_thread(aurora_lab.failover)
        key = uuid.uuid4().hex
        with pytest.raises(aio.TransactionOutcomeUnknown) as caught:
            await _query(conn, "INSERT INTO aio_rows VALUES (%s)", (key,))
        assert isinstance(caught.value, _driver(aurora_lab).OperationalError)
        assert conn.instance_id == report.new_writer
        assert await _query(conn, "SELECT id FROM aio_rows WHERE id = %s", (key,)) == []
    finally:
        await _close(conn)


async def test_open_transaction_is_reported_rolled_back(aurora_lab: Lab) -> None:
    await _table(aurora_lab)
    conn = await _connect(aurora_lab)
    try:
        key = uuid.uuid4().hex
        await _query(conn, "INSERT INTO aio_rows VALUES (%s)", (key,))  # not committed
        await asyncio.to_thread(aurora_lab.failover)
        with pytest.raises(aio.FailoverSucceeded) as caught:
            await _query(conn, "SELECT 1")
        assert caught.value.transaction_rolled_back is True
        assert _count(aurora_lab, key) == 0
        await _query(conn, "INSERT INTO aio_rows VALUES (%s)", (key,))  # the caller re-runs it
        await conn.commit()
        assert _count(aurora_lab, key) == 1
    finally:
        await _close(conn)


async def test_connection_lost_during_commit_is_outcome_unknown(aurora_lab: Lab) -> None:
    await _table(aurora_lab)
    conn = await _connect(aurora_lab)
    try:
        await _query(conn, "INSERT INTO aio_rows VALUES (%s)", (uuid.uuid4().hex,))
        await asyncio.to_thread(aurora_lab.hang, aurora_lab.writer.id)
        commit = asyncio.create_task(conn.commit())
        await asyncio.sleep(0.5)  # COMMIT is on the wire; the writer does not answer
        await asyncio.to_thread(aurora_lab.failover)  # the hung writer is killed with it
        with pytest.raises(aio.TransactionOutcomeUnknown) as caught:
            await asyncio.wait_for(commit, 30)
        assert isinstance(caught.value, _driver(aurora_lab).OperationalError)
        assert conn.instance_id == aurora_lab.writer.id  # ready for the next transaction
    finally:
        await _close(conn)


async def test_retry_reads_reruns_an_autocommit_read_transparently(aurora_lab: Lab) -> None:
    conn = await _connect(aurora_lab, autocommit=True, retry_reads="on")
    try:
        await asyncio.to_thread(aurora_lab.failover)
        assert await _query(conn, "SELECT 42") == [(42,)]
        assert conn.instance_id == aurora_lab.writer.id
    finally:
        await _close(conn)


async def test_retry_reads_never_reruns_a_write(aurora_lab: Lab) -> None:
    await _table(aurora_lab)
    conn = await _connect(aurora_lab, autocommit=True, retry_reads="on")
    try:
        await asyncio.to_thread(aurora_lab.failover)
        with pytest.raises(aio.TransactionOutcomeUnknown):
            await _query(conn, "INSERT INTO aio_rows VALUES (%s)", (uuid.uuid4().hex,))
    finally:
        await _close(conn)


async def test_a_writer_borrowed_during_a_failover_waits_for_the_new_writer(
    aurora_lab: Lab,
) -> None:
    # A borrow checks its connection: the pool learns of the crash.
    cluster = aio.Cluster(aurora_lab.dsn, **_settings(aurora_lab, validate_after_idle="0s"))
    try:
        async with cluster.writer() as conn:
            await _query(conn, "SELECT 1")
        old = aurora_lab.writer.id
        await asyncio.to_thread(aurora_lab.crash, old)
        promote = asyncio.create_task(asyncio.to_thread(aurora_lab.failover))
        async with cluster.writer() as conn:
            assert await _query(conn, "SELECT 1") == [(1,)]
            assert conn.instance_id != old
        await promote
    finally:
        await cluster.close()


async def test_pooled_writer_connections_survive_a_failover(aurora_lab: Lab) -> None:
    await _table(aurora_lab)
    cluster = aio.Cluster(aurora_lab.dsn, **_settings(aurora_lab))
    try:
        async with cluster.writer() as conn:
            await _query(conn, "SELECT 1")
        report = await asyncio.to_thread(aurora_lab.failover)
        done = False
        for _attempt in range(3):
            try:
                async with cluster.writer() as conn:
                    await _query(conn, "INSERT INTO aio_rows VALUES (%s)", (uuid.uuid4().hex,))
                    assert conn.instance_id == report.new_writer
                done = True
                break
            except aio.FailoverSucceeded:
                continue
        assert done
    finally:
        await cluster.close()


async def test_no_writer_within_the_timeout_raises_no_writer_available(aurora_lab: Lab) -> None:
    # backoff_max bounds how long the monitor waits between refreshes once the outage has
    # lasted failover_timeout: shorter than failover_timeout here, so the retry sees the writer.
    conn = await _connect(aurora_lab, autocommit=True, failover_timeout="1.5s", backoff_max="0.3s")
    try:
        await asyncio.to_thread(aurora_lab.crash, aurora_lab.writer.id)
        with pytest.raises(aio.NoWriterAvailable) as caught:
            await _query(conn, "SELECT 1")
        assert isinstance(caught.value, _driver(aurora_lab).OperationalError)
        await asyncio.to_thread(aurora_lab.failover)
        assert await _query(conn, "SELECT 1") == [(1,)]  # reconnects at its next statement
        assert conn.instance_id == aurora_lab.writer.id
    finally:
        await _close(conn)


async def test_run_transaction_reruns_after_failover_succeeded(aurora_lab: Lab) -> None:
    await _table(aurora_lab)
    cluster = aio.Cluster(aurora_lab.dsn, **_settings(aurora_lab, autocommit=True))
    key = uuid.uuid4().hex
    attempts = 0

    async def work(conn: Any) -> str:
        nonlocal attempts
        attempts += 1
        await _query(conn, "INSERT INTO aio_rows VALUES (%s)", (key,))
        if attempts == 1:  # the writer dies inside the transaction, before COMMIT
            await asyncio.to_thread(aurora_lab.failover)
            await _query(conn, "SELECT 1")
        return str(conn.instance_id)

    try:
        where = await cluster.run_transaction(work)
        assert attempts == 2
        assert where == aurora_lab.writer.id
        assert _count(aurora_lab, key) == 1
    finally:
        await cluster.close()


async def test_run_transaction_does_not_rerun_an_unknown_outcome(aurora_lab: Lab) -> None:
    await _table(aurora_lab)
    cluster = aio.Cluster(aurora_lab.dsn, **_settings(aurora_lab))
    attempts = 0

    async def work(conn: Any) -> None:
        nonlocal attempts
        attempts += 1
        await _query(conn, "INSERT INTO aio_rows VALUES (%s)", (uuid.uuid4().hex,))
        await asyncio.to_thread(aurora_lab.hang, aurora_lab.writer.id)
        asyncio.get_running_loop().call_later(0.5, _fail_over_soon, aurora_lab)
        await conn.commit()  # COMMIT on the wire when the hung writer is killed

    try:
        with pytest.raises(aio.TransactionOutcomeUnknown):
            await cluster.run_transaction(work)
        assert attempts == 1
    finally:
        await cluster.close()


_background: set[asyncio.Task[Any]] = set()


def _fail_over_soon(lab: Lab) -> None:
    task = asyncio.get_running_loop().create_task(asyncio.to_thread(lab.failover))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def test_application_errors_reach_the_application_unchanged(aurora_lab: Lab) -> None:
    conn = await _connect(aurora_lab, autocommit=True)
    try:
        with pytest.raises(_driver(aurora_lab).ProgrammingError):
            await _query(conn, "SELECT * FROM no_such_table_here")
        assert await _query(conn, "SELECT 1") == [(1,)]
    finally:
        await _close(conn)


async def test_set_read_only_moves_a_writer_connection_to_a_reader_between_transactions(
    aurora_lab: Lab,
) -> None:
    conn = await _connect(aurora_lab)
    try:
        await _query(conn, "SELECT 1")  # a transaction is open: the move waits for its end
        await conn.set_read_only(True)
        assert conn.instance_id == aurora_lab.writer.id
        await conn.commit()
        assert conn.role == "reader"
        assert conn.instance_id in {node.id for node in aurora_lab.readers}
        replica = "SELECT pg_is_in_recovery()" if _pg(aurora_lab) else "SELECT @@read_only"
        assert (await _query(conn, replica))[0][0]
        await conn.rollback()
        await conn.set_read_only(False)
        assert conn.instance_id == aurora_lab.writer.id
        assert not (await _query(conn, replica))[0][0]
    finally:
        await _close(conn)


async def test_bytes_parameters_round_trip_on_mariadb(aurora_lab_mariadb: Lab) -> None:
    # aiomysql's own bytes escaping is broken with PyMySQL 1.1+; the library's is PyMySQL's.
    conn = await _connect(aurora_lab_mariadb)
    try:
        payload = bytes(range(256))
        assert await _query(conn, "SELECT %s = UNHEX(%s)", (payload, payload.hex())) == [(1,)]
    finally:
        await _close(conn)


async def test_aiomysql_read_timeout_ends_a_silent_statement_as_pymysql_does(
    aurora_lab_mariadb: Lab,
) -> None:
    # aiomysql has no read timeout: the library's is PyMySQL's (2013 "... (timed out)"), and
    # the lost connection is handled as the sync library handles it.
    conn = await _connect(
        aurora_lab_mariadb, autocommit=True, read_timeout=1, failure_detection_time="30s"
    )
    try:
        await asyncio.sleep(1.5)  # idle longer than read_timeout: nothing is waiting, no cut
        assert await _query(conn, "SELECT SLEEP(0.5)") == [(0,)]
        started = asyncio.get_running_loop().time()
        with pytest.raises(aio.FailoverSucceeded) as caught:
            await _query(conn, "SELECT SLEEP(5)")
        assert asyncio.get_running_loop().time() - started < 3.0
        assert caught.value.args[0] == 2013
        assert "Lost connection to MySQL server during query (timed out)" in str(caught.value)
        assert await _query(conn, "SELECT 1") == [(1,)]
    finally:
        await _close(conn)


async def test_aiomysql_write_timeout_ends_a_statement_the_server_does_not_take(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    conn = await _connect(lab, autocommit=True, write_timeout=1, failure_detection_time="30s")
    raw = conn._raw
    big = "SELECT '" + "x" * 15_000_000 + "'"  # more than the loopback buffers take
    await asyncio.to_thread(lab.hang, conn.instance_id)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(pymysql.err.OperationalError) as caught:
            await raw.query(big)  # the driver connection: what aiomysql itself raises
        assert asyncio.get_running_loop().time() - started < 4.0
        assert caught.value.args == (2006, "MySQL server has gone away (timed out)")
    finally:
        await asyncio.to_thread(lab.resume, conn.instance_id)
        await _close(conn)


async def test_round_robin_borrows_that_must_connect_take_each_reader_in_turn(
    aurora_lab: Lab,
) -> None:
    # A borrow that finds no idle connection chooses its host once (not once to look for an
    # idle connection and again to connect): round robin stays round.
    readers = sorted(r.id for r in aurora_lab.readers)
    if len(readers) < 2:
        pytest.skip("needs two readers")
    cluster = aio.Cluster(aurora_lab.dsn, **_settings(aurora_lab, reader_strategy="round_robin"))
    try:
        async with contextlib.AsyncExitStack() as stack:
            held = [
                await stack.enter_async_context(cluster.reader()) for _ in range(2 * len(readers))
            ]
            spread = Counter(conn.instance_id for conn in held)
        assert spread == dict.fromkeys(readers, 2)
    finally:
        await cluster.close()


async def test_an_aiomysql_borrow_that_runs_nothing_sends_nothing(aurora_lab_mariadb: Lab) -> None:
    # The previous borrower's last result on the driver connection (here a read-your-writes
    # session's position query after its COMMIT) is no transaction of the next borrower's: a
    # borrow that runs nothing ends without a COMMIT.
    cluster = aio.Cluster(aurora_lab_mariadb.dsn, **_settings(aurora_lab_mariadb))

    async def commits() -> int:
        async with cluster.writer() as conn:
            rows = await _query(conn, "SHOW SESSION STATUS LIKE 'Com_commit'")
            return int(rows[0][1])  # read before this borrow's own COMMIT (it read rows)

    try:
        first = await commits()
        async with cluster.session().writer() as conn:
            assert await _query(conn, "SELECT 1") == [(1,)]  # a COMMIT, then the position
        for _ in range(3):
            async with cluster.writer():
                pass
        assert await commits() == first + 2
    finally:
        await cluster.close()


async def test_execute_passes_parameters_as_the_driver_takes_them(aurora_lab: Lab) -> None:
    """Positional, by keyword (psycopg's ``params``/``prepare``, aiomysql's ``args``), none."""
    conn = await _connect(aurora_lab, autocommit=True)
    try:
        cur = conn.cursor() if isinstance(conn, PsycopgAsyncConnection) else await conn.cursor()
        await cur.execute("SELECT 1")
        assert tuple(await cur.fetchone()) == (1,)
        await cur.execute("SELECT %s", (2,))
        assert tuple(await cur.fetchone()) == (2,)
        await cur.execute(query="SELECT %s", params=(3,))  # our name for the second one
        assert tuple(await cur.fetchone()) == (3,)
        if _pg(aurora_lab):
            await cur.execute("SELECT %s", (4,), prepare=True)
            await cur.execute("SELECT %s", params=(5,), binary=True)
        else:
            await cur.execute("SELECT %s", args=(4,))
            assert tuple(await cur.fetchone()) == (4,)
            await cur.execute("SELECT %s", args=(5,))
        assert tuple(await cur.fetchone()) == (5,)
        with pytest.raises(TypeError):
            await cur.execute("SELECT %s", (6,), (7,))
    finally:
        await _close(conn)
