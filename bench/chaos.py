"""The chaos table: failure scenarios under load, the library beside a bare driver, both engines.

    .venv/bin/python bench/chaos.py [--runs 3] [--engines postgresql,mariadb] [--scenarios ...]

For each scenario a lab cluster is loaded by writer and reader threads through the library
(``Cluster`` with pools) and, side by side in the same run, by bare-driver writers reconnecting
through the cluster endpoint name (what applications do today). Each insert carries a unique id;
the clients record which ones the database acknowledged. Printed per scenario (medians over
the runs): acknowledged writes lost (must be 0), write unavailability (fault to the first
acknowledged write; and from the new writer accepting writes to that write), read errors,
connections opened and the most concurrent connection attempts to one host. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import aurora_smartdriver as asd
from aurora_smartdriver.lab import Lab, partition_available
from aurora_smartdriver.lab._workload import TABLE, WriteLoad


@dataclass
class _Outcomes:
    acked: list[str] = field(default_factory=list)
    write_ok_at: list[float] = field(default_factory=list)
    write_errors: int = 0
    read_ok: int = 0
    read_errors: int = 0
    read_errors_on_readers: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class LibraryLoad:
    """Writers and readers through ``Cluster``: what an application using the library does."""

    def __init__(self, lab: Lab, writers: int = 4, readers: int = 4) -> None:
        self.cluster = asd.Cluster(
            lab.dsn, cluster_id=uuid.uuid4().hex, fast_refresh_interval="0.05s", pool_max_size=8
        )
        self.out = _Outcomes()
        self.stop = threading.Event()
        self.prefix = uuid.uuid4().hex[:12]
        self.threads = [
            threading.Thread(target=self._write, args=(i,), daemon=True) for i in range(writers)
        ] + [threading.Thread(target=self._read, daemon=True) for _ in range(readers)]

    def _write(self, client: int) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            row = f"{self.prefix}-{client}-{seq}"
            try:
                with self.cluster.writer() as conn:
                    conn.cursor().execute(
                        f"INSERT INTO {TABLE} (id, client) VALUES (%s, %s)", (row, client)
                    )
                with self.out.lock:
                    self.out.acked.append(row)
                    self.out.write_ok_at.append(time.time())
            except Exception:
                with self.out.lock:
                    self.out.write_errors += 1
                self.stop.wait(0.01)
            self.stop.wait(0.002)

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                with self.cluster.reader() as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT 1")
                    cur.fetchall()
                with self.out.lock:
                    self.out.read_ok += 1
            except Exception:
                with self.out.lock:
                    self.out.read_errors += 1
                self.stop.wait(0.01)
            self.stop.wait(0.002)

    def start(self) -> LibraryLoad:
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def pool_figures(self) -> tuple[int, int]:
        stats = self.cluster.stats()["pools"].values()
        opened = sum(s.opened for s in stats)
        peak = max((s.max_concurrent_connecting_seen for s in stats), default=0)
        return opened, peak


@dataclass
class Row:
    lost: int
    gap_s: float
    after_writable_s: float | None
    read_errors: int
    opened: int
    peak_connects: int


def _gap(times: list[float], fault: float, end: float) -> float:
    """The longest stretch without an acknowledged write between the fault and ``end``."""
    ordered = sorted(times)
    before = [t for t in ordered if t < fault]
    marks = [before[-1] if before else fault, *(t for t in ordered if t >= fault), end]
    return max(b - a for a, b in itertools.pairwise(marks))


def _first_after(times: list[float], moment: float) -> float | None:
    after = [t for t in times if t >= moment]
    return min(after) - moment if after else None


def _lost(lab: Lab, acked: list[str]) -> int:
    present = {str(r[0]) for r in lab.execute(lab.writer.id, f"SELECT id FROM {TABLE}")}
    return sum(1 for row in acked if row not in present)


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


def run_once(lab: Lab, scenario: Scenario, settle: float) -> tuple[Row, Row]:
    ours = LibraryLoad(lab).start()
    naive = WriteLoad(lab, threads=4).start()
    time.sleep(1.5)
    fault = time.time()
    writable = scenario(lab)
    time.sleep(settle)
    end = time.time()
    ours.finish()
    naive_result = naive.stop()
    opened, peak = ours.pool_figures()
    ours.cluster.close()
    lib_gap = _gap(ours.out.write_ok_at, fault, end)
    naive_times = [e.at for e in naive_result.events if e.ok]
    naive_gap = _gap(naive_times, fault, end)
    library = Row(
        lost=_lost(lab, ours.out.acked),
        gap_s=lib_gap,
        after_writable_s=_first_after(ours.out.write_ok_at, writable),
        read_errors=ours.out.read_errors,
        opened=opened,
        peak_connects=peak,
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
    return f"{statistics.median(known):.2f}s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--settle", type=float, default=6.0, help="seconds of load after a fault")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the library's warnings would interleave the table
    names = [n for n in args.scenarios.split(",") if n]
    if "writer partition" in names and not partition_available():
        names.remove("writer partition")
    header = (
        f"{'engine':<10} {'scenario':<24} {'client':<8} {'lost':>4} {'unavail.':>9} "
        f"{'after new writer':>16} {'read err':>8} {'opened':>6} {'max conc.':>9}"
    )
    print(f"chaos table, median of {args.runs} runs")
    print("4 writers + 4 readers through the library, 4 bare-driver writers beside them")
    print(header)
    for engine in args.engines.split(","):
        with Lab.start(engine, replicas=2) as lab:
            for name in names:
                rows: list[tuple[Row, Row]] = []
                for _ in range(args.runs):
                    lab.restore()
                    rows.append(run_once(lab, SCENARIOS[name], args.settle))
                for label, pick in (("library", 0), ("bare", 1)):
                    picked = [r[pick] for r in rows]
                    print(
                        f"{engine:<10} {name:<24} {label:<8} {sum(r.lost for r in picked):>4} "
                        f"{_med([r.gap_s for r in picked]):>9} "
                        f"{_med([r.after_writable_s for r in picked]):>16} "
                        f"{int(statistics.median(r.read_errors for r in picked)):>8} "
                        f"{int(statistics.median(r.opened for r in picked)):>6} "
                        f"{max(r.peak_connects for r in picked) if pick == 0 else '-':>9}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
