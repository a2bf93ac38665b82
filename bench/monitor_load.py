"""Monitor load: topology queries per second the library sends to a cluster, and sharing.

    .venv/bin/python bench/monitor_load.py [--window 20] [--clusters 20]

A PostgreSQL lab. The lab's nodes count calls of ``aurora_replica_status()`` (the topology
query; ``track_functions``); the library's monitors count their refreshes. Measured: one
``Cluster`` for ``--window`` seconds (normal mode, ``refresh_interval`` default 5 s); then
``--clusters`` ``Cluster`` objects plus as many threads each holding ``connect()`` connections
to the same cluster (one monitor expected, so the same rate); then fast mode (the writer is
killed and not replaced for a few seconds, as at the start of a failover). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.settings import Settings

QUERY = "aurora_replica_status"


def topology_calls(lab: Lab) -> int:
    """Calls of the topology function counted by every running node."""
    total = 0
    for node in lab.nodes:
        if node.status != "running":
            continue
        rows = lab.execute(
            node.id,
            f"SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
            f"WHERE funcname = '{QUERY}'",
        )
        total += int(str(rows[0][0]))
    return total


@dataclass(frozen=True)
class LoadRow:
    scenario: str
    seconds: float
    server_queries: int | None  # counted by the nodes (None: not countable in this scenario)
    refreshes: int  # counted by the monitors
    monitors: int  # distinct monitor objects behind the clusters/connections

    @property
    def per_second(self) -> float:
        return self.refreshes / self.seconds  # the monitor's count: no start-up queries


def _settle() -> None:
    time.sleep(1.5)  # a closed backend has flushed its function counters by then


def _normal(lab: Lab, clusters: int, window: float) -> LoadRow:
    before = topology_calls(lab)
    made = [asd.Cluster(lab.dsn) for _ in range(clusters)]
    stop = threading.Event()

    def hold() -> None:
        conn = asd.connect(lab.dsn)
        try:
            while not stop.is_set():
                conn.cursor().execute("SELECT 1")
                stop.wait(0.5)
        finally:
            conn.close()

    holders = [threading.Thread(target=hold, daemon=True) for _ in range(clusters - 1)]
    for holder in holders:
        holder.start()
    made[0].topology  # noqa: B018 - waits for the first answer
    started = time.monotonic()
    first = made[0]._runtime.monitor.stats().refreshes
    time.sleep(window)
    seconds = time.monotonic() - started
    refreshes = made[0]._runtime.monitor.stats().refreshes - first
    monitors = len({id(c._runtime.monitor) for c in made})
    stop.set()
    for holder in holders:
        holder.join(5)
    for cluster in made:
        cluster.close()
    _runtime.close_all()
    _settle()
    label = "1 Cluster" if clusters == 1 else f"{clusters} Clusters + {clusters - 1} threads"
    return LoadRow(f"normal: {label}", seconds, topology_calls(lab) - before, refreshes, monitors)


def _fast(lab: Lab, window: float) -> LoadRow:
    cluster = asd.Cluster(lab.dsn)
    cluster.topology  # noqa: B018
    monitor = cluster._runtime.monitor
    before = topology_calls(lab)
    lab.crash(lab.writer.id)
    monitor.enter_fast_mode("benchmark: writer killed")
    first = monitor.stats().refreshes
    started = time.monotonic()
    time.sleep(window)
    seconds = time.monotonic() - started
    refreshes = monitor.stats().refreshes - first
    cluster.close()
    _runtime.close_all()
    _settle()
    calls = topology_calls(lab) - before  # the readers' counts (the writer is gone)
    lab.failover()
    return LoadRow("fast mode: writer down", seconds, calls, refreshes, 1)


@dataclass(frozen=True)
class MonitorLoadResult:
    refresh_interval: float
    fast_refresh_interval: float
    rows: list[LoadRow]


def run(window: float = 20.0, clusters: int = 20, fast_window: float = 5.0) -> MonitorLoadResult:
    logging.getLogger("aurora_smartdriver").setLevel(logging.CRITICAL)
    settings = Settings()
    with Lab.start("postgresql", replicas=2, name="monload") as lab:
        rows = [_normal(lab, 1, window), _normal(lab, clusters, window), _fast(lab, fast_window)]
    return MonitorLoadResult(settings.refresh_interval, settings.fast_refresh_interval, rows)


def markdown(result: MonitorLoadResult) -> str:
    lines = [
        f"Defaults: `refresh_interval` {result.refresh_interval:g} s, `fast_refresh_interval` "
        f"{result.fast_refresh_interval:g} s. *server* = calls of `{QUERY}()` counted by the "
        "nodes over the window (includes each monitor's first query); *refreshes* = the "
        "monitor's own count over the window, which *per second* divides; *monitors* = distinct "
        "monitor objects behind all the clusters and connections.",
        "",
        "| scenario | window | topology queries (server) | refreshes (monitor) | per second "
        "| monitors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result.rows:
        server = "-" if row.server_queries is None else str(row.server_queries)
        lines.append(
            f"| {row.scenario} | {row.seconds:.1f} s | {server} | {row.refreshes} | "
            f"{row.per_second:.2f} | {row.monitors} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--fast-window", type=float, default=5.0)
    args = parser.parse_args()
    print(markdown(run(args.window, args.clusters, args.fast_window)))


if __name__ == "__main__":
    main()
