"""Connecting to an instance that may be paused (Aurora Serverless v2 at 0 ACUs): one knock.

A paused instance accepts TCP and resumes on the first connection request, which completes
only when it is back (about 15 s; longer after a day paused). To the driver that looks like a
hung host. With ``resume_timeout`` set, a connection attempt to an instance this process has no
recent connection to (`is_warm`: Aurora pauses only an instance left without connections for
at least `PAUSE_IDLE_MIN`) is a *knock*: the only attempt in flight to it, allowed up to
``resume_timeout``; other attempts to that instance wait for the knock's outcome instead of
dialling, so a resume is a bounded wait, not a dead host and not a connection storm.

The decisions (`decide`, `is_warm`, `timed_out`) are pure; `ResumeGate` holds the per-instance
state under one lock and does no I/O itself (the caller's ``open`` does).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

__all__ = [
    "PAUSE_IDLE_MIN",
    "AsyncResumeGate",
    "Budget",
    "ResumeGate",
    "decide",
    "is_warm",
    "timed_out",
]

PAUSE_IDLE_MIN = 300.0
"""Aurora's shortest idle time before an auto-pause (``SecondsUntilAutoPause`` is 300 to
86,400 s): an instance this process was connected to more recently cannot be paused."""

_TIMEOUT_SHARE = 0.95
"""A knock that failed after this share of its budget ran out of time (drivers name a timeout
each their own way; the clock is the same for all)."""

Step = Literal["plain", "knock", "wait"]
T = TypeVar("T")


def is_warm(now: float, last_alive: float | None, *, holds_connections: bool) -> bool:
    """Whether an instance cannot be paused: this process holds a connection to it, or had one
    less than `PAUSE_IDLE_MIN` seconds ago (`last_alive`, on the same clock as `now`)."""
    if holds_connections:
        return True
    return last_alive is not None and now - last_alive < PAUSE_IDLE_MIN


def decide(resume_timeout: float, *, warm: bool, knocking: bool) -> Step:
    """How to open a connection: ``plain`` (within ``connect_timeout``, as always), ``knock``
    (the one attempt allowed up to ``resume_timeout``) or ``wait`` (for the knock under way)."""
    if resume_timeout <= 0 or warm:
        return "plain"
    return "wait" if knocking else "knock"


def timed_out(elapsed: float, budget: float) -> bool:
    """Whether an attempt that failed after `elapsed` seconds ran out of its `budget`."""
    return elapsed >= budget * _TIMEOUT_SHARE


@dataclass(slots=True)
class _Knock:
    """One knock under way; `outcome` is set, and `done` signalled, when it ends."""

    started: float
    done: threading.Event
    outcome: Literal["resumed", "timeout", "failed"] | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """One caller's resume settings and what to do at a knock's end: `make_error(message)`
    builds the error for a knock that ran out of ``resume_timeout`` (raised, chained to the
    driver's, by the knocker and by every attempt that waited for it); `on_resumed` and
    `on_timeout` receive the instance id and the seconds waited."""

    resume_timeout: float
    connect_timeout: float
    make_error: Callable[[str], Exception]
    on_resumed: Callable[[str, float], None]
    on_timeout: Callable[[str, float], None]


class ResumeGate:
    """Per-instance knocks of one cluster, shared by every connection attempt of the process
    (each with its own `Budget`: settings stay the connection's).

    `open(instance_id, attempt, timeout, budget, holds_connections=...)` runs
    ``attempt(seconds)`` (the caller's connect) as `decide` says.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._alive: dict[str, float] = {}  # instance id -> last successful connect
        self._knocks: dict[str, _Knock] = {}

    def open(
        self,
        instance_id: str,
        attempt: Callable[[float], T],
        timeout: float,
        budget: Budget,
        *,
        holds_connections: bool = False,
    ) -> T:
        """``attempt(seconds)``'s connection, as a plain attempt, a knock, or after one."""
        now = self._clock()
        with self._lock:
            knock = self._knocks.get(instance_id)
            warm = is_warm(now, self._alive.get(instance_id), holds_connections=holds_connections)
            step = decide(budget.resume_timeout, warm=warm, knocking=knock is not None)
            if step == "knock":
                knock = self._knocks[instance_id] = _Knock(now, threading.Event())
        if step == "wait":
            assert knock is not None
            # The knock ends within its budget (a driver may overrun it a little): wait for it.
            left = knock.started + budget.resume_timeout - now
            knock.done.wait(max(0.0, left) + budget.connect_timeout)
            if knock.outcome == "timeout":
                waited = self._clock() - knock.started
                raise budget.make_error(_message(instance_id, budget, waited))
        if step != "knock":
            raw = attempt(timeout)
            self._mark_alive(instance_id)
            return raw
        assert knock is not None
        return self._knock(instance_id, knock, attempt, max(timeout, budget.resume_timeout), budget)

    def _knock(
        self,
        instance_id: str,
        knock: _Knock,
        attempt: Callable[[float], T],
        seconds: float,
        budget: Budget,
    ) -> T:
        outcome: Literal["resumed", "timeout", "failed"] = "failed"
        try:
            try:
                raw = attempt(seconds)
            except Exception as exc:
                waited = self._clock() - knock.started
                if not timed_out(waited, seconds):
                    raise
                outcome = "timeout"
                budget.on_timeout(instance_id, waited)
                raise budget.make_error(_message(instance_id, budget, waited)) from exc
            outcome = "resumed"
            waited = self._clock() - knock.started
            self._mark_alive(instance_id)
            if waited > budget.connect_timeout:
                budget.on_resumed(instance_id, waited)
            return raw
        finally:
            with self._lock:
                knock.outcome = outcome
                if self._knocks.get(instance_id) is knock:
                    del self._knocks[instance_id]
            knock.done.set()

    def _mark_alive(self, instance_id: str) -> None:
        now = self._clock()
        with self._lock:
            self._alive[instance_id] = now

    def knocking(self) -> frozenset[str]:
        """Instances with a knock under way (reads prefer other readers meanwhile)."""
        knocks = self._knocks
        return frozenset(knocks) if knocks else frozenset()

    def last_alive(self, instance_id: str) -> float | None:
        """When a connection to the instance last succeeded (the gate's clock), if ever."""
        with self._lock:
            return self._alive.get(instance_id)


@dataclass(slots=True)
class _AsyncKnock:
    started: float
    done: asyncio.Event
    outcome: Literal["resumed", "timeout", "failed"] | None = None


class AsyncResumeGate:
    """`ResumeGate` for one event loop (aurora_smartdriver.aio): knocks are the loop's own, the
    record of recent connections is the process's (`shared`), so sync and async callers agree
    on which instances cannot be paused."""

    def __init__(self, shared: ResumeGate) -> None:
        self._shared = shared
        self._knocks: dict[str, _AsyncKnock] = {}

    def knocking(self) -> frozenset[str]:
        """Instances with a knock under way on this loop, or on the sync side."""
        return frozenset(self._knocks) | self._shared.knocking()

    async def open(
        self,
        instance_id: str,
        attempt: Callable[[float], Awaitable[T]],
        timeout: float,
        budget: Budget,
        *,
        holds_connections: bool = False,
    ) -> T:
        """`ResumeGate.open` on the loop."""
        shared = self._shared
        now = shared._clock()
        knock = self._knocks.get(instance_id)
        warm = is_warm(now, shared.last_alive(instance_id), holds_connections=holds_connections)
        step = decide(budget.resume_timeout, warm=warm, knocking=knock is not None)
        if step == "wait":
            assert knock is not None
            left = knock.started + budget.resume_timeout - now
            try:
                async with asyncio.timeout(max(0.0, left) + budget.connect_timeout):
                    await knock.done.wait()
            except TimeoutError:
                pass
            if knock.outcome == "timeout":
                waited = shared._clock() - knock.started
                raise budget.make_error(_message(instance_id, budget, waited))
        if step != "knock":
            raw = await attempt(timeout)
            shared._mark_alive(instance_id)
            return raw
        knock = self._knocks[instance_id] = _AsyncKnock(now, asyncio.Event())
        seconds = max(timeout, budget.resume_timeout)
        outcome: Literal["resumed", "timeout", "failed"] = "failed"
        try:
            try:
                raw = await attempt(seconds)
            except Exception as exc:
                waited = shared._clock() - knock.started
                if not timed_out(waited, seconds):
                    raise
                outcome = "timeout"
                budget.on_timeout(instance_id, waited)
                raise budget.make_error(_message(instance_id, budget, waited)) from exc
            outcome = "resumed"
            waited = shared._clock() - knock.started
            shared._mark_alive(instance_id)
            if waited > budget.connect_timeout:
                budget.on_resumed(instance_id, waited)
            return raw
        finally:
            knock.outcome = outcome
            if self._knocks.get(instance_id) is knock:
                del self._knocks[instance_id]
            knock.done.set()


def _message(instance_id: str, budget: Budget, waited: float) -> str:
    return (
        f"{instance_id} did not answer within resume_timeout={budget.resume_timeout:g}s "
        f"(waited {waited:.1f}s): it accepted the connection but never completed the "
        "handshake, as a paused Aurora Serverless v2 instance does until it has resumed, "
        "or a hung one; raise resume_timeout if it was resuming"
    )
