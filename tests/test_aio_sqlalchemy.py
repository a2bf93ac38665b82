"""The SQLAlchemy asyncio dialects (``postgresql+aurora_psycopg_async``, ``mysql+aurora_aiomysql``,
``mariadb+aurora_aiomysql``): entry points, aurora_role routing, the pool's move back to the
writer, and a failover through an AsyncSession, against the lab on both engines."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy.exc
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from aurora_smartdriver import ConfigError, aio
from aurora_smartdriver.aio.connection import AsyncConnection
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.sqlalchemy import ReadYourWrites, engine_url
from aurora_smartdriver.sqlalchemy._async import (
    AuroraMariaDBDialect_aiomysql,
    AuroraMySQLDialect_aiomysql,
    AuroraPGDialectAsync_psycopg,
)


def _scheme(lab: Lab) -> str:
    return (
        "postgresql+aurora_psycopg_async"
        if lab.engine.name == "postgresql"
        else "mariadb+aurora_aiomysql"
    )


def _url(lab: Lab, **query: str) -> Any:
    # A cluster of its own per engine: the first user of a cluster decides its settings.
    query.setdefault("cluster_id", uuid.uuid4().hex)
    query.setdefault("fast_refresh_interval", "0.05s")
    return engine_url(lab.dsn).set(drivername=_scheme(lab)).update_query_dict(query)


@pytest_asyncio.fixture
async def engines() -> AsyncIterator[list[AsyncEngine]]:
    made: list[AsyncEngine] = []
    yield made
    for engine in made:
        await engine.dispose()


def _engine(
    lab: Lab, made: list[AsyncEngine], query: dict[str, str] | None = None, **kw: Any
) -> AsyncEngine:
    engine = create_async_engine(_url(lab, **(query or {})), **kw)
    made.append(engine)
    return engine


def _instance_sql(lab: Lab) -> str:
    if lab.engine.name == "postgresql":
        return "SELECT aurora_db_instance_identifier()"
    return "SELECT aurora_lab.aurora_server_id()"


def _replica_sql(lab: Lab) -> str:
    return "SELECT pg_is_in_recovery()" if lab.engine.name == "postgresql" else "SELECT @@read_only"


async def _where(lab: Lab, conn: Any) -> tuple[bool, str]:
    """(is the server a replica, its instance id), as the server itself says."""
    replica = bool((await conn.execute(text(_replica_sql(lab)))).scalar())
    return replica, str((await conn.execute(text(_instance_sql(lab)))).scalar())


def _library(conn: Any) -> AsyncConnection:
    library: AsyncConnection = conn.sync_connection.connection.dbapi_connection.aurora
    return library


class PoolWatch:
    """Counts SQLAlchemy pool events on an engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.counts: Counter[str] = Counter()
        for name in ("connect", "invalidate", "soft_invalidate"):
            event.listen(engine.sync_engine.pool, name, self._counter(name))

    def _counter(self, name: str) -> Any:
        def count(*args: Any) -> None:
            self.counts[name] += 1

        return count


# -- entry points (no database) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "dialect"),
    [
        ("postgresql+aurora_psycopg_async://u:p@h.example/app", AuroraPGDialectAsync_psycopg),
        ("postgresql+aurora_psycopg://u:p@h.example/app", AuroraPGDialectAsync_psycopg),
        ("mysql+aurora_aiomysql://u:p@h.example/app", AuroraMySQLDialect_aiomysql),
        ("mariadb+aurora_aiomysql://u:p@h.example/app", AuroraMariaDBDialect_aiomysql),
    ],
)
def test_entry_points_give_the_async_dialects(url: str, dialect: type) -> None:
    engine = create_async_engine(url)
    assert type(engine.dialect) is dialect
    assert engine.dialect.is_async


