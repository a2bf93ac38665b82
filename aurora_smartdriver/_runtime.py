"""What a process shares per cluster, and what each connection keeps for itself.

One `SharedCluster` per cluster (by ``monitor.cluster_key``) and process, whatever the login:
the monitor, the resolver, the hung-host watchdog, the counters and events, the round-robin
turns, and the pools, one set per login and pool configuration (`_sharing.pool_key`). It lives
while something uses it and lingers briefly after the last user leaves, so a program that
connects and disconnects in a loop keeps one monitor instead of starting one per connection.

Every ``connect()``, ``Cluster`` and engine gets a `Runtime` of its own: its spec and settings
(failover, retry_reads, role, routing, session_init, timeouts) are the ones it was given, and
it reaches the shared machinery through it. Cluster-wide settings given differently while the
machinery is in use are reported once in a warning (`_sharing.conflicts`), never ignored in
silence.

Fork safety: a child process (``os.fork``, as pre-fork servers do) starts with an empty registry;
it never touches what it inherited (no thread, lock or socket of the parent's is used, and no
inherited driver connection is closed, since closing sends the server a goodbye that ends the
parent's session). A ``Cluster`` made before the fork gets fresh machinery on its first use in
the child.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, cast

from aurora_smartdriver import _sharing, auth, custom_endpoint, metrics, rds_proxy, routing
from aurora_smartdriver._bluegreen import Phase
from aurora_smartdriver._custom_watch import CustomEndpointWatch, Watches
from aurora_smartdriver._dbapi import driver_module, error_class, keep_driver_details
from aurora_smartdriver._globaldb import RegionWatch
from aurora_smartdriver._resume import Budget, ResumeGate
from aurora_smartdriver.discovery import role_of
from aurora_smartdriver.drivers import DriverAdapter, adapter_for
from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.errors import (
    AuthenticationFailed,
    ConfigError,
    FailoverSucceeded,
    InstanceResumeTimeout,
    NoHostAvailable,
    NoWriterAvailable,
    TransactionOutcomeUnknown,
)
from aurora_smartdriver.events import Events
from aurora_smartdriver.monitor import ClusterMonitor, cluster_key
from aurora_smartdriver.pool import (
    HostDown,
    HostPool,
    PoolClosed,
    Pooled,
    PoolSet,
    PoolStats,
    PoolTimeout,
    Target,
)
from aurora_smartdriver.pool._set import combine
from aurora_smartdriver.pool._sources import PoolSources
from aurora_smartdriver.resolver import ResolveError, Resolver
from aurora_smartdriver.settings import Settings
from aurora_smartdriver.topology import Host, Role, Topology
from aurora_smartdriver.watchdog import Watchdog

__all__ = ["Lease", "Runtime", "SharedCluster", "Target", "acquire", "generation", "release"]

log = logging.getLogger("aurora_smartdriver.routing")
share_log = logging.getLogger("aurora_smartdriver.sharing")

_CR_CONN_HOST_ERROR = 2003
"""PyMySQL's "can't connect" number: first in ``args`` of "no host" errors on MySQL."""

LINGER_SECONDS = 30.0
"""How long a cluster's shared machinery (monitor, pools) outlives its last user."""

_generation = 0
"""How many forks this process descends from (0 in the process that imported the library).

Everything made in an earlier generation belongs to an ancestor process: a child drops it
without closing it."""


def generation() -> int:
    """The process's fork generation: it changes in a child after ``os.fork()``."""
    return _generation


class Lease(Protocol):
    """One driver connection held by one library connection."""

    raw: Any
    target: Target
    pooled: bool
    as_writer: bool
    """Lent as the writer: the node was the writer when the connection was lent."""

    def mark_broken(self) -> None: ...

    def give_back(self, *, broken: bool = False) -> None: ...


class _DirectLease:
    """A connection of its own (``connect()``): giving it back closes it.

    In a forked child, one made before the fork is dropped instead: its socket is the
    parent's too, and closing it would end the parent's session.
    """

    __slots__ = (
        "_broken",
        "_generation",
        "_metrics",
        "_watch",
        "as_writer",
        "pooled",
        "raw",
        "target",
    )

    def __init__(
        self,
        raw: Any,
        target: Target,
        watchdog: Watchdog,
        counts: metrics.Metrics,
        *,
        as_writer: bool = False,
    ) -> None:
        self.raw = raw
        self.target = target
        self.pooled = False
        self.as_writer = as_writer
        self._broken = False
        self._metrics = counts
        self._generation = _generation
        self._watch = watchdog.watch(target, raw)

    def mark_broken(self) -> None:
        self._broken = True

    def give_back(self, *, broken: bool = False) -> None:
        if self._generation != _generation:
            return  # the parent's: neither its watchdog nor its socket is ours to touch
        if self._watch is not None:
            self._watch.discard(self.raw)
        self._metrics.closed.add(self.target.instance_id)
        with contextlib.suppress(Exception):
            self.raw.close()


class _PooledLease:
    """A connection borrowed from its host's pool: giving it back returns it (in a forked
    child, one borrowed before the fork is dropped: the pool is the parent's)."""

    __slots__ = (
        "_generation",
        "_pool",
        "_pooled",
        "_watch",
        "as_writer",
        "pooled",
        "raw",
        "target",
    )

    def __init__(
        self, pool: HostPool, pooled: Pooled, watchdog: Watchdog, *, as_writer: bool = False
    ) -> None:
        self._pool = pool
        self._pooled = pooled
        self.raw = pooled.raw
        self.target = pooled.target
        self.pooled = True
        self.as_writer = as_writer
        self._generation = _generation
        self._watch = pooled.watch = watchdog.watch(self.target, self.raw, pooled.watch)

    def mark_broken(self) -> None:
        if self._generation == _generation:
            self._pooled.mark_broken()

    def give_back(self, *, broken: bool = False) -> None:
        if self._generation != _generation:
            return
        if self._watch is not None:
            self._watch.discard(self.raw)
        if broken:
            self._pooled.mark_broken()
        self._pool.release(self._pooled)


