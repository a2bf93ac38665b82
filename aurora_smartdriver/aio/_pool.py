"""Per-host async pools: the sync pools' decisions, on one event loop.

The policy is the sync pool's, as pure functions (`aurora_smartdriver.pool._policy`): LIFO
over idle connections, a ping after ``validate_after_idle``, replacement after the jittered
``max_lifetime`` or ``max_idle``; at most ``max_concurrent_connects`` attempts to a host at
once, and after a failure none until the backoff has elapsed, when one borrower probes for
all while the others wait for its outcome (or, when they asked, go elsewhere at once with
`HostDown`). Lent connections come back to waiters first-come first-served.

A pool belongs to one event loop and has no lock: its state changes between awaits only.
Its statistics (`stats`, the sync pools' `PoolStats`) are read from any thread (an exporter's):
plain counters and thread-safe histograms, never a structure iterated while the loop changes it.
"""

from __future__ import annotations

import asyncio
import collections
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aurora_smartdriver._instruments import Histogram
from aurora_smartdriver.pool import HostDown, PoolClosed, PoolStats, PoolTimeout, Target
from aurora_smartdriver.pool._errors import describe_error
from aurora_smartdriver.pool._policy import (
    HEALTHY,
    BackoffPolicy,
    HostHealth,
    RecyclePolicy,
    admit,
    after_failure,
    expiry,
    recycle,
)
from aurora_smartdriver.pool._set import combine
from aurora_smartdriver.settings import Settings
from aurora_smartdriver.topology import Topology, TopologyDiff

if TYPE_CHECKING:
    from aurora_smartdriver.watchdog import HostWatch

__all__ = ["AsyncHostPool", "AsyncPoolSet", "PooledConn"]

Opener = Callable[[Target, float], Awaitable[Any]]
Closer = Callable[[Any], Coroutine[Any, Any, None]]
Pinger = Callable[[Any, float], Awaitable[None]]


class PooledConn:
    """A driver connection owned by a pool; the times are the loop's clock."""

    __slots__ = (
        "broken",
        "created_at",
        "due",
        "expires_at",
        "generation",
        "last_used",
        "raw",
        "watch",
    )

    def __init__(self, raw: Any, now: float, expires_at: float, generation: int) -> None:
        self.raw = raw
        self.created_at = now
        self.expires_at = expires_at
        self.last_used = now
        self.due = now
        self.generation = generation
        self.broken = False
        self.watch: HostWatch | None = None  # the hung-host watch it had when last lent


