"""Monitor load: topology queries per second the library sends to a cluster, and sharing.

    .venv/bin/python bench/monitor_load.py [--window 20] [--clusters 20]
    .venv/bin/python bench/monitor_load.py --after-failover [--sources ...] [--runs 3]

A PostgreSQL lab. The lab's nodes count calls of ``aurora_replica_status()`` (the topology
query; ``track_functions``); the library's monitors count their refreshes. Measured: one
``Cluster`` for ``--window`` seconds (normal mode, ``refresh_interval`` default 5 s); then
``--clusters`` ``Cluster`` objects plus as many threads each holding ``connect()`` connections
to the same cluster (one monitor expected, so the same rate); then fast mode (the writer is
killed and not replaced for a few seconds, as at the start of a failover). Nothing is asserted.

``--after-failover``: for each topology source, the load before a failover and after the
monitor confirmed the new writer, counted on the servers: calls of the source's topology
function (``aurora_replica_status()``, ``rds_tools.show_topology()``) and sessions opened in
the application's database (``pg_stat_database.sessions``: probe's per-host connections, the
role checks that confirm a static or rds-api writer, the monitor's reconnects). rds-api's
``DescribeDBClusters`` calls go to moto and are counted by a botocore event hook. Each run: a
``Cluster`` with ``refresh_interval=1s`` and no traffic, the lab's heartbeat paused (its own
sessions would hide the monitor's), a baseline window, the lab fails the
writer over and the monitor is put in fast mode (as a failing borrow would), then the rates in
the first 2 s after fast mode ended and in the ``--after-window`` seconds after that, which
should be the healthy rate again.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

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


# -- load after a failover, per source ---------------------------------------------------------

AFTER_SOURCES = ("aurora-postgresql", "rds-multi-az", "probe", "static", "rds-api")
_FUNCTIONS = {"aurora-postgresql": "aurora_replica_status", "rds-multi-az": "show_topology"}


@dataclass(frozen=True)
class ServerCount:
    calls: int  # the source's topology function, all running nodes
    sessions: int  # sessions opened in the application's database, all running nodes
    api_calls: int  # DescribeDBClusters (rds-api only; counted by the client's event hook)


class _Counter:
    """Reads the nodes' counters on connections of its own, opened once (so that reading
    adds no session to what is counted)."""

    def __init__(self, lab: Lab) -> None:
        import psycopg

        self._lab = lab
        self._conns: dict[str, Any] = {}
        for node in lab.nodes:
            if node.status == "running":
                kwargs = lab.connect_kwargs(node)
                self._conns[node.id] = psycopg.connect(**kwargs, autocommit=True)
        self.api_calls = 0

    def bump(self) -> None:
        self.api_calls += 1

    def read(self, function: str | None) -> ServerCount:
        calls = sessions = 0
        for node in self._lab.nodes:
            conn = self._conns.get(node.id)
            if conn is None or node.status != "running":
                continue
            if function is not None:
                row = conn.execute(
                    "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
                    " WHERE funcname = %s",
                    (function,),
                ).fetchone()
                calls += int(row[0])
            row = conn.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
            sessions += int(row[0])
        return ServerCount(calls, sessions, self.api_calls)

    def close(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(Exception):
                conn.close()


@dataclass(frozen=True)
class AfterRow:
    source: str
    healthy: tuple[float, float, float]  # calls, sessions, api calls per second, before
    fast_s: float | None  # fast mode's length after the failover (None: never ended)
    first_2s: tuple[float, float, float]  # per second in the 2 s after fast mode ended
    after: tuple[float, float, float]  # per second after those 2 s


def _rates(a: ServerCount, b: ServerCount, seconds: float) -> tuple[float, float, float]:
    return (
        (b.calls - a.calls) / seconds,
        (b.sessions - a.sessions) / seconds,
        (b.api_calls - a.api_calls) / seconds,
    )


def _source_dsn(lab: Lab, source: str) -> str:
    """The DSN of a ``Cluster`` of ``source`` on the lab (probe: the nodes' addresses; static:
    the cluster endpoint first, a name that follows the writer; rds-api: moto's ``lab``)."""
    state = lab.state()
    params = {"topology_source": source, "refresh_interval": "1s"}
    params["cluster_id"] = "lab" if source == "rds-api" else uuid.uuid4().hex
    if source == "rds-api":
        params["region"] = "us-east-1"
    query = "&".join(f"{k}={v}" for k, v in params.items())
    login = f"postgresql://{state.user}:{state.password}@"
    if source == "probe":
        hosts = ",".join(f"{n.address}:{n.port}" for n in lab.nodes)
        return f"{login}{hosts}/{state.database}?{query}"
    if source == "static":
        hosts = ",".join(
            [f"{state.cluster_endpoint}:{state.port}"]
            + [f"{n.address}:{n.port}" for n in lab.readers]
        )
        dns = f"dns_server={state.dns.address}:{state.dns.port}&dns_ttl_cap=0s"
        return f"{login}{hosts}/{state.database}?{dns}&{query}"
    return f"{lab.dsn}&{query}"


def _moto_cluster(lab: Lab) -> Any:
    """A moto RDS cluster ``lab`` whose members are the lab's nodes, its writer the lab's."""
    import boto3

    client = boto3.client("rds", region_name="us-east-1")
    client.create_db_cluster(
        DBClusterIdentifier="lab",
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="not-a-secret-123",
    )
    writer = lab.writer.id
    for node in sorted(lab.nodes, key=lambda n: n.id != writer):  # moto: first one writes
        client.create_db_instance(
            DBInstanceIdentifier=node.id,
            DBClusterIdentifier="lab",
            Engine="aurora-postgresql",
            DBInstanceClass="db.r6g.large",
        )
    return client


def _after_failover_once(
    lab: Lab, source: str, baseline: float, after_window: float, aws: Any
) -> AfterRow:
    counter = _Counter(lab)
    function = _FUNCTIONS.get(source)
    lab.pause_heartbeat()  # its sessions (one per node per second) would hide the monitor's
    try:
        cluster = asd.Cluster(_source_dsn(lab, source))
        monitor = cluster._runtime.monitor
        cluster.topology  # noqa: B018 - the first answer
        if source == "rds-api":  # count the source's own client's DescribeDBClusters calls
            rds_client = monitor._source._clients["us-east-1"]  # type: ignore[union-attr]
            rds_client.meta.events.register(
                "before-call.rds.DescribeDBClusters", lambda **_: counter.bump()
            )
        time.sleep(1.5)  # past the first refreshes
        a = counter.read(function)
        time.sleep(baseline)
        b = counter.read(function)
        healthy = _rates(a, b, baseline)
        report = lab.failover(dns_lag=0.0)
        if aws is not None:
            aws.failover_db_cluster(
                DBClusterIdentifier="lab", TargetDBInstanceIdentifier=report.new_writer
            )
        monitor.enter_fast_mode("benchmark: the writer failed over")
        started = time.monotonic()
        while monitor.fast_mode and time.monotonic() - started < 20:
            time.sleep(0.005)
        fast_s = None if monitor.fast_mode else time.time() - report.writable_at
        c = counter.read(function)
        time.sleep(2.0)
        d = counter.read(function)
        time.sleep(after_window)
        e = counter.read(function)
        cluster.close()
        _runtime.close_all()
        return AfterRow(source, healthy, fast_s, _rates(c, d, 2.0), _rates(d, e, after_window))
    finally:
        counter.close()
        lab.resume_heartbeat()


def after_failover(
    sources: list[str], runs: int, baseline: float, after_window: float
) -> list[AfterRow]:
    """Per source and run, the monitor's load before and after a failover (see the docstring)."""
    logging.getLogger("aurora_smartdriver").setLevel(logging.CRITICAL)
    rows = []
    with Lab.start("postgresql", replicas=2, name="monfo") as lab:
        for source in sources:
            for _ in range(runs):
                if source == "rds-api":
                    rows.append(_with_moto(lab, baseline, after_window))
                else:
                    rows.append(_after_failover_once(lab, source, baseline, after_window, None))
                lab.restore()
    return rows


def _with_moto(lab: Lab, baseline: float, after_window: float) -> AfterRow:
    """The rds-api run, with moto standing in for the RDS API."""
    import os

    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)
    with mock_aws():
        client = _moto_cluster(lab)
        try:
            return _after_failover_once(lab, "rds-api", baseline, after_window, client)
        finally:
            with contextlib.suppress(Exception):
                client.delete_db_cluster(DBClusterIdentifier="lab", SkipFinalSnapshot=True)


