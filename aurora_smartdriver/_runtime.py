"""What a process shares per cluster: the monitor, the pools, the resolver and the router's state.

Every ``connect()``, ``Cluster`` and engine that points at one cluster (by ``monitor.cluster_key``)
with one login (see ``runtime_key``) uses one ``Runtime``; it lives while something uses it and
lingers briefly after the last user leaves, so a program that connects and disconnects in a loop
keeps one monitor instead of starting one per connection.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
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

from aurora_smartdriver import auth, metrics, routing
from aurora_smartdriver._dbapi import driver_module, error_class
from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.errors import (
    AuthenticationFailed,
    FailoverSucceeded,
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
    PoolTimeout,
    Target,
)
from aurora_smartdriver.resolver import Resolver
from aurora_smartdriver.topology import Host, Topology
from aurora_smartdriver.watchdog import Watchdog

__all__ = ["Lease", "Runtime", "Target", "acquire", "release"]

log = logging.getLogger("aurora_smartdriver.routing")

LINGER_SECONDS = 30.0
"""How long a cluster's runtime (monitor, pools) outlives its last user."""


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
    """A connection of its own (``connect()``): giving it back closes it."""

    __slots__ = ("_broken", "_metrics", "_watchdog", "as_writer", "pooled", "raw", "target")

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
        self._watchdog = watchdog
        self._metrics = counts
        watchdog.watch(target, raw)

    def mark_broken(self) -> None:
        self._broken = True

    def give_back(self, *, broken: bool = False) -> None:
        self._watchdog.unwatch(self.target, self.raw)
        self._metrics.closed.add(self.target.instance_id)
        with contextlib.suppress(Exception):
            self.raw.close()


class _PooledLease:
    """A connection borrowed from its host's pool: giving it back returns it."""

    __slots__ = ("_pool", "_pooled", "_watchdog", "as_writer", "pooled", "raw", "target")

    def __init__(
        self, pool: HostPool, pooled: Pooled, watchdog: Watchdog, *, as_writer: bool = False
    ) -> None:
        self._pool = pool
        self._pooled = pooled
        self.raw = pooled.raw
        self.target = pooled.target
        self.pooled = True
        self.as_writer = as_writer
        self._watchdog = watchdog
        watchdog.watch(self.target, self.raw)

    def mark_broken(self) -> None:
        self._pooled.mark_broken()

    def give_back(self, *, broken: bool = False) -> None:
        self._watchdog.unwatch(self.target, self.raw)
        if broken:
            self._pooled.mark_broken()
        self._pool.release(self._pooled)


@dataclass(frozen=True, slots=True)
class _Choice:
    target: Target
    decision: routing.Decision


