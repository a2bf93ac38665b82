"""First write on the new writer after a failover, for the sources without metadata.

    .venv/bin/python bench/source_failover.py [--runs 3] [--engines postgresql,mariadb]
                                              [--sources probe,static] [--scenarios ...]

A lab cluster per engine. A writer thread inserts through a ``Cluster`` (pooled) every 5 ms and
records when each insert was acknowledged and on which node; the lab fails the writer over
(kill -9, promote the most advanced replica), after a fault as in bench/chaos.py: ``crash``
(none), ``hang`` (SIGSTOP 1 s before), ``partition`` (its packets dropped 1 s before, and still
after: the old writer stays unreachable), ``twice`` (a failover, 1 s, another one; the second
is measured). Printed per scenario, source and engine: the time from the new writer accepting
writes (``FailoverReport.writable_at``) to the first write acknowledged on it (median, min and
max over the runs), and when the monitor left fast mode (seen after ``failover()`` returned),
from the same moment. Nothing is asserted.

- ``aurora``: the lab's own DSN (the cluster endpoint; the Aurora metadata source, detected),
  for comparison.
- ``probe``: the DSN's host list is the nodes' addresses (a self-managed cluster's view).
- ``static``: the DSN's first host is the cluster endpoint, a name that follows the writer
  (``dns_ttl_cap=0``, the failover flips DNS at once); static's writer is whatever answers at
  that name, confirmed by asking it its role. A static list of addresses cannot follow a
  failover at all: its writer is the first address, dead or alive.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime
from aurora_smartdriver.lab import FailoverReport, Lab, partition_available

WRITE_EVERY = 0.005
SETTLE = 1.0  # seconds of writes before the failover


SOURCES = ("aurora", "probe", "static")


def source_dsn(lab: Lab, source: str) -> str:
    """The DSN the benches use for ``source`` (see the module docstring).

    Several hosts go in one ``host`` query item, a form that ``connect()`` and the SQLAlchemy
    dialects both read; no ``cluster_id`` (callers give their own, as a keyword).
    """
    if source == "aurora":
        return lab.dsn
    state = lab.state()
    scheme = "postgresql" if state.engine == "postgresql" else "mariadb"
    params = {"topology_source": source}
    if source == "static":
        hosts = [f"{state.cluster_endpoint}:{state.port}"] + [
            f"{n.address}:{n.port}" for n in lab.readers
        ]
        params["dns_server"] = f"{state.dns.address}:{state.dns.port}"
        params["dns_ttl_cap"] = "0s"
    else:
        hosts = [f"{n.address}:{n.port}" for n in lab.nodes]
    params = {"host": ",".join(hosts), **params}
    return (
        f"{scheme}://{quote(state.user, safe='')}:{quote(state.password, safe='')}@/"
        f"{state.database}?" + "&".join(f"{k}={v}" for k, v in params.items())
    )


def _server_id_sql(lab: Lab) -> str:
    if lab.state().engine == "postgresql":
        return "SELECT aurora_db_instance_identifier()"
    return "SELECT aurora_lab.aurora_server_id()"


@dataclass(frozen=True)
class Run:
    first_write_s: float | None  # after writable_at, on the new writer
    fast_mode_off_s: float | None  # after writable_at (None: still on after 30 s)
    errors: int  # writes that failed (FailoverSucceeded and the like), all reported


def _crash(lab: Lab) -> FailoverReport:
    return lab.failover(dns_lag=0.0)


def _hang(lab: Lab) -> FailoverReport:
    lab.hang(lab.writer.id)
    time.sleep(1.0)
    return lab.failover(dns_lag=0.0)


def _partition(lab: Lab) -> FailoverReport:
    lab.partition(lab.writer.id)
    time.sleep(1.0)
    return lab.failover(dns_lag=0.0)


def _twice(lab: Lab) -> FailoverReport:
    lab.failover(dns_lag=0.0)
    time.sleep(1.0)
    return lab.failover(dns_lag=0.0)


SCENARIOS: dict[str, Callable[[Lab], FailoverReport]] = {
    "crash": _crash,
    "hang": _hang,
    "partition": _partition,
    "twice": _twice,
}


def one_run(lab: Lab, source: str, scenario: Callable[[Lab], FailoverReport] = _crash) -> Run:
    """One failover under a steady write load through a ``Cluster`` of ``source``."""
    cluster = asd.Cluster(source_dsn(lab, source), cluster_id=uuid.uuid4().hex)
    which = _server_id_sql(lab)
    acked: list[tuple[float, str]] = []
    errors = [0]
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            try:
                with cluster.writer() as conn:
                    cur = conn.cursor()
                    cur.execute(f"INSERT INTO sf_rows VALUES ('{uuid.uuid4().hex}')")
                    cur.execute(which)
                    node = str(cur.fetchall()[0][0])
                acked.append((time.time(), node))
            except Exception:
                errors[0] += 1
            stop.wait(WRITE_EVERY)

    monitor = cluster._runtime.monitor
    try:
        with cluster.writer() as conn:
            conn.cursor().execute("CREATE TABLE IF NOT EXISTS sf_rows (id VARCHAR(64) PRIMARY KEY)")
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        time.sleep(SETTLE)
        entries = monitor.stats().fast_mode_entries
        report = scenario(lab)
        fast_off: float | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            entered = monitor.stats().fast_mode_entries > entries
            if entered and not monitor.fast_mode:
                fast_off = time.time()
                break
            time.sleep(0.002)
        time.sleep(0.5)
        stop.set()
        writer.join(30)
    finally:
        cluster.close()
        _runtime.close_all()
    firsts = [t for t, node in acked if node == report.new_writer and t >= report.writable_at]
    return Run(
        first_write_s=min(firsts) - report.writable_at if firsts else None,
        fast_mode_off_s=None if fast_off is None else fast_off - report.writable_at,
        errors=errors[0],
    )


def _figures(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "never"
    shown = (
        f"{statistics.median(known) * 1000:.0f} ms "
        f"({min(known) * 1000:.0f}-{max(known) * 1000:.0f})"
    )
    missing = len(values) - len(known)
    return shown + (f", {missing} never" if missing else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--sources", default="probe,static")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    if "partition" in scenarios and not partition_available():
        scenarios.remove("partition")
        print("(partition skipped: needs root and iptables)")
    logging.getLogger("aurora_smartdriver").setLevel(logging.CRITICAL)
    print(
        "| scenario | engine | source | runs | first write on the new writer after it accepts "
        "writes (median, min-max) | fast mode off after it accepts writes | failed writes |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for engine in args.engines.split(","):
        with Lab.start(engine, replicas=2, name=f"sf{engine[:2]}") as lab:
            for name in scenarios:
                for source in args.sources.split(","):
                    runs: list[Run] = []
                    for _ in range(args.runs):
                        runs.append(one_run(lab, source, SCENARIOS[name]))
                        lab.restore()
                    errors: Any = statistics.median([r.errors for r in runs])
                    print(
                        f"| {name} | {engine} | {source} | {len(runs)} | "
                        f"{_figures([r.first_write_s for r in runs])} | "
                        f"{_figures([r.fast_mode_off_s for r in runs])} | {errors:g} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
