"""Writer failover: the library beside aws-advanced-python-wrapper and a bare driver, one lab.

    .venv/bin/python bench/wrapper_failover.py [--runs 3] [--dns-lags 0,5]

A PostgreSQL lab with the simulated Aurora metadata. One writer thread per client inserts rows
in a loop: the library (``connect()``), the AWS wrapper (default plugins, through the cluster
endpoint; see ``_awswrapper``) when installed, and bare psycopg reconnecting via the cluster
endpoint. The writer is killed and a replica promoted while the endpoint's DNS lags; printed
per client: seconds from the new writer accepting writes to the client's first acknowledged
write (median of runs). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import _awswrapper

import aurora_smartdriver as asd
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._workload import TABLE, WriteLoad

Insert = Callable[[str], None]


def _library(lab: Lab) -> tuple[Insert, Callable[[], None]]:
    conn = asd.connect(lab.dsn, autocommit="on")

    def insert(row: str) -> None:
        conn.cursor().execute(f"INSERT INTO {TABLE} (id, client) VALUES (%s, 0)", (row,))

    return insert, conn.close


def _wrapper(lab: Lab) -> tuple[Insert, Callable[[], None]]:
    conn = _awswrapper.connect(lab)

    def insert(row: str) -> None:
        conn.cursor().execute(f"INSERT INTO {TABLE} (id, client) VALUES (%s, 1)", (row,))

    return insert, conn.close


class _Writer(threading.Thread):
    def __init__(self, name: str, insert: Insert) -> None:
        super().__init__(daemon=True, name=name)
        self.insert = insert
        self.ok: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            try:
                self.insert(f"{self.name}-{time.time_ns()}-{seq}")
                self.ok.append(time.time())
            except Exception:  # FailoverSuccessError, FailoverSucceeded, connection errors
                self.stop.wait(0.01)
            self.stop.wait(0.002)


def _first_after(times: list[float], moment: float) -> float | None:
    return min((t - moment for t in times if t >= moment), default=None)


def run_once(
    lab: Lab, dns_lag: float, with_wrapper: bool, settle: float
) -> dict[str, float | None]:
    builders: dict[str, Callable[[Lab], tuple[Insert, Callable[[], None]]]] = {"library": _library}
    if with_wrapper:
        builders["aws wrapper"] = _wrapper
    made = {name: build(lab) for name, build in builders.items()}
    writers = {name: _Writer(name, insert) for name, (insert, _close) in made.items()}
    bare = WriteLoad(lab, threads=1).start()
    for writer in writers.values():
        writer.start()
    time.sleep(2.0)
    report = lab.failover(dns_lag=dns_lag)
    deadline = time.time() + dns_lag + settle
    while time.time() < deadline:
        waiting = [w for w in writers.values() if not any(t > report.writable_at for t in w.ok)]
        if not waiting and bare.result.first_ack_after(report.writable_at) is not None:
            break
        time.sleep(0.1)
    for writer in writers.values():
        writer.stop.set()
        writer.join(10)
    bare_result = bare.stop()
    for _insert, close in made.values():
        try:
            close()
        except Exception as exc:  # a connection the failover replaced
            logging.debug("close: %s", exc)
    out: dict[str, float | None] = {
        name: _first_after(w.ok, report.writable_at) for name, w in writers.items()
    }
    out["bare psycopg"] = _first_after(
        [e.at for e in bare_result.events if e.ok], report.writable_at
    )
    return out


@dataclass(frozen=True)
class WrapperFailoverResult:
    runs: int
    wrapper: str
    rows: dict[float, dict[str, list[float | None]]]  # dns lag -> client -> per run


def run(
    runs: int = 3, dns_lags: tuple[float, ...] = (0.0, 5.0), settle: float = 5.0
) -> WrapperFailoverResult:
    logging.getLogger("aurora_smartdriver").setLevel(logging.CRITICAL)
    logging.getLogger("aws_advanced_python_wrapper").setLevel(logging.CRITICAL)
    version = _awswrapper.version()
    rows: dict[float, dict[str, list[float | None]]] = {}
    with Lab.start("postgresql", replicas=2, name="awsw") as lab, _awswrapper.lab_names(lab):
        WriteLoad(lab, threads=0)  # creates the table
        for lag in dns_lags:
            for _ in range(runs):
                lab.restore()
                for name, value in run_once(lab, lag, version is not None, settle).items():
                    rows.setdefault(lag, {}).setdefault(name, []).append(value)
    if version is not None:
        _awswrapper.release_resources()
    note = (
        f"{_awswrapper.PACKAGE} {version} (plugins {_awswrapper.default_plugins()})"
        if version
        else f"{_awswrapper.PACKAGE} not installed: not measured"
    )
    return WrapperFailoverResult(runs, note, rows)


def _med(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    missing = len(values) - len(known)
    text = f"{statistics.median(known):.2f} s" if known else "never"
    return text + (f" ({missing} never)" if known and missing else "")


def markdown(result: WrapperFailoverResult) -> str:
    clients = sorted(
        {c for by in result.rows.values() for c in by},
        key=["library", "aws wrapper", "bare psycopg"].index,
    )
    lines = [
        f"New writer accepting writes -> the client's first acknowledged write, median of "
        f"{result.runs} runs, one writer thread per client, side by side. AWS wrapper: "
        f"{result.wrapper}.",
        "",
        "| DNS lag | " + " | ".join(clients) + " |",
        "| ---: |" + " ---: |" * len(clients),
    ]
    for lag, by in result.rows.items():
        lines.append(f"| {lag:g} s | " + " | ".join(_med(by.get(c, [])) for c in clients) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dns-lags", default="0,5")
    args = parser.parse_args()
    lags = tuple(float(x) for x in args.dns_lags.split(",") if x)
    print(markdown(run(args.runs, lags)))


if __name__ == "__main__":
    main()
