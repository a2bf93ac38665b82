"""Borrow + return throughput: HostPool against psycopg_pool and SQLAlchemy's QueuePool.

    .venv/bin/python bench/pool_bench.py [--seconds 1.0] [--rounds 5] [--size 4]

Starts a one-node lab PostgreSQL, puts the same number of connections to it in each pool, and
measures borrow+return cycles per second (nothing is run on the connections: this is the
pools' own cost) with 1 thread, with as many threads as connections, and with four times as
many threads as connections (borrowers wait for each other). The pools take turns, round
after round, and the best round of each counts, so a noisy neighbour on a shared machine hurts
all three alike. Prints ops/s and HostPool's ratio to each; nothing is asserted.

Each pool runs as configured by default, except sizes: psycopg_pool's `check` is off by
default (as is HostPool's ping of connections idle for less than `validate_after_idle`);
QueuePool rolls back on return (`reset_on_return="rollback"`), as HostPool does only when a
transaction is open.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from sqlalchemy.pool import QueuePool

from aurora_smartdriver import dsn
from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.pool import HostPool, Target
from aurora_smartdriver.settings import Settings

Cycle = Callable[[], None]


def ours(lab: Lab, size: int) -> tuple[Cycle, Callable[[], None]]:
    spec = dsn.parse(lab.dsn)
    adapter = adapter_for(spec.engine)
    node = lab.writer
    target = Target(node.id, node.host, node.port)

    def opener(timeout: float) -> Any:
        return adapter.connect(spec, node.host, node.port, address=node.address, timeout=timeout)

    pool = HostPool(
        target, opener, settings=Settings(pool_max_size=size, pool_min_size=size), adapter=adapter
    )
    held = [pool.borrow() for _ in range(size)]
    for pooled in held:
        pool.release(pooled)
    borrow, release = pool.borrow, pool.release

    def cycle() -> None:
        release(borrow())

    return cycle, pool.close


def psycopg_pool_cycle(lab: Lab, size: int) -> tuple[Cycle, Callable[[], None]]:
    kwargs = lab.connect_kwargs(lab.writer)
    conninfo = psycopg.conninfo.make_conninfo(**kwargs)
    pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
        conninfo, min_size=size, max_size=size, kwargs={"autocommit": True}, open=True
    )
    pool.wait(30)
    getconn, putconn = pool.getconn, pool.putconn

    def cycle() -> None:
        putconn(getconn())

    return cycle, pool.close


def queue_pool_cycle(lab: Lab, size: int) -> tuple[Cycle, Callable[[], None]]:
    kwargs = lab.connect_kwargs(lab.writer)

    def creator() -> Any:
        return psycopg.connect(**kwargs, autocommit=True)

    pool = QueuePool(creator, pool_size=size, max_overflow=0)
    held = [pool.connect() for _ in range(size)]
    for conn in held:
        conn.close()
    connect = pool.connect

    def cycle() -> None:
        connect().close()

    return cycle, pool.dispose


def rate(cycle: Cycle, threads: int, seconds: float) -> float:
    """Cycles per second over `seconds`, summed over `threads` threads started together."""
    counts = [0] * threads
    go = threading.Event()
    stop = threading.Event()

    def work(index: int) -> None:
        done = 0
        go.wait()
        while not stop.is_set():
            for _ in range(100):
                cycle()
            done += 100
        counts[index] = done

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    started = time.perf_counter()
    go.set()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - started)


@dataclass(frozen=True)
class PoolResult:
    size: int
    rounds: int
    seconds: float
    best: dict[tuple[str, int], float]  # (pool, threads) -> best cycles per second

    @property
    def threads(self) -> list[int]:
        return sorted({threads for _, threads in self.best})


BUILDERS = {"HostPool": ours, "psycopg_pool": psycopg_pool_cycle, "QueuePool": queue_pool_cycle}


def run(seconds: float = 1.0, rounds: int = 5, size: int = 4) -> PoolResult:
    """Best borrow+return rate of each pool with 1, ``size`` and 4 x ``size`` threads."""
    lab = Lab.start("postgresql", replicas=0, name="poolbench")
    try:
        pools = {name: build(lab, size) for name, build in BUILDERS.items()}
        best: dict[tuple[str, int], float] = {}
        for _ in range(rounds):
            for threads in (1, size, 4 * size):
                for name, (cycle, _close) in pools.items():
                    measured = rate(cycle, threads, seconds)
                    best[name, threads] = max(best.get((name, threads), 0.0), measured)
        for _cycle, close in pools.values():
            close()
    finally:
        lab.down()
    return PoolResult(size, rounds, seconds, best)


def markdown(result: PoolResult) -> str:
    lines = [
        f"Borrow+return cycles per second, {result.size} connections per pool, best of "
        f"{result.rounds} x {result.seconds:g}s per pool, pools taking turns.",
        "",
        "| threads | HostPool | psycopg_pool | QueuePool | vs psycopg_pool | vs QueuePool |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for threads in result.threads:
        mine = result.best["HostPool", threads]
        theirs = result.best["psycopg_pool", threads]
        queue = result.best["QueuePool", threads]
        lines.append(
            f"| {threads} | {mine:,.0f} | {theirs:,.0f} | {queue:,.0f} | "
            f"{mine / theirs:.2f}x | {mine / queue:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=5, help="turns per pool; the best counts")
    parser.add_argument("--size", type=int, default=4, help="connections in each pool")
    args = parser.parse_args()
    print(markdown(run(args.seconds, args.rounds, args.size)))


if __name__ == "__main__":
    main()
