"""The hung-host watchdog covers async connections as it covers sync ones: a node that stops
answering (SIGSTOP, ``lab.hang``) under an aio connection is declared dead after
``failure_detection_time`` and the waiting statement fails as a lost connection, both engines."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import aurora_smartdriver.aio as aio
from aurora_smartdriver.aio.connection import PsycopgAsyncConnection
from aurora_smartdriver.lab import Lab

pytestmark = pytest.mark.asyncio


def _settings(lab: Lab) -> dict[str, Any]:
    pg = lab.state().engine == "postgresql"
    return {
        "cluster_id": uuid.uuid4().hex,
        "fast_refresh_interval": "0.05s",
        "failure_detection_time": "1.5s",
        "autocommit": "on" if pg else True,
    }


async def _query(conn: Any, sql: str) -> list[Any]:
    cur = conn.cursor() if isinstance(conn, PsycopgAsyncConnection) else await conn.cursor()
    await cur.execute(sql)
    return [tuple(row) for row in await cur.fetchall()] if cur.description else []


async def _wait_until_probing(runtime: Any, instance_id: str, timeout: float = 20.0) -> None:
    """Wait (on the loop) until the shared watchdog's probe to ``instance_id`` is connected:
    only a probe that was answered and then went silent is evidence."""
    watchdog = runtime.sync.watchdog
    deadline = asyncio.get_running_loop().time() + timeout
    while not watchdog.probing(instance_id):
        assert asyncio.get_running_loop().time() < deadline, (
            f"no watchdog probe to {instance_id} in {timeout}s: aio connections are not watched"
        )
        await asyncio.sleep(0.02)


async def _cut_while_hung(lab: Lab, conn: Any, runtime: Any) -> None:
    hung = conn.instance_id
    await _wait_until_probing(runtime, hung)
    await asyncio.to_thread(lab.hang, hung)
    try:
        # Without the watchdog the statement waits for the node (or the kernel's keepalive,
        # minutes); with it the connection is cut once the probe heard nothing for 1.5 s. The
        # generous bound only keeps a broken build from hanging the suite.
        with pytest.raises(aio.FailoverSucceeded):
            await asyncio.wait_for(_query(conn, "SELECT 1"), 60)
        assert conn.instance_id != hung
        assert await _query(conn, "SELECT 1") == [(1,)]
        verdicts = runtime.sync.metrics_snapshot().hosts[hung].unresponsive
        assert verdicts >= 1
    finally:
        await asyncio.to_thread(lab.resume, hung)


async def test_a_hung_reader_under_an_aio_connection_is_cut(aurora_lab: Lab) -> None:
    conn = await aio.connect(aurora_lab.dsn, role="reader", **_settings(aurora_lab))
    try:
        await _cut_while_hung(aurora_lab, conn, conn._runtime)
    finally:
        if isinstance(conn, PsycopgAsyncConnection):
            await conn.close()
        else:
            await conn.ensure_closed()


async def test_a_hung_reader_under_a_pooled_aio_connection_is_cut(aurora_lab: Lab) -> None:
    cluster = aio.Cluster(aurora_lab.dsn, **_settings(aurora_lab))
    try:
        async with cluster.reader() as conn:
            await _cut_while_hung(aurora_lab, conn, cluster._runtime)
    finally:
        await cluster.close()
