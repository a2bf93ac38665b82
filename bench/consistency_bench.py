"""Read-your-writes: stale reads, reads kept on replicas, and what a session costs.

    .venv/bin/python bench/consistency_bench.py [--engines postgresql,mariadb]
                                                [--lags 0,0.05,1] [--seconds 5] [--workers 4]

A lab cluster per engine (a writer, two replicas). For each injected replica lag (every replica
``Lab.lag``), each worker thread writes a row (a writer borrow) and at once reads it back (a
reader borrow), for ``--seconds``, twice: with ``consistency=eventual`` (plain ``Cluster``
borrows) and with ``consistency=session`` (the worker's ``Cluster.session()``). Printed per
engine, lag and mode: reads that missed the worker's own write (stale), the share of reads a
replica served, and the mean and 99th percentile time of a write borrow and of a read borrow
(borrow, statement, give back), with the session's added time against eventual's in the same
run. Nothing is asserted; the machine is shared, so compare rows of one run.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime
from aurora_smartdriver.lab import Lab


@dataclass
class Tally:
    """One worker's figures for one cell."""

    writes: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    stale: int = 0
    on_replica: int = 0


@dataclass(frozen=True)
class Row:
    engine: str
    lag: float
    mode: str
    reads: int
    stale: int
    on_replica: int
    write_mean_ms: float
    write_p99_ms: float
    read_mean_ms: float
    read_p99_ms: float
    served: dict[str, int]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def _worker(cluster: asd.Cluster, mode: str, writer_id: str, until: float, out: Tally) -> None:
    session = cluster.session() if mode == "session" else None
    borrow_writer = session.writer if session is not None else cluster.writer
    borrow_reader = session.reader if session is not None else cluster.reader
    while time.monotonic() < until:
        key = uuid.uuid4().hex
        started = time.perf_counter()
        with borrow_writer() as conn:
            conn.cursor().execute("INSERT INTO rw_bench (id) VALUES (%s)", (key,))
        wrote = time.perf_counter()
        with borrow_reader() as conn:
            cur = conn.cursor()
            cur.execute("SELECT count(*) FROM rw_bench WHERE id = %s", (key,))
            row: Any = cur.fetchone()
            served_by = conn.instance_id
        read = time.perf_counter()
        out.writes.append(wrote - started)
        out.reads.append(read - wrote)
        out.stale += 0 if row and int(row[0]) == 1 else 1
        out.on_replica += served_by != writer_id


def run_cell(lab: Lab, lag: float, mode: str, seconds: float, workers: int) -> Row:
    dsn = f"{lab.dsn}&cluster_id=rwbench-{uuid.uuid4().hex}&pool_max_size={workers * 2}"
    tallies = [Tally() for _ in range(workers)]
    with asd.Cluster(dsn) as cluster:
        with cluster.writer() as conn:  # warm the pools and the monitor
            conn.cursor().execute("SELECT 1")
        until = time.monotonic() + seconds
        threads = [
            threading.Thread(target=_worker, args=(cluster, mode, lab.writer.id, until, t))
            for t in tallies
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        served = dict(cluster.metrics().routing.session_reads)
    _runtime.close_all()
    writes = [w for t in tallies for w in t.writes]
    reads = [r for t in tallies for r in t.reads]
    return Row(
        engine=lab.state().engine,
        lag=lag,
        mode=mode,
        reads=len(reads),
        stale=sum(t.stale for t in tallies),
        on_replica=sum(t.on_replica for t in tallies),
        write_mean_ms=statistics.fmean(writes) * 1000 if writes else 0.0,
        write_p99_ms=_p99(writes) * 1000,
        read_mean_ms=statistics.fmean(reads) * 1000 if reads else 0.0,
        read_p99_ms=_p99(reads) * 1000,
        served=served,
    )


def run_engine(engine: str, lags: list[float], seconds: float, workers: int) -> list[Row]:
    rows: list[Row] = []
    with Lab.start(engine, replicas=2) as lab:
        conn = asd.connect(lab.dsn, autocommit=True)
        try:
            conn.cursor().execute("CREATE TABLE rw_bench (id VARCHAR(64) PRIMARY KEY)")
        finally:
            conn.close()
        lab.wait_replicated()
        for lag in lags:
            for reader in lab.readers:
                lab.lag(reader, lag)
            for mode in ("eventual", "session"):
                rows.append(run_cell(lab, lag, mode, seconds, workers))
            for reader in lab.readers:
                lab.lag(reader, 0)
            lab.wait_replicated()
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table, the session's added time beside eventual's."""
    base = {(r.engine, r.lag): r for r in rows if r.mode == "eventual"}
    lines = [
        "| engine | lag | consistency | reads | stale | on replicas | write ms mean / p99 "
        "| read ms mean / p99 | session adds (write / read, ms) | session reads served by |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for r in rows:
        added = ""
        if r.mode == "session" and (r.engine, r.lag) in base:
            b = base[(r.engine, r.lag)]
            write, read = r.write_mean_ms - b.write_mean_ms, r.read_mean_ms - b.read_mean_ms
            added = f"{write:+.2f} / {read:+.2f}"
        served = ", ".join(f"{k} {v}" for k, v in sorted(r.served.items())) or "-"
        share = r.on_replica / r.reads * 100 if r.reads else 0.0
        lines.append(
            f"| {r.engine} | {r.lag * 1000:g} ms | {r.mode} | {r.reads} | {r.stale} "
            f"({r.stale / max(1, r.reads) * 100:.1f} %) | {share:.1f} % | "
            f"{r.write_mean_ms:.2f} / {r.write_p99_ms:.2f} | {r.read_mean_ms:.2f} / "
            f"{r.read_p99_ms:.2f} | {added or '-'} | {served} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", default="postgresql,mariadb", help="default: both")
    parser.add_argument(
        "--lags", default="0,0.05,1", help="injected replica lags, seconds (default: 0,0.05,1)"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell (default: 5)")
    parser.add_argument("--workers", type=int, default=4, help="threads (default: 4)")
    args = parser.parse_args(argv)
    lags = [float(x) for x in args.lags.split(",")]
    rows: list[Row] = []
    for engine in args.engines.split(","):
        rows += run_engine(engine.strip(), lags, args.seconds, args.workers)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
