"""Blue/Green switchover under load, both engines: the chaos rows of issue #16.

    .venv/bin/python bench/shape_bluegreen.py [--engines postgresql,mariadb] [--runs 1]
                                              [--in-progress 2.0]

One lab per engine. For each scenario a Blue/Green deployment is created on the running lab
(`Lab.blue_green_create`), writer and reader threads run through the library (`Cluster` with
pools, `_demo.LibraryLoad`), ledger writers (`lab._ledger.Ledger`) re-run only what the library
says did not commit, and a prober opens a new connection through the library (`connect()`) over
and over; then the lab switches over (`Lab.blue_green_switchover`: SWITCHOVER_IN_PROGRESS for at
least ``--in-progress`` seconds, blue read-only, sessions of both environments dropped, green
promoted and renamed). Scenarios: ``switchover`` (DNS follows the rename at once) and
``switchover, DNS 30 s late`` (the blue names lead to the old blue nodes for 30 s). `Lab.restore`
deletes the deployment between scenarios.

Columns: writes acked (LibraryLoad and ledger), acked writes lost (absent from the new writer),
applied twice and outcome unknown (ledger), write unavailability (the longest gap between
acknowledged LibraryLoad writes from the switchover's start to its end + 2 s, `_demo.write_gap`),
reads ok / read errors (whole run), reads in home region (``-``: no regions here), new
connections refused (prober connection attempts that raised between the switchover's start and
its end + 2 s). Nothing is asserted; with ``--runs`` above 1 each run prints its own rows.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import aurora_smartdriver as asd
from aurora_smartdriver._demo import LibraryLoad, lost_writes, write_gap
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._ledger import Ledger
from aurora_smartdriver.lab._workload import WriteLoad

HEADER = (
    "| scenario | engine | writes acked | acked writes lost | applied twice | outcome unknown "
    "| write unavailability s | reads ok | read errors | reads in home region "
    "| new connections refused |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)
SCENARIOS = {"switchover": 0.0, "switchover, DNS 30 s late": 30.0}


@dataclass
class Prober:
    """Opens a new library connection through the cluster endpoint, runs `SELECT 1`, closes it,
    over and over; records when `connect()` raised (a cut statement is counted apart)."""

    dsn: str
    cluster_id: str = field(default_factory=lambda: f"prober-{uuid.uuid4().hex[:8]}")
    failed_at: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    opened: int = 0
    statement_errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = asd.connect(self.dsn, cluster_id=self.cluster_id)
            except Exception as exc:
                self.failed_at.append(time.time())
                if len(self.errors) < 5:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self.stop.wait(0.01)
                continue
            self.opened += 1
            try:  # a statement the switchover cuts is not a refused connection
                conn.cursor().execute("SELECT 1")
            except Exception:
                self.statement_errors += 1
            finally:
                conn.close()
            self.stop.wait(0.02)


def run_scenario(lab: Lab, name: str, dns_lag: float, in_progress: float) -> str:
    engine = lab.state().engine
    WriteLoad(lab, threads=0)  # creates the load's table
    lab.blue_green_create()
    load = LibraryLoad(lab, writers=4, readers=4).start()
    ledger = Ledger(
        lab.dsn,
        engine,
        writers=(("connect", "transaction"), ("cluster", "autocommit")),
        fast_refresh_interval="0.05s",
    ).start()
    prober = Prober(lab.dsn)
    probe_thread = threading.Thread(target=prober.run, daemon=True)
    probe_thread.start()
    time.sleep(3.0)  # every client has seen the deployment (AVAILABLE) and warmed up
    report = lab.blue_green_switchover(in_progress_s=in_progress, dns_lag=dns_lag)
    end = report.completed_at + 2.0
    time.sleep(max(0.0, end - time.time()) + 1.0)
    prober.stop.set()
    probe_thread.join(30)
    load.finish()
    ledger_report = ledger.stop()
    load.cluster.close()
    out = load.out
    acked = len(out.acked) + ledger_report.acknowledged
    lost = lost_writes(lab, out.acked) + len(ledger_report.lost)
    gap = write_gap(out.write_ok_at, report.started_at, end)
    refused = sum(1 for t in prober.failed_at if report.started_at <= t <= end)
    for error in prober.errors:
        print(f"  ({engine}, {name}) new connection refused: {error}", file=sys.stderr)
    if ledger_report.error_samples:
        print(f"  ({engine}, {name}) ledger errors: {ledger_report.error_samples}", file=sys.stderr)
    return (
        f"| {name} | {engine} | {acked} | {lost} | {len(ledger_report.twice)} "
        f"| {ledger_report.unknown} | {gap:.2f} | {out.read_ok} | {out.read_errors} | - "
        f"| {refused} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--in-progress",
        type=float,
        default=2.0,
        help="least seconds the switchover stays SWITCHOVER_IN_PROGRESS (default: %(default)s)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(HEADER, flush=True)
    for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
        with Lab.start(engine, replicas=2, name="bglab") as lab:
            for _ in range(args.runs):
                for name, dns_lag in SCENARIOS.items():
                    print(run_scenario(lab, name, dns_lag, args.in_progress), flush=True)
                    lab.restore()


if __name__ == "__main__":
    main()
