"""The async path against the bare async drivers: statement overhead and pool borrow+return.

    .venv/bin/python bench/aio_overhead.py [--rounds 15] [--per-round 2000] [--borrows 2000]

Statement overhead: ``SELECT 1`` (execute + fetchone) on an open connection, the library's
`aio.connect` against a bare ``psycopg.AsyncConnection`` (PostgreSQL) and a bare aiomysql
connection (MariaDB), one-node labs, timed side by side in alternating rounds with this process
and the server pinned to different CPUs (as bench/overhead_bench.py). Pool: borrow + return of
an idle connection, `aio.Cluster.writer()` against psycopg_pool's ``AsyncConnectionPool``
(``async with pool.connection()``), both sized 8, at 1, 4, 16 and 64 concurrent tasks, rounds
alternated. Prints microseconds (median of rounds) and ratios; for statements also this
process's CPU time per statement, which load from other processes does not inflate (the wall
ratio does not mean much on a busy machine). Nothing is asserted.
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


async def _statements(conn: Any, n: int, awaited_cursor: bool) -> tuple[float, float]:
    """Seconds per statement: wall time, and this process's CPU time (the client's cost,
    which other load on the machine does not inflate)."""
    cur = (await conn.cursor()) if awaited_cursor else conn.cursor()
    execute, fetchone = cur.execute, cur.fetchone
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await execute("SELECT 1")
        await fetchone()
    return (time.perf_counter() - started) / n, (time.process_time() - cpu) / n


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
) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per ``SELECT 1``: bare driver and library, alternating
    rounds."""
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
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in conns}
        order = list(conns)
        for i in range(rounds):
            for name in order if i % 2 == 0 else order[::-1]:
                runs[name].append(await _statements(conns[name], per_round, not pg))
    finally:
        unpin()
        for conn in conns.values():
            await _close(conn)
    return {
        name: (statistics.median(w for w, _ in got), statistics.median(c for _, c in got))
        for name, got in runs.items()
    }


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
    parser.add_argument("--borrows", type=int, default=2000)
    args = parser.parse_args()
    print("Async statement overhead, SELECT 1 on an open connection (median of rounds)")
    print(
        f"{'driver':<26}{'bare us':>10}{'library us':>12}{'ratio':>8}"
        f"{'bare CPU us':>13}{'library CPU us':>16}{'CPU ratio':>11}"
    )
    for engine, driver in (("postgresql", "psycopg.AsyncConnection"), ("mariadb", "aiomysql")):
        with Lab.start(engine, replicas=0) as lab:
            got = asyncio.run(statement_overhead(lab, args.rounds, args.per_round))
        (bare, bare_cpu), (ours, our_cpu) = got["bare"], got["library"]
        print(
            f"{driver:<26}{bare * 1e6:>10.1f}{ours * 1e6:>12.1f}{ours / bare:>8.3f}"
            f"{bare_cpu * 1e6:>13.1f}{our_cpu * 1e6:>16.1f}{our_cpu / bare_cpu:>11.3f}"
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
