"""Read-your-writes through aurora_smartdriver.aio against the lab: with replicas made to lag,
reads in a session never miss the session's own writes, on both engines (the sync tests'
cases in tests/test_consistency_lab.py, on the event loop)."""

from __future__ import annotations

import asyncio
import uuid
import warnings
from typing import Any

import pytest

import aurora_smartdriver.aio as aio
from aurora_smartdriver.aio.connection import PsycopgAsyncConnection
from aurora_smartdriver.lab import Lab

pytestmark = pytest.mark.asyncio

LAG = 1.0
"""A lag a replica catches up from within a test (reads wait for it)."""
FAR = 120.0
"""A lag no step of a test outlasts however loaded the machine (reads that must miss)."""


def _dsn(lab: Lab, **params: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"{lab.dsn}&cluster_id=aio-rw-{uuid.uuid4().hex}{extra}"


async def _run(conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    cur = conn.cursor() if isinstance(conn, PsycopgAsyncConnection) else await conn.cursor()
    with warnings.catch_warnings():  # MariaDB: "Table 'aio_rw_items' already exists"
        warnings.simplefilter("ignore")
        await cur.execute(sql, params)
    return [tuple(row) for row in await cur.fetchall()] if cur.description else []


async def _table(lab: Lab) -> None:
    autocommit: Any = "on" if lab.state().engine == "postgresql" else True
    conn = await aio.connect(_dsn(lab), autocommit=autocommit)
    try:
        await _run(conn, "CREATE TABLE IF NOT EXISTS aio_rw_items (id VARCHAR(64) PRIMARY KEY)")
    finally:
        await _close(conn)
    await asyncio.to_thread(lab.wait_replicated)


async def _close(conn: Any) -> None:
    if isinstance(conn, PsycopgAsyncConnection):
        await conn.close()
    else:
        await conn.ensure_closed()


async def _insert(conn: Any, key: str) -> None:
    await _run(conn, "INSERT INTO aio_rw_items (id) VALUES (%s)", (key,))


async def _has(conn: Any, key: str) -> bool:
    rows = await _run(conn, "SELECT count(*) FROM aio_rw_items WHERE id = %s", (key,))
    return bool(rows and int(rows[0][0]) == 1)


async def _lag_readers(lab: Lab, seconds: float) -> None:
    for reader in lab.readers:
        await asyncio.to_thread(lab.lag, reader, seconds)


async def test_a_lagging_replica_misses_a_fresh_write_with_eventual_consistency(
    aurora_lab: Lab,
) -> None:
    """The fault is real: without a session, a read right after a write misses it."""
    lab = aurora_lab
    await _table(lab)
    await _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    async with aio.Cluster(_dsn(lab)) as cluster:
        async with cluster.writer() as conn:
            await _insert(conn, key)
        async with cluster.reader() as conn:
            assert conn.instance_id != lab.writer.id
            assert not await _has(conn, key)


async def test_a_session_reads_its_writes_on_the_writer_when_replicas_lag(
    aurora_lab: Lab,
) -> None:
    lab = aurora_lab
    await _table(lab)
    await _lag_readers(lab, FAR)
    async with aio.Cluster(_dsn(lab)) as cluster:
        session = cluster.session()
        for _ in range(3):
            key = uuid.uuid4().hex
            async with session.writer() as conn:
                await _insert(conn, key)
            async with session.reader() as conn:
                assert await _has(conn, key)
                assert conn.instance_id == lab.writer.id
        assert dict(cluster.metrics().routing.session_reads) == {"writer": 3}


async def test_a_session_read_waits_for_a_replica_within_consistency_wait(
    aurora_lab: Lab,
) -> None:
    lab = aurora_lab
    await _table(lab)
    await _lag_readers(lab, LAG)
    key = uuid.uuid4().hex
    async with aio.Cluster(_dsn(lab, consistency_wait=LAG * 10)) as cluster:
        async with cluster.session() as session:
            async with session.writer() as conn:
                await _insert(conn, key)
            async with session.reader() as conn:
                assert conn.instance_id != lab.writer.id
                assert await _has(conn, key)
        assert dict(cluster.metrics().routing.session_reads) == {"replica_after_wait": 1}


async def test_a_token_carries_a_write_to_another_session(aurora_lab: Lab) -> None:
    lab = aurora_lab
    await _table(lab)
    await _lag_readers(lab, FAR)
    dsn = _dsn(lab)
    key = uuid.uuid4().hex
    async with aio.Cluster(dsn) as writing:
        session = writing.session()
        async with session.writer() as conn:
            await _insert(conn, key)
        token = session.token
    assert token and key not in token
    async with aio.Cluster(dsn) as cluster:
        async with cluster.reader() as conn:
            assert not await _has(conn, key)  # without the token: a lagging replica
        async with cluster.reader(consistency_token=token) as conn:
            assert await _has(conn, key)
        async with cluster.session(token=token).reader() as conn:
            assert await _has(conn, key)
        with pytest.raises(aio.ConsistencyTokenError):
            cluster.session(token="not a token")


async def test_consistency_session_on_the_dsn_makes_each_task_a_session(aurora_lab: Lab) -> None:
    lab = aurora_lab
    await _table(lab)
    await _lag_readers(lab, FAR)
    autocommit = "on" if lab.state().engine == "postgresql" else "true"
    async with aio.Cluster(_dsn(lab, consistency="session", autocommit=autocommit)) as cluster:
        written = asyncio.Event()
        key = uuid.uuid4().hex

        async def writing_task() -> bool:
            async with cluster.writer() as conn:
                await _insert(conn, key)  # autocommit: its position read as the borrow ends
            written.set()
            async with cluster.reader() as conn:
                return await _has(conn, key)

        async def other_task() -> bool:
            await written.wait()
            async with cluster.reader() as conn:
                return await _has(conn, key)

        mine, other = await asyncio.gather(writing_task(), other_task())
        assert mine is True
        assert other is False  # not that task's write: a lagging replica


async def test_a_connection_with_consistency_session_reads_its_writes_after_moving(
    aurora_lab: Lab,
) -> None:
    lab = aurora_lab
    await _table(lab)
    await _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    autocommit: Any = "on" if lab.state().engine == "postgresql" else True
    conn = await aio.connect(_dsn(lab, consistency="session"), autocommit=autocommit)
    try:
        await _insert(conn, key)
        await conn.set_read_only(True)  # moves: to a reader that has the write, or the writer
        assert conn.role == "reader"
        assert await _has(conn, key)
    finally:
        await _close(conn)


async def test_a_token_asked_inside_a_transaction_is_refused_and_after_the_commit_covers(
    aurora_lab: Lab,
) -> None:
    lab = aurora_lab
    await _table(lab)
    await _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    dsn = _dsn(lab)  # a token is for the cluster it was made on (its cluster_id too)
    conn = await aio.connect(dsn)
    try:
        await _insert(conn, key)
        with pytest.raises(conn._runtime.module.ProgrammingError, match="commit first"):
            await conn.consistency_token()
        await conn.commit()
        token = await conn.consistency_token()
    finally:
        await _close(conn)
    async with aio.Cluster(dsn) as cluster, cluster.reader(consistency_token=token) as reader:
        assert await _has(reader, key)


async def test_autocommit_writes_on_a_connection_closed_inside_the_borrow_are_still_seen(
    aurora_lab: Lab,
) -> None:
    """The position could not be read where the work ended: the next read asks the writer."""
    lab = aurora_lab
    await _table(lab)
    await _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    autocommit = "on" if lab.state().engine == "postgresql" else "true"
    async with aio.Cluster(_dsn(lab, autocommit=autocommit)) as cluster:
        session = cluster.session()
        async with session.writer() as conn:
            await _insert(conn, key)
            await _close(conn)
        assert session.token == ""  # nothing known yet, only "ask the writer"
        async with session.reader() as conn:
            assert await _has(conn, key)
        assert session.token != ""


async def test_a_psycopg_transaction_block_in_a_session_is_read_by_the_session(
    aurora_lab_postgresql: Lab,
) -> None:
    """psycopg's ``async with conn.transaction()`` commits without ``conn.commit()``: the
    session still takes its position (else a reader would be lent on any replica)."""
    lab = aurora_lab_postgresql
    await _table(lab)
    await _lag_readers(lab, FAR)
    key = uuid.uuid4().hex
    async with aio.Cluster(_dsn(lab)) as cluster:
        session = cluster.session()
        async with session.writer() as conn, conn.transaction():
            await _insert(conn, key)
        assert session.token != ""
        async with session.reader() as conn:
            assert await _has(conn, key)


async def test_an_async_sqlalchemy_session_reads_its_writes_on_readers(aurora_lab: Lab) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from aurora_smartdriver.sqlalchemy import ReadYourWrites, engine_url

    lab = aurora_lab
    await _table(lab)
    await _lag_readers(lab, FAR)
    scheme = (
        "postgresql+aurora_psycopg_async"
        if lab.state().engine == "postgresql"
        else "mariadb+aurora_aiomysql"
    )
    engine = create_async_engine(engine_url(_dsn(lab)).set(drivername=scheme))
    count = text("SELECT count(*) FROM aio_rw_items WHERE id = :k")
    try:
        rw = ReadYourWrites()
        key = uuid.uuid4().hex
        async with AsyncSession(engine.execution_options(aurora_read_your_writes=rw)) as orm:
            await orm.execute(text("INSERT INTO aio_rw_items (id) VALUES (:k)"), {"k": key})
            await orm.commit()
            reads = await orm.connection(execution_options={"aurora_role": "reader"})
            assert (await reads.execute(count, {"k": key})).scalar() == 1
            await orm.commit()
        assert rw.token
        async with AsyncSession(engine.execution_options(aurora_role="reader")) as orm:
            assert (await orm.execute(count, {"k": key})).scalar() == 0  # no session
        later = ReadYourWrites(token=rw.token)  # the next request, given the token
        async with engine.connect() as plain:
            conn = await plain.execution_options(
                aurora_read_your_writes=later, aurora_role="reader"
            )
            assert (await conn.execute(count, {"k": key})).scalar() == 1
    finally:
        await engine.dispose()