@dataclass(frozen=True, slots=True)
class _Choice:
    target: Target
    decision: routing.Decision


class SharedCluster:
    """What every connection of the process to one cluster shares, whatever its login.

    The monitor, resolver and watchdog run with the settings and login of the spec that made
    them (`spec`); pools are kept per login and pool configuration, made on first use.
    """

    def __init__(
        self, spec: ConnectionSpec, credentials: auth.CredentialsSource | None = None
    ) -> None:
        settings = spec.settings
        self.spec = spec
        self.key = cluster_key(spec)
        self.generation = _generation
        self.adapter: DriverAdapter = adapter_for(spec.engine)
        self.module: ModuleType = driver_module(spec.engine)
        self._lock = threading.Lock()
        self._closed = False
        self._providers: dict[str, auth.CredentialsProvider] = {}
        self._pools: dict[tuple[str, str], PoolSet] = {}
        self._warned: set[str] = set()
        self.login = _sharing.login_key(spec, credentials)
        self.credentials = self.provider(self.login, spec, credentials)
        self.resolver = Resolver(
            settings.dns_server or None, timeout=settings.dns_timeout, ttl_cap=settings.dns_ttl_cap
        )
        self.monitor = ClusterMonitor(
            spec, adapter=self.adapter, resolver=self.resolver, credentials=self.credentials
        )
        # Round robin per request kind, shared by every connection of the cluster: a counter
        # per connection would start every connect() at the same reader.
        self.turns = {role: itertools.count() for role in ("writer", "reader", "any")}
        self.rng = random.Random()
        # Events and metrics name the cluster alike: its cluster_id, else its endpoint.
        name = settings.cluster_id or spec.hosts[0][0]
        self.events = Events(name)
        self.metrics = metrics.Metrics(name, spec.engine)
        self._watch_blue_green(self.monitor)
        self._region_watch = RegionWatch(self.events.emit)  # Aurora Global Database moves
        self.monitor.add_listener(self._region_watch)
        # Behind an RDS Proxy silence is no verdict: the proxy queues requests while it
        # fails over, and keeps the connections a probe's verdict would cut.
        self.watchdog = Watchdog(
            self._probe_opener,
            self.adapter,
            settings.failure_detection_time,
            self.host_dead,
            enabled=rds_proxy.plan(spec) is None,
        )
        self._unregister_metrics = metrics.register(self.metrics_snapshot)
        # Pools of the async front (aurora_smartdriver.aio), counted with the sync ones.
        self.pool_sources = PoolSources()
        self.custom_watches = Watches(self.events)
        """The custom endpoints' member lists read from the RDS API (docs/custom-endpoints.md)."""
        self.resume_gate = ResumeGate()
        """Knocks on instances that may be paused (``resume_timeout``; see `_resume`)."""

    @property
    def closed(self) -> bool:
        return self._closed

    def provider(
        self, login: str, spec: ConnectionSpec, credentials: auth.CredentialsSource | None
    ) -> auth.CredentialsProvider:
        """The credentials provider of ``login``, one per login (an IAM token or a secret is
        fetched once for all its connections)."""
        with self._lock:
            found = self._providers.get(login)
            if found is None:
                found = self._providers[login] = auth.provider_from(spec, credentials)
            return found

    def pools(self, key: tuple[str, str], make: Callable[[], PoolSet]) -> PoolSet:
        """The pools of ``key`` (login, pool configuration), made by ``make`` on first use;
        `PoolClosed` once the cluster is closed."""
        found = self._pools.get(key)
        if found is not None:
            return found
        with self._lock:
            if self._closed:
                raise PoolClosed("the cluster's pools are closed")
            found = self._pools.get(key)
            if found is None:
                found = make()
                self._pools = {**self._pools, key: found}
                self.monitor.add_listener(found.on_topology)
        return found

    def _watch_blue_green(self, monitor: ClusterMonitor) -> None:
        """On each new Blue/Green phase ``monitor`` reads: emit ``blue_green_phase``, and from
        the switchover on replace every pooled connection (the names moved to green; one
        opened in the moment before the monitor saw it may be on an old blue instance)."""

        def changed(old: Phase | None, new: Phase | None) -> None:
            self.events.emit(
                "blue_green_phase",
                old=None if old is None else old.name.lower(),
                new=None if new is None else new.name.lower(),
            )
            if new is not None and new >= Phase.IN_PROGRESS:
                for pool_set in list(self._pools.values()):
                    pool_set.retire_all()

        monitor.blue_green.add_listener(changed)

    @property
    def failing(self) -> bool:
        """The monitor never got an answer, and its attempts failed (a refused login, a
        name that does not resolve, no node reachable)."""
        monitor = self.monitor
        return monitor.topology is None and (
            monitor.auth_error is not None
            or monitor.config_error is not None
            or monitor.stats().errors > 0
        )

    def restart(self, spec: ConnectionSpec, credentials: auth.CredentialsSource | None) -> None:
        """Run the monitor and resolver as ``spec`` (its login and cluster-wide settings)
        from now on, the failing ones closed: see `_sharing.reuse`. Nothing happens when the
        monitor is no longer failing (another newcomer restarted it a moment ago)."""
        login = _sharing.login_key(spec, credentials)
        provider = self.provider(login, spec, credentials)
        settings = spec.settings
        with self._lock:
            old = self.monitor
            if self._closed or not self.failing:
                return
            resolver = Resolver(
                settings.dns_server or None,
                timeout=settings.dns_timeout,
                ttl_cap=settings.dns_ttl_cap,
            )
            monitor = ClusterMonitor(
                spec, adapter=self.adapter, resolver=resolver, credentials=provider
            )
            self.spec, self.login, self.credentials = spec, login, provider
            self.resolver, self.monitor = resolver, monitor
            self._watch_blue_green(monitor)
            self._warned.clear()
            for pool_set in self._pools.values():
                old.remove_listener(pool_set.on_topology)
                monitor.add_listener(pool_set.on_topology)
            monitor.add_listener(self._region_watch)
        share_log.info(
            "cluster %s: the monitor never got an answer (%s); restarted as the next user",
            settings.cluster_id or spec.hosts[0][0],
            old.trouble() or "no answer",
        )
        old.close()

    def existing_pools(self, key: tuple[str, str]) -> PoolSet | None:
        return self._pools.get(key)

    def pool_totals(self) -> dict[str, PoolStats]:
        """Every pool set's statistics over its life, per instance id, added up."""
        totals: dict[str, PoolStats] = self.pool_sources.totals()
        for pools in list(self._pools.values()):
            for instance, stats in pools.totals().items():
                before = totals.get(instance)
                totals[instance] = stats if before is None else combine(before, stats)
        return totals

    def pool_stats(self) -> dict[str, PoolStats]:
        """Every pool's statistics now, per instance id, added up over logins."""
        found: dict[str, PoolStats] = {}
        for pools in list(self._pools.values()):
            for instance, stats in pools.stats().items():
                before = found.get(instance)
                found[instance] = stats if before is None else combine(before, stats)
        return found

    def metrics_snapshot(self) -> metrics.ClusterMetrics:
        """This cluster's counters and timings now (``Cluster.metrics()``)."""
        return self.metrics.snapshot(
            pools=self.pool_totals(),
            monitor=self.monitor.stats(),
            resolver=self.resolver,
            response_ms=self.monitor.response_ms,
            topology=self.monitor.topology,
        )

    def check(self, spec: ConnectionSpec) -> None:
        """Warn, once per cluster and setting, when ``spec`` asks for cluster-wide settings
        other than those in use (the shared monitor, resolver and watchdog keep theirs)."""
        for conflict in _sharing.conflicts(self.spec.settings, spec.settings):
            with self._lock:
                if conflict.name in self._warned:
                    continue
                self._warned.add(conflict.name)
            share_log.warning(
                "cluster %s: %s; the monitor, resolver and watchdog this process shares for "
                "the cluster keep the value in use (give every DSN of one cluster the same "
                "value, or a cluster_id of its own to get separate ones)",
                self.spec.settings.cluster_id or self.spec.hosts[0][0],
                conflict,
            )

    def _probe_opener(self, target: Target, at: str | None) -> Callable[[float], Any]:
        """The watchdog's probe connections: the shared login, no session set-up (a probe
        only pings), to the address ``at`` the watched connections went to."""

        def open_probe(timeout: float) -> Any:
            address = at
            if address is None and self.spec.settings.resolve:
                address = self.resolver.resolve(target.host).addresses[0]
            return auth.connect(
                self.adapter,
                self.credentials,
                self.spec,
                target.host,
                target.port,
                address=address,
                timeout=timeout,
            )

        return open_probe

    def host_dead(self, target: Target, silent: float, address: str | None) -> None:
        """The watchdog's verdict: ``target`` stopped answering at ``address``."""
        self.metrics.unresponsive.add(target.instance_id)
        self.events.emit(
            "host_unresponsive", instance=target.instance_id, silent_s=round(silent, 3)
        )
        if address is not None:
            addresses: tuple[str, ...] = (address,)
        else:  # connections go by name (resolve=off): where the name leads now
            try:
                addresses = tuple(self.resolver.resolve(target.host).addresses)
            except Exception:
                addresses = ()
        self.monitor.host_silent(target.host, addresses)
        self.suspect(target, f"no answer for {silent:.1f}s")

    def suspect(self, target: Target, why: str) -> None:
        """A connection to ``target`` failed as if the node were gone or demoted."""
        topo = self.monitor.topology
        if (
            topo is not None
            and topo.writer is not None
            and topo.writer.instance_id == target.instance_id
        ):
            self.monitor.enter_fast_mode(f"writer {target.instance_id}: {why}")
        else:
            self.monitor.refresh_now(timeout=0)

    def close(self) -> None:
        """Stop the monitor and the watchdog and close every pool (idempotent).

        In a forked child, machinery inherited from the parent is left alone: its threads do
        not exist here, its locks may be held for ever, and its sockets are the parent's.
        """
        if self.generation != _generation:
            self._closed = True  # not even its lock: a parent's thread may have held it
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pools = list(self._pools.values())
        self._unregister_metrics()
        self.monitor.close()
        self.watchdog.close()
        self.custom_watches.close()
        for pool_set in pools:
            self.monitor.remove_listener(pool_set.on_topology)
            pool_set.close()

    def __repr__(self) -> str:
        return f"<SharedCluster {self.spec.hosts[0][0]} pools={len(self._pools)}>"


