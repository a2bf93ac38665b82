"""The lab's pytest fixtures from pytest-asyncio tests, and lab operations that leave the loop
running (``lab.aio``): an async client keeps being served while the lab fails the writer over."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import aurora_smartdriver.aio as aio
from aurora_smartdriver.lab import Lab

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def cluster(aurora_lab: Lab) -> AsyncIterator[aio.Cluster]:
    """An async fixture built on the sync, session-wide lab fixture."""
    found = aio.Cluster(aurora_lab.dsn, cluster_id=uuid.uuid4().hex, fast_refresh_interval="0.05s")
    try:
        yield found
    finally:
        await found.close()


async def test_the_sync_lab_fixtures_serve_async_tests_and_fixtures(
    aurora_lab: Lab, cluster: aio.Cluster
) -> None:
    async with cluster.writer() as conn:
        assert conn.instance_id == aurora_lab.writer.id
    rows = await aurora_lab.aio.execute(aurora_lab.writer, "SELECT 1")
    assert [tuple(row) for row in rows] == [(1,)]


async def test_a_lab_failover_awaited_from_a_test_leaves_the_loop_running(
    aurora_lab_postgresql: Lab,
) -> None:
    lab = aurora_lab_postgresql
    old = lab.writer.id
    ticks = 0
    during: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0)
        before = ticks
        report = await lab.aio.failover()
        during.append(ticks - before)
    finally:
        task.cancel()
    # lab.failover() called directly would have held the loop for the whole failover: the
    # ticker (and any async client under test) would not have run once.
    assert during[0] > 0
    assert report.old_writer == old
    assert lab.writer.id == report.new_writer != old