class Runtime:
    """A cluster's shared machinery; :func:`acquire` gives one, :func:`release` takes it back."""

    def __init__(
        self, spec: ConnectionSpec, credentials: auth.CredentialsSource | None = None
    ) -> None:
        settings = spec.settings
        self.spec = spec
        self.key = runtime_key(spec, credentials)
        self.credentials = auth.provider_from(spec, credentials)
        self.adapter = adapter_for(spec.engine)
        self.module: ModuleType = driver_module(spec.engine)
        self.resolver = Resolver(
            settings.dns_server or None, timeout=settings.dns_timeout, ttl_cap=settings.dns_ttl_cap
        )
        self.monitor = ClusterMonitor(
            spec, adapter=self.adapter, resolver=self.resolver, credentials=self.credentials
        )
        self._pools: PoolSet | None = None
        self._pools_lock = threading.Lock()
        # Round robin per request kind: one shared counter would send every read to the
        # same reader whenever writer and reader borrows alternate.
        self._turns = {role: itertools.count() for role in ("writer", "reader", "any")}
        self._rng = random.Random()
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
        # Events and metrics name the cluster alike: its cluster_id, else its endpoint.
        name = settings.cluster_id or spec.hosts[0][0]
        self.events = Events(name)
        self.watchdog = Watchdog(
            self._opener_for, self.adapter, settings.failure_detection_time, self._host_dead
        )
        self.metrics = metrics.Metrics(name, spec.engine)
        self._unregister_metrics = metrics.register(self.metrics_snapshot)

    @property
    def decisions(self) -> int:
        """Routing decisions so far (see `metrics_snapshot` for the details)."""
        return self.metrics.decisions()

    def metrics_snapshot(self) -> metrics.ClusterMetrics:
        """This cluster's counters and timings now (``Cluster.metrics()``)."""
        pools = self._pools
        return self.metrics.snapshot(
            pools=pools.totals() if pools is not None else {},
            monitor=self.monitor.stats(),
            resolver=self.resolver,
            response_ms=self.monitor.response_ms,
            topology=self.monitor.topology,
        )

    @property
    def pools(self) -> PoolSet:
        """The cluster's per-host pools, made on first use (``connect()`` alone needs none)."""
        pools = self._pools
        if pools is None:
            with self._pools_lock:
                if self._pools is None:
                    self._pools = PoolSet(
                        self._opener_for, settings=self.spec.settings, adapter=self.adapter
                    )
                    self.monitor.add_listener(self._pools.on_topology)
                pools = self._pools
        return pools

    # -- choosing a host ------------------------------------------------------------------
    def topology(self, timeout: float | None = None) -> Topology | None:
        """The current snapshot, waiting for the first one when there is none yet."""
        topo = self.monitor.topology
        if topo is None:
            topo = self.monitor.refresh_now(timeout)
        return topo

    def choose(self, role: str, exclude: frozenset[str] = frozenset()) -> _Choice:
        """The host that serves ``role`` now, or the driver's ``NoHostAvailable`` saying why."""
        topo = self.topology(self.spec.settings.connect_timeout)
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
        decision = routing.choose(topo, request, stats, turn=next(self._turns[role]), rng=self._rng)
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
            raise self.no_host(f"no host for a {role} connection: {decision.reason}{detail}")
        self.metrics.routed.add((role, decision.host.instance_id))
        if decision.fell_back:
            self.metrics.fallbacks.add(role)
            log.info("%s", decision.reason)
        return _Choice(_target(decision.host), decision)

    # -- connections ----------------------------------------------------------------------
    def _opener_for(self, target: Target) -> Callable[[float], Any]:
        def open_connection(timeout: float) -> Any:
            return self.open(target, timeout)

        return open_connection

    def open(self, target: Target, timeout: float | None = None) -> Any:
        """A new driver connection to ``target``: resolved here, TLS verifying its name."""
        settings = self.spec.settings
        deadline = settings.connect_timeout if timeout is None else timeout
        address = self.resolver.resolve(target.host).addresses[0] if settings.resolve else None
        raw = auth.connect(
            self.adapter,
            self.credentials,
            self.spec,
            target.host,
            target.port,
            address=address,
            timeout=deadline,
            autocommit=self.default_autocommit,
            error=self.auth_failed,
        )
        try:
            self._prepare_session(raw)
        except BaseException:
            with contextlib.suppress(Exception):
                raw.close()
            raise
        return raw

    @property
    def default_autocommit(self) -> bool:
        value = self.spec.driver_params.get("autocommit", False)
        return (
            value if isinstance(value, bool) else str(value).lower() in ("1", "true", "on", "yes")
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
        tried: set[str] = set(exclude)
        may_wait = role == "writer" and wait and self.spec.settings.failover
        waiting: _WriterWait | None = None  # made on the first failure: borrows stay lean
        while True:
            choice = self.choose(role, frozenset(tried))
            target = choice.target
            try:
                if not pooled:
                    raw = self._open_counted(target)
                    return _DirectLease(
                        raw, target, self.watchdog, self.metrics, as_writer=role == "writer"
                    )
                return self._borrow(target, as_writer=role == "writer")
            except HostDown as exc:
                if exc.auth:  # a login refused moments ago: the same error, not a retry
                    raise self.auth_failed(str(exc), host=target.host, port=target.port) from exc
                log.info("%s is down (%s); trying elsewhere", target.instance_id, exc)
                if may_wait:
                    waiting = waiting or _WriterWait(self)
                    waiting.wait(target, "disconnect", exc)
                    continue
                tried.add(target.instance_id)
            except PoolClosed as exc:
                if self.pools.closed:
                    raise self.pool_closed(f"{exc}: the cluster was closed") from exc
                continue  # the topology just dropped that host's pool: choose again
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
                tried.add(target.instance_id)

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
        if kind == "disconnect" and self._pools is not None:
            self._pools.pool(old).retire()  # its idle connections died with it
        topo = self.monitor.topology
        was_writer = (
            topo is not None
            and topo.writer is not None
            and (topo.writer.instance_id == old.instance_id)
        )
        exclude: frozenset[str] = frozenset()
        if role == "writer" or was_writer:
            self.monitor.enter_fast_mode(f"{kind} on {old.instance_id}")
            found = self.monitor.wait_for_writer(
                max(0.0, deadline - time.monotonic()),
                not_id=old.instance_id if kind == "read_only" else None,
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
        if role != "writer":
            exclude = frozenset({old.instance_id})
        delay = settings.backoff_initial
        while True:
            try:
                lease = self.lease(role, pooled=pooled, exclude=exclude, wait=False)
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

    def _fail_over_failed(
        self, role: str, started: float, reason: str, cause: BaseException
    ) -> Lease:
        self.metrics.failover_ended(role, "failed", time.monotonic() - started)
        after = round(time.monotonic() - started, 3)
        self.events.emit("failover_failed", role=role, after_s=after, reason=reason)
        error = self.no_writer if role == "writer" else self.no_host
        raise error(
            f"failover gave up after {after:.1f}s (failover_timeout="
            f"{self.spec.settings.failover_timeout:g}s): {reason}"
        ) from cause

    def _host_dead(self, target: Target, silent: float) -> None:
        self.metrics.unresponsive.add(target.instance_id)
        self.events.emit(
            "host_unresponsive", instance=target.instance_id, silent_s=round(silent, 3)
        )
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
        self._unregister_metrics()
        self.monitor.close()
        if self._pools is not None:
            self.monitor.remove_listener(self._pools.on_topology)
            self._pools.close()


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
            found = runtime.monitor.wait_for_writer(
                remaining, not_id=target.instance_id if kind == "read_only" else None
            )
        if found is None:
            raise runtime.no_writer(
                f"no writer answered within failover_timeout={settings.failover_timeout:g}s "
                f"(last: {target.instance_id}: {cause})"
            ) from cause
        # The monitor may still confirm the old writer for a moment: back off, with jitter.
        time.sleep(min(random.uniform(0, self._delay), max(0.0, remaining)))
        self._delay = min(settings.backoff_max, self._delay * 2)


def _target(host: Host) -> Target:
    return Target.of(host)


# -- the registry ----------------------------------------------------------------------------
_registry: dict[tuple[str, ...], list[Any]] = {}  # key -> [runtime, users, linger timer]
_lock = threading.Lock()


_KEY_SALT = os.urandom(16)


def runtime_key(
    spec: ConnectionSpec, credentials: auth.CredentialsSource | None = None
) -> tuple[str, ...]:
    """The registry key of ``spec``'s runtime: its cluster and the login it connects with.

    Connections of one runtime share pools, so specs that log in differently (user, password,
    database, driver parameters, auth settings, credentials provider) must not share one:
    otherwise a second ``connect()`` with another (or a wrong) password would get the first
    one's connections. The password enters only as a salted digest.
    """
    settings = spec.settings
    login = repr(
        (
            spec.user,
            spec.password,
            spec.database,
            sorted((name, repr(value)) for name, value in spec.driver_params.items()),
            settings.auth,
            settings.secret_id,
            settings.region,
        )
    )
    digest = hashlib.sha256(_KEY_SALT + login.encode()).hexdigest()[:16]
    provider = "" if credentials is None else f"provider-{id(credentials):x}"
    return (*cluster_key(spec), digest, provider)


def acquire(spec: ConnectionSpec, credentials: auth.CredentialsSource | None = None) -> Runtime:
    """The process's runtime for the cluster ``spec`` points at and its login (created on
    first use), with ``credentials`` as its provider when given (else from ``spec.auth``).

    The first spec of a cluster and login decides its monitor's and pools' settings.
    """
    key = runtime_key(spec, credentials)
    with _lock:
        entry = _registry.get(key)
        if entry is None:
            entry = [Runtime(spec, credentials), 0, None]
            _registry[key] = entry
        entry[1] += 1
        if entry[2] is not None:
            entry[2].cancel()
            entry[2] = None
        runtime: Runtime = entry[0]
        return runtime


def release(runtime: Runtime, *, linger: float = LINGER_SECONDS) -> None:
    """Give back a runtime from :func:`acquire`; the last release closes it ``linger`` s later."""
    with _lock:
        entry = _registry.get(runtime.key)
        if entry is None or entry[0] is not runtime:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        if linger <= 0:
            del _registry[runtime.key]
        else:
            timer = threading.Timer(linger, _expire, args=(runtime,))
            timer.daemon = True
            entry[2] = timer
            timer.start()
            return
    runtime.close()


def _expire(runtime: Runtime) -> None:
    with _lock:
        entry = _registry.get(runtime.key)
        if entry is None or entry[0] is not runtime or entry[1] > 0:
            return
        del _registry[runtime.key]
    runtime.close()


def close_all() -> None:
    """Close every runtime now (at interpreter exit, and in tests)."""
    with _lock:
        entries = list(_registry.values())
        _registry.clear()
    for entry in entries:
        if entry[2] is not None:
            entry[2].cancel()
        entry[0].close()


atexit.register(close_all)
