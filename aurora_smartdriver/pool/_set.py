"""All the host pools of one cluster, kept in step with its topology."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aurora_smartdriver.pool._errors import PoolClosed
from aurora_smartdriver.pool._host import HostPool, Listener, Opener, PoolStats, Target

if TYPE_CHECKING:
    from aurora_smartdriver.drivers import DriverAdapter
    from aurora_smartdriver.settings import Settings
    from aurora_smartdriver.topology import Topology, TopologyDiff

__all__ = ["PoolSet", "combine"]


class PoolSet:
    """The `HostPool` of each instance of one cluster, keyed by instance id.

    Pools are created on first use (`pool`), so new readers need nothing. Registered as a
    monitor listener (`on_topology`), the set retires the pools of instances whose role
    changed, so that a demoted writer's connections are replaced rather than lent for writes,
    and closes the pools of instances that left the cluster or moved to another endpoint.

    Lookups take no lock: the mapping is replaced, never changed in place, when a pool is added
    or dropped.
    """

    def __init__(
        self,
        opener_for: Callable[[Target], Opener],
        *,
        settings: Settings,
        adapter: DriverAdapter,
        reset: Callable[[Any], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        listener: Listener | None = None,
    ) -> None:
        self._opener_for = opener_for
        self._settings = settings
        self._adapter = adapter
        self._reset = reset
        self._clock = clock
        self._listener = listener
        self._pools: dict[str, HostPool] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._gone: list[HostPool] = []  # dropped pools whose connections may still come back
        self._past: dict[str, PoolStats] = {}  # the counters of dropped pools, folded

    @property
    def closed(self) -> bool:
        """Whether `close` was called: no pool will be lent again."""
        return self._closed

    def pool(self, target: Target) -> HostPool:
        """The pool of `target`, created if there is none; raises `PoolClosed` after `close`.

        A pool for the same instance id at another endpoint is replaced (and closed).
        """
        pool = self._pools.get(target.instance_id)
        if (
            pool is not None
            and (pool.target is target or pool.target == target)
            and not pool.closed
        ):
            return pool
        with self._lock:
            if self._closed:
                raise PoolClosed("the cluster's pools are closed")
            old = self._pools.get(target.instance_id)
            if old is not None and old.target == target and not old.closed:
                return old
            pool = HostPool(
                target,
                self._opener_for(target),
                settings=self._settings,
                adapter=self._adapter,
                reset=self._reset,
                clock=self._clock,
                listener=self._listener,
            )
            self._pools = {**self._pools, target.instance_id: pool}
            if old is not None:
                self._gone.append(old)
        if old is not None:
            old.close()
        return pool

    def on_topology(self, diff: TopologyDiff, topology: Topology) -> None:
        """Bring the pools in line with a new topology (a `ClusterMonitor` listener).

        Instances whose role changed (a writer demoted, a reader promoted) have their pools
        retired: idle connections closed now, lent ones when they come back. Instances no
        longer in the topology, or now at another endpoint, have their pools closed and
        dropped. Membership is read from `topology` itself, so a change the set missed is
        still caught.
        """
        present = {h.instance_id: Target.of(h) for h in topology.hosts}
        changed_role = {h.instance_id for h in diff.roles_changed}
        with self._lock:
            pools = self._pools
            gone = [p for key, p in pools.items() if present.get(key) != p.target]
            if gone:
                self._pools = {key: p for key, p in pools.items() if present.get(key) == p.target}
                self._gone.extend(gone)
            retiring = [p for key, p in self._pools.items() if key in changed_role]
        for pool in gone:
            pool.close()
        for pool in retiring:
            pool.retire()

    def retire_all(self) -> None:
        """Replace every connection of every pool (a Blue/Green switchover moved the names)."""
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            pool.retire()

    def close(self) -> None:
        """Close every pool; later `pool` calls raise `PoolClosed`. Idempotent."""
        with self._lock:
            self._closed = True
            pools, self._pools = self._pools, {}
            self._gone.extend(pools.values())
        for pool in pools.values():
            pool.close()

    def stats(self) -> Mapping[str, PoolStats]:
        """Each pool's statistics, by instance id."""
        return MappingProxyType({key: pool.stats() for key, pool in self._pools.items()})

    def totals(self) -> Mapping[str, PoolStats]:
        """Each instance's statistics over the set's life, by instance id.

        Unlike `stats`, an instance's counters (opened, closed, borrows, failures, waits) include
        those of its earlier pools, dropped when it left the cluster or moved, and instances
        without a pool now are still listed. Gauges (size, idle, in use, ...) add up the pools
        that still hold connections, since a dropped pool's lent connections are still open.
        """
        with self._lock:
            pools = self._pools
            gone = self._gone
            if gone:
                still: list[HostPool] = []
                for pool in gone:
                    stats = pool.stats()
                    if pool.closed and stats.size == 0:  # nothing can change its counters now
                        key = pool.target.instance_id
                        stats = dataclasses.replace(stats, down=False, waiting=0)
                        before = self._past.get(key)
                        self._past[key] = stats if before is None else combine(before, stats)
                    else:
                        still.append(pool)
                self._gone = gone = still
            totals = dict(self._past)
            live = [*pools.values(), *gone]
        for pool in live:
            key = pool.target.instance_id
            stats = pool.stats()
            before = totals.get(key)
            totals[key] = stats if before is None else combine(before, stats)
        return MappingProxyType(totals)

    def holds(self, instance_id: str) -> bool:
        """Whether this set has a connection to the instance open now (idle or lent)."""
        pool = self._pools.get(instance_id)
        return pool is not None and pool.open_connections > 0

    def in_use(self) -> Mapping[str, int]:
        """Connections lent out per instance id (for the least-connections reader strategy)."""
        return MappingProxyType({key: pool.in_use for key, pool in self._pools.items()})

    def down(self) -> frozenset[str]:
        """Instance ids whose pools know the host is unreachable right now."""
        return frozenset(key for key, pool in self._pools.items() if pool.down)

    def __len__(self) -> int:
        return len(self._pools)


def combine(a: PoolStats, b: PoolStats) -> PoolStats:
    """Two pools' statistics as one: counts and gauges added, histograms merged, the most
    concurrent attempts the larger, down if either is."""
    return dataclasses.replace(
        a,
        size=a.size + b.size,
        idle=a.idle + b.idle,
        in_use=a.in_use + b.in_use,
        waiting=a.waiting + b.waiting,
        opened=a.opened + b.opened,
        closed=a.closed + b.closed,
        connecting=a.connecting + b.connecting,
        connect_failures=a.connect_failures + b.connect_failures,
        max_concurrent_connecting_seen=max(
            a.max_concurrent_connecting_seen, b.max_concurrent_connecting_seen
        ),
        borrow_wait_total_s=a.borrow_wait_total_s + b.borrow_wait_total_s,
        down=a.down or b.down,
        borrows=a.borrows + b.borrows,
        borrow_failures=_added(a.borrow_failures, b.borrow_failures),
        borrow_waits=a.borrow_waits.merged(b.borrow_waits),
        connect_failure_kinds=_added(a.connect_failure_kinds, b.connect_failure_kinds),
        connect_times=a.connect_times.merged(b.connect_times),
    )


def _added(a: Mapping[str, int], b: Mapping[str, int]) -> Mapping[str, int]:
    out = dict(a)
    for key, n in b.items():
        out[key] = out.get(key, 0) + n
    return MappingProxyType(out)
