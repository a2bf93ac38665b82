"""Counters and timings of the library, per cluster, as immutable snapshots.

Every cluster the process uses (one ``Runtime``: its monitor, pools, resolver and router) keeps
counters as it works; nothing is computed until asked. Ask with:

- ``Cluster.metrics()``: one cluster's ``ClusterMetrics``;
- ``aurora_smartdriver.metrics.snapshot()``: a ``MetricsSnapshot`` of every cluster of the
  process (what the exporters read);
- ``families(snapshot)``: the same figures as flat metric families (name, kind, unit, labels),
  the catalogue that docs/operations.md lists and the exporters publish.

Snapshots are frozen dataclasses of plain values and read-only mappings: print them
(``str(snap)`` is a short report), or ``json.dumps(snap.to_json())``.

Exporters (optional packages): ``aurora_smartdriver.exporters.opentelemetry`` and
``aurora_smartdriver.exporters.prometheus``.

What counting costs: nothing per statement. Per borrow, one integer increment inside the lock
the pool takes anyway, and one lock-free per-thread count of the routing decision; a borrow that
waits, validates or connects adds one histogram observation. Everything else (connection
attempts, failovers, topology refreshes, DNS lookups) is counted off the hot path.

A cluster's counters live as long as its runtime: they start at zero when the first
``connect()``/``Cluster`` of that cluster starts it and are gone once the last user has left
and the linger time passed (as counters of a restarted process would be).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from aurora_smartdriver._instruments import (
    DEFAULT_BOUNDS,
    Histogram,
    HistogramSnapshot,
    Tally,
    bucket_index,
    empty_histogram,
)

if TYPE_CHECKING:
    from aurora_smartdriver.monitor import MonitorStats
    from aurora_smartdriver.pool import PoolStats
    from aurora_smartdriver.resolver import Resolver
    from aurora_smartdriver.topology import Topology

__all__ = [
    "DEFAULT_BOUNDS",
    "ClusterMetrics",
    "DnsMetrics",
    "FailoverMetrics",
    "Family",
    "Histogram",
    "HistogramSnapshot",
    "HostMetrics",
    "Metrics",
    "MetricsSnapshot",
    "RoutingMetrics",
    "Tally",
    "TopologyMetrics",
    "bucket_index",
    "empty_histogram",
    "families",
    "register",
    "snapshot",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _frozen(items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Mapping[str, Any]:
    return MappingProxyType(dict(sorted(dict(items).items())))


# -- the snapshot values ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HostMetrics:
    """One instance's figures: connections, borrows, pool gauges, routing, response time.

    Connections count both pooled ones and those of ``connect()``; ``connect_failures`` is by
    error kind (``disconnect``, ``auth``, ``read_only``, ``other``). ``borrow_wait_seconds`` has
    one observation per borrow (0.0 when an idle connection was lent at once).
    ``routed`` counts routing decisions that chose this instance, by role asked
    (``writer``, ``reader``, ``any``). ``response_ms`` is the response timer's moving average
    (``reader_strategy=fastest_response`` only), None when unmeasured. ``unresponsive`` counts
    the watchdog's verdicts that the instance stopped answering.
    """

    instance: str
    connections_opened: int = 0
    connections_closed: int = 0
    connect_failures: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    connect_seconds: HistogramSnapshot = field(default_factory=empty_histogram)
    borrows: int = 0
    borrow_failures: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    borrow_wait_seconds: HistogramSnapshot = field(default_factory=empty_histogram)
    pool_size: int = 0
    pool_idle: int = 0
    pool_in_use: int = 0
    pool_connecting: int = 0
    pool_waiting: int = 0
    down: bool = False
    routed: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    response_ms: float | None = None
    unresponsive: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "connections_opened": self.connections_opened,
            "connections_closed": self.connections_closed,
            "connect_failures": dict(self.connect_failures),
            "connect_seconds": self.connect_seconds.to_json(),
            "borrows": self.borrows,
            "borrow_failures": dict(self.borrow_failures),
            "borrow_wait_seconds": self.borrow_wait_seconds.to_json(),
            "pool": {
                "size": self.pool_size,
                "idle": self.pool_idle,
                "in_use": self.pool_in_use,
                "connecting": self.pool_connecting,
                "waiting": self.pool_waiting,
            },
            "down": self.down,
            "routed": dict(self.routed),
            "response_ms": self.response_ms,
            "unresponsive": self.unresponsive,
        }


@dataclass(frozen=True, slots=True)
class RoutingMetrics:
    """Routing decisions by role asked: ``decisions`` (a host was chosen; per host in
    `HostMetrics.routed`), ``fallbacks`` (a reader request went to the writer because no reader
    qualified), ``no_host`` (no host could serve it: the caller got ``NoHostAvailable``).

    ``session_reads``: reader borrows that had to see a session's writes
    (``consistency=session``), by how they were served: ``replica`` (a replica had them
    already), ``replica_after_wait`` (one caught up within ``consistency_wait``), ``writer``
    (none did: the writer served them)."""

    decisions: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    fallbacks: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    no_host: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    session_reads: Mapping[str, int] = field(default_factory=lambda: _EMPTY)

    def to_json(self) -> dict[str, Any]:
        return {
            "decisions": dict(self.decisions),
            "fallbacks": dict(self.fallbacks),
            "no_host": dict(self.no_host),
            "session_reads": dict(self.session_reads),
        }


@dataclass(frozen=True, slots=True)
class FailoverMetrics:
    """The failover procedure (one run per connection that lost its node), by the role of that
    connection: ``started``, ``succeeded`` (it has a connection on the right node again),
    ``failed`` (``NoWriterAvailable`` / ``NoHostAvailable``); ``causes`` splits ``started`` by
    cause (``disconnect``, ``read_only``); ``seconds`` holds durations by outcome
    (``succeeded``, ``failed``)."""

    started: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    causes: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    succeeded: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    failed: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    seconds: Mapping[str, HistogramSnapshot] = field(default_factory=lambda: _EMPTY)

    def to_json(self) -> dict[str, Any]:
        return {
            "started": dict(self.started),
            "causes": dict(self.causes),
            "succeeded": dict(self.succeeded),
            "failed": dict(self.failed),
            "seconds": {k: h.to_json() for k, h in self.seconds.items()},
        }


@dataclass(frozen=True, slots=True)
class TopologyMetrics:
    """The monitor: ``refreshes`` (topology queries answered), ``failures`` (refreshes that
    failed: no node reachable, query failed, answer rejected), ``changes`` (answers that changed
    the topology), ``rejected`` (answers not believed), ``connects`` (connections the monitor
    opened), ``fast_mode_entries``; ``refresh_seconds`` holds each refresh's duration;
    ``version`` and ``fast_mode`` are the current state."""

    refreshes: int = 0
    failures: int = 0
    changes: int = 0
    rejected: int = 0
    connects: int = 0
    fast_mode_entries: int = 0
    fast_mode: bool = False
    version: int = 0
    refresh_seconds: HistogramSnapshot = field(default_factory=empty_histogram)
    region_rpo_lag_ms: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    """Aurora Global Database: each region's RPO lag (ms; 0 for the primary), where known."""

    def to_json(self) -> dict[str, Any]:
        return {
            "refreshes": self.refreshes,
            "failures": self.failures,
            "changes": self.changes,
            "rejected": self.rejected,
            "connects": self.connects,
            "fast_mode_entries": self.fast_mode_entries,
            "fast_mode": self.fast_mode,
            "version": self.version,
            "refresh_seconds": self.refresh_seconds.to_json(),
            "region_rpo_lag_ms": dict(self.region_rpo_lag_ms),
        }


