"""Statement overhead of the library against the bare drivers: ``SELECT 1`` on an open connection.

    .venv/bin/python bench/overhead_bench.py [--rounds 15] [--per-round 2000] [--no-wrapper]

Starts a one-node lab per engine, opens a bare driver connection and a library connection to the
same node, and times them side by side in alternating rounds (so drift on a shared machine hits
both alike), with this process and the server pinned to different CPUs so that every
connection's round trips cost alike. When aws-advanced-python-wrapper is installed, a wrapper
connection (its default plugins) joins the rounds on PostgreSQL. Prints microseconds per
statement (median of rounds) and the ratio. Goal: at most 3 % slower. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import _awswrapper  # bench/ is on sys.path: run as a script, or imported by report.py
import psycopg
import pymysql

import aurora_smartdriver as asd
from aurora_smartdriver.lab import Lab, _procs


@dataclass(frozen=True)
class OverheadRow:
    driver: str
    bare_s: float
    library_s: float
    wrapper_s: float | None = None  # aws-advanced-python-wrapper, default plugins

    @property
    def overhead(self) -> float:
        return self.library_s / self.bare_s - 1

    @property
    def wrapper_overhead(self) -> float | None:
        return None if self.wrapper_s is None else self.wrapper_s / self.bare_s - 1


@dataclass(frozen=True)
class OverheadResult:
    rounds: int
    per_round: int
    rows: list[OverheadRow]
    wrapper: str  # version measured, or why not


def _loop(conn: Any, n: int) -> float:
    cur = conn.cursor()
    execute, fetchone = cur.execute, cur.fetchone
    started = time.perf_counter()
    for _ in range(n):
        execute("SELECT 1")
        fetchone()
    return (time.perf_counter() - started) / n


def _timed(conn: Any, n: int) -> float:
    return _loop(conn, n)


def _bare(lab: Lab) -> Any:
    kwargs = lab.connect_kwargs(lab.writer.id)
    if lab.state().engine == "postgresql":
        return psycopg.connect(**kwargs, autocommit=True)
    return pymysql.connect(**kwargs, autocommit=True)


def _pin(lab: Lab) -> Callable[[], None]:
    """Put this process on one CPU and the server (every backend) on another.

    A round trip costs very different times depending on whether the server process answering
    it runs on the client's CPU or not, and the scheduler decides that per connection, for the
    connection's life: unpinned, one contender could be lucky for a whole run (seen: the same
    code measured -15 % and +35 % against the bare driver). Pinned, every connection is alike.
    Returns the undo.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return lambda: None
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})
    for pid in _procs.tree(lab.writer.pid or 0):
        # Every thread: MariaDB serves each connection on a thread of its one process.
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task), {cpus[1]})
    return lambda: os.sched_setaffinity(0, mine)


def measure(engine: str, rounds: int, per_round: int, wrapper: bool = False) -> dict[str, float]:
    """Median seconds per ``SELECT 1`` of each contender, timed in alternating rounds."""
    with Lab.start(engine, replicas=0) as lab:
        conns: dict[str, Any] = {
            "bare": _bare(lab),
            "library": asd.connect(lab.dsn, autocommit="on" if engine == "postgresql" else True),
        }
        with _awswrapper.lab_names(lab):
            if wrapper:
                conns["wrapper"] = _awswrapper.connect(lab)
            runs: dict[str, list[float]] = {name: [] for name in conns}
            contenders: list[tuple[str, Callable[[int], float]]] = [
                (name, functools.partial(_timed, conn)) for name, conn in conns.items()
            ]
            unpin = _pin(lab)  # after every connection exists: their backends too
            for _name, run_one in contenders:
                run_one(per_round // 4)  # warm up
            for i in range(rounds):
                order = contenders if i % 2 == 0 else contenders[::-1]
                for name, run_one in order:
                    runs[name].append(run_one(per_round))
            unpin()
            for conn in conns.values():
                conn.close()
        if wrapper:
            _awswrapper.release_resources()
    return {name: statistics.median(values) for name, values in runs.items()}


def run(
    engines: tuple[str, ...] = ("postgresql", "mariadb"),
    rounds: int = 15,
    per_round: int = 2000,
    wrapper: bool = True,
) -> OverheadResult:
    version = _awswrapper.version() if wrapper else None
    rows = []
    for engine in engines:
        with_wrapper = version is not None and engine == "postgresql"
        medians = measure(engine, rounds, per_round, with_wrapper)
        rows.append(
            OverheadRow(
                "psycopg" if engine == "postgresql" else "PyMySQL",
                medians["bare"],
                medians["library"],
                medians.get("wrapper"),
            )
        )
    if not wrapper:
        note = "not measured (--no-wrapper)"
    elif version is None:
        note = f"not installed ({_awswrapper.PACKAGE})"
    else:
        note = f"{_awswrapper.PACKAGE} {version}, plugins {_awswrapper.default_plugins()}"
    return OverheadResult(rounds, per_round, rows, note)


def markdown(result: OverheadResult) -> str:
    lines = [
        f"`SELECT 1` on an open connection, median of {result.rounds} rounds of "
        f"{result.per_round}, contenders alternating, the client on one CPU and the server on "
        f"another (unpinned, which CPU answers a connection's round trips is luck that lasts "
        f"for the connection's life and swamps the difference). AWS wrapper: {result.wrapper}.",
        "",
        "| driver | bare µs | library µs | library overhead | AWS wrapper µs | wrapper overhead |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result.rows:
        wrapper = "-" if row.wrapper_s is None else f"{row.wrapper_s * 1e6:.1f}"
        wrapper_ratio = row.wrapper_overhead
        lines.append(
            f"| {row.driver} | {row.bare_s * 1e6:.1f} | {row.library_s * 1e6:.1f} | "
            f"{100 * row.overhead:+.1f} % | {wrapper} | "
            f"{'-' if wrapper_ratio is None else f'{100 * wrapper_ratio:+.1f} %'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--no-wrapper", action="store_true", help="leave the AWS wrapper out")
    args = parser.parse_args()
    engines = tuple(e for e in args.engines.split(",") if e)
    print(markdown(run(engines, args.rounds, args.per_round, wrapper=not args.no_wrapper)))


if __name__ == "__main__":
    main()
