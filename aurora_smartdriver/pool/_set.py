"""All the host pools of one cluster, kept in step with its topology."""

from __future__ import annotations

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

__all__ = ["PoolSet"]


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

    def pool(self, target: Target) -> HostPool:
        """The pool of `target`, created if there is none; raises `PoolClosed` after `close`.

        A pool for the same instance id at another endpoint is replaced (and closed).
        """
        pool = self._pools.get(target.instance_id)
        if pool is not None and pool.target == target and not pool.closed:
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
            retiring = [p for key, p in self._pools.items() if key in changed_role]
        for pool in gone:
            pool.close()
        for pool in retiring:
            pool.retire()

    def close(self) -> None:
        """Close every pool; later `pool` calls raise `PoolClosed`. Idempotent."""
        with self._lock:
            self._closed = True
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()

    def stats(self) -> Mapping[str, PoolStats]:
        """Each pool's statistics, by instance id."""
        return MappingProxyType({key: pool.stats() for key, pool in self._pools.items()})

    def in_use(self) -> Mapping[str, int]:
        """Connections lent out per instance id (for the least-connections reader strategy)."""
        return MappingProxyType({key: pool.in_use for key, pool in self._pools.items()})

    def down(self) -> frozenset[str]:
        """Instance ids whose pools know the host is unreachable right now."""
        return frozenset(key for key, pool in self._pools.items() if pool.down)

    def __len__(self) -> int:
        return len(self._pools)
