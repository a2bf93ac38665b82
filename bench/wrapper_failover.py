"""Writer failover: the library beside aws-advanced-python-wrapper and a bare driver, one lab.

    .venv/bin/python bench/wrapper_failover.py [--runs 3] [--dns-lags 0,5]
        [--faults hang,partition] [--engines postgresql,mariadb] [--settle 5]

A lab with the simulated Aurora metadata. One writer thread per client inserts rows in a loop:
the library (``connect()``, default settings), the AWS wrapper (default plugins, through the
cluster endpoint; see ``_awswrapper``; PostgreSQL only) when installed, and the bare driver
reconnecting via the cluster endpoint (psycopg: no read timeout, as its default; PyMySQL: 2 s
read and write timeouts).

Crash (PostgreSQL): the writer is killed and a replica promoted while the endpoint's DNS lags;
printed per client: seconds from the new writer accepting writes to the client's first
acknowledged write (median of runs).

Hang and partition (each engine asked for): the writer is stopped (SIGSTOP) or cut off
(iptables DROP, root only), and one second later the cluster promotes a replica, as Aurora
would after its own detection (the old writer is killed: a hung one's sockets then close, a cut
off one's reset never reaches the clients). Printed per client: total write unavailability,
from the fault to the client's first acknowledged write, and, in brackets, from the new
writer accepting writes to that write; "never" when no write was acknowledged within
``--settle`` seconds after the promotion. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import _awswrapper

import aurora_smartdriver as asd
from aurora_smartdriver.lab import Lab, partition_available
from aurora_smartdriver.lab._workload import TABLE, WriteLoad

Insert = Callable[[str], None]


def _library(lab: Lab) -> tuple[Insert, Callable[[], None]]:
    # A cluster of its own per run: no monitor state carried over from the previous fault.
    autocommit: Any = "on" if lab.state().engine == "postgresql" else True
    conn = asd.connect(lab.dsn, autocommit=autocommit, cluster_id=uuid.uuid4().hex)

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


Fault = Callable[[Lab, float], tuple[float, float]]
"""Breaks the writer; returns (fault time, time the new writer accepted writes), wall clock."""

CLUSTER_DETECTION = 1.0
"""Seconds from a hang or partition to the cluster's promotion of a replica."""


def _crash(lab: Lab, dns_lag: float) -> tuple[float, float]:
    fault = time.time()
    return fault, lab.failover(dns_lag=dns_lag).writable_at


def _silent(how: Callable[[str], None]) -> Fault:
    def fault(lab: Lab, dns_lag: float) -> tuple[float, float]:
        how(lab.writer.id)
        at = time.time()  # in effect: the writer acknowledges nothing from here on
        time.sleep(CLUSTER_DETECTION)  # the cluster's own detection of the silent writer
        return at, lab.failover(dns_lag=dns_lag).writable_at

    return fault


def _fault_for(name: str, lab: Lab) -> Fault:
    """The fault called ``name``: crash, hang or partition (of the writer)."""
    if name == "crash":
        return _crash
    if name == "hang":
        return _silent(lab.hang)
    if name == "partition":
        return _silent(lab.partition)
    raise ValueError(f"unknown fault {name!r}: crash, hang or partition")


def _bare_name(lab: Lab) -> str:
    return "bare psycopg" if lab.state().engine == "postgresql" else "bare PyMySQL"


