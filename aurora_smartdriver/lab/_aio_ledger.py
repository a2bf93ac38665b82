"""The ledger check (`aurora_smartdriver.lab._ledger`) for the async path.

Async writers, one per client path (``aio.connect`` in autocommit and in transactions,
``aio.Cluster`` pools the same two ways, ``run_transaction``), that obey the library literally:
an operation is re-run after ``FailoverSucceeded`` or ``NoHostAvailable``, never after
``TransactionOutcomeUnknown``. The bookkeeping and the audit are `Ledger`'s.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aurora_smartdriver import aio
from aurora_smartdriver.aio.connection import PsycopgAsyncConnection
from aurora_smartdriver.lab._ledger import _ATTEMPTS, TABLE, Ledger, LedgerReport, Said, _Op

__all__ = ["AsyncLedger", "execute"]


async def execute(conn: Any, sql: str, params: Any = None) -> Any:
    """Run ``sql`` on an async connection of either engine; the cursor it ran on."""
    cur = conn.cursor() if isinstance(conn, PsycopgAsyncConnection) else await conn.cursor()
    await cur.execute(sql, params)
    return cur


class AsyncLedger(Ledger):
    """`Ledger`'s bookkeeping and audit with async writers (see the module docstring)."""

    def __init__(self, dsn: str, engine: str, **settings: Any) -> None:
        super().__init__(dsn, engine, writers=(), **settings)
        self._tasks: list[asyncio.Task[None]] = []
        self._async_closers: list[Callable[[], Awaitable[None]]] = []

    async def begin(self) -> None:
        """Create the table (in a thread: it is a sync connection) and start the writers."""
        await asyncio.to_thread(self.start)
        try:
            sql = f"INSERT INTO {TABLE} VALUES (%s)"
            autocommit: Any = "on" if self._engine == "postgresql" else True
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
        except BaseException:
            self._let_go()  # the cluster held since start(); finish() stops the writers
            raise

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

    async def finish(self) -> LedgerReport:
        """Stop the writers, close their connections and audit the table (once: a second
        call returns the same report)."""
        if self._report is not None:
            return self._report
        self._stop.set()
        try:
            await asyncio.gather(*self._tasks)
            for close in self._async_closers:
                await close()
            self._async_closers.clear()
        except BaseException:
            self._let_go()
            raise
        return await asyncio.to_thread(self._final_audit)


def _closer(conn: Any) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        if isinstance(conn, PsycopgAsyncConnection):
            await conn.close()
        else:
            await conn.ensure_closed()

    return close


def _via_connect(conn: Any, sql: str, *, commit: bool) -> Callable[[str], Awaitable[None]]:
    async def insert(op: str) -> None:
        await execute(conn, sql, (op,))
        if commit:
            await conn.commit()

    return insert


def _via_cluster(cluster: aio.Cluster, sql: str) -> Callable[[str], Awaitable[None]]:
    async def insert(op: str) -> None:
        async with cluster.writer() as conn:
            await execute(conn, sql, (op,))

    return insert


def _via_run_transaction(cluster: aio.Cluster, sql: str) -> Callable[[str], Awaitable[None]]:
    async def insert(op: str) -> None:
        async def work(conn: Any) -> None:
            await execute(conn, sql, (op,))

        await cluster.run_transaction(work, retries=0)  # the ledger does the re-running

    return insert
