"""aurora_smartdriver.aio, from a hostile review: a cancelled call never leaves a dead or
locked connection in the pool, and psycopg's transaction() block ends as commit() does."""

from __future__ import annotations

import asyncio
import uuid
import warnings
from typing import Any

import pymysql
import pytest

import aurora_smartdriver as asd
import aurora_smartdriver.aio as aio
from aurora_smartdriver.lab import Lab
from tests import plain

pytestmark = pytest.mark.asyncio


def _dsn(lab: Lab, **params: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"{lab.dsn}&cluster_id=aiorev-{uuid.uuid4().hex}&fast_refresh_interval=0.05s{extra}"


async def _mysql_table(lab: Lab) -> str:
    conn = await aio.connect(lab.dsn, autocommit=True)
    try:
        cur = await conn.cursor()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await cur.execute("CREATE TABLE IF NOT EXISTS aiorev (id VARCHAR(64) PRIMARY KEY)")
        key = uuid.uuid4().hex
        await cur.execute("INSERT INTO aiorev (id) VALUES (%s)", (key,))
    finally:
        await conn.ensure_closed()
    return key


async def test_a_cancelled_aiomysql_query_leaves_no_dead_connection_in_the_pool(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    cluster = aio.Cluster(_dsn(lab, pool_max_size=2))
    try:

        async def slow() -> None:
            async with cluster.writer() as conn:
                cur = await conn.cursor()
                await cur.execute("SELECT SLEEP(3)")

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow(), 0.3)
        for _ in range(4):
            async with cluster.writer() as conn:
                cur = await conn.cursor()
                await cur.execute("SELECT 1")
                assert await cur.fetchall() == ((1,),)
    finally:
        await cluster.close()


async def test_a_lock_taken_before_a_failed_statement_is_released_at_the_borrows_end(
    aurora_lab_mariadb: Lab,
) -> None:
    lab = aurora_lab_mariadb
    key = await _mysql_table(lab)
    cluster = aio.Cluster(_dsn(lab, pool_max_size=1))
    try:
        async with cluster.writer() as conn:
            cur = await conn.cursor()
            await cur.execute("SELECT id FROM aiorev WHERE id = %s FOR UPDATE", (key,))
            with pytest.raises(pymysql.err.IntegrityError):
                await cur.execute("INSERT INTO aiorev (id) VALUES (%s)", (key,))
        assert not await asyncio.to_thread(plain.row_locked, lab, "aiorev", key)
    finally:
        await cluster.close()


async def test_a_psycopg_transaction_block_ends_as_commit_does_in_a_failover(
    aurora_lab_postgresql: Lab,
) -> None:
    lab = aurora_lab_postgresql
    conn = await aio.connect(_dsn(lab), autocommit=True)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS aiorev (id text PRIMARY KEY)")
        key = uuid.uuid4().hex
        async with conn.transaction():
            await conn.execute("INSERT INTO aiorev (id) VALUES (%s)", (key,))
        cur = await conn.execute("SELECT count(*) FROM aiorev WHERE id = %s", (key,))
        assert (await cur.fetchone()) == (1,)

        lost = uuid.uuid4().hex
        told: Any = None
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO aiorev (id) VALUES (%s)", (lost,))
                await asyncio.to_thread(lab.failover)
        except (asd.FailoverSucceeded, asd.TransactionOutcomeUnknown) as exc:
            told = exc
        assert told is not None, "the block's end must be judged by the library"
        cur = await conn.execute("SELECT count(*) FROM aiorev WHERE id = %s", (lost,))
        present = (await cur.fetchone()) == (1,)
        if isinstance(told, asd.FailoverSucceeded):
            assert not present  # "nothing of it committed" must be true
    finally:
        await conn.close()
