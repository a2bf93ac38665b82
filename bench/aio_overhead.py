"""The async path against the bare async drivers: statement overhead and pool borrow+return.

    .venv/bin/python bench/aio_overhead.py [--rounds 15] [--per-round 2000] [--borrows 20000]

Statement overhead: ``SELECT 1`` (execute + fetchone) on an open connection, the library's
`aio.connect` against a bare ``psycopg.AsyncConnection`` (PostgreSQL) and a bare aiomysql
connection (MariaDB), one-node labs, timed side by side in alternating rounds with this process
and the server pinned to different CPUs (as bench/overhead_bench.py). Pool: borrow + return of
an idle connection, `aio.Cluster.writer()` against psycopg_pool's ``AsyncConnectionPool``
(``async with pool.connection()``), both sized 8, at 1, 4, 16 and 64 concurrent tasks, rounds
alternated. Prints microseconds (median of rounds) and ratios; for statements also this
process's CPU time per statement, which load from other processes does not inflate (the wall
ratio does not mean much on a busy machine), the loop's thread's, and the library's own path
alone: its cursor timed around a stand-in driver cursor that does nothing (two connections of
the same bare driver differ by a few percent from run to run here; that path does not).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiomysql
import psycopg
from overhead_bench import _pin  # bench/ is on sys.path when run as a script
from psycopg_pool import AsyncConnectionPool

from aurora_smartdriver import aio
from aurora_smartdriver.lab import Lab

POOL_SIZE = 8
TASKS = (1, 4, 16, 64)


async def _statements(conn: Any, n: int, awaited_cursor: bool) -> tuple[float, float, float]:
    """Seconds per statement: wall time, this process's CPU time (the client's cost, which
    other load on the machine does not inflate; the library's threads included), and the
    loop's thread's CPU time (what each statement's own path costs)."""
    cur = (await conn.cursor()) if awaited_cursor else conn.cursor()
    execute, fetchone = cur.execute, cur.fetchone
    started, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
    for _ in range(n):
        await execute("SELECT 1")
        await fetchone()
    return (
        (time.perf_counter() - started) / n,
        (time.process_time() - cpu) / n,
        (time.thread_time() - own) / n,
    )


class _Idle:
    """A stand-in driver cursor that does nothing: what the library's cursor costs around it
    is its own path, with no server's or network's noise."""

    async def execute(self, query: Any, *args: Any) -> Any:
        return self

    async def fetchone(self) -> Any:
        return (1,)

    async def fetchmany(self, size: int = 1) -> Any:
        return [(1,)]

    async def fetchall(self) -> Any:
        return [(1,)]


async def _own_path(conn: Any, awaited_cursor: bool, n: int = 100_000) -> tuple[float, float]:
    """Seconds the library's cursor adds to each execute + fetchone: its path around `_Idle`
    less `_Idle`'s own (best of 5, the loop's thread's CPU time); without parameters, and
    with one."""
    cur = (await conn.cursor()) if awaited_cursor else conn.cursor()
    idle = _Idle()
    cur._bind(idle)

    async def timed(target: Any, *params: Any) -> float:
        execute, fetchone = target.execute, target.fetchone
        started = time.thread_time()
        for _ in range(n):
            await execute("SELECT 1", *params)
            await fetchone()
        return (time.thread_time() - started) / n

    added = []
    for params in ((), ((1,),)):
        ours = min([await timed(cur, *params) for _ in range(5)])
        theirs = min([await timed(idle, *params) for _ in range(5)])
        added.append(ours - theirs)
    return added[0], added[1]


async def _bare(lab: Lab) -> Any:
    kwargs = lab.connect_kwargs(lab.writer.id)
    if lab.state().engine == "postgresql":
        return await psycopg.AsyncConnection.connect(**kwargs, autocommit=True)
    kwargs["db"] = kwargs.pop("database")
    return await aiomysql.connect(**kwargs, autocommit=True)


async def _close(conn: Any) -> None:
    if hasattr(conn, "ensure_closed"):  # aiomysql's, or the library's over it
        await conn.ensure_closed()
    else:
        await conn.close()


async def statement_overhead(
    lab: Lab, rounds: int, per_round: int
) -> dict[str, tuple[float, float, float]]:
    """Median (wall, process CPU, loop thread CPU) seconds per ``SELECT 1``: bare driver and
    library, alternating rounds; and under "own path", the library's own path's seconds."""
    pg = lab.state().engine == "postgresql"
    autocommit = "on" if pg else True
    conns = {
        "bare": await _bare(lab),
        "library": await aio.connect(lab.dsn, autocommit=autocommit, cluster_id=uuid.uuid4().hex),
    }
    unpin = _pin(lab)
    try:
        for conn in conns.values():
            await _statements(conn, per_round // 4, not pg)  # warm up
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in conns}
        order = list(conns)
        for i in range(rounds):
            for name in order if i % 2 == 0 else order[::-1]:
                runs[name].append(await _statements(conns[name], per_round, not pg))
        own = await _own_path(conns["library"], not pg)
    finally:
        unpin()
        for conn in conns.values():
            await _close(conn)
    medians = {
        name: (
            statistics.median(w for w, _, _ in got),
            statistics.median(c for _, c, _ in got),
            statistics.median(t for _, _, t in got),
        )
        for name, got in runs.items()
    }
    return {**medians, "own path": (*own, 0.0)}


async def _borrows(borrow: Callable[[], Awaitable[None]], tasks: int, total: int) -> float:
    """Seconds per borrow+return with ``tasks`` tasks doing ``total`` between them."""
    each = max(1, total // tasks)

    async def work() -> None:
        for _ in range(each):
            await borrow()

    started = time.perf_counter()
    await asyncio.gather(*(work() for _ in range(tasks)))
    return (time.perf_counter() - started) / (each * tasks)


async def pool_rates(lab: Lab, rounds: int, borrows: int) -> dict[int, dict[str, float]]:
    """Median seconds per borrow+return, per number of tasks: psycopg_pool and the library."""
    kwargs = lab.connect_kwargs(lab.writer.id)
    conninfo = psycopg.conninfo.make_conninfo(**kwargs)
    theirs = AsyncConnectionPool(conninfo, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False)
    await theirs.open(wait=True)
    ours = aio.Cluster(
        lab.dsn,
        pool_min_size=POOL_SIZE,
        pool_max_size=POOL_SIZE,
        cluster_id=uuid.uuid4().hex,
    )

    async def borrow_theirs() -> None:
        async with theirs.connection():
            pass

    async def borrow_ours() -> None:
        async with ours.writer():
            pass

    contenders = {"psycopg_pool": borrow_theirs, "library": borrow_ours}
    results: dict[int, dict[str, float]] = {}
    try:
        for borrow in contenders.values():
            await _borrows(borrow, POOL_SIZE, POOL_SIZE * 20)  # warm up: every connection open
        for tasks in TASKS:
            runs: dict[str, list[float]] = {name: [] for name in contenders}
            order = list(contenders)
            for i in range(rounds):
                for name in order if i % 2 == 0 else order[::-1]:
                    runs[name].append(await _borrows(contenders[name], tasks, borrows))
            results[tasks] = {name: statistics.median(v) for name, v in runs.items()}
    finally:
        await theirs.close()
        await ours.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--borrows", type=int, default=20000)
    args = parser.parse_args()
    print("Async statement overhead, SELECT 1 on an open connection (median of rounds)")
    print(
        f"{'driver':<26}{'bare us':>10}{'library us':>12}{'ratio':>8}"
        f"{'bare CPU us':>13}{'library CPU us':>16}{'CPU ratio':>11}"
        f"{'loop CPU us: bare':>19}{'library':>9}{'ratio':>7}"
    )
    own_paths = []
    for engine, driver in (("postgresql", "psycopg.AsyncConnection"), ("mariadb", "aiomysql")):
        with Lab.start(engine, replicas=0) as lab:
            got = asyncio.run(statement_overhead(lab, args.rounds, args.per_round))
        (bare, bare_cpu, bare_own), (ours, our_cpu, our_own) = got["bare"], got["library"]
        print(
            f"{driver:<26}{bare * 1e6:>10.1f}{ours * 1e6:>12.1f}{ours / bare:>8.3f}"
            f"{bare_cpu * 1e6:>13.1f}{our_cpu * 1e6:>16.1f}{our_cpu / bare_cpu:>11.3f}"
            f"{bare_own * 1e6:>19.1f}{our_own * 1e6:>9.1f}{our_own / bare_own:>7.3f}"
        )
        own_paths.append((driver, got["own path"][:2], bare_own))
    print()
    print("The library's own path per statement (around a driver cursor that does nothing)")
    for driver, (plain, with_params), bare_own in own_paths:
        print(
            f"{driver:<26}{plain * 1e6:>6.2f} us = {plain / bare_own:.2%} of a bare statement's "
            f"loop CPU ({bare_own * 1e6:.1f} us); with one parameter {with_params * 1e6:.2f} us "
            f"= {with_params / bare_own:.2%}"
        )
    print()
    print(f"Async pool borrow+return, pool size {POOL_SIZE} (median of rounds)")
    print(f"{'tasks':>6}{'psycopg_pool us':>17}{'library us':>12}{'library rate / theirs':>23}")
    with Lab.start("postgresql", replicas=0) as lab:
        rates = asyncio.run(pool_rates(lab, args.rounds, args.borrows))
    for tasks, got in rates.items():
        theirs, ours = got["psycopg_pool"], got["library"]
        print(f"{tasks:>6}{theirs * 1e6:>17.1f}{ours * 1e6:>12.1f}{theirs / ours:>23.2f}")


if __name__ == "__main__":
    main()
