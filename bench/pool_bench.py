"""Borrow + return throughput: the library against psycopg_pool and SQLAlchemy's QueuePool.

    .venv/bin/python bench/pool_bench.py [--seconds 1.0] [--rounds 5] [--size 4]
                                         [--threads 1,4,16,64]

Starts a one-node lab PostgreSQL, puts the same number of connections to it (``--size``) in
every pool, and measures borrow+return cycles per second (nothing is run on the connections:
this is the pools' own cost) at each thread count (borrowers wait for each other beyond
``--size`` threads). Two layers, side by side in one run:

- what applications write, with reset-on-return in place: ``with cluster.writer() as conn:``
  (routing, the DB-API proxy, and the library's reset of the session on return: any open
  transaction rolled back, autocommit, isolation level, read-only and deferrable put back)
  against ``with pool.connection() as conn:`` of psycopg_pool with a ``reset`` callback that
  puts back the same four attributes (psycopg_pool rolls back on its own), the same without
  ``reset``, and SQLAlchemy's QueuePool ``connect()``/``close()`` with a ``reset`` event doing
  the same (after its default rollback on return);
- the pool layer alone: ``HostPool.borrow``/``release``, psycopg_pool ``getconn``/``putconn``,
  QueuePool ``connect()``/``close()``.

Every pool runs with its defaults except sizes, and every connection with the driver's
default (autocommit off). The contenders take turns, in a rotating order, round after round,
so a noisy neighbour on a shared machine hurts all alike; a contender's figure is its median
round, a ratio is the median of the ratios taken within each round, with the lowest and
highest of those ratios beside it. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg_pool
from sqlalchemy import event
from sqlalchemy.pool import QueuePool

import aurora_smartdriver as asd
from aurora_smartdriver import dsn
from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.pool import HostPool, Target
from aurora_smartdriver.settings import Settings

Cycle = Callable[[], None]
Built = tuple[Cycle, Callable[[], None]]

THREADS = (1, 4, 16, 64)

CLUSTER = "Cluster.writer()"
PSYCOPG_RESET = "psycopg_pool + reset"
PSYCOPG_CONTEXT = "psycopg_pool.connection()"
QUEUE_RESET = "QueuePool + reset"
API = (CLUSTER, PSYCOPG_RESET, PSYCOPG_CONTEXT, QUEUE_RESET)
"""What applications write: the library's public API and the pools' own context managers."""

HOSTPOOL = "HostPool"
PSYCOPG_LAYER = "psycopg_pool"
QUEUE_LAYER = "QueuePool"
LAYER = (HOSTPOOL, PSYCOPG_LAYER, QUEUE_LAYER)
"""The pool layer alone (the names are those of earlier runs of this bench)."""


def reset_psycopg(conn: psycopg.Connection[Any]) -> None:
    """What the library puts back on a psycopg connection returning to its pool (open
    transactions are rolled back by every pool itself)."""
    conn.autocommit = False
    conn.isolation_level = None
    conn.read_only = None
    conn.deferrable = None


def cluster_cycle(lab: Lab, size: int) -> Built:
    cluster = asd.Cluster(lab.dsn, pool_max_size=size, pool_min_size=size)
    held = [cluster.writer() for _ in range(size)]
    for manager in held:  # every connection opened before measuring
        manager.__enter__()
    for manager in held:
        manager.__exit__(None, None, None)
    writer = cluster.writer

    def cycle() -> None:
        with writer():
            pass

    return cycle, cluster.close


def _conninfo(lab: Lab) -> str:
    return psycopg.conninfo.make_conninfo(**lab.connect_kwargs(lab.writer))


def _psycopg_pool(lab: Lab, size: int, **kwargs: Any) -> psycopg_pool.ConnectionPool[Any]:
    pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
        _conninfo(lab), min_size=size, max_size=size, open=True, **kwargs
    )
    pool.wait(30)
    return pool


def psycopg_reset_cycle(lab: Lab, size: int) -> Built:
    pool = _psycopg_pool(lab, size, reset=reset_psycopg)
    connection = pool.connection

    def cycle() -> None:
        with connection():
            pass

    return cycle, pool.close


def psycopg_context_cycle(lab: Lab, size: int) -> Built:
    pool = _psycopg_pool(lab, size)
    connection = pool.connection

    def cycle() -> None:
        with connection():
            pass

    return cycle, pool.close


def _queue_pool(lab: Lab, size: int) -> QueuePool:
    kwargs = lab.connect_kwargs(lab.writer)

    def creator() -> Any:
        return psycopg.connect(**kwargs)

    pool = QueuePool(creator, pool_size=size, max_overflow=0)
    held = [pool.connect() for _ in range(size)]
    for conn in held:
        conn.close()
    return pool


def queue_reset_cycle(lab: Lab, size: int) -> Built:
    pool = _queue_pool(lab, size)

    def on_reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        reset_psycopg(dbapi_connection)

    event.listen(pool, "reset", on_reset)
    connect = pool.connect

    def cycle() -> None:
        connect().close()

    return cycle, pool.dispose


def hostpool_cycle(lab: Lab, size: int) -> Built:
    spec = dsn.parse(lab.dsn)
    adapter = adapter_for(spec.engine)
    node = lab.writer
    target = Target(node.id, node.host, node.port)

    def opener(timeout: float) -> Any:
        return adapter.connect(
            spec, node.host, node.port, address=node.address, timeout=timeout, autocommit=False
        )

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


def psycopg_layer_cycle(lab: Lab, size: int) -> Built:
    pool = _psycopg_pool(lab, size)
    getconn, putconn = pool.getconn, pool.putconn

    def cycle() -> None:
        putconn(getconn())

    return cycle, pool.close


def queue_layer_cycle(lab: Lab, size: int) -> Built:
    pool = _queue_pool(lab, size)
    connect = pool.connect

    def cycle() -> None:
        connect().close()

    return cycle, pool.dispose


BUILDERS: Mapping[str, Callable[[Lab, int], Built]] = {
    CLUSTER: cluster_cycle,
    PSYCOPG_RESET: psycopg_reset_cycle,
    PSYCOPG_CONTEXT: psycopg_context_cycle,
    QUEUE_RESET: queue_reset_cycle,
    HOSTPOOL: hostpool_cycle,
    PSYCOPG_LAYER: psycopg_layer_cycle,
    QUEUE_LAYER: queue_layer_cycle,
}


def rate(cycle: Cycle, threads: int, seconds: float) -> float:
    """Cycles per second over `seconds`, summed over `threads` threads started together."""
    return rates(cycle, threads, seconds)[0]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rates(cycle: Cycle, threads: int, seconds: float) -> tuple[float, float]:
    """Cycles per second of wall time and per second of the process's CPU time, over
    `seconds`, summed over `threads` threads started together.

    The second does not depend on how much of the machine the process got: on a loaded
    machine the scheduler shares the cores per thread, so a pool with threads of its own
    (psycopg_pool's workers) gets more of them than one without.
    """
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
    cpu = _cpu()
    started = time.perf_counter()
    go.set()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    cpu = _cpu() - cpu
    return sum(counts) / wall, sum(counts) / max(cpu, 1e-9)


@dataclass(frozen=True)
class PoolResult:
    size: int
    rounds: int
    seconds: float
    best: dict[tuple[str, int], float]  # (pool, threads) -> best cycles per second
    runs: Mapping[tuple[str, int], tuple[float, ...]] = field(default_factory=dict)
    """(pool, threads) -> cycles per second of each round, in round order."""
    cpu_runs: Mapping[tuple[str, int], tuple[float, ...]] = field(default_factory=dict)
    """(pool, threads) -> cycles per second of the process's CPU time, each round."""
    load: tuple[float, float] | None = None
    """The machine's 1-minute load average before and after the run."""

    @property
    def threads(self) -> list[int]:
        return sorted({threads for _, threads in self.best})

    def samples(self, name: str, threads: int) -> tuple[float, ...]:
        """Each round's rate (the best alone when the rounds were not kept)."""
        return self.runs.get((name, threads)) or (self.best[name, threads],)

    def median(self, name: str, threads: int) -> float:
        return statistics.median(self.samples(name, threads))

    def ratios(self, mine: str, theirs: str, threads: int, *, cpu: bool = False) -> list[float]:
        """``mine``'s rate over ``theirs`` within each round (per CPU second with ``cpu``)."""
        runs = self.cpu_runs if cpu else None
        if runs:
            pairs = zip(runs[mine, threads], runs[theirs, threads], strict=True)
        else:
            pairs = zip(self.samples(mine, threads), self.samples(theirs, threads), strict=True)
        return [a / b for a, b in pairs]


def run(
    seconds: float = 1.0, rounds: int = 5, size: int = 4, threads: Sequence[int] = THREADS
) -> PoolResult:
    """Every contender's borrow+return rate at each thread count, ``rounds`` times."""
    load = os.getloadavg()[0]
    lab = Lab.start("postgresql", replicas=0, name="poolbench")
    try:
        pools: dict[str, Built] = {}
        try:
            for name, build in BUILDERS.items():
                pools[name] = build(lab, size)
            names = list(pools)
            runs: dict[tuple[str, int], list[float]] = {}
            cpu_runs: dict[tuple[str, int], list[float]] = {}
            for turn in range(rounds):
                order = names[turn % len(names) :] + names[: turn % len(names)]
                for count in threads:
                    for name in order:
                        wall, cpu = rates(pools[name][0], count, seconds)
                        runs.setdefault((name, count), []).append(wall)
                        cpu_runs.setdefault((name, count), []).append(cpu)
        finally:
            for _cycle, close in pools.values():
                close()
    finally:
        lab.down()
    best = {key: max(values) for key, values in runs.items()}
    return PoolResult(
        size,
        rounds,
        seconds,
        best,
        {k: tuple(v) for k, v in runs.items()},
        {k: tuple(v) for k, v in cpu_runs.items()},
        (load, os.getloadavg()[0]),
    )


def _ratio(result: PoolResult, mine: str, theirs: str, threads: int, *, cpu: bool = False) -> str:
    return f"{statistics.median(result.ratios(mine, theirs, threads, cpu=cpu)):.2f}x"


def _spread(result: PoolResult, mine: str, theirs: str, threads: int) -> str:
    ratios = result.ratios(mine, theirs, threads)
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def _has(result: PoolResult, names: Sequence[str]) -> bool:
    return all((name, threads) in result.best for name in names for threads in result.threads)


def markdown(result: PoolResult) -> str:
    head = (
        f"Borrow+return cycles per second, {result.size} connections per pool, median of "
        f"{result.rounds} x {result.seconds:g}s per pool, pools taking turns; a ratio is the "
        "median of the ratios within each round, its range beside it."
    )
    if result.load is not None:
        head += (
            f" Load average {result.load[0]:.1f} before and {result.load[1]:.1f} after, on "
            f"{os.cpu_count()} cores."
        )
    lines = [head, ""]
    if _has(result, API):
        lines += [
            "What applications write, reset-on-return in place: `with cluster.writer()`, "
            "`with pool.connection()` (psycopg_pool, with and without `reset`), QueuePool "
            "`connect()`/`close()` with a `reset` event.",
            "",
            f"| threads | {CLUSTER} | {PSYCOPG_RESET} | {PSYCOPG_CONTEXT} | {QUEUE_RESET} "
            f"| vs psycopg_pool + reset | range | vs psycopg_pool | range | vs QueuePool + reset "
            "| range |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for threads in result.threads:
            rates = " | ".join(f"{result.median(name, threads):,.0f}" for name in API)
            cells = " | ".join(
                f"{_ratio(result, CLUSTER, theirs, threads)} | "
                f"{_spread(result, CLUSTER, theirs, threads)}"
                for theirs in (PSYCOPG_RESET, PSYCOPG_CONTEXT, QUEUE_RESET)
            )
            lines.append(f"| {threads} | {rates} | {cells} |")
        lines += ["", "The pool layer alone: borrow and return, no proxy, no reset.", ""]
    lines += [
        "| threads | HostPool | psycopg_pool | QueuePool | vs psycopg_pool | vs QueuePool "
        "| range vs psycopg_pool |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for threads in result.threads:
        rates = " | ".join(f"{result.median(name, threads):,.0f}" for name in LAYER)
        lines.append(
            f"| {threads} | {rates} | {_ratio(result, HOSTPOOL, PSYCOPG_LAYER, threads)} | "
            f"{_ratio(result, HOSTPOOL, QUEUE_LAYER, threads)} | "
            f"{_spread(result, HOSTPOOL, PSYCOPG_LAYER, threads)} |"
        )
    if result.cpu_runs and _has(result, API):
        lines += [
            "",
            "The same ratios per second of the process's CPU time (what a loaded machine, "
            "which shares its cores per thread, does not skew):",
            "",
            "| threads | Cluster.writer() vs psycopg_pool + reset | vs psycopg_pool | "
            "vs QueuePool + reset | HostPool vs psycopg_pool | HostPool vs QueuePool |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        pairs = [(CLUSTER, PSYCOPG_RESET), (CLUSTER, PSYCOPG_CONTEXT), (CLUSTER, QUEUE_RESET)]
        pairs += [(HOSTPOOL, PSYCOPG_LAYER), (HOSTPOOL, QUEUE_LAYER)]
        for threads in result.threads:
            cells = " | ".join(_ratio(result, a, b, threads, cpu=True) for a, b in pairs)
            lines.append(f"| {threads} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=5, help="turns per pool; the median counts")
    parser.add_argument("--size", type=int, default=4, help="connections in each pool")
    parser.add_argument(
        "--threads",
        default=",".join(map(str, THREADS)),
        help="comma-separated thread counts (default %(default)s)",
    )
    args = parser.parse_args()
    threads = [int(part) for part in args.threads.split(",") if part]
    print(markdown(run(args.seconds, args.rounds, args.size, threads)))


if __name__ == "__main__":
    main()