@dataclass(frozen=True, slots=True)
class DnsMetrics:
    """The resolver: ``lookups`` (queries made; cache hits and callers that joined a lookup in
    flight are not lookups), ``failures`` (lookups that found no address), ``cache_hits``,
    ``fallbacks`` (lookups the system resolver answered because no DNS server did);
    ``lookup_seconds`` holds each lookup's duration."""

    lookups: int = 0
    failures: int = 0
    cache_hits: int = 0
    fallbacks: int = 0
    lookup_seconds: HistogramSnapshot = field(default_factory=empty_histogram)

    def to_json(self) -> dict[str, Any]:
        return {
            "lookups": self.lookups,
            "failures": self.failures,
            "cache_hits": self.cache_hits,
            "fallbacks": self.fallbacks,
            "lookup_seconds": self.lookup_seconds.to_json(),
        }


@dataclass(frozen=True, slots=True)
class ClusterMetrics:
    """One cluster's figures at ``taken_at`` (``time.time()``). ``cluster`` is its name in
    events and labels: the setting ``cluster_id``, else the DSN's first host (never a
    credential)."""

    cluster: str
    engine: str
    taken_at: float
    hosts: Mapping[str, HostMetrics] = field(default_factory=lambda: _EMPTY)
    routing: RoutingMetrics = field(default_factory=RoutingMetrics)
    failovers: FailoverMetrics = field(default_factory=FailoverMetrics)
    topology: TopologyMetrics = field(default_factory=TopologyMetrics)
    dns: DnsMetrics = field(default_factory=DnsMetrics)

    def to_json(self) -> dict[str, Any]:
        """Plain dicts, lists, numbers and strings (``json.dumps`` takes it as is)."""
        return {
            "cluster": self.cluster,
            "engine": self.engine,
            "taken_at": self.taken_at,
            "hosts": {k: h.to_json() for k, h in self.hosts.items()},
            "routing": self.routing.to_json(),
            "failovers": self.failovers.to_json(),
            "topology": self.topology.to_json(),
            "dns": self.dns.to_json(),
        }

    def format(self) -> str:
        """A short multi-line report (what ``aurora-smartdriver watch`` prints)."""
        return "\n".join(_report(self))

    def __str__(self) -> str:
        return self.format()


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Every cluster of the process, by name, at ``taken_at``."""

    taken_at: float
    clusters: Mapping[str, ClusterMetrics] = field(default_factory=lambda: _EMPTY)

    def to_json(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "clusters": {k: c.to_json() for k, c in self.clusters.items()},
        }

    def format(self) -> str:
        return "\n\n".join(c.format() for c in self.clusters.values()) or "(no clusters)"

    def __str__(self) -> str:
        return self.format()


def _total(counts: Mapping[str, int]) -> int:
    return sum(counts.values())


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms"


def _report(m: ClusterMetrics) -> Iterator[str]:
    t, d, r, f = m.topology, m.dns, m.routing, m.failovers
    yield (
        f"{m.cluster} ({m.engine}): topology v{t.version}{' FAST' if t.fast_mode else ''}, "
        f"refreshes {t.refreshes} (failed {t.failures}, changes {t.changes}, avg "
        f"{_ms(t.refresh_seconds.mean)}); dns lookups {d.lookups} (failed {d.failures}, "
        f"avg {_ms(d.lookup_seconds.mean)})"
    )
    yield (
        f"  routing {_total(r.decisions)} decisions {dict(r.decisions)}, fallbacks "
        f"{_total(r.fallbacks)}, no host {_total(r.no_host)}; failovers started "
        f"{_total(f.started)}, succeeded {_total(f.succeeded)}, failed {_total(f.failed)}"
    )
    yield (
        f"  {'instance':<24} {'opened':>6} {'closed':>6} {'failed':>6} {'borrows':>7} "
        f"{'wait max':>9} {'in use':>6} {'idle':>4} {'resp':>8}  routed"
    )
    for h in m.hosts.values():
        resp = "" if h.response_ms is None else f"{h.response_ms:.1f}ms"
        down = " DOWN" if h.down else ""
        yield (
            f"  {h.instance:<24} {h.connections_opened:>6} {h.connections_closed:>6} "
            f"{_total(h.connect_failures):>6} {h.borrows:>7} "
            f"{_ms(h.borrow_wait_seconds.max):>9} {h.pool_in_use:>6} {h.pool_idle:>4} "
            f"{resp:>8}  {dict(h.routed)}{down}"
        )


# -- what a runtime counts itself ------------------------------------------------------------
class Metrics:
    """The counters a cluster's runtime keeps itself: routing decisions, failovers,
    connections of ``connect()`` (the pools count theirs), watchdog verdicts.

    Increments are lock-free `Tally` counts (exact; see `aurora_smartdriver._instruments`);
    durations go to histograms. `snapshot` combines them with the pools', the monitor's and
    the resolver's own counters into a `ClusterMetrics`.
    """

    def __init__(self, cluster: str, engine: str) -> None:
        self.cluster = cluster
        self.engine = engine
        self.routed: Tally[tuple[str, str]] = Tally()  # (role, instance)
        self.fallbacks: Tally[str] = Tally()  # role
        self.no_host: Tally[str] = Tally()  # role
        self.session_reads: Tally[str] = Tally()  # replica / replica_after_wait / writer
        self.failovers_started: Tally[tuple[str, str]] = Tally()  # (role, cause)
        self.failovers_ended: Tally[tuple[str, str]] = Tally()  # (role, outcome)
        self.failover_seconds = {"succeeded": Histogram(), "failed": Histogram()}
        self.opened: Tally[str] = Tally()  # instance (connections of connect())
        self.closed: Tally[str] = Tally()
        self.connect_failures: Tally[tuple[str, str]] = Tally()  # (instance, kind)
        self.unresponsive: Tally[str] = Tally()
        self._connect_times: dict[str, Histogram] = {}
        self._lock = threading.Lock()

    # -- counting --------------------------------------------------------------------------
    def connected(self, instance: str, seconds: float) -> None:
        """A connection of ``connect()`` was opened in ``seconds``."""
        self.opened.add(instance)
        histogram = self._connect_times.get(instance)
        if histogram is None:
            with self._lock:
                histogram = self._connect_times.setdefault(instance, Histogram())
        histogram.observe(seconds)

    def failover_ended(self, role: str, outcome: Literal["succeeded", "failed"], s: float) -> None:
        self.failovers_ended.add((role, outcome))
        self.failover_seconds[outcome].observe(s)

    def decisions(self) -> int:
        """Routing decisions so far, with or without a host."""
        return self.routed.total() + self.no_host.total()

    # -- the snapshot -------------------------------------------------------------------------
    def snapshot(
        self,
        *,
        pools: Mapping[str, PoolStats],
        monitor: MonitorStats,
        resolver: Resolver,
        response_ms: Mapping[str, float],
        topology: Topology | None,
    ) -> ClusterMetrics:
        """This runtime's figures with its parts' (``pools`` from `PoolSet.totals`)."""
        routed = self.routed.snapshot()
        opened = self.opened.snapshot()
        closed = self.closed.snapshot()
        failures = self.connect_failures.snapshot()
        unresponsive = self.unresponsive.snapshot()
        with self._lock:
            connect_times = {k: h.snapshot() for k, h in self._connect_times.items()}
        names: set[str] = set(pools) | set(opened) | set(closed) | set(response_ms)
        names |= {instance for _, instance in routed} | {i for i, _ in failures}
        names |= set(unresponsive)
        if topology is not None:
            names |= {h.instance_id for h in topology.hosts}
        hosts: dict[str, HostMetrics] = {}
        for name in sorted(names):
            pool = pools.get(name)
            kinds = {kind: n for (i, kind), n in failures.items() if i == name}
            connect = connect_times.get(name, empty_histogram())
            if pool is not None:
                for kind, n in pool.connect_failure_kinds.items():
                    kinds[kind] = kinds.get(kind, 0) + n
                connect = connect.merged(pool.connect_times)
            hosts[name] = HostMetrics(
                instance=name,
                connections_opened=opened.get(name, 0) + (pool.opened if pool else 0),
                connections_closed=closed.get(name, 0) + (pool.closed if pool else 0),
                connect_failures=_frozen(kinds),
                connect_seconds=connect,
                borrows=pool.borrows if pool else 0,
                borrow_failures=_frozen(pool.borrow_failures) if pool else _EMPTY,
                borrow_wait_seconds=pool.borrow_waits if pool else empty_histogram(),
                pool_size=pool.size if pool else 0,
                pool_idle=pool.idle if pool else 0,
                pool_in_use=pool.in_use if pool else 0,
                pool_connecting=pool.connecting if pool else 0,
                pool_waiting=pool.waiting if pool else 0,
                down=pool.down if pool else False,
                routed=_frozen((role, n) for (role, i), n in routed.items() if i == name),
                response_ms=response_ms.get(name),
                unresponsive=unresponsive.get(name, 0),
            )
        decisions: dict[str, int] = {}
        for (role, _), n in routed.items():
            decisions[role] = decisions.get(role, 0) + n
        started = self.failovers_started.snapshot()
        ended = self.failovers_ended.snapshot()
        return ClusterMetrics(
            cluster=self.cluster,
            engine=self.engine,
            taken_at=time.time(),
            hosts=MappingProxyType(hosts),
            routing=RoutingMetrics(
                decisions=_frozen(decisions),
                fallbacks=_frozen(self.fallbacks.snapshot()),
                no_host=_frozen(self.no_host.snapshot()),
                session_reads=_frozen(self.session_reads.snapshot()),
            ),
            failovers=FailoverMetrics(
                started=_frozen(_sum_by(started, 0)),
                causes=_frozen(_sum_by(started, 1)),
                succeeded=_frozen(
                    (role, n) for (role, outcome), n in ended.items() if outcome == "succeeded"
                ),
                failed=_frozen(
                    (role, n) for (role, outcome), n in ended.items() if outcome == "failed"
                ),
                seconds=_frozen((k, h.snapshot()) for k, h in self.failover_seconds.items()),
            ),
            topology=TopologyMetrics(
                refreshes=monitor.refreshes,
                failures=monitor.errors,
                changes=monitor.changes,
                rejected=monitor.rejected,
                connects=monitor.connects,
                fast_mode_entries=monitor.fast_mode_entries,
                fast_mode=monitor.fast_mode,
                version=monitor.version,
                refresh_seconds=monitor.refresh_times,
                region_rpo_lag_ms=_frozen(
                    (region, lag)
                    for region, lag in (topology.regions if topology is not None else {}).items()
                    if lag is not None
                ),
            ),
            dns=DnsMetrics(
                lookups=resolver.lookups,
                failures=resolver.failures,
                cache_hits=resolver.cache_hits,
                fallbacks=resolver.fallbacks,
                lookup_seconds=resolver.lookup_times.snapshot(),
            ),
        )


def _sum_by(counts: Mapping[tuple[str, str], int], index: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, n in counts.items():
        out[key[index]] = out.get(key[index], 0) + n
    return out


# -- the process's clusters --------------------------------------------------------------------
Source = Callable[[], ClusterMetrics]

_sources: dict[int, Source] = {}
_sources_lock = threading.Lock()
_ids = itertools.count()


def _after_fork_in_child() -> None:
    """A fresh lock in a forked child: a parent thread may have held this one at the fork."""
    global _sources_lock
    _sources_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def register(source: Source) -> Callable[[], None]:
    """Include ``source()`` in `snapshot` until the returned function is called.

    Each cluster's runtime registers itself; call it for figures of your own kind only if they
    are `ClusterMetrics`.
    """
    key = next(_ids)
    with _sources_lock:
        _sources[key] = source

    def unregister() -> None:
        with _sources_lock:
            _sources.pop(key, None)

    return unregister


def snapshot() -> MetricsSnapshot:
    """Every cluster of the process now. Clusters with the same name get ``#2``, ``#3``..."""
    with _sources_lock:
        sources = list(_sources.values())
    clusters: dict[str, ClusterMetrics] = {}
    for source in sources:
        m = source()
        name, n = m.cluster, 1
        while name in clusters:
            n += 1
            name = f"{m.cluster}#{n}"
        clusters[name] = m
    return MetricsSnapshot(time.time(), MappingProxyType(clusters))


