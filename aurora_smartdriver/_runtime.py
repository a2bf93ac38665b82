"""What a process shares per cluster: the monitor, the pools, the resolver and the router's state.

Every ``connect()``, ``Cluster`` and engine that points at one cluster (by ``monitor.cluster_key``)
uses one ``Runtime``; it lives while something uses it and lingers briefly after the last user
leaves, so a program that connects and disconnects in a loop keeps one monitor instead of
starting one per connection.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from aurora_smartdriver import routing
from aurora_smartdriver._dbapi import driver_module, error_class
from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.errors import (
    FailoverSucceeded,
    NoHostAvailable,
    NoWriterAvailable,
    TransactionOutcomeUnknown,
)
from aurora_smartdriver.events import Events
from aurora_smartdriver.monitor import ClusterMonitor, cluster_key
from aurora_smartdriver.pool import HostDown, HostPool, PoolClosed, Pooled, PoolSet, Target
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

    def mark_broken(self) -> None: ...

    def give_back(self, *, broken: bool = False) -> None: ...


class _DirectLease:
    """A connection of its own (``connect()``): giving it back closes it."""

    __slots__ = ("_broken", "_watchdog", "pooled", "raw", "target")

    def __init__(self, raw: Any, target: Target, watchdog: Watchdog) -> None:
        self.raw = raw
        self.target = target
        self.pooled = False
        self._broken = False
        self._watchdog = watchdog
        watchdog.watch(target, raw)

    def mark_broken(self) -> None:
        self._broken = True

    def give_back(self, *, broken: bool = False) -> None:
        self._watchdog.unwatch(self.target, self.raw)
        with contextlib.suppress(Exception):
            self.raw.close()


class _PooledLease:
    """A connection borrowed from its host's pool: giving it back returns it."""

    __slots__ = ("_pool", "_pooled", "_watchdog", "pooled", "raw", "target")

    def __init__(self, pool: HostPool, pooled: Pooled, watchdog: Watchdog) -> None:
        self._pool = pool
        self._pooled = pooled
        self.raw = pooled.raw
        self.target = pooled.target
        self.pooled = True
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

    def __init__(self, spec: ConnectionSpec) -> None:
        settings = spec.settings
        self.spec = spec
        self.key = cluster_key(spec)
        self.adapter = adapter_for(spec.engine)
        self.module: ModuleType = driver_module(spec.engine)
        self.resolver = Resolver(
            settings.dns_server or None, timeout=settings.dns_timeout, ttl_cap=settings.dns_ttl_cap
        )
        self.monitor = ClusterMonitor(spec, adapter=self.adapter, resolver=self.resolver)
        self._pools: PoolSet | None = None
        self._pools_lock = threading.Lock()
        self._turns = itertools.count()
        self._rng = random.Random()
        self._requests = {
            role: routing.request_from_settings(settings, role)
            for role in ("writer", "reader", "any")
        }
        self.no_host = error_class(spec.engine, NoHostAvailable)
        self.no_writer = error_class(spec.engine, NoWriterAvailable)
        self.failover_succeeded = error_class(spec.engine, FailoverSucceeded)
        self.outcome_unknown = error_class(spec.engine, TransactionOutcomeUnknown)
        self.events = Events(spec.hosts[0][0])
        self.watchdog = Watchdog(
            self._opener_for, self.adapter, settings.failure_detection_time, self._host_dead
        )
        self.decisions = 0

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
        stats = (
            routing.HostStats(in_use=pools.in_use(), down=pools.down())
            if pools is not None and role != "writer"
            else _NO_STATS
        )
        decision = routing.choose(topo, request, stats, turn=next(self._turns), rng=self._rng)
        self.decisions += 1
        if isinstance(decision, routing.NoHost):
            last = self.monitor.stats().last_error
            detail = f" (monitor: {last})" if topo is None and last else ""
            raise self.no_host(f"no host for a {role} connection: {decision.reason}{detail}")
        if decision.fell_back:
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
        raw = self.adapter.connect(
            self.spec,
            target.host,
            target.port,
            address=address,
            timeout=deadline,
            autocommit=self.default_autocommit,
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

    def lease(self, role: str, *, pooled: bool, exclude: frozenset[str] = frozenset()) -> Lease:
        """A driver connection for ``role``: borrowed from its host's pool, or of its own."""
        tried: set[str] = set(exclude)
        while True:
            choice = self.choose(role, frozenset(tried))
            target = choice.target
            try:
                if not pooled:
                    return _DirectLease(self.open(target), target, self.watchdog)
                return self._borrow(target)
            except HostDown as exc:
                if exc.auth:
                    raise
                log.info("%s is down (%s); trying elsewhere", target.instance_id, exc)
                tried.add(target.instance_id)
            except PoolClosed:
                continue  # the topology just dropped that host's pool: choose again
            except self.adapter.Error as exc:
                kind = self.adapter.error_kind(exc)
                if kind == "auth" or role == "writer":
                    raise
                self.suspect(target, f"{kind}: {exc}")
                tried.add(target.instance_id)

    def _borrow(self, target: Target) -> Lease:
        pool = self.pools.pool(target)
        return _PooledLease(pool, pool.borrow(wait_if_down=False), self.watchdog)

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
                return self.lease(role, pooled=pooled, exclude=exclude)
            except (self.adapter.Error, NoHostAvailable, OSError) as exc:
                if self.adapter.error_kind(exc) == "auth" or time.monotonic() >= deadline:
                    return self._fail_over_failed(role, started, str(exc), cause)
                time.sleep(min(random.uniform(0, delay), max(0.0, deadline - time.monotonic())))
                delay = min(settings.backoff_max, delay * 2)
                if role == "writer":
                    self.monitor.refresh_now(timeout=max(0.0, deadline - time.monotonic()))

    def _fail_over_failed(
        self, role: str, started: float, reason: str, cause: BaseException
    ) -> Lease:
        after = round(time.monotonic() - started, 3)
        self.events.emit("failover_failed", role=role, after_s=after, reason=reason)
        error = self.no_writer if role == "writer" else self.no_host
        raise error(
            f"failover gave up after {after:.1f}s (failover_timeout="
            f"{self.spec.settings.failover_timeout:g}s): {reason}"
        ) from cause

    def _host_dead(self, target: Target, silent: float) -> None:
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
        self.monitor.close()
        if self._pools is not None:
            self.monitor.remove_listener(self._pools.on_topology)
            self._pools.close()


_NO_STATS = routing.HostStats()


def _target(host: Host) -> Target:
    return Target.of(host)


# -- the registry ----------------------------------------------------------------------------
_registry: dict[tuple[str, ...], list[Any]] = {}  # key -> [runtime, users, linger timer]
_lock = threading.Lock()


def acquire(spec: ConnectionSpec) -> Runtime:
    """The process's runtime for the cluster ``spec`` points at (created on first use).

    The first spec of a cluster decides its monitor's and pools' settings.
    """
    key = cluster_key(spec)
    with _lock:
        entry = _registry.get(key)
        if entry is None:
            entry = [Runtime(spec), 0, None]
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