class Runtime:
    """One connection's (or ``Cluster``'s) view of its cluster: its own spec and settings, the
    shared machinery, and the pools of its login and pool configuration.

    :func:`acquire` gives one, :func:`release` takes it back. ``Runtime(spec)`` alone makes
    machinery of its own, closed by `close` (for tests and tools).
    """

    def __init__(
        self,
        spec: ConnectionSpec,
        credentials: auth.CredentialsSource | None = None,
        *,
        shared: SharedCluster | None = None,
    ) -> None:
        settings = spec.settings
        self._owns_shared = shared is None
        if shared is None:
            shared = SharedCluster(spec, credentials)
        self._shared = shared
        self.spec = spec
        self.key = shared.key
        self.login = _sharing.login_key(spec, credentials)
        self.credentials = shared.provider(self.login, spec, credentials)
        self.credentials_source = credentials
        """What ``credentials`` was given (to acquire the same runtime again: a reopen)."""
        self._pool_key = _sharing.pool_key(self.login, settings)
        value = spec.driver_params.get("autocommit", False)
        self.default_autocommit = (
            value if isinstance(value, bool) else str(value).lower() in ("1", "true", "on", "yes")
        )
        """The DSN's ``autocommit`` (off unless given): what a connection starts with and is
        put back to before it returns to its pool."""
        self._pool_set: PoolSet | None = None
        self._writer_choice: tuple[Topology, _Choice, tuple[str, str]] | None = None
        """The last writer decision and the topology it was made on: the same snapshot gives
        the same writer, so a borrow on an unchanged topology skips the routing."""
        self.adapter = shared.adapter
        self.module: ModuleType = shared.module
        self.watchdog = shared.watchdog
        self.events = shared.events
        self.metrics = shared.metrics
        self._turns = shared.turns
        self._rng = shared.rng
        self._requests = {
            role: routing.request_from_settings(settings, role)
            for role in ("writer", "reader", "any")
        }
        self.no_host = error_class(spec.engine, NoHostAvailable)
        self.no_writer = error_class(spec.engine, NoWriterAvailable)
        self.failover_succeeded = error_class(spec.engine, FailoverSucceeded)
        self.outcome_unknown = error_class(spec.engine, TransactionOutcomeUnknown)
        self.pool_timeout = error_class(spec.engine, PoolTimeout)
        self.pool_closed = error_class(spec.engine, PoolClosed)
        self.auth_failed = cast(
            type[AuthenticationFailed], error_class(spec.engine, AuthenticationFailed)
        )
        self.proxy = rds_proxy.plan(spec)
        """The RDS Proxy endpoints the connections go through, if any (docs/rds-proxy.md)."""
        self.resume_timed_out = error_class(spec.engine, InstanceResumeTimeout)
        self._resume_budget = Budget(
            settings.resume_timeout,
            settings.connect_timeout,
            make_error=self.resume_timed_out,
            on_resumed=self._resumed,
            on_timeout=self._resume_failed,
        )
        custom = custom_endpoint.endpoint_identifier(spec)
        self.custom_watch: CustomEndpointWatch | None = (
            None if custom is None else shared.custom_watches.for_spec(custom, spec)
        )
        """The custom endpoint reader and any connections are confined to, if any."""

    @property
    def monitor(self) -> ClusterMonitor:
        """The cluster's monitor (shared; restarted only if it never got an answer)."""
        return self._shared.monitor

    @property
    def resolver(self) -> Resolver:
        return self._shared.resolver

    @property
    def shared(self) -> SharedCluster:
        """The machinery this runtime shares with the process's other users of the cluster."""
        return self._shared

    @property
    def inherited(self) -> bool:
        """Made before a fork, in an ancestor process: nothing of it may be used or closed
        here (a connection made then should be dropped, not closed)."""
        return self._shared.generation != _generation

    @property
    def decisions(self) -> int:
        """Routing decisions so far (see `metrics_snapshot` for the details)."""
        return self.metrics.decisions()

    def metrics_snapshot(self) -> metrics.ClusterMetrics:
        """The cluster's counters and timings now (``Cluster.metrics()``)."""
        return self._shared.metrics_snapshot()

    @property
    def pools(self) -> PoolSet:
        """The pools of this login and pool configuration, made on first use (``connect()``
        alone needs none); `PoolClosed` once the cluster is closed."""
        found = self._pool_set
        if found is None:  # the shared cluster keeps it for good: no lookup after the first
            found = self._pool_set = self._shared.pools(self._pool_key, self._make_pools)
        return found

    @property
    def _pools(self) -> PoolSet | None:
        """The pools if made already (lookups that must not make them)."""
        return self._shared.existing_pools(self._pool_key)

    def _make_pools(self) -> PoolSet:
        return PoolSet(self._opener_for, settings=self.spec.settings, adapter=self.adapter)

    # -- choosing a host ------------------------------------------------------------------
    def topology(self, timeout: float | None = None) -> Topology | None:
        """The current snapshot, waiting for the first one when there is none yet."""
        topo = self.monitor.topology
        if topo is None:
            self.seed_from_custom_endpoint(timeout)
            topo = self.monitor.refresh_now(timeout)
        return topo

    def seed_from_custom_endpoint(self, timeout: float | None) -> None:
        """Give the monitor the cluster endpoint behind the DSN's custom endpoint (its name
        has no address while no member is up), once the RDS API has named the cluster."""
        watch = self.custom_watch
        if watch is None:
            return
        found = watch.wait_first(self.spec.settings.connect_timeout if timeout is None else timeout)
        host, port = self.spec.hosts[0]
        seed = None if found is None else custom_endpoint.cluster_endpoint(found, host)
        if seed is not None:
            self.monitor.add_seed(seed, port)

    def known_writer(self, topology: Topology | None = None) -> _Choice | None:
        """The writer decision made on ``topology`` (default: the current snapshot), counted
        as a routing (what `choose` answers for the writer without routing again); None when
        there is none."""
        known = self._writer_choice
        if topology is None:
            topology = self._shared.monitor.topology
        if known is None or known[0] is not topology:
            return None
        self.metrics.routed.add(known[2])
        return known[1]

    def choose(
        self,
        role: str,
        exclude: frozenset[str] = frozenset(),
        *,
        resuming: frozenset[str] = frozenset(),
    ) -> _Choice:
        """The host that serves ``role`` now, or the driver's ``NoHostAvailable`` saying why.

        A reader or any request prefers instances other than those being knocked on
        (``resume_timeout``: maybe resuming, for seconds; ``resuming`` adds an async front's
        own): another reader, or the writer as ``reader_fallback`` allows; with nowhere else
        to go it waits for the knock as well.
        """
        proxy = self.proxy
        if proxy is not None and proxy.writer is None and role == "writer":
            raise ConfigError(
                f"{proxy.describe()} is a read-only RDS Proxy endpoint: writes cannot go "
                "through it",
                parameter="role",
                value=role,
                suggestion="use role=reader for reads, or connect to the proxy's read/write "
                "endpoint for writes",
            )
        if role == "writer" and not exclude:
            known = self.known_writer()
            if known is not None:
                return known
        topo = self.topology(first_topology_wait(self.spec.settings))
        request = self._requests[role]
        if exclude:
            request = request.excluding(*exclude)
        pools = self._pools
        if role == "writer":
            stats = _NO_STATS
        else:
            # Connections in use: borrowed from the pools, and connect()'s own, still open.
            in_use = (
                routing.connections_in_use(
                    pools.in_use() if pools is not None else {},
                    self.metrics.opened.snapshot(),
                    self.metrics.closed.snapshot(),
                )
                if request.strategy == "least_connections"
                else {}
            )
            stats = routing.HostStats(
                in_use=in_use,
                down=pools.down() if pools is not None else frozenset(),
                response_ms=self.monitor.response_ms,
            )
        turn = next(self._turns[role])

        def route(request: routing.Request) -> routing.Decision | routing.NoHost:
            if self.custom_watch is not None and role != "writer" and topo is not None:
                return self._choose_in_custom(topo, request, stats, turn)
            return routing.choose(topo, request, stats, turn=turn, rng=self._rng)

        if role != "writer" and self.spec.settings.resume_timeout > 0:
            resuming = resuming | self._shared.resume_gate.knocking()
        preferred = (
            route(request.excluding(*resuming))
            if resuming and role != "writer" and self.custom_watch is None
            else None
        )
        if isinstance(preferred, routing.Decision):  # the writer too, as reader_fallback allows
            decision: routing.Decision | routing.NoHost = preferred
        else:
            decision = route(request)
        if isinstance(decision, routing.NoHost):
            self.metrics.no_host.add(role)
            refused = self.monitor.auth_error if topo is None else None
            if refused is not None:  # the monitor could not log in: say so, not "no host"
                raise self.auth_failed(
                    str(refused), user=refused.user, host=refused.host, port=refused.port
                ) from refused
            wrong = self.monitor.config_error if topo is None else None
            if wrong is not None:  # the DSN itself is wrong (database, driver parameter)
                raise type(wrong)(str(wrong), parameter=wrong.parameter, value=wrong.value)
            trouble = self.monitor.trouble() if topo is None else None
            detail = f" (monitor: {trouble})" if trouble else ""
            none = self.no_host(f"no host for a {role} connection: {decision.reason}{detail}")
            raise keep_driver_details(none, None, default_code=_CR_CONN_HOST_ERROR)
        routed = (role, decision.host.instance_id)
        self.metrics.routed.add(routed)
        if decision.fell_back:
            self.metrics.fallbacks.add(role)
            log.info("%s", decision.reason)
        choice = _Choice(_target(decision.host), decision)
        if role == "writer" and not exclude and topo is not None:
            # A writer decision depends on the snapshot alone (no load, no turn, no down set).
            self._writer_choice = (topo, choice, routed)
        return choice

    def _choose_in_custom(
        self, topo: Topology, request: routing.Request, stats: routing.HostStats, turn: int
    ) -> routing.Decision | routing.NoHost:
        """`routing.choose` among the custom endpoint's eligible members (the first reading
        of its members is waited for up to connect_timeout)."""
        watch = self.custom_watch
        assert watch is not None
        endpoint = watch.current()
        if endpoint is None:
            endpoint = watch.wait_first(self.spec.settings.connect_timeout)
        decision, widened = custom_endpoint.route(
            topo,
            request,
            stats,
            endpoint,
            identifier=watch.identifier,
            problem=watch.problem,
            fallback=self.spec.settings.custom_endpoint_fallback,
            turn=turn,
            rng=self._rng,
        )
        if widened and isinstance(decision, routing.Decision):
            self.events.emit(
                "custom_endpoint_fallback",
                endpoint=watch.identifier,
                instance=decision.host.instance_id,
                reason=decision.reason,
            )
        return decision

    # -- connections ----------------------------------------------------------------------
    def _opener_for(self, target: Target) -> Callable[[float], Any]:
        def open_connection(timeout: float) -> Any:
            return self.open(target, timeout)

        return open_connection

    def open(self, target: Target, timeout: float | None = None) -> Any:
        """A new driver connection to ``target``: resolved here, TLS verifying its name."""
        settings = self.spec.settings
        deadline = settings.connect_timeout if timeout is None else timeout
        gate = self.monitor.blue_green
        if gate.phase is not None:  # a Blue/Green switchover in progress: wait for its end
            waited = gate.hold(self.monitor.refresh_now)
            if waited:
                self.events.emit("blue_green_held", instance=target.instance_id, waited_s=waited)
        address = self.resolver.resolve(target.host).addresses[0] if settings.resolve else None

        def attempt(seconds: float) -> Any:
            return auth.connect(
                self.adapter,
                self.credentials,
                self.spec,
                target.host,
                target.port,
                address=address,
                timeout=seconds,
                autocommit=self.default_autocommit,
                error=self.auth_failed,
            )

        if settings.resume_timeout > 0:  # the instance may be paused: one knock at a time
            pools = self._pools
            raw = self._shared.resume_gate.open(
                target.instance_id,
                attempt,
                deadline,
                self._resume_budget,
                holds_connections=pools is not None and pools.holds(target.instance_id),
            )
        else:
            raw = attempt(deadline)
        self.watchdog.opened(raw, address)
        try:
            self._prepare_session(raw)
        except BaseException:
            with contextlib.suppress(Exception):
                raw.close()
            raise
        return raw

    def _resumed(self, instance_id: str, waited: float) -> None:
        log.info("%s answered after %.1fs: it was resuming", instance_id, waited)
        self.events.emit("instance_resumed", instance=instance_id, waited_s=round(waited, 3))

    def _resume_failed(self, instance_id: str, waited: float) -> None:
        self.events.emit(
            "instance_resume_timeout",
            instance=instance_id,
            waited_s=round(waited, 3),
            resume_timeout=self.spec.settings.resume_timeout,
        )

    def _prepare_session(self, raw: Any) -> None:
        settings = self.spec.settings
        statements = list(settings.session_init)
        if settings.statement_timeout is not None:
            if self.spec.engine == "postgresql":
                statements.insert(
                    0, f"SET statement_timeout = {int(settings.statement_timeout * 1000)}"
                )
            elif self.spec.mariadb:
                statements.insert(
                    0, f"SET SESSION max_statement_time = {settings.statement_timeout}"
                )
            else:
                statements.insert(
                    0, f"SET SESSION max_execution_time = {int(settings.statement_timeout * 1000)}"
                )
        for sql in statements:
            self.adapter.query(raw, sql)
        if statements and not self.default_autocommit and self.spec.engine == "postgresql":
            raw.commit()  # session_init ran in a transaction psycopg opened; keep its effects

    def lease(
        self, role: str, *, pooled: bool, exclude: frozenset[str] = frozenset(), wait: bool = True
    ) -> Lease:
        """A driver connection for ``role``: borrowed from its host's pool, or of its own.

        A writer that cannot be reached is waited for as a failover would, up to
        ``failover_timeout`` (then ``NoWriterAvailable``), unless ``failover=off`` or ``wait``
        is false (the failover procedure, which does its own waiting).
        """
        if _abandoned:
            give_back_abandoned()
        tried = exclude
        may_wait = role == "writer" and wait and self.spec.settings.failover
        waiting: _WriterWait | None = None  # made on the first failure: borrows stay lean
        unresumed: InstanceResumeTimeout | None = None  # a paused instance that did not resume
        failed: BaseException | None = None  # why the last host tried was left
        while True:
            try:
                choice = self.choose(role, tried)
            except NoHostAvailable as exc:
                if unresumed is not None:  # nowhere else to go: say why the one host failed
                    raise unresumed from unresumed.__cause__
                if failed is not None and exc.__cause__ is None:
                    raise exc from failed  # "(x excluded)": the traceback says why
                raise
            target = choice.target
            try:
                if not pooled:
                    raw = self._open_counted(target)
                    return _DirectLease(
                        raw, target, self.watchdog, self.metrics, as_writer=role == "writer"
                    )
                return self._borrow(target, as_writer=role == "writer")
            except InstanceResumeTimeout as exc:
                # A wait that ran out, not a dead writer: no failover; a read goes elsewhere.
                if role == "writer":
                    raise
                unresumed = exc
                tried = tried | {target.instance_id}
            except HostDown as exc:
                if exc.auth:  # a login refused moments ago: the same error, not a retry
                    raise self.auth_failed(str(exc), host=target.host, port=target.port) from exc
                if isinstance(exc.__cause__, InstanceResumeTimeout):
                    if role == "writer":
                        raise exc.__cause__ from exc.__cause__.__cause__
                    unresumed = exc.__cause__
                    tried = tried | {target.instance_id}
                    continue
                log.info("%s is down (%s); trying elsewhere", target.instance_id, exc)
                if may_wait:
                    waiting = waiting or _WriterWait(self)
                    waiting.wait(target, "disconnect", exc)
                    continue
                tried, failed = tried | {target.instance_id}, exc
            except PoolClosed as exc:
                pools = self._pools
                if self._shared.closed or pools is None or pools.closed:
                    raise self.pool_closed(f"{exc}: the cluster was closed") from exc
                continue  # the topology just dropped that host's pool: choose again
            except ResolveError as exc:
                # The instance's name did not resolve (DNS still catching up with a new
                # instance, or one just deleted): as unreachable as a refused connection.
                log.info("%s: %s; trying elsewhere", target.instance_id, exc)
                if may_wait:
                    waiting = waiting or _WriterWait(self)
                    waiting.wait(target, "disconnect", exc)
                    continue
                if role == "writer":
                    none = self.no_host(f"the writer {target.instance_id}: {exc}")
                    raise keep_driver_details(none, exc, default_code=_CR_CONN_HOST_ERROR) from exc
                self.suspect(target, f"resolve: {exc}")
                tried, failed = tried | {target.instance_id}, exc
            except PoolTimeout as exc:
                raise self.pool_timeout(str(exc)) from exc
            except self.adapter.Error as exc:
                kind = self.adapter.error_kind(exc)
                if may_wait and kind in _WRITER_GONE:
                    waiting = waiting or _WriterWait(self)
                    waiting.wait(target, kind, exc)
                    continue
                if kind == "auth" or role == "writer":
                    raise
                self.suspect(target, f"{kind}: {exc}")
                tried, failed = tried | {target.instance_id}, exc

    def _open_counted(self, target: Target) -> Any:
        """`open` for a connection of its own (``connect()``), counted in the metrics (the
        pools count their own)."""
        started = time.perf_counter()
        try:
            raw = self.open(target)
        except Exception as exc:
            kind = self.adapter.error_kind(exc)
            self.metrics.connect_failures.add((target.instance_id, kind))
            raise
        self.metrics.connected(target.instance_id, time.perf_counter() - started)
        return raw

    def _borrow(self, target: Target, *, as_writer: bool = False) -> Lease:
        pool = self.pools.pool(target)
        return _PooledLease(
            pool, pool.borrow(wait_if_down=False), self.watchdog, as_writer=as_writer
        )

    def fail_over(
        self, role: str, old: Target, kind: str, *, pooled: bool, cause: BaseException
    ) -> Lease:
        """The failover procedure for one connection whose node ``old`` died or turned read-only.

        Fast mode on; for a writer connection (or when ``old`` was the writer), wait for a node
        that answers as the writer (not only the metadata); then a connection of ``role`` on
        the right node, within ``failover_timeout``. Raises ``NoWriterAvailable`` (or
        ``NoHostAvailable`` for a reader) when time runs out.
        """
        settings = self.spec.settings
        started = time.monotonic()
        deadline = started + settings.failover_timeout
        self.events.emit("failover_started", instance=old.instance_id, role=role, cause=kind)
        self.metrics.failovers_started.add((role, kind))
        if kind == "disconnect":
            retire_idle(self._pools, old)  # its idle connections died with it
        topo = self.monitor.topology
        was_writer = (
            topo is not None
            and topo.writer is not None
            and (topo.writer.instance_id == old.instance_id)
        )
        exclude: frozenset[str] = frozenset()
        if role == "writer" or was_writer:
            self.monitor.enter_fast_mode(f"{kind} on {old.instance_id}")
            # A Blue/Green switchover gives the new writer the old one's name: a read-only
            # old writer is then replaced by a node of the same instance id.
            switching = self.monitor.blue_green.phase is not None
            # Behind a proxy the writer keeps the endpoint's name: wait for it to lead to a
            # writer again, not for another name.
            moves = kind == "read_only" and not switching and self.proxy is None
            found = self.monitor.wait_for_writer(
                max(0.0, deadline - time.monotonic()), not_id=old.instance_id if moves else None
            )
            if found is None or found.writer is None:
                return self._fail_over_failed(
                    role, started, "no node answered as the writer", cause
                )
            self.events.emit(
                "writer_found",
                instance=found.writer.instance_id,
                after_s=round(time.monotonic() - started, 3),
            )
        if role != "writer" and self.proxy is None:  # a proxy endpoint picks another reader
            exclude = frozenset({old.instance_id})
        delay = settings.backoff_initial
        while True:
            try:
                lease = self.lease(role, pooled=pooled, exclude=exclude, wait=False)
                if self.proxy is not None:
                    self._check_through_proxy(lease, role, deadline)
            except (self.adapter.Error, NoHostAvailable, OSError) as exc:
                if self.adapter.error_kind(exc) == "auth" or time.monotonic() >= deadline:
                    return self._fail_over_failed(role, started, str(exc), cause)
                time.sleep(min(random.uniform(0, delay), max(0.0, deadline - time.monotonic())))
                delay = min(settings.backoff_max, delay * 2)
                if role == "writer":
                    self.monitor.refresh_now(timeout=max(0.0, deadline - time.monotonic()))
            else:
                self.metrics.failover_ended(role, "succeeded", time.monotonic() - started)
                return lease

    def _check_through_proxy(self, lease: Lease, role: str, deadline: float) -> None:
        """A new connection through a proxy is usable only once a statement runs on it (the
        proxy may have taken the login alone, and queues statements while it has no writer):
        ask its node's role, cut off at the failover's ``deadline``; a writer connection that
        reaches no writer yet is given back and raises, so the failover tries again."""
        cut = threading.Timer(
            max(0.0, deadline - time.monotonic()), self.adapter.abort, args=(lease.raw,)
        )
        cut.daemon = True
        cut.start()
        try:
            says = role_of(lease.raw, self.monitor.source_context)
            lease.raw.rollback()  # leave no transaction (nor snapshot) behind the question
        except BaseException:
            lease.give_back(broken=True)
            raise
        finally:
            cut.cancel()
        if role == "writer" and says is not Role.WRITER:
            lease.give_back(broken=True)
            raise OSError(f"{lease.target.host} leads to a {says.value}, not to the writer yet")

    def _fail_over_failed(
        self, role: str, started: float, reason: str, cause: BaseException
    ) -> Lease:
        self.metrics.failover_ended(role, "failed", time.monotonic() - started)
        after = round(time.monotonic() - started, 3)
        self.events.emit("failover_failed", role=role, after_s=after, reason=reason)
        error = self.no_writer if role == "writer" else self.no_host
        failed = error(
            f"failover gave up after {after:.1f}s (failover_timeout="
            f"{self.spec.settings.failover_timeout:g}s): {reason}"
        )
        raise keep_driver_details(failed, cause, default_code=_CR_CONN_HOST_ERROR) from cause

    def _host_dead(self, target: Target, silent: float, address: str | None = None) -> None:
        self._shared.host_dead(target, silent, address)

    def suspect(self, target: Target, why: str) -> None:
        """A connection to ``target`` failed as if the node were gone or demoted."""
        self._shared.suspect(target, why)

    def close(self) -> None:
        """Close the machinery this runtime made for itself (``Runtime(spec)``); a runtime
        from :func:`acquire` is given back with :func:`release` instead."""
        if self._owns_shared:
            self._shared.close()