@pytest.mark.parametrize("exc_name", ["FailoverSucceeded", "TransactionOutcomeUnknown"])
@pytest.mark.parametrize("dialect", [AuroraPGDialectAsync_psycopg, AuroraMySQLDialect_aiomysql])
def test_failover_outcomes_are_not_disconnects(dialect: type, exc_name: str) -> None:
    engine = "postgresql" if dialect is AuroraPGDialectAsync_psycopg else "mysql"
    from aurora_smartdriver import errors
    from aurora_smartdriver._dbapi import error_class

    exc = error_class(engine, getattr(errors, exc_name))("failed over")
    assert not dialect().is_disconnect(exc, None, None)


@pytest.mark.parametrize("exc_name", ["NoHostAvailable", "NoWriterAvailable"])
@pytest.mark.parametrize("dialect", [AuroraPGDialectAsync_psycopg, AuroraMySQLDialect_aiomysql])
def test_no_host_is_a_disconnect(dialect: type, exc_name: str) -> None:
    engine = "postgresql" if dialect is AuroraPGDialectAsync_psycopg else "mysql"
    from aurora_smartdriver import errors
    from aurora_smartdriver._dbapi import error_class

    exc = error_class(engine, getattr(errors, exc_name))("no writer")
    assert dialect().is_disconnect(exc, None, None)


# -- routing (the lab) --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_default_connection_is_on_the_writer(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    engine = _engine(aurora_lab, engines)
    async with engine.connect() as conn:
        assert await _where(aurora_lab, conn) == (False, aurora_lab.writer.id)