def after_markdown(rows: list[AfterRow]) -> str:
    lines = [
        "Per second, counted on the servers (all running nodes): *calls* of the source's "
        "topology function, *sessions* opened in the application's database; rds-api's "
        "DescribeDBClusters calls (*api*) counted by the client. `refresh_interval=1s`, "
        "`fast_refresh_interval` default; no traffic; fast mode entered right after the lab's "
        "failover; *fast mode* = from the new writer accepting writes to fast mode off.",
        "",
        "| source | healthy calls / sessions / api | fast mode | first 2 s after | after that |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def triple(r: tuple[float, float, float]) -> str:
        return f"{r[0]:.1f} / {r[1]:.1f} / {r[2]:.1f}"

    for row in rows:
        fast = "never ended" if row.fast_s is None else f"{row.fast_s * 1000:.0f} ms"
        lines.append(
            f"| {row.source} | {triple(row.healthy)} | {fast} | {triple(row.first_2s)} | "
            f"{triple(row.after)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--fast-window", type=float, default=5.0)
    parser.add_argument("--after-failover", action="store_true")
    parser.add_argument("--sources", default=",".join(AFTER_SOURCES))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--baseline", type=float, default=5.0)
    parser.add_argument("--after-window", type=float, default=5.0)
    args = parser.parse_args()
    if args.after_failover:
        rows = after_failover(args.sources.split(","), args.runs, args.baseline, args.after_window)
        print(after_markdown(rows))
        return
    print(markdown(run(args.window, args.clusters, args.fast_window)))


if __name__ == "__main__":
    main()