def first_topology_wait(settings: Settings) -> float:
    """How long a first request waits for the monitor's first topology: ``connect_timeout``,
    or with ``resume_timeout`` set that plus the time to connect (the node the monitor asks
    first may be paused)."""
    if settings.resume_timeout > 0:
        return settings.resume_timeout + settings.connect_timeout
    return settings.connect_timeout


def retire_idle(pools: PoolSet | None, target: Target) -> None:
    """Retire the pool of ``target`` if there is one, never making one: an instance that
    left the cluster must not get a new pool that dials it."""
    if pools is None:
        return
    found = pools.stats()
    if target.instance_id in found:
        pool = pools.pool(target)
        pool.retire()


_NO_STATS = routing.HostStats()


_WRITER_GONE = frozenset({"disconnect", "read_only"})


class _WriterWait:
    """A new writer connection's wait for a writer that answers, bounded by failover_timeout.

    Without it, a borrow during a failover would fail at once with "no host": the topology
    still names the dead writer until the monitor sees the new one.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._started: float | None = None
        self._delay = runtime.spec.settings.backoff_initial

    def wait(self, target: Target, kind: str, cause: BaseException) -> None:
        runtime, settings = self._runtime, self._runtime.spec.settings
        now = time.monotonic()
        if self._started is None:
            self._started = now
        remaining = self._started + settings.failover_timeout - now
        found = None
        if remaining > 0:
            runtime.suspect(target, f"{kind}: {cause}")
            moves = kind == "read_only" and runtime.proxy is None  # a proxy keeps its name
            found = runtime.monitor.wait_for_writer(
                remaining, not_id=target.instance_id if moves else None
            )
        if found is None:
            none = runtime.no_writer(
                f"no writer answered within failover_timeout={settings.failover_timeout:g}s "
                f"(last: {target.instance_id}: {cause})"
            )
            raise keep_driver_details(none, cause, default_code=_CR_CONN_HOST_ERROR) from cause
        # The monitor may still confirm the old writer for a moment: back off, with jitter.
        time.sleep(min(random.uniform(0, self._delay), max(0.0, remaining)))
        self._delay = min(settings.backoff_max, self._delay * 2)


def _target(host: Host) -> Target:
    return Target.of(host)


# -- connections the garbage collector found unclosed ------------------------------------------
_abandoned: collections.deque[tuple[Lease | None, list[Callable[[], None]]]] = collections.deque()


def abandon(lease: Lease | None, closers: list[Callable[[], None]]) -> None:
    """Queue what a connection collected without ``close()`` holds (from its ``__del__``: no
    I/O or lock there); `give_back_abandoned` returns it, at the next borrow or connect."""
    _abandoned.append((lease, closers))


def give_back_abandoned() -> None:
    """Give back the leases of abandoned connections (as broken: their state is unknown)."""
    while _abandoned:
        try:
            lease, closers = _abandoned.popleft()
        except IndexError:
            return
        if lease is not None:
            with contextlib.suppress(Exception):
                lease.give_back(broken=True)
        for callback in closers:
            with contextlib.suppress(Exception):
                callback()


# -- the registry ----------------------------------------------------------------------------
class _Entry:
    """A registered cluster: its machinery, how many use it, and its linger timer."""

    __slots__ = ("shared", "timer", "users")

    def __init__(self, shared: SharedCluster) -> None:
        self.shared = shared
        self.users = 0
        self.timer: threading.Timer | None = None


_registry: dict[tuple[str, ...], _Entry] = {}
_lock = threading.Lock()


def runtime_key(
    spec: ConnectionSpec, credentials: auth.CredentialsSource | None = None
) -> tuple[str, ...]:
    """The identity of ``spec``'s pools: its cluster, its login (see `_sharing.login_key`;
    the password enters only as a salted digest) and its pool configuration."""
    login = _sharing.login_key(spec, credentials)
    return (*cluster_key(spec), *_sharing.pool_key(login, spec.settings))


def acquire(spec: ConnectionSpec, credentials: auth.CredentialsSource | None = None) -> Runtime:
    """A runtime with ``spec``'s own settings on the process's machinery for its cluster
    (made on first use), with ``credentials`` as its provider when given (else from
    ``spec.auth``).

    Machinery that lingers unused is replaced rather than reused when it never got an answer
    from the cluster or when ``spec`` asks for other cluster-wide settings; in use, it is
    shared, and a conflicting cluster-wide setting is reported once in a warning.
    """
    key = cluster_key(spec)
    stale: SharedCluster | None = None
    restart: SharedCluster | None = None
    with _lock:
        entry = _registry.get(key)
        if entry is not None:
            conflicting = bool(_sharing.conflicts(entry.shared.spec.settings, spec.settings))
            verdict = _sharing.reuse(
                users=entry.users,
                answered=entry.shared.monitor.topology is not None,
                conflicting=conflicting,
                failing=entry.shared.failing,
                other_login=entry.shared.login != _sharing.login_key(spec, credentials),
            )
            if verdict == "replace" or entry.shared.closed:
                if entry.timer is not None:
                    entry.timer.cancel()
                stale, entry = entry.shared, None
            elif verdict == "restart":
                restart = entry.shared
        if entry is None:
            entry = _registry[key] = _Entry(SharedCluster(spec, credentials))
        entry.users += 1
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        shared = entry.shared
    if stale is not None:
        stale.close()
    try:
        if restart is not None:
            restart.restart(spec, credentials)
        shared.check(spec)
        return Runtime(spec, credentials, shared=shared)
    except BaseException:
        _give_back(shared, linger=0)
        raise


def release(runtime: Runtime, *, linger: float = LINGER_SECONDS) -> None:
    """Give back a runtime from :func:`acquire`; the last release of its cluster closes the
    machinery ``linger`` s later."""
    _give_back(runtime.shared, linger=linger)


def _give_back(shared: SharedCluster, *, linger: float) -> None:
    with _lock:
        entry = _registry.get(shared.key)
        if entry is None or entry.shared is not shared:
            return
        entry.users -= 1
        if entry.users > 0:
            return
        if linger <= 0:
            del _registry[shared.key]
        else:
            timer = threading.Timer(linger, _expire, args=(shared,))
            timer.daemon = True
            entry.timer = timer
            timer.start()
            return
    shared.close()


def _expire(shared: SharedCluster) -> None:
    with _lock:
        entry = _registry.get(shared.key)
        if entry is None or entry.shared is not shared or entry.users > 0:
            return
        del _registry[shared.key]
    shared.close()


def close_all() -> None:
    """Close every cluster's machinery now (at interpreter exit, and in tests)."""
    with _lock:
        entries = list(_registry.values())
        _registry.clear()
    for entry in entries:
        if entry.timer is not None:
            entry.timer.cancel()
        entry.shared.close()


def _after_fork_in_child() -> None:
    """A forked child starts with no machinery: what it inherited is the parent's.

    Nothing inherited is closed or locked here (a thread of the parent may have held a lock at
    the fork, and closing a driver connection would end the parent's session); it is only
    forgotten. The metrics registry forgets the parent's clusters too.
    """
    global _generation, _registry, _lock
    _generation += 1
    inherited = list(_registry.values())
    _registry = {}
    _lock = threading.Lock()
    for entry in inherited:
        entry.timer = None
        with contextlib.suppress(Exception):
            entry.shared._unregister_metrics()


atexit.register(close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