# -- the catalogue: flat families, for exporters -----------------------------------------------
Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric with its samples: ``name`` (no prefix, no ``_total``), ``kind``, ``unit``
    (``seconds``, ``ms``, or ``""`` for counts), ``help``, and ``samples``: label pairs with a
    number (counter, gauge) or a `HistogramSnapshot` (histogram). Every sample carries the
    label ``cluster``."""

    name: str
    kind: Kind
    unit: str
    help: str
    samples: tuple[tuple[Labels, float | HistogramSnapshot], ...]

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.samples[0][0]) if self.samples else ("cluster",)


CATALOGUE: tuple[tuple[str, Kind, str, tuple[str, ...], str], ...] = (
    # name, kind, unit, labels besides cluster, help
    ("connections_opened", "counter", "", ("instance",), "Driver connections opened"),
    ("connections_closed", "counter", "", ("instance",), "Driver connections closed"),
    ("connect_failures", "counter", "", ("instance", "kind"), "Failed connection attempts"),
    ("connect_seconds", "histogram", "seconds", ("instance",), "Successful connection attempts"),
    ("borrows", "counter", "", ("instance",), "Connections lent by the pool"),
    ("borrow_failures", "counter", "", ("instance", "reason"), "Borrows that raised"),
    ("borrow_wait_seconds", "histogram", "seconds", ("instance",), "Time to lend a connection"),
    ("pool_connections", "gauge", "", ("instance", "state"), "Pool connections by state"),
    ("pool_waiting", "gauge", "", ("instance",), "Borrowers waiting for a connection"),
    ("host_down", "gauge", "", ("instance",), "1 while the pool knows the host unreachable"),
    ("host_unresponsive", "counter", "", ("instance",), "Watchdog verdicts: stopped answering"),
    ("response_time", "gauge", "ms", ("instance",), "Moving average of the ping round trip"),
    ("routing_decisions", "counter", "", ("role", "instance"), "Routing decisions per host"),
    ("routing_fallbacks", "counter", "", ("role",), "Reader requests sent to the writer"),
    ("routing_no_host", "counter", "", ("role",), "Requests no host could serve"),
    (
        "session_reads",
        "counter",
        "",
        ("served_by",),
        "consistency=session reads: replica, replica_after_wait or writer",
    ),
    ("failovers_started", "counter", "", ("role",), "Failover procedures started"),
    ("failover_causes", "counter", "", ("cause",), "Failover procedures started, by cause"),
    ("failovers_succeeded", "counter", "", ("role",), "Failover procedures that reconnected"),
    ("failovers_failed", "counter", "", ("role",), "Failover procedures that gave up"),
    ("failover_seconds", "histogram", "seconds", ("outcome",), "Failover procedure durations"),
    ("topology_refreshes", "counter", "", (), "Topology queries answered"),
    ("topology_refresh_failures", "counter", "", (), "Topology refreshes that failed"),
    ("topology_changes", "counter", "", (), "Answers that changed the topology"),
    ("topology_rejected", "counter", "", (), "Answers ignored as not believable"),
    ("topology_refresh_seconds", "histogram", "seconds", (), "Topology refresh durations"),
    ("topology_version", "gauge", "", (), "Version of the current topology"),
    ("global_rpo_lag", "gauge", "ms", ("region",), "Aurora Global Database: a region's RPO lag"),
    ("monitor_connects", "counter", "", (), "Connections the monitor opened"),
    ("fast_mode", "gauge", "", (), "1 while the monitor refreshes fast (failover suspected)"),
    ("fast_mode_entries", "counter", "", (), "Times the monitor entered fast mode"),
    ("dns_lookups", "counter", "", (), "DNS lookups made (not cache hits)"),
    ("dns_failures", "counter", "", (), "DNS lookups that found no address"),
    ("dns_cache_hits", "counter", "", (), "Names answered from the cache"),
    ("dns_fallbacks", "counter", "", (), "Lookups the system resolver answered"),
    ("dns_lookup_seconds", "histogram", "seconds", (), "DNS lookup durations"),
)
"""Every metric `families` produces, in order (docs/operations.md lists the same)."""


def _samples(m: ClusterMetrics) -> dict[str, list[tuple[Labels, float | HistogramSnapshot]]]:
    out: dict[str, list[tuple[Labels, float | HistogramSnapshot]]] = {
        name: [] for name, *_ in CATALOGUE
    }
    c = ("cluster", m.cluster)

    def put(name: str, value: float | HistogramSnapshot, *labels: tuple[str, str]) -> None:
        out[name].append(((c, *labels), value))

    for h in m.hosts.values():
        i = ("instance", h.instance)
        put("connections_opened", h.connections_opened, i)
        put("connections_closed", h.connections_closed, i)
        for kind, n in h.connect_failures.items():
            put("connect_failures", n, i, ("kind", kind))
        put("connect_seconds", h.connect_seconds, i)
        put("borrows", h.borrows, i)
        for reason, n in h.borrow_failures.items():
            put("borrow_failures", n, i, ("reason", reason))
        put("borrow_wait_seconds", h.borrow_wait_seconds, i)
        for state, n in (
            ("idle", h.pool_idle),
            ("in_use", h.pool_in_use),
            ("connecting", h.pool_connecting),
        ):
            put("pool_connections", n, i, ("state", state))
        put("pool_waiting", h.pool_waiting, i)
        put("host_down", 1 if h.down else 0, i)
        put("host_unresponsive", h.unresponsive, i)
        if h.response_ms is not None:
            put("response_time", h.response_ms, i)
        for role, n in h.routed.items():
            put("routing_decisions", n, ("role", role), i)
    r, f, t, d = m.routing, m.failovers, m.topology, m.dns
    for role, n in r.fallbacks.items():
        put("routing_fallbacks", n, ("role", role))
    for role, n in r.no_host.items():
        put("routing_no_host", n, ("role", role))
    for served_by, n in r.session_reads.items():
        put("session_reads", n, ("served_by", served_by))
    for role, n in f.started.items():
        put("failovers_started", n, ("role", role))
    for cause, n in f.causes.items():
        put("failover_causes", n, ("cause", cause))
    for role, n in f.succeeded.items():
        put("failovers_succeeded", n, ("role", role))
    for role, n in f.failed.items():
        put("failovers_failed", n, ("role", role))
    for outcome, hist in f.seconds.items():
        put("failover_seconds", hist, ("outcome", outcome))
    put("topology_refreshes", t.refreshes)
    put("topology_refresh_failures", t.failures)
    put("topology_changes", t.changes)
    put("topology_rejected", t.rejected)
    put("topology_refresh_seconds", t.refresh_seconds)
    put("topology_version", t.version)
    for region, lag in t.region_rpo_lag_ms.items():
        put("global_rpo_lag", lag, ("region", region))
    put("monitor_connects", t.connects)
    put("fast_mode", 1 if t.fast_mode else 0)
    put("fast_mode_entries", t.fast_mode_entries)
    put("dns_lookups", d.lookups)
    put("dns_failures", d.failures)
    put("dns_cache_hits", d.cache_hits)
    put("dns_fallbacks", d.fallbacks)
    put("dns_lookup_seconds", d.lookup_seconds)
    return out


def families(snap: MetricsSnapshot | None = None) -> list[Family]:
    """The snapshot (default: `snapshot()` now) as one `Family` per `CATALOGUE` entry, each
    with the samples of every cluster."""
    snap = snapshot() if snap is None else snap
    per_cluster = [_samples(m) for m in snap.clusters.values()]
    out: list[Family] = []
    for name, kind, unit, _labels, text in CATALOGUE:
        samples = tuple(s for cluster in per_cluster for s in cluster[name])
        out.append(Family(name, kind, unit, text, samples))
    return out
