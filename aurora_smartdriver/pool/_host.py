"""One instance's pool of raw driver connections: lending, recycling, the connect gate, backoff.

State lives in one place (`HostPool`'s fields) and changes only under one lock; I/O (connect,
ping, rollback, close) happens outside it, as in httpcore's pool: a thread decides under the
lock what it will do, does it unlocked, and reports back under the lock. The decisions
themselves are pure functions in `_policy`.

The hot path, lending an idle connection that is not due for any check and taking it back, is
a lock, a deque pop or append, and a few comparisons: each connection carries the instant its
next check is due (`_policy.due_at`), computed when it goes idle.

Waiting borrowers are served first come, first served, with one exception bounded in time (see
`HostPool`'s `overtake`): under the GIL, handing every returned connection to a sleeping thread
costs a thread switch per borrow, and with more threads than connections those switches, not
the pool, set the pace.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from aurora_smartdriver._instruments import Histogram, HistogramSnapshot, empty_histogram
from aurora_smartdriver.pool._errors import HostDown, PoolClosed, PoolTimeout, describe_error
from aurora_smartdriver.pool._policy import (
    HEALTHY,
    Admission,
    BackoffPolicy,
    RecyclePolicy,
    Verdict,
    admit,
    after_failure,
    expiry,
    recycle,
)

if TYPE_CHECKING:
    from aurora_smartdriver.drivers import DriverAdapter
    from aurora_smartdriver.settings import Settings
    from aurora_smartdriver.topology import Host
    from aurora_smartdriver.watchdog import HostWatch

__all__ = ["HostPool", "Listener", "Opener", "PoolStats", "Pooled", "Target"]

log = logging.getLogger("aurora_smartdriver.pool")

Opener = Callable[[float], Any]
"""Opens one raw driver connection within the given number of seconds, or raises."""

Listener = Callable[[str, Mapping[str, Any]], None]
"""Receives the pool's events: ``listener(name, fields)``; every event's fields include
``instance_id``. Called on the thread that caused the event, outside the pool's lock; an
exception it raises is logged and otherwise ignored.

========== ===========================================================================
name       fields
========== ===========================================================================
connect    duration_s: a connection was opened
connect_failed  error, duration_s: an attempt failed (error text, secrets masked)
borrow     wait_s: a connection was lent (0.0 when one was idle and not due for a check)
release    a connection came back and stays in the pool
discard    why: expired, idle, broken, retired or closed: a connection was closed
host_down  retry_in, failures, error: the host is known unreachable; nobody dials it for
           retry_in seconds