def _measure(
    lab: Lab, fault: Fault, dns_lag: float, with_wrapper: bool, settle: float
) -> dict[str, tuple[float | None, float | None]]:
    """Per client: (fault -> first acknowledged write, new writer -> first acknowledged write)."""
    builders: dict[str, Callable[[Lab], tuple[Insert, Callable[[], None]]]] = {"library": _library}
    if with_wrapper and lab.state().engine == "postgresql":
        builders["aws wrapper"] = _wrapper
    made = {name: build(lab) for name, build in builders.items()}
    writers = {name: _Writer(name, insert) for name, (insert, _close) in made.items()}
    bare = WriteLoad(lab, threads=1).start()
    for writer in writers.values():
        writer.start()
    time.sleep(2.0)
    fault_at, writable_at = fault(lab, dns_lag)
    deadline = time.time() + dns_lag + settle
    while time.time() < deadline:
        waiting = [w for w in writers.values() if not any(t > writable_at for t in w.ok)]
        if not waiting and bare.result.first_ack_after(writable_at) is not None:
            break
        time.sleep(0.1)
    for writer in writers.values():
        writer.stop.set()
        writer.join(10)
    bare_result = bare.stop()
    for name, (_insert, close) in made.items():
        if writers[name].is_alive():
            continue  # still waiting on the dead writer: closing under it could crash the driver
        try:
            close()
        except Exception as exc:  # a connection the failover replaced
            logging.debug("close: %s", exc)
    out = {
        name: (_first_after(w.ok, fault_at), _first_after(w.ok, writable_at))
        for name, w in writers.items()
    }
    bare_ok = [e.at for e in bare_result.events if e.ok]
    out[_bare_name(lab)] = (_first_after(bare_ok, fault_at), _first_after(bare_ok, writable_at))
    return out


def run_once(
    lab: Lab, dns_lag: float, with_wrapper: bool, settle: float
) -> dict[str, float | None]:
    """One writer crash: per client, new writer accepting writes -> first acknowledged write."""
    measured = _measure(lab, _crash, dns_lag, with_wrapper, settle)
    return {name: after_writable for name, (_gap, after_writable) in measured.items()}


FaultRows = dict[tuple[str, str], dict[str, list[tuple[float | None, float | None]]]]
"""(engine, fault) -> client -> (unavailability, new writer -> first write) per run."""


@dataclass(frozen=True)
class WrapperFailoverResult:
    runs: int
    wrapper: str
    rows: dict[float, dict[str, list[float | None]]]  # dns lag -> client -> per run
    faults: FaultRows = field(default_factory=dict)
    settle: float = 5.0
    skipped: tuple[str, ...] = ()


def run(
    runs: int = 3,
    dns_lags: tuple[float, ...] = (0.0, 5.0),
    settle: float = 5.0,
    faults: tuple[str, ...] = ("hang", "partition"),
    engines: tuple[str, ...] = ("postgresql",),
) -> WrapperFailoverResult:
    logging.getLogger("aurora_smartdriver").setLevel(logging.CRITICAL)
    logging.getLogger("aws_advanced_python_wrapper").setLevel(logging.CRITICAL)
    version = _awswrapper.version()
    rows: dict[float, dict[str, list[float | None]]] = {}
    fault_rows: FaultRows = {}
    skipped: list[str] = []
    silent = [f for f in faults if f != "crash"]
    if "partition" in silent and not partition_available():
        silent.remove("partition")
        skipped.append("partition (needs root and iptables)")
    for engine in engines:
        with (
            Lab.start(engine, replicas=2, name=f"awsw{engine[:2]}") as lab,
            _awswrapper.lab_names(lab),
        ):
            WriteLoad(lab, threads=0)  # creates the table
            if engine == "postgresql":
                for lag in dns_lags:
                    for _ in range(runs):
                        lab.restore()
                        for name, value in run_once(lab, lag, version is not None, settle).items():
                            rows.setdefault(lag, {}).setdefault(name, []).append(value)
            for name in silent:
                by_client = fault_rows.setdefault((engine, name), {})
                for _ in range(runs):
                    lab.restore()
                    fault = _fault_for(name, lab)
                    for client, pair in _measure(
                        lab, fault, 0.0, version is not None, settle
                    ).items():
                        by_client.setdefault(client, []).append(pair)
            lab.restore()
    if version is not None:
        _awswrapper.release_resources()
    note = (
        f"{_awswrapper.PACKAGE} {version} (plugins {_awswrapper.default_plugins()})"
        if version
        else f"{_awswrapper.PACKAGE} not installed: not measured"
    )
    return WrapperFailoverResult(runs, note, rows, fault_rows, settle, tuple(skipped))