@pytest.mark.asyncio
async def test_aurora_role_reader_reaches_a_replica_and_the_pool_takes_it_back_to_the_writer(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    engine = _engine(aurora_lab, engines, pool_size=1, max_overflow=0)
    readers = engine.execution_options(aurora_role="reader")
    async with readers.connect() as conn:
        replica, instance = await _where(aurora_lab, conn)
        library = _library(conn)
        assert replica and instance in {node.id for node in aurora_lab.readers}
        assert library.role == "reader"
    assert library._raw is None  # given back lazily: no wait for the writer at checkin
    async with engine.connect() as conn:
        assert _library(conn) is library
        assert await _where(aurora_lab, conn) == (False, aurora_lab.writer.id)


@pytest.mark.asyncio
async def test_aurora_role_on_a_connection_moves_it_between_transactions(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    engine = _engine(aurora_lab, engines)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        with pytest.raises(sqlalchemy.exc.InvalidRequestError):
            await conn.execution_options(aurora_role="reader")  # a transaction is open
        await conn.commit()
        await conn.execution_options(aurora_role="reader")
        assert (await _where(aurora_lab, conn))[0]
        await conn.commit()
        await conn.execution_options(aurora_role="writer")
        assert await _where(aurora_lab, conn) == (False, aurora_lab.writer.id)


@pytest.mark.asyncio
async def test_dispose_closes_every_driver_connection_before_it_returns(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    # The library's own pools keep a connection a move left behind; the last connection closed
    # on the loop closes them. A close left to a background task nobody waits for never ran
    # when the loop ended right after dispose() (aiomysql's "Event loop is closed" at exit).
    engine = _engine(aurora_lab, engines)
    seen: list[Any] = []
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        seen.append(_library(conn)._raw)
        await conn.commit()
        await conn.execution_options(aurora_role="reader")
        await conn.execute(text("SELECT 1"))
        seen.append(_library(conn)._raw)
        await conn.commit()
    await engine.dispose()
    assert len({id(raw) for raw in seen}) == 2
    assert [bool(raw.closed) for raw in seen] == [True, True]


@pytest.mark.asyncio
async def test_a_close_cancelled_while_the_pools_close_still_closes_them(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    # The application's timeout on close() must not leave the pools' connections to nobody.
    engine = _engine(aurora_lab, engines, poolclass=NullPool)
    seen: list[Any] = []
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        seen.append(_library(conn)._raw)
        await conn.commit()
        await conn.execution_options(aurora_role="reader")
        await conn.execute(text("SELECT 1"))
        seen.append(_library(conn)._raw)
        await conn.commit()
        runtime = _library(conn)._runtime
        for pool in runtime._pools._pools.values():  # a close that takes a while
            real = pool._closer

            async def slow(raw: Any, real: Any = real) -> None:
                await asyncio.sleep(0.3)
                await real(raw)

            pool._closer = slow
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(conn.close(), 0.1)
    for _ in range(50):
        if all(raw.closed for raw in seen):
            break
        await asyncio.sleep(0.1)
    assert [bool(raw.closed) for raw in seen] == [True, True]


@pytest.mark.asyncio
async def test_read_your_writes_takes_only_a_read_your_writes(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    # tests/test_aio_consistency_lab.py reads a session's writes through it; here: bad input.
    engine = _engine(aurora_lab, engines)
    async with engine.connect() as conn:
        with pytest.raises(ConfigError, match="takes a ReadYourWrites"):
            await conn.execution_options(aurora_read_your_writes="yes")
        await conn.execution_options(aurora_read_your_writes=ReadYourWrites())


@pytest.mark.asyncio
async def test_writes_through_a_reader_session_are_refused(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    engine = _engine(aurora_lab, engines)
    async with AsyncSession(engine.execution_options(aurora_role="reader")) as session:
        with pytest.raises(sqlalchemy.exc.DBAPIError):
            await session.execute(text("CREATE TABLE aio_sa_refused (id INT)"))


# -- failover through an AsyncSession -----------------------------------------------------------


async def _table(engine: AsyncEngine, lab: Lab) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS aio_sa_rows (id VARCHAR(64))"))
    await asyncio.to_thread(lab.wait_replicated)


def _count(lab: Lab, key: str) -> int:
    rows = lab.execute(lab.writer.id, f"SELECT count(*) FROM aio_sa_rows WHERE id = '{key}'")
    return int(str(rows[0][0]))


@pytest.mark.asyncio
async def test_failover_in_a_session_transaction_is_failover_succeeded_and_keeps_the_connection(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    engine = _engine(aurora_lab, engines, pool_size=1, max_overflow=0)
    await _table(engine, aurora_lab)
    watch = PoolWatch(engine)
    key = uuid.uuid4().hex
    async with AsyncSession(engine) as session:
        await session.execute(text("INSERT INTO aio_sa_rows VALUES (:k)"), {"k": key})
        library = _library(await session.connection())
        report = await asyncio.to_thread(aurora_lab.failover)
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            await session.execute(text("SELECT 1"))
        assert isinstance(caught.value.orig, aio.FailoverSucceeded)
        assert caught.value.orig.transaction_rolled_back is True
        assert not caught.value.connection_invalidated
        await session.rollback()
        await session.execute(text("INSERT INTO aio_sa_rows VALUES (:k)"), {"k": key})  # re-run
        await session.commit()
        assert await _where(aurora_lab, await session.connection()) == (False, report.new_writer)
        assert _library(await session.connection()) is library
    assert _count(aurora_lab, key) == 1
    assert watch.counts["invalidate"] == 0 and watch.counts["connect"] == 0


@pytest.mark.asyncio
async def test_autocommit_write_lost_in_flight_is_outcome_unknown(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    engine = _engine(aurora_lab, engines, pool_size=1, max_overflow=0)
    await _table(engine, aurora_lab)
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    watch = PoolWatch(engine)
    key = uuid.uuid4().hex
    async with AsyncSession(auto) as session:
        await session.execute(text("SELECT 1"))
        report = await asyncio.to_thread(aurora_lab.failover)
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            await session.execute(text("INSERT INTO aio_sa_rows VALUES (:k)"), {"k": key})
        assert isinstance(caught.value.orig, aio.TransactionOutcomeUnknown)
        assert not caught.value.connection_invalidated
        await session.rollback()
        assert await _where(aurora_lab, await session.connection()) == (False, report.new_writer)
    assert watch.counts["invalidate"] == 0


@pytest.mark.asyncio
async def test_no_writer_invalidates_the_connection(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    engine = _engine(aurora_lab, engines, {"failover_timeout": "1s"}, pool_size=1)
    watch = PoolWatch(engine)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        await conn.rollback()
        await asyncio.to_thread(aurora_lab.crash, aurora_lab.writer)  # and no failover
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            await conn.execute(text("SELECT 1"))
    assert isinstance(caught.value.orig, aio.NoWriterAvailable)
    assert caught.value.connection_invalidated
    assert watch.counts["invalidate"] == 1


@pytest.mark.asyncio
async def test_pre_ping_counts_a_failed_over_connection_as_alive(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    engine = _engine(aurora_lab, engines, pool_size=1, max_overflow=0, pool_pre_ping=True)
    watch = PoolWatch(engine)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    report = await asyncio.to_thread(aurora_lab.failover)
    async with engine.connect() as conn:
        assert await _where(aurora_lab, conn) == (False, report.new_writer)
    assert watch.counts["invalidate"] == 0 and watch.counts["connect"] == 1


@pytest.mark.asyncio
async def test_postgresql_readonly_routes_to_a_replica(
    aurora_lab_postgresql: Lab, engines: list[AsyncEngine]
) -> None:
    engine = _engine(aurora_lab_postgresql, engines)
    async with engine.execution_options(postgresql_readonly=True).connect() as conn:
        replica, instance = await _where(aurora_lab_postgresql, conn)
        assert replica and instance in {node.id for node in aurora_lab_postgresql.readers}


@pytest.mark.asyncio
async def test_pool_of_20_tasks_survives_a_failover_without_invalidations(
    aurora_lab: Lab, engines: list[AsyncEngine]
) -> None:
    tasks_n = 20
    engine = _engine(aurora_lab, engines, pool_size=tasks_n, max_overflow=0)
    watch = PoolWatch(engine)
    await _table(engine, aurora_lab)
    failed_over = asyncio.Event()
    stop = asyncio.Event()
    all_open = asyncio.Barrier(tasks_n + 1)
    seen: list[list[tuple[str, str, bool]]] = [[] for _ in range(tasks_n)]
    acked: list[str] = []

    async def work(i: int) -> None:
        async with engine.connect() as conn:  # all 20 connections are open before the failover
            await conn.execute(text("SELECT 1"))
            await all_open.wait()
        while not stop.is_set():
            key = uuid.uuid4().hex
            after = failed_over.is_set()
            try:
                async with engine.begin() as conn:
                    await conn.execute(text("INSERT INTO aio_sa_rows VALUES (:k)"), {"k": key})
                    instance = _library(conn).instance_id
                acked.append(key)
                seen[i].append(("ok", instance, after))
            except sqlalchemy.exc.DBAPIError as exc:
                seen[i].append((type(exc.orig).__name__, "", after))
            await asyncio.sleep(0.01)

    workers = [asyncio.create_task(work(i)) for i in range(tasks_n)]
    await all_open.wait()
    connects_before = watch.counts["connect"]
    await asyncio.sleep(0.5)  # the tasks write on the old writer for a moment
    report = await asyncio.to_thread(aurora_lab.failover)
    failed_over.set()

    def settled() -> bool:
        new = report.new_writer
        return all(sum(k == "ok" and inst == new and aft for k, inst, aft in s) >= 3 for s in seen)

    for _ in range(900):  # up to 90 s
        if settled():
            break
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*workers)

    outcomes = Counter(kind for s in seen for kind, _, _ in s)
    assert set(outcomes) <= {"ok", "FailoverSucceeded", "TransactionOutcomeUnknown"}, outcomes
    assert settled(), seen
    # Healthy connections stay: no invalidation, and SQLAlchemy's pool opened no connection for
    # the failover (each library connection moved to the new writer underneath).
    assert connects_before == tasks_n == watch.counts["connect"]
    assert watch.counts["invalidate"] == 0 and watch.counts["soft_invalidate"] == 0
    async with engine.connect() as conn:
        stored = {row[0] for row in await conn.execute(text("SELECT id FROM aio_sa_rows"))}
    assert set(acked) <= stored  # nothing acknowledged was lost
