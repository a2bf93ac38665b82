"""The chaos bench's async front: `_demo.LibraryLoad`'s writers and readers and the ledger's
writers, through ``aurora_smartdriver.aio``, on an event loop in a thread of their own.

`AsyncLoad` offers what `chaos.run_once` reads of the sync load (``out``, ``finish``,
``pool_figures``, ``close``) and the ledger's report, so one scenario runs either front.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid

from aurora_smartdriver import aio
from aurora_smartdriver._demo import _Outcomes
from aurora_smartdriver.aio._pool import AsyncHostPool
from aurora_smartdriver.lab._aio_ledger import AsyncLedger, execute
from aurora_smartdriver.lab._ledger import LedgerReport
from aurora_smartdriver.lab._workload import TABLE


class AsyncLoad:
    """4 writers + 4 readers through one ``aio.Cluster`` and an `AsyncLedger`, on one loop."""

    def __init__(self, dsn: str, engine: str, writers: int = 4, readers: int = 4) -> None:
        self._dsn = dsn
        self._engine = engine
        self._writers = writers
        self._readers = readers
        self.out = _Outcomes()
        self.prefix = uuid.uuid4().hex[:12]
        self.report: LedgerReport | None = None
        self.opened = 0
        self.peak = 0
        self._pools: dict[int, AsyncHostPool] = {}
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> AsyncLoad:
        self._thread.start()
        self._ready.wait(60.0)
        if self._failed is not None:
            raise self._failed
        return self

    def finish(self, timeout: float = 60.0) -> None:
        """Stop the clients, audit the ledger and close everything."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)
        if self._failed is not None:
            raise self._failed

    def pool_figures(self) -> tuple[int, int]:
        return self.opened, self.peak

    def close(self) -> None:
        """Closed by `finish` already (kept for the sync load's shape)."""

    # -- on the loop's thread -------------------------------------------------------------
    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self._failed = exc
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        cluster = aio.Cluster(
            self._dsn,
            cluster_id=uuid.uuid4().hex,
            fast_refresh_interval="0.05s",
            pool_max_size=8,
        )
        ledger = AsyncLedger(self._dsn, self._engine, fast_refresh_interval="0.05s")
        await ledger.begin()
        tasks = [asyncio.create_task(self._write(cluster, stop, i)) for i in range(self._writers)]
        tasks += [asyncio.create_task(self._read(cluster, stop)) for _ in range(self._readers)]
        tasks.append(asyncio.create_task(self._watch_pools(cluster, stop)))
        self._ready.set()
        try:
            await stop.wait()
            await asyncio.gather(*tasks)
        finally:
            self.report = await ledger.finish()
            self._count(cluster)
            await cluster.close()

    async def _write(self, cluster: aio.Cluster, stop: asyncio.Event, client: int) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            row = f"{self.prefix}-{client}-{seq}"
            try:
                async with cluster.writer() as conn:
                    await execute(
                        conn, f"INSERT INTO {TABLE} (id, client) VALUES (%s, %s)", (row, client)
                    )
                self.out.acked.append(row)
                self.out.write_ok_at.append(time.time())
            except Exception:
                self.out.write_err_at.append(time.time())
                await _nap(stop, 0.01)
            await _nap(stop, 0.002)

    async def _read(self, cluster: aio.Cluster, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with cluster.reader() as conn:
                    cur = await execute(conn, "SELECT 1")
                    await cur.fetchall()
                self.out.read_ok_at.append(time.time())
            except Exception:
                self.out.read_err_at.append(time.time())
                await _nap(stop, 0.01)
            await _nap(stop, 0.002)

    async def _watch_pools(self, cluster: aio.Cluster, stop: asyncio.Event) -> None:
        """Connections opened and the most concurrent connection attempts to one host, over
        every pool seen (pools of hosts that leave the topology are dropped by the cluster)."""
        while not stop.is_set():
            self._count(cluster)
            await _nap(stop, 0.05)

    def _count(self, cluster: aio.Cluster) -> None:
        for pool in cluster._runtime.pools._pools.values():
            self._pools[id(pool)] = pool
        self.peak = max([self.peak, *(p.max_connecting for p in self._pools.values())])
        self.opened = sum(p.opened for p in self._pools.values())


async def _nap(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