def _med(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    missing = len(values) - len(known)
    text = f"{statistics.median(known):.2f} s" if known else "never"
    return text + (f" ({missing} never)" if known and missing else "")


_CLIENTS = ["library", "aws wrapper", "bare psycopg", "bare PyMySQL"]


Pairs = list[tuple[float | None, float | None]]
"""(fault -> first write, new writer -> first write) per run; None: no write."""


def _fault_cell(pairs: Pairs) -> str:
    if not pairs:
        return "-"
    gap = _med([p[0] for p in pairs])
    after = _med([p[1] for p in pairs])
    return f"{gap} ({after})"


def _fault_table(result: WrapperFailoverResult) -> list[str]:
    shown = ["library", "aws wrapper", "bare driver"]
    lines = [
        "",
        f"Writer hung (SIGSTOP) or cut off (iptables DROP), a replica promoted "
        f"{CLUSTER_DETECTION:g} s later: total write unavailability (fault -> the client's "
        f"first acknowledged write) and, in brackets, new writer accepting writes -> that "
        f'write; median of {result.runs} runs, default settings, "never" = no write within '
        f"{result.settle:g} s of the promotion. The ratios are of the unavailabilities "
        f"(medians): below 1, the library was back sooner. AWS wrapper: {result.wrapper}.",
        "",
        "| engine | fault | "
        + " | ".join(shown)
        + " | library / bare | library / aws wrapper | aws wrapper / bare |",
        "| --- | --- |" + " ---: |" * (len(shown) + 3),
    ]
    for (engine, fault), by in result.faults.items():
        bare = next((runs for c, runs in by.items() if c.startswith("bare")), [])
        library = by.get("library", [])
        wrapper = by.get("aws wrapper", [])
        cells = [_fault_cell(library), _fault_cell(wrapper), _fault_cell(bare)]
        ratios = [
            _ratio(library, bare, ("library", "bare")),
            _ratio(library, wrapper, ("library", "aws wrapper")),
            _ratio(wrapper, bare, ("aws wrapper", "bare")),
        ]
        lines.append(f"| {engine} | {fault} | " + " | ".join(cells + ratios) + " |")
    if result.skipped:
        lines += ["", "Skipped: " + ", ".join(result.skipped) + "."]
    return lines


def _ratio(ours: Pairs, theirs: Pairs, names: tuple[str, str]) -> str:
    """Median unavailability of ``ours`` over that of ``theirs`` (``names`` are theirs, in
    that order); "-" when either was not measured; who never recovered, when one did not."""
    if not ours or not theirs:
        return "-"
    mine = [p[0] for p in ours if p[0] is not None]
    other = [p[0] for p in theirs if p[0] is not None]
    if not mine and not other:
        return "neither recovered"
    if not mine or not other:
        return f"{names[0] if not mine else names[1]} never recovered"
    return f"{statistics.median(mine) / statistics.median(other):.2f}"


def markdown(result: WrapperFailoverResult) -> str:
    lines: list[str] = []
    if result.rows:
        clients = sorted({c for by in result.rows.values() for c in by}, key=_CLIENTS.index)
        lines = [
            f"New writer accepting writes -> the client's first acknowledged write, median of "
            f"{result.runs} runs, one writer thread per client, side by side. AWS wrapper: "
            f"{result.wrapper}.",
            "",
            "| DNS lag | " + " | ".join(clients) + " |",
            "| ---: |" + " ---: |" * len(clients),
        ]
        for lag, by in result.rows.items():
            lines.append(
                f"| {lag:g} s | " + " | ".join(_med(by.get(c, [])) for c in clients) + " |"
            )
    if result.faults:
        lines += _fault_table(result)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dns-lags", default="0,5", help="crash runs (PostgreSQL); empty: none")
    parser.add_argument("--faults", default="hang,partition", help="hang, partition; or empty")
    parser.add_argument(
        "--engines", default="postgresql", help="for the faults: postgresql,mariadb"
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait for a write")
    args = parser.parse_args()
    lags = tuple(float(x) for x in args.dns_lags.split(",") if x)
    faults = tuple(x for x in args.faults.split(",") if x)
    engines = tuple(x for x in args.engines.split(",") if x)
    print(markdown(run(args.runs, lags, args.settle, faults, engines)))


if __name__ == "__main__":
    main()
