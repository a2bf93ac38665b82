"""The async pools' gauges and counters in ``Cluster.metrics()`` and the exporters, as the sync
pools': size, idle, in use, waiting per instance, borrows and their waits, connects."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import aurora_smartdriver.aio as aio
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.metrics import HostMetrics

pytestmark = pytest.mark.asyncio


async def _until(check: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.01)


def _host(cluster: aio.Cluster, instance: str) -> HostMetrics:
    return cluster.metrics().hosts[instance]


async def test_async_pool_gauges_follow_borrows_and_waiters(aurora_lab: Lab) -> None:
    from prometheus_client import CollectorRegistry

    from aurora_smartdriver.exporters import prometheus as asd_prom

    registry = CollectorRegistry()
    asd_prom.register(registry)
    name = uuid.uuid4().hex
    cluster = aio.Cluster(aurora_lab.dsn, cluster_id=name, pool_max_size=1)
    writer = aurora_lab.writer.id

    def exported(metric: str, **labels: str) -> float | None:
        return registry.get_sample_value(
            f"aurora_smartdriver_{metric}", {"cluster": name, "instance": writer, **labels}
        )

    try:
        held = asyncio.Event()
        let_go = asyncio.Event()

        async def hold() -> None:
            async with cluster.writer():
                held.set()
                await let_go.wait()

        holder = asyncio.create_task(hold())
        await held.wait()
        host = _host(cluster, writer)
        assert (host.pool_size, host.pool_in_use, host.pool_idle) == (1, 1, 0)
        assert host.connections_opened == 1
        assert exported("pool_connections", state="in_use") == 1

        waiter = asyncio.create_task(hold())  # the pool is full: this one waits
        await _until(lambda: _host(cluster, writer).pool_waiting == 1, "a waiter counted")
        assert exported("pool_waiting") == 1

        let_go.set()
        await asyncio.gather(holder, waiter)
        host = _host(cluster, writer)
        assert (host.pool_size, host.pool_in_use, host.pool_idle) == (1, 0, 1)
        assert host.pool_waiting == 0
        assert host.borrows == 2
        assert host.borrow_wait_seconds.count == 2
        assert host.borrow_wait_seconds.max > 0  # the second borrower waited
        assert host.connect_seconds.count == 1
        assert exported("pool_connections", state="idle") == 1
    finally:
        await cluster.close()
    host = _host(cluster, writer)
    assert (host.pool_size, host.pool_in_use, host.pool_idle) == (0, 0, 0)
    assert host.connections_closed == 1  # the idle one, closed with the cluster
    assert host.borrows == 2  # counters outlive the pools


async def test_a_failed_async_connect_is_counted_by_kind(aurora_lab: Lab) -> None:
    # The session set-up fails on every new connection (the monitor's own do not run it).
    cluster = aio.Cluster(
        aurora_lab.dsn, cluster_id=uuid.uuid4().hex, session_init="SELECT no_such_column"
    )
    writer = aurora_lab.writer.id
    try:
        with pytest.raises(aurora_lab_driver_error(aurora_lab)):
            async with cluster.writer():
                pass
        host = _host(cluster, writer)
        assert host.connect_failures.get("other") == 1
        assert host.borrow_failures.get("error") == 1
        assert (host.pool_size, host.borrows) == (0, 0)
    finally:
        await cluster.close()


def aurora_lab_driver_error(lab: Lab) -> type[BaseException]:
    import psycopg
    import pymysql

    return psycopg.Error if lab.state().engine == "postgresql" else pymysql.Error
