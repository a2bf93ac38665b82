"""The ledger check (aurora_smartdriver.lab._ledger) for the async path, and the async pools'
storm control, against the lab on both engines."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import aurora_smartdriver.aio as aio
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._aio_ledger import AsyncLedger
from aurora_smartdriver.lab._aio_ledger import execute as _execute

pytestmark = pytest.mark.asyncio


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