host_up    a connection succeeded after the host was down
========== ===========================================================================
"""

_FAILURE_REASONS: Mapping[type[BaseException], str] = MappingProxyType(
    {PoolTimeout: "timeout", HostDown: "host_down", PoolClosed: "closed"}
)
"""`PoolStats.borrow_failures` reasons by exception class; anything else is ``error``."""

_SWEEP_MAX = 60.0
"""Longest the maintenance thread sleeps: an idle connection is closed at most this late."""
_SWEEP_MIN = 0.005


@dataclass(frozen=True, slots=True)
class Target:
    """One database instance a pool connects to: its id in the topology and its endpoint."""

    instance_id: str
    host: str
    port: int

    @classmethod
    def of(cls, host: Host) -> Target:
        """The target for a topology `Host`."""
        return cls(host.instance_id, host.host, host.port)


class Pooled:
    """A raw driver connection owned by a pool, lent to one borrower at a time.

    `raw` is the driver's connection; the times are monotonic seconds (the pool's clock). A
    borrower that sees the connection die calls `mark_broken` before giving it back, so it is
    closed rather than lent again.
    """

    __slots__ = (
        "_broken",
        "_due",
        "_gen",
        "_lent",
        "_owner",
        "created_at",
        "expires_at",
        "last_used",
        "raw",
        "target",
        "watch",
    )

    def __init__(
        self,
        raw: Any,
        target: Target,
        *,
        created_at: float,
        expires_at: float,
        owner: HostPool,
        gen: int,
    ) -> None:
        self.raw = raw
        self.target = target
        self.created_at = created_at
        self.expires_at = expires_at
        self.last_used = created_at
        self._owner = owner
        self._gen = gen  # the owner's generation when opened; retire() moves the owner on
        self._lent = False
        self._broken = False
        self._due = created_at  # when it next needs a recycling decision (set when idle)
        self.watch: HostWatch | None = None  # the hung-host watch it had when last lent

    def mark_broken(self) -> None:
        """Say the connection is dead or in an unknown state: it is closed when released."""
        self._broken = True

    @property
    def broken(self) -> bool:
        """True once `mark_broken` was called."""
        return self._broken

    def __repr__(self) -> str:
        state = "lent" if self._lent else "idle"
        broken = ", broken" if self._broken else ""
        return f"<Pooled {self.target.instance_id} {state}{broken} raw={self.raw!r}>"


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of one pool's gauges and counters.

    `size` is what counts against `pool_max_size`: open connections (idle or in use) plus
    connection attempts in progress. `opened` and `closed` count connections over the pool's
    life, so `opened - closed == idle + in_use` at all times. `connect_failures` counts failed
    attempts; `max_concurrent_connecting_seen` is the most attempts ever in progress at once
    (never above `max_concurrent_connects`); `borrow_wait_total_s` sums the time borrowers
    spent waiting, validating or connecting.

    `borrows` counts connections lent; `borrow_waits` has one observation per borrow: 0.0 for
    one lent at once (an idle connection not due for a check), else the seconds it spent
    waiting, validating or connecting (so its count equals `borrows`). `borrow_failures`
    counts borrows that raised, by reason: ``timeout`` (`PoolTimeout`), ``host_down``
    (`HostDown`), ``closed`` (`PoolClosed`), ``error`` (the driver's error, such as refused
    credentials). `connect_failure_kinds` splits `connect_failures` by the driver adapter's
    error kind (``disconnect``, ``auth``, ``read_only``, ``other``); `connect_times` holds the
    durations of successful connection attempts.
    """

    size: int
    idle: int
    in_use: int
    waiting: int
    opened: int
    closed: int
    connecting: int
    connect_failures: int
    max_concurrent_connecting_seen: int
    borrow_wait_total_s: float
    down: bool
    borrows: int = 0
    borrow_failures: Mapping[str, int] = field(default_factory=lambda: _NO_COUNTS)
    borrow_waits: HistogramSnapshot = field(default_factory=empty_histogram)
    connect_failure_kinds: Mapping[str, int] = field(default_factory=lambda: _NO_COUNTS)
    connect_times: HistogramSnapshot = field(default_factory=empty_histogram)


_NO_COUNTS: Mapping[str, int] = MappingProxyType({})


class _Waiter:
    """A borrower waiting for a connection, or to re-decide when something changed.

    `signal` (under the pool's lock) wakes it; a connection handed over is in `pooled`. The
    wake-up is a bare lock held while nothing is signalled, the cheapest thing CPython can
    block on (an `Event` would add a condition and a lock per wait). Waiters are reused.
    """

    __slots__ = ("_gate", "pooled", "queued", "signalled", "since")

    def __init__(self) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()
        self.pooled: Pooled | None = None
        self.queued = False
        self.signalled = False
        self.since = 0.0

    def signal(self) -> None:
        """Wake the waiter (under the pool's lock); a second signal before it wakes is moot."""
        if not self.signalled:
            self.signalled = True
            self._gate.release()

    def wait(self, timeout: float) -> bool:
        """Block until signalled or `timeout` seconds pass (by the waiting thread, unlocked)."""
        if self._gate.acquire(timeout=timeout):
            self.signalled = False
            return True
        return False

    def rearm(self) -> None:
        """Forget a signal not waited for (under the pool's lock, by the waiting thread)."""
        if self.signalled:
            self._gate.acquire()
            self.signalled = False


