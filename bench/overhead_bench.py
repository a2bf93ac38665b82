"""Statement overhead of the library against the bare drivers: ``SELECT 1`` on an open connection.

    .venv/bin/python bench/overhead_bench.py [--rounds 15] [--per-round 2000]

Starts a one-node lab per engine, opens a bare driver connection and a library connection to the
same node, and times them side by side in alternating rounds (so drift on a shared machine hits
both alike). Prints microseconds per statement (median of rounds) and the ratio. Goal: at most
3 % slower. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pymysql

import aurora_smartdriver as asd
from aurora_smartdriver.lab import Lab


def _loop(conn: Any, n: int) -> float:
    cur = conn.cursor()
    execute, fetchone = cur.execute, cur.fetchone
    started = time.perf_counter()
    for _ in range(n):
        execute("SELECT 1")
        fetchone()
    return (time.perf_counter() - started) / n


def _bare(lab: Lab) -> Any:
    kwargs = lab.connect_kwargs(lab.writer.id)
    if lab.state().engine == "postgresql":
        return psycopg.connect(**kwargs, autocommit=True)
    return pymysql.connect(**kwargs, autocommit=True)


def measure(engine: str, rounds: int, per_round: int) -> tuple[float, float]:
    with Lab.start(engine, replicas=0) as lab:
        bare = _bare(lab)
        ours = asd.connect(lab.dsn, autocommit="on" if engine == "postgresql" else True)
        runs: dict[str, list[float]] = {"bare": [], "library": []}
        contenders: list[tuple[str, Callable[[int], float]]] = [
            ("bare", lambda n: _loop(bare, n)),
            ("library", lambda n: _loop(ours, n)),
        ]
        for _name, run in contenders:
            run(per_round // 4)  # warm up
        for i in range(rounds):
            order = contenders if i % 2 == 0 else contenders[::-1]
            for name, run in order:
                runs[name].append(run(per_round))
        bare.close()
        ours.close()
    return statistics.median(runs["bare"]), statistics.median(runs["library"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--engines", default="postgresql,mariadb")
    args = parser.parse_args()
    print(f"SELECT 1 on an open connection, median of {args.rounds} rounds of {args.per_round}")
    print(f"{'driver':<10} {'bare µs':>9} {'library µs':>11} {'overhead':>9}")
    for engine in args.engines.split(","):
        bare, ours = measure(engine, args.rounds, args.per_round)
        name = "psycopg" if engine == "postgresql" else "PyMySQL"
        print(f"{name:<10} {bare * 1e6:>9.1f} {ours * 1e6:>11.1f} {100 * (ours / bare - 1):>8.1f}%")


if __name__ == "__main__":
    main()
