"""aurora_smartdriver.aio: tasks cancelled while the library fails over leave nothing behind.

An async service cancels work all the time (a client hung up, a timeout, shutdown). A task
cancelled while its borrow waits for a new writer must raise `CancelledError` and nothing
else, hold no pool slot and no connection afterwards, and the tasks not cancelled must go on
to the new writer as if the others had never been there.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

import aurora_smartdriver.aio as aio
from aurora_smartdriver.lab import Lab

pytestmark = pytest.mark.asyncio


async def test_tasks_cancelled_while_waiting_for_a_writer_leave_nothing_behind(
    aurora_lab: Lab,
) -> None:
    lab = aurora_lab
    engine = lab.state().engine
    dsn = f"{lab.dsn}&cluster_id=aiocancel-{uuid.uuid4().hex}&failover_timeout=60s"
    cluster = aio.Cluster(dsn, pool_max_size=4, autocommit=True)
    table = f"aiocancel_{uuid.uuid4().hex[:8]}"
    create = f"CREATE TABLE {table} (id VARCHAR(64))"
    insert = f"INSERT INTO {table} VALUES (%s)"
    done: list[str] = []

    async def run(sql: str, *args: object) -> None:
        async with cluster.writer() as conn:
            if engine == "postgresql":
                await conn.execute(sql, args or None)
            else:
                cur = await conn.cursor()
                await cur.execute(sql, args or None)

    async def write(key: str) -> None:
        await run(insert, key)
        done.append(key)

    try:
        await run(create)
        await asyncio.to_thread(lab.crash, lab.writer)  # no writer until the failover below
        keys = [uuid.uuid4().hex for _ in range(8)]
        tasks = [asyncio.create_task(write(k)) for k in keys]
        await asyncio.sleep(1.0)
        assert not any(t.done() for t in tasks)  # all of them wait for a writer
        for task in tasks[:4]:
            task.cancel()
        await asyncio.to_thread(lab.failover)
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        assert all(isinstance(r, asyncio.CancelledError) for r in results[:4]), results
        assert results[4:] == [None] * 4, results
        assert sorted(done) == sorted(keys[4:])
        runtime = cluster._runtime
        assert sum(runtime.pools.in_use().values()) == 0  # every slot given back
        # The pool serves its full size at once: no slot is held by a cancelled borrow.
        async with (
            cluster.writer() as a,
            cluster.writer() as b,
            cluster.writer() as c,
            cluster.writer() as d,
        ):
            assert len({id(x) for x in (a, b, c, d)}) == 4
        await run(f"DELETE FROM {table} WHERE id = %s", keys[0])  # the writer answers
    finally:
        await cluster.close()
    rows = await asyncio.to_thread(lab.execute, lab.writer, f"SELECT id FROM {table}")
    assert sorted(str(r[0]) for r in rows) == sorted(keys[4:])  # each once, none cancelled
    await asyncio.to_thread(lab.execute, lab.writer, f"DROP TABLE {table}")
