"""The ledger check (aurora_smartdriver.lab._ledger) for the async path, and the async pools'
storm control, against the lab on both engines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import aurora_smartdriver.aio as aio
from aurora_smartdriver.aio.connection import PsycopgAsyncConnection
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._ledger import TABLE, Ledger, Said, _Op

pytestmark = pytest.mark.asyncio

_ATTEMPTS = 6


async def _execute(conn: Any, sql: str, params: Any = None) -> Any:
    cur = conn.cursor() if isinstance(conn, PsycopgAsyncConnection) else await conn.cursor()
    await cur.execute(sql, params)
    return cur


class AsyncLedger(Ledger):
    """`Ledger`'s bookkeeping and audit, with async writers that obey the library literally:
    an operation is re-run after ``FailoverSucceeded`` or ``NoHostAvailable``, never after
    ``TransactionOutcomeUnknown``."""

    def __init__(self, dsn: str, engine: str, **settings: Any) -> None:
        super().__init__(dsn, engine, writers=(), **settings)
        self._tasks: list[asyncio.Task[None]] = []
        self._async_closers: list[Callable[[], Awaitable[None]]] = []
        self._engine_name = engine

    async def begin(self) -> None:
        await asyncio.to_thread(self.start)  # the table; no sync writers
        sql = f"INSERT INTO {TABLE} VALUES (%s)"
        autocommit: Any = "on" if self._engine_name == "postgresql" else True
        for kind in ("connect-ac", "connect-tx", "cluster-ac", "cluster-tx", "run_tx"):
            settings = dict(self._settings)
            if kind.endswith("-ac"):
                settings["autocommit"] = autocommit
            insert: Callable[[str], Awaitable[None]]
            if kind.startswith("connect"):
                conn = await aio.connect(self._dsn, **settings)
                self._async_closers.append(_closer(conn))
                insert = _via_connect(conn, sql, commit=kind.endswith("-tx"))
            else:
                cluster = aio.Cluster(self._dsn, **settings)
                self._async_closers.append(cluster.close)
                insert = (
                    _via_run_transaction(cluster, sql)
                    if kind == "run_tx"
                    else _via_cluster(cluster, sql)
                )
            name = f"{kind}-{uuid.uuid4().hex[:6]}"
            self._tasks.append(asyncio.create_task(self._write(name, insert)))

    async def _write(self, name: str, insert: Callable[[str], Awaitable[None]]) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            op = f"{name}-{n}"
            record = _Op()
            self._ops[op] = record
            for _ in range(_ATTEMPTS):
                said = await self._attempt_async(insert, op)
                record.said.append(said)
                if said not in ("rolled_back", "no_host"):
                    break
                if said == "no_host":
                    await asyncio.sleep(0.05)
            await asyncio.sleep(self._pause)

    async def _attempt_async(self, insert: Callable[[str], Awaitable[None]], op: str) -> Said:
        try:
            await insert(op)
        except aio.TransactionOutcomeUnknown:
            return "unknown"
        except aio.FailoverSucceeded:
            return "rolled_back"
        except (aio.NoHostAvailable, aio.PoolTimeout):
            return "no_host"
        except Exception as exc:
            if len(self._errors) < 20:
                self._errors.append(f"{type(exc).__name__}: {exc}")
            return "error"
        return "ack"

    async def finish(self) -> Any:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for close in self._async_closers:
            await close()
        return await asyncio.to_thread(self.audit)


def _closer(conn: Any) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        if isinstance(conn, PsycopgAsyncConnection):
            await conn.close()
        else:
            await conn.ensure_closed()

    return close


def _via_connect(conn: Any, sql: str, *, commit: bool) -> Callable[[str], Awaitable[None]]:
    async def insert(op: str) -> None:
        await _execute(conn, sql, (op,))
        if commit:
            await conn.commit()

    return insert


def _via_cluster(cluster: aio.Cluster, sql: str) -> Callable[[str], Awaitable[None]]:
    async def insert(op: str) -> None:
        async with cluster.writer() as conn:
            await _execute(conn, sql, (op,))

    return insert


def _via_run_transaction(cluster: aio.Cluster, sql: str) -> Callable[[str], Awaitable[None]]:
    async def insert(op: str) -> None:
        async def work(conn: Any) -> None:
            await _execute(conn, sql, (op,))

        await cluster.run_transaction(work, retries=0)  # the ledger does the re-running

    return insert


async def test_obedient_async_writers_lose_nothing_and_apply_nothing_twice(
    aurora_lab: Lab,
) -> None:
    ledger = AsyncLedger(aurora_lab.dsn, aurora_lab.state().engine, fast_refresh_interval="0.05s")
    await ledger.begin()
    try:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(aurora_lab.failover)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(aurora_lab.hang, aurora_lab.writer.id)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(aurora_lab.failover)  # the hung writer killed mid-statement
        await asyncio.sleep(1.5)
    finally:
        report = await ledger.finish()
    print(report)
    assert report.ok, (report, report.lost[:5], report.twice[:5], report.phantom[:5])
    assert report.acknowledged > 100
    assert report.errors == 0, report.error_samples


async def test_a_pool_never_dials_more_than_the_connect_cap(aurora_lab: Lab) -> None:
    cluster = aio.Cluster(
        aurora_lab.dsn,
        cluster_id=uuid.uuid4().hex,
        pool_max_size=8,
        max_concurrent_connects=2,
    )
    sleep = (
        "SELECT pg_sleep(0.02)" if aurora_lab.state().engine == "postgresql" else "DO SLEEP(0.02)"
    )

    async def one() -> str:
        async with cluster.writer() as conn:
            await _execute(conn, sleep)
            return str(conn.instance_id)

    try:
        where = await asyncio.gather(*(one() for _ in range(64)))
        assert set(where) == {aurora_lab.writer.id}
        pool = cluster._runtime.pools.existing(aurora_lab.writer.id)
        assert pool is not None
        assert 1 <= pool.max_connecting <= 2
        assert pool.opened <= 8
    finally:
        await cluster.close()
