"""The chaos table: failure scenarios under load, the library beside a bare driver, both engines.

    .venv/bin/python bench/chaos.py [--runs 3] [--engines postgresql,mariadb] [--scenarios ...]
                                    [--sources aurora,probe,static] [--fronts sync,aio]

For each scenario and topology source a lab cluster is loaded by writer and reader threads
through the library (``Cluster`` with pools) and, side by side in the same run, by bare-driver
writers reconnecting through the cluster endpoint name (what applications do today). The
library's DSN per source is `source_failover.source_dsn`'s: ``aurora`` the lab's own (the
Aurora metadata, detected), ``probe`` the nodes' addresses, ``static`` the cluster endpoint
first (a name that follows the writer) and the readers' addresses. ``--fronts aio`` runs the
same load and ledger through ``aurora_smartdriver.aio`` (tasks on an event loop, `_aio_load`)
instead of threads. Each insert carries a unique id;
the clients record which ones the database acknowledged. Printed per scenario (medians over
the runs): acknowledged writes lost (must be 0), the ledger of `aurora_smartdriver.lab._ledger`
(applied twice and reported-rolled-back-but-present must be 0; unknown outcomes counted), write
unavailability (fault to the first
acknowledged write; and from the new writer accepting writes to that write), read errors,
connections opened and the most concurrent connection attempts to one host. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from _aio_load import AsyncLoad
from source_failover import SOURCES, source_dsn

from aurora_smartdriver._demo import LibraryLoad, lost_writes, write_gap
from aurora_smartdriver.lab import Lab, partition_available
from aurora_smartdriver.lab._ledger import Ledger
from aurora_smartdriver.lab._workload import WriteLoad


@dataclass
class Row:
    lost: int
    gap_s: float
    after_writable_s: float | None
    read_errors: int
    opened: int
    peak_connects: int
    twice: int = 0
    """Ledger: operations applied twice by writers that re-ran only when told to."""
    unknown: int = 0
    """Ledger: operations reported TransactionOutcomeUnknown."""
    phantom: int = 0
    """Ledger: operations reported as not committed, yet present."""


def _first_after(times: list[float], moment: float) -> float | None:
    after = [t for t in times if t >= moment]
    return min(after) - moment if after else None


Scenario = Callable[[Lab], float]  # performs the fault; returns when the new writer took writes


def _crash(lab: Lab) -> float:
    return lab.failover().writable_at


def _hang(lab: Lab) -> float:
    lab.hang(lab.writer.id)
    time.sleep(1.0)  # the writer is silent; then the cluster gives up on it
    return lab.failover().writable_at


def _dns_lag(lab: Lab) -> float:
    return lab.failover(dns_lag=30.0).writable_at


def _twice(lab: Lab) -> float:
    lab.failover()
    time.sleep(1.0)
    return lab.failover().writable_at


def _reader_crash(lab: Lab) -> float:
    lab.crash(lab.readers[0].id)
    return time.time()


def _rejoin(lab: Lab) -> float:
    report = lab.failover(dns_lag=30.0)
    lab.rejoin(report.old_writer)
    return report.writable_at


def _all_readers(lab: Lab) -> float:
    for reader in lab.readers:
        lab.crash(reader.id)
    return time.time()


def _partition(lab: Lab) -> float:
    lab.partition(lab.writer.id)
    time.sleep(1.0)
    return lab.failover().writable_at


SCENARIOS: dict[str, Scenario] = {
    "writer crash": _crash,
    "writer hang": _hang,
    "writer partition": _partition,
    "failover with DNS lag 30 s": _dns_lag,
    "two failovers in a row": _twice,
    "reader crash": _reader_crash,
    "old writer rejoins": _rejoin,
    "all readers lost": _all_readers,
}


class _Through(Lab):
    """The bench's lab, seen through the DSN of one topology source (`LibraryLoad` connects
    with ``lab.dsn``)."""

    def __init__(self, lab: Lab, dsn: str) -> None:
        super().__init__(lab.state_path)
        self._through = dsn

    @property
    def dsn(self) -> str:
        return self._through


def run_once(
    lab: Lab, scenario: Scenario, settle: float, source: str = "aurora", front: str = "sync"
) -> tuple[Row, Row]:
    dsn = source_dsn(lab, source)
    engine = lab.state().engine
    ours: LibraryLoad | AsyncLoad
    ledger: Ledger | None = None
    if front == "aio":
        ours = AsyncLoad(dsn, engine).start()  # its ledger runs on its loop
    else:
        ours = LibraryLoad(_Through(lab, dsn)).start()
        ledger = Ledger(dsn, engine, fast_refresh_interval="0.05s").start()
    naive = WriteLoad(lab, threads=4).start()
    time.sleep(1.5)
    fault = time.time()
    writable = scenario(lab)
    time.sleep(settle)
    end = time.time()
    ours.finish()
    if isinstance(ours, AsyncLoad):
        assert ours.report is not None
        audit = ours.report
    else:
        assert ledger is not None
        audit = ledger.stop()
    naive_result = naive.stop()
    opened, peak = ours.pool_figures()
    if isinstance(ours, LibraryLoad):
        ours.cluster.close()
    lib_gap = write_gap(ours.out.write_ok_at, fault, end)
    naive_times = [e.at for e in naive_result.events if e.ok]
    naive_gap = write_gap(naive_times, fault, end)
    library = Row(
        lost=lost_writes(lab, ours.out.acked) + len(audit.lost),
        gap_s=lib_gap,
        after_writable_s=_first_after(ours.out.write_ok_at, writable),
        read_errors=ours.out.read_errors,
        opened=opened,
        peak_connects=peak,
        twice=len(audit.twice),
        unknown=audit.unknown,
        phantom=len(audit.phantom),
    )
    bare = Row(
        lost=len(naive.lost()),
        gap_s=naive_gap,
        after_writable_s=_first_after(naive_times, writable),
        read_errors=0,
        opened=naive_result.connects,
        peak_connects=0,
    )
    return library, bare


def _med(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "never"
    return f"{statistics.median(known):.2f} s"


Measured = list[tuple[Row, Row]]
"""(library, bare) per run."""


@dataclass(frozen=True)
class ChaosResult:
    runs: int
    settle: float
    rows: list[tuple[str, str, dict[str, Measured]]]  # engine, scenario, source -> runs
    skipped: list[str]


def run(
    engines: tuple[str, ...] = ("postgresql", "mariadb"),
    scenarios: tuple[str, ...] = tuple(SCENARIOS),
    runs: int = 3,
    settle: float = 6.0,
    progress: Callable[[str], None] | None = None,
    sources: tuple[str, ...] = ("aurora",),
    fronts: tuple[str, ...] = ("sync",),
) -> ChaosResult:
    names = list(scenarios)
    skipped = []
    if "writer partition" in names and not partition_available():
        names.remove("writer partition")
        skipped.append("writer partition (needs root and iptables)")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown sources {unknown}: choose among {', '.join(SOURCES)}")
    if not set(fronts) <= {"sync", "aio"}:
        raise ValueError(f"unknown fronts {fronts}: choose among sync, aio")
    rows: list[tuple[str, str, dict[str, Measured]]] = []
    for engine in engines:
        with Lab.start(engine, replicas=2) as lab:
            for name in names:
                by_source: dict[str, Measured] = {}
                for front in fronts:
                    for source in sources:
                        key = source if front == "sync" else f"{source}, aio"
                        for _ in range(runs):
                            lab.restore()
                            measured = run_once(lab, SCENARIOS[name], settle, source, front)
                            by_source.setdefault(key, []).append(measured)
                rows.append((engine, name, by_source))
                if progress is not None:
                    progress(f"chaos: {engine} {name} done")
    return ChaosResult(runs, settle, rows, skipped)


def _line(engine: str, name: str, client: str, source: str, picked: list[Row]) -> str:
    library = client == "library"
    return (
        f"| {engine} | {name} | {client} | {source} | {sum(r.lost for r in picked)} | "
        + (
            f"{sum(r.twice for r in picked)} | {sum(r.unknown for r in picked)} | "
            f"{sum(r.phantom for r in picked)} | "
            if library
            else "- | - | - | "
        )
        + f"{_med([r.gap_s for r in picked])} | "
        f"{_med([r.after_writable_s for r in picked])} | "
        f"{int(statistics.median(r.read_errors for r in picked)) if library else '-'} | "
        f"{int(statistics.median(r.opened for r in picked))} | "
        f"{max(r.peak_connects for r in picked) if library else '-'} |"
    )


def markdown(result: ChaosResult) -> str:
    lines = [
        f"Median of {result.runs} runs, {result.settle:g} s of load after each fault; 4 writers "
        "+ 4 readers through the library, 4 bare-driver writers beside them. *source* is the "
        "library's topology source: *aurora* the Aurora metadata (the cluster endpoint in the "
        "DSN), *probe* the nodes' addresses in the DSN, each asked its role, *static* the "
        "cluster endpoint first (a name that follows the writer) and the readers' addresses. "
        "The bare row is over the runs of every source of its scenario. *lost* is summed "
        "over the runs; *max conc.* is the most concurrent connection attempts to one host. "
        "Beside them, a ledger (6 writers through connect(), Cluster and SQLAlchemy, in "
        "autocommit and in transactions, re-running only on FailoverSucceeded, with the same "
        "source): *twice* is operations applied twice, *unknown* those reported "
        "TransactionOutcomeUnknown, *phantom* those reported not committed yet present (all "
        "summed over the runs; twice and phantom must be 0). A source marked *aio* is the same "
        "load and ledger through `aurora_smartdriver.aio` (tasks on one event loop).",
        "",
        "| engine | scenario | client | source | lost | twice | unknown | phantom "
        "| write unavailability | new writer -> 1st write | read errors | opened | max conc. |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for engine, name, by_source in result.rows:
        for source, measured in by_source.items():
            lines.append(_line(engine, name, "library", source, [r[0] for r in measured]))
        bare = [r[1] for measured in by_source.values() for r in measured]
        lines.append(_line(engine, name, "bare", "-", bare))
    if result.skipped:
        lines += ["", "Skipped: " + ", ".join(result.skipped) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--settle", type=float, default=6.0, help="seconds of load after a fault")
    parser.add_argument(
        "--sources", default="aurora", help=f"topology sources, among {','.join(SOURCES)}"
    )
    parser.add_argument("--fronts", default="sync", help="sync, aio or both (sync,aio)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the library's warnings would interleave the table
    engines = tuple(e for e in args.engines.split(",") if e)
    scenarios = tuple(n for n in args.scenarios.split(",") if n)
    sources = tuple(n for n in args.sources.split(",") if n)
    fronts = tuple(n for n in args.fronts.split(",") if n)
    print(markdown(run(engines, scenarios, args.runs, args.settle, print, sources, fronts)))


if __name__ == "__main__":
    main()