class AsyncHostPool:
    """The pool of one instance (see the module docstring)."""

    def __init__(
        self,
        target: Target,
        *,
        settings: Settings,
        opener: Opener,
        closer: Closer,
        pinger: Pinger,
        kind_of: Callable[[BaseException], str],
    ) -> None:
        """``kind_of(exc)``: the driver adapter's kind of a failed connect (``auth``...)."""
        self.target = target
        self._settings = settings
        self._recycle = RecyclePolicy.from_settings(settings)
        self._check_after = self._recycle.check_after
        self._backoff = BackoffPolicy.from_settings(settings)
        self._opener = opener
        self._closer = closer
        self._pinger = pinger
        self._kind_of = kind_of
        self._loop = asyncio.get_running_loop()
        self._idle: collections.deque[PooledConn] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[PooledConn | None]] = collections.deque()
        self._size = 0  # open or opening, lent or idle
        self._connecting = 0
        self._probing = False
        self._health: HostHealth = HEALTHY
        self._generation = 0
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.in_use = 0
        self.opened = 0
        """Connections opened over the pool's life."""
        self.max_connecting = 0
        """The most connection attempts under way at once (the connect gate's cap bounds it)."""
        self._closed_count = 0
        self._connect_failures = 0
        self._failure_kinds: dict[str, int] = {}
        self._connect_times = Histogram()
        self._fast_borrows = 0  # lent at once; the others are observed in _slow_borrows
        self._slow_borrows = Histogram()
        self._wait_total = 0.0
        self._borrow_failures: dict[str, int] = {}

    @property
    def down(self) -> bool:
        return self._health.down

    @property
    def open_connections(self) -> int:
        """Connections open right now, idle or lent (not attempts in progress)."""
        return self.opened - self._closed_count

    def take_idle(self) -> PooledConn | None:
        """The common case of `borrow`, with no await: the most recently used idle
        connection when no check is due on it; None when a borrow must do more."""
        idle = self._idle
        if idle and not self._closed and not self._health.failures:
            conn = idle[-1]
            if conn.generation == self._generation and self._loop.time() < conn.due:
                idle.pop()
                self.in_use += 1
                self._fast_borrows += 1
                return conn
        return None

    async def borrow(self, timeout: float, *, wait_if_down: bool) -> PooledConn:
        """A connection within ``timeout`` s: `PoolTimeout`, `PoolClosed`, `HostDown`
        (at once when ``wait_if_down`` is false and the host is known down), or the driver's
        error of this borrower's own failed attempt."""
        conn = self.take_idle()
        if conn is not None:
            return conn
        started = self._loop.time()
        try:
            conn = await self._borrow(timeout, wait_if_down, started)
        except PoolTimeout:
            self._failed("timeout")
            raise
        except HostDown:
            self._failed("host_down")
            raise
        except PoolClosed:
            self._failed("closed")
            raise
        except Exception:
            self._failed("error")
            raise
        waited = self._loop.time() - started
        self._slow_borrows.observe(waited)
        self._wait_total += max(waited, 0.0)
        return conn

    def _failed(self, reason: str) -> None:
        self._borrow_failures[reason] = self._borrow_failures.get(reason, 0) + 1

    async def _borrow(self, timeout: float, wait_if_down: bool, now: float) -> PooledConn:
        loop = self._loop
        deadline = now + timeout
        while True:
            if self._closed:
                raise PoolClosed(f"the pool of {self.target.instance_id} is closed")
            now = loop.time()
            conn = self._idle.pop() if self._idle else None
            if conn is not None:
                if conn.generation == self._generation and now < conn.due and not self.down:
                    self.in_use += 1
                    return conn
                lent = await self._check(conn, now)
                if lent is not None:
                    return lent
                continue
            if self._size < self._settings.pool_max_size:
                admission = admit(
                    self._health,
                    now,
                    connecting=self._connecting,
                    cap=self._settings.max_concurrent_connects,
                    probing=self._probing,
                )
                if admission in ("dial", "probe"):
                    return await self._dial(admission == "probe", deadline)
                if admission == "down" and (not wait_if_down or self._health.auth):
                    raise HostDown(
                        self.target.instance_id,
                        retry_in=self._health.retry_in(now),
                        last_error=self._health.last_error,
                        auth=self._health.auth,
                    )
            left = deadline - now
            if left <= 0:
                if self.down:
                    raise HostDown(
                        self.target.instance_id,
                        retry_in=self._health.retry_in(now),
                        last_error=self._health.last_error,
                    )
                raise PoolTimeout(
                    f"no connection to {self.target.instance_id} within {timeout:g}s "
                    f"(pool_max_size={self._settings.pool_max_size}, all in use)"
                )
            wait = left
            if self.down and not self._probing:
                wait = min(left, max(self._health.retry_in(now), 0.001))
            handed = await self._wait(wait)
            if handed is not None:
                return handed

    async def _check(self, conn: PooledConn, now: float) -> PooledConn | None:
        """An idle connection due for a check: lent if still good, else closed."""
        if conn.generation != self._generation or conn.broken:
            self._discard(conn)
            return None
        verdict = recycle(conn, now, self._recycle, host_suspect=self.down)
        if verdict in ("expired", "idle"):
            self._discard(conn)
            return None
        self.in_use += 1
        if verdict == "validate":
            try:
                await self._pinger(conn.raw, self._settings.connect_timeout)
            except BaseException as exc:  # cancelled too: neither lent nor lost
                self.in_use -= 1
                self._discard(conn)
                if not isinstance(exc, Exception):
                    raise
                return None
        return conn

    async def _wait(self, seconds: float) -> PooledConn | None:
        """Wait for a connection handed over, or for news (None), at most ``seconds``."""
        fut: asyncio.Future[PooledConn | None] = self._loop.create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(seconds):
                return await fut
        except TimeoutError:
            # Handed a connection just as the time ran out: it is this borrower's.
            return fut.result() if fut.done() and not fut.cancelled() else None
        except BaseException:
            if fut.done() and not fut.cancelled() and (handed := fut.result()) is not None:
                self.release(handed)  # the borrower was cancelled: give it to the next
            raise
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    async def _dial(self, probe: bool, deadline: float) -> PooledConn:
        loop = self._loop
        self._size += 1
        self._connecting += 1
        self.max_connecting = max(self.max_connecting, self._connecting)
        if probe:
            self._probing = True
        seen = self._health.failures
        generation = self._generation
        started = loop.time()
        try:
            left = max(deadline - started, 0.001)
            raw = await self._opener(self.target, min(self._settings.connect_timeout, left))
        except BaseException as exc:
            self._size -= 1
            if isinstance(exc, Exception):
                kind = self._kind_of(exc)
                self._connect_failures += 1
                self._failure_kinds[kind] = self._failure_kinds.get(kind, 0) + 1
                self._health = after_failure(
                    self._health,
                    now=loop.time(),
                    seen_failures=seen,
                    auth=kind == "auth",
                    error=describe_error(exc),
                    policy=self._backoff,
                    u=random.random(),
                )
            self._wake_all()
            raise
        finally:
            self._connecting -= 1
            if probe:
                self._probing = False
        self._health = HEALTHY
        self.opened += 1
        now = loop.time()
        self._connect_times.observe(now - started)
        conn = PooledConn(raw, now, expiry(now, self._recycle, random.random()), generation)
        self.in_use += 1
        self._wake_one()  # another attempt may start now (the connect gate)
        return conn

    def release(self, conn: PooledConn, *, broken: bool = False) -> None:
        """Take ``conn`` back (reset already done by the borrower): to the first waiter, or
        idle; closed when broken, retired or the pool is closed."""
        self.in_use -= 1
        if (
            broken
            or conn.broken
            or self._closed
            or conn.generation != self._generation
            or bool(getattr(conn.raw, "closed", False))  # a cancelled aiomysql call closes it
        ):
            self._discard(conn)
            self._wake_one()
            return
        now = self._loop.time()
        conn.last_used = now
        conn.due = min(conn.expires_at, now + self._check_after)  # `due_at`, inlined
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_use += 1
                fut.set_result(conn)
                return
        self._idle.append(conn)

    def retire(self) -> None:
        """Close idle connections now, lent ones when they come back (the node died or
        changed role)."""
        self._generation += 1
        while self._idle:
            self._discard(self._idle.pop())
        self._wake_all()

    async def close(self) -> None:
        self._closed = True
        idle = list(self._idle)
        self._idle.clear()
        self._size -= len(idle)
        self._closed_count += len(idle)
        self._wake_all()
        for conn in idle:
            await self._closer(conn.raw)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _discard(self, conn: PooledConn) -> None:
        self._size -= 1
        self._closed_count += 1
        task = self._loop.create_task(self._closer(conn.raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> PoolStats:
        """The pool's gauges and counters now, as the sync pools report theirs."""
        slow = self._slow_borrows.snapshot()
        return PoolStats(
            size=self._size,
            idle=len(self._idle),
            in_use=self.in_use,
            waiting=len(self._waiters),
            opened=self.opened,
            closed=self._closed_count,
            connecting=self._connecting,
            connect_failures=self._connect_failures,
            max_concurrent_connecting_seen=self.max_connecting,
            borrow_wait_total_s=self._wait_total,
            down=self._health.down,
            borrows=self._fast_borrows + slow.count,
            borrow_failures=MappingProxyType(dict(self._borrow_failures)),
            borrow_waits=slow.with_zeros(self._fast_borrows),
            connect_failure_kinds=MappingProxyType(dict(self._failure_kinds)),
            connect_times=self._connect_times.snapshot(),
        )

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)


class AsyncPoolSet:
    """One pool per instance, following the topology (roles changed: retired; gone: closed)."""

    def __init__(self, make: Callable[[Target], AsyncHostPool]) -> None:
        self._make = make
        self._pools: dict[str, AsyncHostPool] = {}
        self._seen: Topology | None = None
        self.closed = False
        # Pools dropped (their instance left or moved) whose lent connections may still be out;
        # once empty their counters go to _past. Read by `totals` from any thread: the lock.
        self._lock = threading.Lock()
        self._gone: list[AsyncHostPool] = []
        self._past: dict[str, PoolStats] = {}

    def pool(self, target: Target) -> AsyncHostPool:
        if self.closed:
            raise PoolClosed("the cluster's pools are closed")
        found = self._pools.get(target.instance_id)
        if found is None or (found.target is not target and found.target != target):
            if found is not None:
                self._drop(target.instance_id)
            found = self._pools[target.instance_id] = self._make(target)
        return found

    def existing(self, instance_id: str) -> AsyncHostPool | None:
        return self._pools.get(instance_id)

    def follow(self, topology: Topology | None, change: Callable[..., TopologyDiff]) -> None:
        """Bring the pools in line with ``topology`` if it changed since the last call."""
        seen = self._seen
        if topology is None or topology is seen:
            return
        self._seen = topology
        if seen is None:
            return
        diff = change(seen, topology)
        present = {h.instance_id for h in topology.hosts}
        for host in diff.roles_changed:
            pool = self._pools.get(host.instance_id)
            if pool is not None:
                pool.retire()
        for instance in list(self._pools):
            if instance not in present:
                self._drop(instance)

    def _drop(self, instance_id: str) -> None:
        pool = self._pools.pop(instance_id)
        pool.retire()
        pool._closed = True
        with self._lock:
            self._gone.append(pool)

    def totals(self) -> Mapping[str, PoolStats]:
        """Each instance's statistics over the set's life (`PoolSet.totals`): counters include
        dropped pools', gauges add up the pools that still hold connections."""
        with self._lock:
            still: list[AsyncHostPool] = []
            for pool in self._gone:
                if pool._size == 0:  # closed and empty: nothing can change its figures now
                    self._past = _added(self._past, {pool.target.instance_id: pool.stats()})
                else:
                    still.append(pool)
            self._gone = still
            totals = dict(self._past)
            live = [*list(self._pools.values()), *still]
        return MappingProxyType(_added_all(totals, live))

    def in_use(self) -> dict[str, int]:
        return {key: pool.in_use for key, pool in self._pools.items() if pool.in_use}

    def down(self) -> frozenset[str]:
        return frozenset(key for key, pool in self._pools.items() if pool.down)

    async def close(self) -> None:
        self.closed = True
        pools = list(self._pools.values())
        with self._lock:
            self._gone.extend(pools)
        self._pools.clear()
        for pool in pools:
            await pool.close()


def _added(totals: dict[str, PoolStats], more: Mapping[str, PoolStats]) -> dict[str, PoolStats]:
    out = dict(totals)
    for name, stats in more.items():
        before = out.get(name)
        out[name] = stats if before is None else combine(before, stats)
    return out


def _added_all(totals: dict[str, PoolStats], pools: list[AsyncHostPool]) -> dict[str, PoolStats]:
    out = dict(totals)
    for pool in pools:
        name, stats = pool.target.instance_id, pool.stats()
        before = out.get(name)
        out[name] = stats if before is None else combine(before, stats)
    return out