class HostPool:
    """The pool of raw connections to one instance.

    `opener(timeout)` opens one raw connection (resolving names, authenticating and preparing
    the session are the caller's business); `reset(raw)` is the caller's session reset, run
    when a connection comes back, after the pool rolled back any open transaction. `clock` is
    the monotonic clock every recycling decision uses (tests pass a fake one); `rng` draws the
    jitter of lifetimes and backoffs from [0, 1).

    Borrowing lends the most recently returned idle connection (LIFO keeps a small warm set and
    lets the rest reach `max_idle`), pinging it first when it sat idle longer than
    `validate_after_idle`; otherwise it opens a new one if the pool is under `pool_max_size`
    and the connect gate admits it (at most `max_concurrent_connects` attempts at once, none
    while the host is in backoff after a failure), or waits for one to come back.

    Borrowers that wait are served in the order they came, except that one arriving while a
    connection is idle may take it ahead of them as long as the longest waiting has waited
    less than `overtake` seconds (default: the interpreter's thread switch interval,
    `sys.getswitchinterval()`, 5 ms). A connection given back then goes to the idle set and
    wakes the longest waiting borrower, who takes it unless a running thread did first: a
    woken thread cannot run before the running one lets go of the GIL, which it keeps for up
    to that interval, and handing the connection to the sleeper instead would make a running
    thread that borrows again wait for a thread switch on every borrow (at 16 threads and
    more, several times the cost of the borrow itself). Once the longest waiting borrower has
    waited `overtake`, connections given back are handed to it directly and newcomers queue
    behind it, so no borrower is overtaken for longer than that. `overtake=0` serves strictly
    in order.
    """

    def __init__(
        self,
        target: Target,
        opener: Opener,
        *,
        settings: Settings,
        adapter: DriverAdapter,
        reset: Callable[[Any], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        listener: Listener | None = None,
        rng: Callable[[], float] = random.random,
        overtake: float | None = None,
    ) -> None:
        self.target = target
        self._opener = opener
        self._overtake = sys.getswitchinterval() if overtake is None else overtake
        self._adapter = adapter
        self._reset = reset
        self._clock = clock
        self._listener = listener
        self._rng = rng
        self._recycle = RecyclePolicy.from_settings(settings)
        self._backoff = BackoffPolicy.from_settings(settings)
        self._check_after = self._recycle.check_after
        self._min = settings.pool_min_size
        self._max = settings.pool_max_size
        self._cap = settings.max_concurrent_connects
        self._borrow_timeout = settings.borrow_timeout
        self._connect_timeout = settings.connect_timeout
        self._ping_timeout = min(settings.failure_detection_time, settings.connect_timeout)
        lifetime = settings.max_lifetime * (1.0 - settings.max_lifetime_jitter)
        self._sweep_every = max(_SWEEP_MIN, min(_SWEEP_MAX, settings.max_idle, lifetime))

        self._lock = threading.Lock()
        self._idle: deque[Pooled] = deque()  # oldest use on the left, lent from the right
        self._waiters: deque[_Waiter] = deque()
        self._spare: list[_Waiter] = []  # waiters to reuse
        self._in_use = 0  # lent out, or being validated for a borrower
        self._connecting = 0
        self._size = 0  # idle + in use + connecting
        self._gen = 0
        self._closed = False
        self._health = HEALTHY
        self._probing = False
        self._opened = 0
        self._closed_count = 0
        self._connect_failures = 0
        self._max_connecting = 0
        self._wait_total = 0.0
        self._fast_borrows = 0  # lent at once; the others are observed in _slow_borrows
        self._slow_borrows = Histogram()
        self._connect_times = Histogram()
        self._borrow_failures: dict[str, int] = {}
        self._failure_kinds: dict[str, int] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if self._min > 0:
            self._start_maintenance()

    # -- state queries -------------------------------------------------------------------
    @property
    def in_use(self) -> int:
        """Connections lent out right now."""
        return self._in_use

    @property
    def open_connections(self) -> int:
        """Connections open right now, idle or lent (not attempts in progress)."""
        return self._opened - self._closed_count

    @property
    def down(self) -> bool:
        """True while the host is known unreachable and short-circuited: its last connection
        attempt failed and its backoff has not elapsed, or a probe is under way.

        Once the backoff has elapsed it reads False again although no attempt succeeded yet,
        so that a router skipping down hosts sends a borrower, who probes for everyone.
        """
        return self._short_circuited(self._clock())

    def _short_circuited(self, now: float) -> bool:
        health = self._health
        return health.failures > 0 and (self._probing or now < health.retry_at)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> PoolStats:
        slow = self._slow_borrows.snapshot()
        with self._lock:
            return PoolStats(
                size=self._size,
                idle=len(self._idle),
                in_use=self._in_use,
                waiting=len(self._waiters),
                opened=self._opened,
                closed=self._closed_count,
                connecting=self._connecting,
                connect_failures=self._connect_failures,
                max_concurrent_connecting_seen=self._max_connecting,
                borrow_wait_total_s=self._wait_total,
                down=self._short_circuited(self._clock()),
                borrows=self._fast_borrows + slow.count,
                borrow_failures=MappingProxyType(dict(self._borrow_failures)),
                borrow_waits=slow.with_zeros(self._fast_borrows),
                connect_failure_kinds=MappingProxyType(dict(self._failure_kinds)),
                connect_times=self._connect_times.snapshot(),
            )

    def __repr__(self) -> str:
        s = self.stats()
        state = "closed" if self._closed else ("down" if s.down else "up")
        return (
            f"<HostPool {self.target.instance_id} {state} size={s.size}/{self._max} "
            f"idle={s.idle} in_use={s.in_use} waiting={s.waiting}>"
        )

    # -- lending -------------------------------------------------------------------------
    def borrow(self, timeout: float | None = None, *, wait_if_down: bool = True) -> Pooled:
        """Lend a connection, waiting up to `timeout` seconds (default `borrow_timeout`).

        Raises `PoolTimeout` when none could be lent in time, `PoolClosed` after `close`, and
        `HostDown` when the host is known unreachable: at once if `wait_if_down` is False (the
        caller can go elsewhere) or the server refused the credentials, else when the time is
        up. A borrower whose own connection attempt fails gets `HostDown` (chained to the
        driver's error) unless it waits, except for refused credentials, which raise the
        driver's error itself. `timeout` bounds the waiting; an attempt already started gets
        the full `connect_timeout`.
        """
        now = self._clock()
        with self._lock:
            idle = self._idle
            waiters = self._waiters
            if (
                idle
                and now < idle[-1]._due
                and (not waiters or now - waiters[0].since < self._overtake)
            ):  # see _overdue_locked, inlined
                pooled = idle.pop()
                pooled._lent = True
                self._in_use += 1
                self._fast_borrows += 1
                if self._listener is None:
                    return pooled
            else:
                pooled = None
        if pooled is not None:
            self._emit("borrow", {"wait_s": 0.0})
            return pooled
        try:
            pooled = self._borrow_slow(now, timeout, wait_if_down)
        except Exception as exc:
            reason = _FAILURE_REASONS.get(type(exc), "error")
            with self._lock:
                self._borrow_failures[reason] = self._borrow_failures.get(reason, 0) + 1
            raise
        self._slow_borrows.observe(self._clock() - now)
        return pooled

    def _borrow_slow(self, start: float, timeout: float | None, wait_if_down: bool) -> Pooled:
        """Everything `borrow` does when no idle connection can be lent without a check."""
        limit = self._borrow_timeout if timeout is None else timeout
        deadline = start + limit
        waiter: _Waiter | None = None
        try:
            while True:
                closing: list[tuple[Pooled, str]] = []
                pooled: Pooled | None = None
                validate = False
                dial: tuple[int, int, bool] | None = None  # generation, failures seen, probe
                failure: Exception | None = None
                sleep = 0.0
                waiting = False
                now = self._clock()
                with self._lock:
                    if waiter is not None and waiter.pooled is not None:
                        pooled, waiter.pooled = waiter.pooled, None  # handed over, wait counted
                    elif self._closed:
                        failure = PoolClosed(f"the pool of {self.target.instance_id} is closed")
                    else:
                        waiters = self._waiters
                        if waiters and waiters[0] is not waiter and self._overdue_locked(now):
                            pooled = None  # what comes back is handed to the longest waiting
                        else:
                            pooled, validate = self._take_idle_locked(now, closing)
                        if pooled is not None and not validate:
                            self._wait_total += now - start
                        elif pooled is None and self._size < self._max:
                            admission = self._admit_locked(now)
                            if admission in ("dial", "probe"):
                                dial = self._reserve_locked(admission == "probe")
                            elif admission == "down":
                                health = self._health
                                if not wait_if_down or health.auth:
                                    failure = self._host_down_locked(now)
                                elif not self._probing:
                                    sleep = min(deadline, health.retry_at) - now
                        if pooled is None and dial is None and failure is None:
                            if now >= deadline:
                                failure = self._timeout_locked(now, limit)
                            else:
                                waiting = True
                                sleep = sleep if sleep > 0 else deadline - now
                                if waiter is None:
                                    spare = self._spare
                                    waiter = spare.pop() if spare else _Waiter()
                                    waiter.since = start
                                else:
                                    waiter.rearm()
                                if not waiter.queued:
                                    self._waiters.append(waiter)
                                    waiter.queued = True
                    if waiter is not None and waiter.queued and not waiting:
                        self._waiters.remove(waiter)
                        waiter.queued = False
                    if closing:
                        self._discarded_locked(len(closing))
                self._close_all(closing)

                if failure is not None:
                    raise failure
                if pooled is not None:
                    if validate and not self._validate(pooled):
                        continue
                    if validate:
                        self._add_wait(self._clock() - start)
                    if self._listener is not None:
                        self._emit("borrow", {"wait_s": self._clock() - start})
                    return pooled
                if dial is not None:
                    pooled = self._dial_for_borrower(dial, wait_if_down)
                    if pooled is None:
                        continue  # the host went down; wait for its backoff, or time out
                    self._add_wait(self._clock() - start)
                    if self._listener is not None:
                        self._emit("borrow", {"wait_s": self._clock() - start})
                    return pooled
                assert waiter is not None
                if waiter.wait(sleep) and waiter.pooled is not None:
                    # Handed over by `_give_locked`, which took the waiter off the queue and
                    # counted the wait: nothing else refers to it, so no lock is needed.
                    pooled, waiter.pooled = waiter.pooled, None
                    self._spare.append(waiter)
                    waiter = None
                    if self._listener is not None:
                        self._emit("borrow", {"wait_s": self._clock() - start})
                    return pooled
        finally:
            if waiter is not None:
                with self._lock:
                    if waiter.queued:
                        self._waiters.remove(waiter)
                        waiter.queued = False
                    handed, waiter.pooled = waiter.pooled, None
                    if handed is not None:  # handed over while we were leaving: pass it on
                        self._give_locked(handed, self._clock())
                    elif self._idle and self._waiters:
                        # It may have been woken for one of these (see _return_locked), or
                        # taken one of several: the next in line is woken for the rest.
                        self._kick_one_locked()
                    waiter.rearm()
                    self._spare.append(waiter)

    def _take_idle_locked(
        self, now: float, closing: list[tuple[Pooled, str]]
    ) -> tuple[Pooled | None, bool]:
        """The most recently used idle connection that may be lent, and whether to ping it
        first; stale ones found on the way are moved to `closing`."""
        idle = self._idle
        policy = self._recycle
        while idle:
            pooled = idle.pop()
            if now < pooled._due:
                verdict: Verdict = "keep"
            else:
                verdict = recycle(pooled, now, policy, host_suspect=self._health.failures > 0)
            if verdict in {"keep", "validate"}:
                pooled._lent = True
                self._in_use += 1
                return pooled, verdict == "validate"
            closing.append((pooled, verdict))
        return None, False

    def _validate(self, pooled: Pooled) -> bool:
        """Ping a connection lent to this thread; on failure close it and free its slot."""
        try:
            self._adapter.ping(pooled.raw, self._ping_timeout)
        except Exception as exc:
            log.info("%s: idle connection failed its check: %s", self.target.instance_id, exc)
            with self._lock:
                pooled._lent = False
                self._in_use -= 1
                self._discarded_locked(1)
            self._close_all([(pooled, "broken")])
            return False
        return True

    def _admit_locked(self, now: float) -> Admission:
        """May a connection attempt start now (``admit`` over this pool's gate state)?"""
        return admit(
            self._health, now, connecting=self._connecting, cap=self._cap, probing=self._probing
        )

    def _reserve_locked(self, probe: bool) -> tuple[int, int, bool]:
        """Count one connection attempt in: its slot, the gate, and the probe if it is one."""
        self._connecting += 1
        self._size += 1
        self._max_connecting = max(self._max_connecting, self._connecting)
        if probe:
            self._probing = True
        return self._gen, self._health.failures, probe

    def _dial_for_borrower(self, dial: tuple[int, int, bool], wait_if_down: bool) -> Pooled | None:
        """Open a connection in a reserved slot for the calling borrower.

        Returns it lent, or None when the attempt failed and the borrower waits for the host;
        raises what `borrow` documents otherwise.
        """
        try:
            return self._dial(*dial, lend=True)
        except PoolClosed:
            raise
        except Exception as exc:
            if self._adapter.error_kind(exc) == "auth":
                raise
            if not wait_if_down:
                with self._lock:
                    down = self._host_down_locked(self._clock())
                raise down from exc
            return None

    def _dial(self, gen: int, seen_failures: int, probe: bool, *, lend: bool) -> Pooled:
        """Open one connection in a slot reserved by `_reserve_locked` and report the outcome.

        The new connection is returned counted in use (`lend`, for a borrower), or handed on
        to a waiter or the idle set (for the maintenance thread, which ignores the return
        value). Raises the opener's error after recording the failure, or `PoolClosed` if the
        pool closed meanwhile (the connection is closed).
        """
        started = time.perf_counter()
        try:
            raw = self._opener(self._connect_timeout)
        except Exception as exc:
            self._connect_failed(exc, seen_failures, probe, time.perf_counter() - started)
            raise
        except BaseException:
            with self._lock:  # interrupted, not failed: give the slot back, judge nothing
                self._connecting -= 1
                self._size -= 1
                if probe:
                    self._probing = False
                self._kick_one_locked()
            raise
        duration = time.perf_counter() - started
        self._connect_times.observe(duration)
        now = self._clock()
        pooled = Pooled(
            raw,
            self.target,
            created_at=now,
            expires_at=expiry(now, self._recycle, self._rng()),
            owner=self,
            gen=gen,
        )
        check = now + self._check_after
        pooled._due = pooled.expires_at if pooled.expires_at < check else check
        start_thread = False
        with self._lock:
            self._connecting -= 1
            if probe:
                self._probing = False
            self._opened += 1
            came_up = self._health.failures > 0
            self._health = HEALTHY
            if came_up:
                self._kick_all_locked()
            else:
                self._kick_one_locked()  # a gate place is free
            closed = self._closed
            # A warm-up connection that outlived a retire() is not kept; a borrower's is lent
            # (it asked before) and closed when it comes back.
            retired = not lend and gen != self._gen
            if closed or retired:
                self._discarded_locked(1)
            else:
                pooled._lent = True
                self._in_use += 1
                if not lend:
                    self._give_locked(pooled, now)
                start_thread = self._thread is None
                if self._size < self._min:
                    self._wake.set()  # more to top up
        self._emit("connect", {"duration_s": duration})
        if came_up:
            log.info("%s is reachable again", self.target.instance_id)
            self._emit("host_up", {})
        if closed or retired:
            self._close_all([(pooled, "closed" if closed else "retired")])
            if closed:
                raise PoolClosed(f"the pool of {self.target.instance_id} is closed")
        if start_thread:
            self._start_maintenance()
        return pooled

    def _connect_failed(
        self, exc: Exception, seen_failures: int, probe: bool, duration: float
    ) -> None:
        """Record a failed attempt: free its slot, update the host's health, wake waiters."""
        error = describe_error(exc)
        kind = self._adapter.error_kind(exc)
        auth = kind == "auth"
        now = self._clock()
        with self._lock:
            self._connecting -= 1
            self._size -= 1
            self._connect_failures += 1
            self._failure_kinds[kind] = self._failure_kinds.get(kind, 0) + 1
            if probe:
                self._probing = False
            before = self._health
            health = after_failure(
                before,
                now=now,
                seen_failures=seen_failures,
                auth=auth,
                error=error,
                policy=self._backoff,
                u=self._rng(),
            )
            self._health = health
            if not before.down:
                for pooled in self._idle:  # no longer lent unchecked: see recycle(host_suspect)
                    pooled._due = -math.inf
            self._kick_all_locked()  # everyone re-decides: go elsewhere, or wait for the backoff
        self._emit("connect_failed", {"error": error, "duration_s": duration})
        if health.failures != before.failures:
            retry_in = health.retry_in(now)
            log.log(
                logging.WARNING if health.failures == 1 else logging.INFO,
                "%s is down (%d failed attempts; next in %.2fs): %s",
                self.target.instance_id,
                health.failures,
                retry_in,
                error,
            )
            self._emit(
                "host_down", {"retry_in": retry_in, "failures": health.failures, "error": error}
            )
            self._wake.set()  # the maintenance thread probes when the backoff ends

    # -- giving back ---------------------------------------------------------------------
    def release(self, pooled: Pooled) -> None:
        """Take back a lent connection.

        An open transaction is rolled back and the caller's `reset` runs; the connection is
        then kept for the next borrower (handed straight to the longest waiting one, if any),
        unless it is broken, expired, or from before a `retire` or `close`, in which case it
        is closed. A connection whose rollback or reset fails counts as broken.
        """
        if pooled._owner is not self or not pooled._lent:
            raise ValueError(f"{pooled!r} is not lent by this pool (released twice?)")
        raw = pooled.raw
        why: str | None = None
        if pooled._broken:
            why = "broken"
        elif pooled._gen != self._gen or self._closed:
            why = "retired"  # settled below; no point resetting a connection to be closed
        else:
            adapter = self._adapter
            try:
                if adapter.closed(raw):
                    why = "broken"
                else:
                    if adapter.in_transaction(raw):
                        adapter.rollback(raw)
                    if self._reset is not None:
                        self._reset(raw)
            except Exception as exc:
                log.info("%s: reset on release failed: %s", self.target.instance_id, exc)
                why = "broken"
        now = self._clock()
        with self._lock:
            if not pooled._lent:
                raise ValueError(f"{pooled!r} is not lent by this pool (released twice?)")
            if why != "broken":
                if self._closed:
                    why = "closed"
                elif pooled._gen != self._gen:
                    why = "retired"
                elif now >= pooled.expires_at:
                    why = "expired"
                else:
                    pooled.last_used = now
                    expires = pooled.expires_at
                    check = now + self._check_after
                    pooled._due = expires if expires < check else check
                    self._return_locked(pooled, now)
                    if self._listener is None:
                        return
            if why is not None:
                pooled._lent = False
                self._in_use -= 1
                self._discarded_locked(1)
        if why is None:
            self._emit("release", {})
            return
        self._close_all([(pooled, why)])

    def _return_locked(self, pooled: Pooled, now: float) -> None:
        """Take back a connection counted in use that stays in the pool.

        Handed to the longest waiting borrower once that one has waited `overtake`, else made
        idle with that borrower woken to take it (a running thread may take it first).
        """
        waiters = self._waiters
        if waiters:
            first = waiters[0]
            if now - first.since >= self._overtake:
                self._give_locked(pooled, now)
                return
            first.signal()  # once: a no-op while an earlier wake-up is not consumed
        pooled._lent = False
        self._in_use -= 1
        self._idle.append(pooled)

    def _overdue_locked(self, now: float) -> bool:
        """Whether the longest waiting borrower has waited `overtake`: from then on nobody
        takes a connection ahead of it."""
        waiters = self._waiters
        return bool(waiters) and now - waiters[0].since >= self._overtake

    def _give_locked(self, pooled: Pooled, now: float) -> None:
        """Hand a connection counted in use to the longest waiting borrower, or make it idle.

        Handing over directly (rather than making it idle and waking someone) keeps waiters
        first come, first served: a borrower arriving meanwhile cannot take it from them.
        """
        waiters = self._waiters
        if waiters:
            waiter = waiters.popleft()
            waiter.pooled = pooled
            waiter.queued = False
            self._wait_total += now - waiter.since
            waiter.signal()
        else:
            pooled._lent = False
            self._in_use -= 1
            self._idle.append(pooled)

    # -- retiring and closing ------------------------------------------------------------
    def retire(self) -> None:
        """Replace every connection: the host's role changed.

        Idle connections are closed now; lent ones are closed when they come back, as are
        those being opened meanwhile (a warm-up one at once). Later borrows get new
        connections.
        """
        with self._lock:
            if self._closed:
                return
            self._gen += 1
            closing = [(pooled, "retired") for pooled in self._idle]
            self._idle.clear()
            self._discarded_locked(len(closing))
        self._close_all(closing)

    def close(self) -> None:
        """Close the pool: idle connections now, lent ones when they come back.

        Waiting and later borrowers get `PoolClosed`. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            closing = [(pooled, "closed") for pooled in self._idle]
            self._idle.clear()
            self._discarded_locked(len(closing))
            self._kick_all_locked()
        self._wake.set()
        self._close_all(closing)

    # -- bookkeeping under the lock -------------------------------------------------------
    def _discarded_locked(self, count: int) -> None:
        """`count` connections already out of the idle set and the in-use count are going to
        be closed: free their slots, wake waiters that could use them, top up later."""
        if count:
            self._size -= count
            self._closed_count += count
            for _ in range(count):
                self._kick_one_locked()
            if self._min and self._size < self._min:
                self._wake.set()

    def _kick_one_locked(self) -> None:
        """Wake the longest waiting borrower not already woken, to re-decide."""
        for waiter in self._waiters:
            if not waiter.signalled:
                waiter.signal()
                return

    def _kick_all_locked(self) -> None:
        for waiter in self._waiters:
            waiter.signal()

    def _host_down_locked(self, now: float) -> HostDown:
        health = self._health
        return HostDown(
            self.target.instance_id,
            retry_in=0.0 if self._probing else health.retry_in(now),
            last_error=health.last_error,
            auth=health.auth,
        )

    def _timeout_locked(self, now: float, limit: float) -> Exception:
        if self._health.failures > 0:
            return self._host_down_locked(now)
        return PoolTimeout(
            f"no connection to {self.target.instance_id} within {limit:g}s: "
            f"{self._in_use} of pool_max_size={self._max} in use, {self._connecting} "
            f"connecting, {len(self._waiters)} waiting; raise pool_max_size or borrow_timeout, "
            "or give connections back sooner"
        )

    def _add_wait(self, seconds: float) -> None:
        with self._lock:
            self._wait_total += seconds

    # -- I/O outside the lock ------------------------------------------------------------
    def _close_all(self, closing: list[tuple[Pooled, str]]) -> None:
        """Close connections already taken out of the pool's books, and say why."""
        for pooled, why in closing:
            self._adapter.close(pooled.raw)
            if self._listener is not None:
                self._emit("discard", {"why": why})

    def _emit(self, name: str, fields: dict[str, Any]) -> None:
        listener = self._listener
        if listener is None:
            return
        fields["instance_id"] = self.target.instance_id
        try:
            listener(name, fields)
        except Exception:
            log.exception("pool listener failed on %s %s", name, fields)

    # -- maintenance ---------------------------------------------------------------------
    def _start_maintenance(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=_maintain_loop,
                args=(weakref.ref(self), self._wake),
                name=f"aurora-smartdriver-pool {self.target.instance_id}",
                daemon=True,
            )
        self._thread.start()

    def _maintain(self) -> float | None:
        """One round of background work: close stale idle connections, top up to
        `pool_min_size`. Returns how long to sleep before the next round, None to stop."""
        now = self._clock()
        closing: list[tuple[Pooled, str]] = []
        dial: tuple[int, int, bool] | None = None
        with self._lock:
            if self._closed:
                return None
            policy = self._recycle
            sleep = self._sweep_every
            if self._idle:
                spare = self._size - self._min  # idle connections that may go for idleness
                kept: deque[Pooled] = deque()
                for pooled in self._idle:
                    verdict = recycle(pooled, now, policy)
                    if verdict == "expired" or (verdict == "idle" and spare > 0):
                        closing.append((pooled, verdict))
                        spare -= 1
                        continue
                    kept.append(pooled)
                    stale = pooled.expires_at
                    idle_at = pooled.last_used + policy.max_idle
                    if now < idle_at < stale:
                        stale = idle_at
                    sleep = min(sleep, stale - now)
                if closing:
                    self._idle = kept
                    self._discarded_locked(len(closing))
            if self._size < self._min:
                admission = self._admit_locked(now)
                if admission in ("dial", "probe"):
                    dial = self._reserve_locked(admission == "probe")
                elif admission == "down" and not self._probing:
                    sleep = min(sleep, self._health.retry_at - now)
        self._close_all(closing)
        if dial is not None:
            try:
                self._dial(*dial, lend=False)
            except Exception as exc:
                log.debug("%s: warm-up connection failed: %s", self.target.instance_id, exc)
            return 0.0
        return max(_SWEEP_MIN, sleep)


def _maintain_loop(ref: weakref.ref[HostPool], wake: threading.Event) -> None:
    """The maintenance thread: rounds of `HostPool._maintain` until the pool closes or is
    garbage collected (the thread holds it only during a round, so it never keeps a
    forgotten pool alive, and it is a daemon, so it never keeps the process alive)."""
    while True:
        wake.clear()
        pool = ref()
        if pool is None:
            return
        try:
            sleep = pool._maintain()
        except Exception:
            log.exception("pool maintenance of %s failed", pool.target.instance_id)
            sleep = 1.0
        del pool
        if sleep is None:
            return
        if sleep > 0:
            wake.wait(sleep)
