"""Hung-host detection: a node that stops answering is declared dead within a bounded time.

A node that accepts TCP but never answers (a stopped process, a cut network) leaves a statement
waiting for the operating system's TCP timeouts, which are minutes long. While connections to an
instance are in use, a probe thread keeps a connection of its own to that instance and pings it
every ``failure_detection_time / 3``. When a ping sent on that connected probe gets no answer
at all and ``failure_detection_time`` has passed since the instance last answered, the instance
is declared dead and the sockets of every connection in use on it are cut: the waiting
statements fail as lost connections, and the failover procedure takes over. The cost: one extra
connection per instance in use, and one ping per interval on it.

An instance is watched at the address its connections in use went to, not at its name: a name
that follows the writer (a cluster endpoint, a `static` source's writer) may answer from another
node by the time a probe connects, and a probe there would hear the new node while the old one,
holding the connections, stays silent. So connections are grouped by the address they were
opened to (`Watchdog.opened`), each group has a watch of its own, its probe goes to that address
(the name still verified by TLS), and a verdict names that address.

Only silence on a connected probe is evidence. Failing to *open* the probe (a DNS failure,
``max_connections`` reached, a refused login, a ``session_init`` error, a connect timeout) says
nothing about the connections already open, and a ping answered with an error (the probe's
session was killed, the server closed it) is an answer: neither ever cuts a connection in use.
A long statement on a connection in use is never judged either: the probe is a separate
connection, so a healthy server busy with a slow query still answers the probe's pings.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from aurora_smartdriver.drivers import DriverAdapter
from aurora_smartdriver.pool import Target

__all__ = ["HostWatch", "OnDead", "Watchdog"]

try:
    from _weakref import (  # type: ignore[attr-defined]  # CPython: as WeakValueDictionary
        _remove_dead_weakref,
    )
except ImportError:  # pragma: no cover - other interpreters

    def _remove_dead_weakref(d: dict[Any, Any], key: Any) -> None:
        """Not atomic as CPython's is (an `add` reusing the id in between may be dropped)."""
        ref = d.get(key)
        if ref is not None and ref() is None:
            d.pop(key, None)


_FREE_THREADED = not getattr(sys, "_is_gil_enabled", lambda: True)()
"""A build without the GIL (3.13t): `HostWatch.add` and `discard` take the lock always."""

log = logging.getLogger("aurora_smartdriver.watchdog")

_LINGER = 30.0
"""Seconds a watch (its thread and probe connection) outlives the last connection in use."""
_OPEN_RETRY_MAX = 5.0
"""Longest wait between two attempts to open the probe, when opening keeps failing."""
_TIMER_SLACK = 0.02
"""A ping that failed this close to its bound (seconds) timed out: it heard nothing."""

OnDead = Callable[[Target, float, "str | None"], None]
"""The verdict's callback: the instance, seconds it was silent, the address it was silent at
(None when connections go by name, ``resolve=off``)."""


class HostWatch:
    """Probes one instance while it has connections in use; cuts them when it stops answering."""

    def __init__(
        self,
        target: Target,
        opener: Callable[[float], Any],
        adapter: DriverAdapter,
        detection_time: float,
        on_dead: OnDead,
        *,
        address: str | None = None,
    ) -> None:
        self.target = target
        self.address = address
        self._opener = opener
        self._adapter = adapter
        self._detection = detection_time
        self._interval = detection_time / 3.0
        self._on_dead = on_dead
        self._lock = threading.Lock()
        # Connections in use, by id. Weak, so one its user dropped without giving it back
        # cannot keep the watch busy for ever (`_in_use` skips it); adding one twice counts it
        # once. A pooled borrow adds one and discards it, so both are one dict operation each
        # with no lock in the common case (the GIL makes each atomic): see `add`, `discard`.
        self._users: dict[int, weakref.ref[Any]] = {}
        self._wake = threading.Event()
        self._closed = False
        self._lingering = False  # the thread saw nothing in use: it may end (see `add`)
        self._cutting = False  # a verdict is cutting the connections in use (see `discard`)
        self._thread: threading.Thread | None = None
        self._probing = False
        self.verdicts = 0
        self.open_failures = 0

    @property
    def _label(self) -> str:
        at = f" at {self.address}" if self.address else ""
        return f"{self.target.instance_id}{at}"

    @property
    def probing(self) -> bool:
        """Whether the probe is connected: only from then on can silence be noticed."""
        return self._probing

    def add(self, raw: Any) -> None:
        """``raw`` is in use on the instance from now on.

        Listed first, then the thread checked for: a thread ending for lack of use decides
        so under the lock after `_lingering` has been true for `_LINGER` s, so either it
        sees ``raw`` listed and stays, or this sees it lingering and waits for the lock.
        (Without a GIL, the order of these loads and stores is not given: the lock then.)"""
        if _FREE_THREADED:
            with self._lock:
                self._users[id(raw)] = weakref.ref(raw)
                self._start_locked()
            return
        self._users[id(raw)] = weakref.ref(raw)
        if self._thread is not None and not self._lingering:
            return
        with self._lock:
            self._start_locked()

    def _start_locked(self) -> None:
        """Start the thread unless it runs or the watch is closed (under the lock)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._run,
                name=f"aurora-smartdriver-watch {self._label}",
                daemon=True,
            )
            self._thread.start()

    def discard(self, raw: Any) -> None:
        """``raw`` is no longer in use (waits for a verdict cutting it to finish).

        A verdict sets `_cutting` before it lists the connections: seen false after the
        removal, the verdict lists them later (without ``raw``) or is over."""
        if _FREE_THREADED:
            with self._lock:
                self._users.pop(id(raw), None)
            return
        self._users.pop(id(raw), None)
        if self._cutting:
            with self._lock:  # the cut may hold ``raw``: it ends before raw is lent again
                pass

    def close(self) -> None:
        """Stop probing now and close the probe connection (the thread ends on its own)."""
        with self._lock:
            self._closed = True
        self._wake.set()

    def _busy(self) -> bool:
        with self._lock:
            self._forget_gone()
            return bool(self._users)

    def _forget_gone(self) -> None:
        """Drop the entries of connections gone without a `discard` (their user dropped
        them), without taking a strong reference to any (a last one let go here would run
        a driver connection's finalizer on this thread). Atomic per entry: an `add` reusing
        the id at that moment, without the lock, is kept."""
        for key in list(self._users):
            _remove_dead_weakref(self._users, key)

    def _in_use(self) -> list[Any]:
        """The connections in use that still exist (for a verdict to cut)."""
        self._forget_gone()
        return [raw for ref in list(self._users.values()) if (raw := ref()) is not None]

    def _run(self) -> None:
        probe: Any = None
        last_answer = time.monotonic()
        idle_since: float | None = None
        open_retry = self._interval
        try:
            while not self._closed:
                if not self._busy():
                    # Borrow-and-return traffic comes and goes: keep the thread and its probe
                    # connection for a while rather than starting both again on every borrow.
                    now = time.monotonic()
                    if idle_since is None:
                        idle_since, self._lingering = now, True
                    if now - idle_since >= _LINGER:
                        with self._lock:
                            self._forget_gone()
                            if not self._users:
                                self._thread = None
                                return
                    self._wake.wait(self._interval)
                    continue
                idle_since, self._lingering = None, False
                if probe is None:
                    probe = self._open_probe()
                    if probe is None:
                        self._wake.wait(open_retry)
                        open_retry = min(open_retry * 2, max(_OPEN_RETRY_MAX, self._interval))
                        continue
                    open_retry = self._interval
                    last_answer = time.monotonic()  # the handshake was an answer
                    self._wake.wait(self._interval)
                    continue
                sent = time.monotonic()
                bound = max(last_answer + self._detection - sent, self._interval)
                try:
                    self._adapter.ping(probe, bound)
                except Exception as exc:
                    silent = time.monotonic() - last_answer
                    heard_nothing = time.monotonic() - sent >= bound - _TIMER_SLACK
                    self._drop(probe)
                    probe = None
                    if not heard_nothing:
                        # An error is an answer (a killed session, a closing server): open a
                        # new probe; the connections in use will see a real failure themselves.
                        log.debug("%s: probe failed: %s", self._label, exc)
                        continue
                    # The ping's bound ran to the end of the window: the instance has been
                    # silent for failure_detection_time (a new probe could not tell more: a
                    # hung node's connect times out, and that is never a verdict).
                    log.debug("%s did not answer (%.1fs): %s", self._label, silent, exc)
                    if self._busy():
                        self._declare_dead(silent)
                    continue
                last_answer = time.monotonic()
                self._wake.wait(max(0.0, self._interval - (last_answer - sent)))
        finally:
            self._probing = False
            if probe is not None:
                self._adapter.close(probe)
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _open_probe(self) -> Any:
        """A new probe connection, or None when it cannot be opened (never a verdict)."""
        try:
            probe = self._opener(self._detection)
        except Exception as exc:
            self.open_failures += 1
            log.debug("%s: the probe cannot be opened: %s", self._label, exc)
            return None
        self._probing = True
        return probe

    def _drop(self, probe: Any) -> None:
        self._probing = False
        self._adapter.abort(probe)
        self._adapter.close(probe)

    def _declare_dead(self, silent: float) -> None:
        self.verdicts += 1
        # Cut under the lock: a connection given back meanwhile (discard comes before its
        # close) is either no longer listed or closed only after its cut, never a reused fd.
        with self._lock:
            self._cutting = True  # before the listing: see `discard`
            try:
                users = self._in_use()
                log.warning(
                    "%s has not answered for %.1fs: cutting %d connection(s)",
                    self._label,
                    silent,
                    len(users),
                )
                for raw in users:
                    self._adapter.abort(raw)
            finally:
                self._cutting = False
        self._on_dead(self.target, silent, self.address)


class Watchdog:
    """The hung-host watches of one cluster, one per instance and address with connections in use.

    `opener_for(target, address)` makes the probe opener of a watch: it connects to ``address``
    (verifying ``target.host``), or resolves ``target.host`` itself when ``address`` is None.
    """

    def __init__(
        self,
        opener_for: Callable[[Target, str | None], Callable[[float], Any]],
        adapter: DriverAdapter,
        detection_time: float,
        on_dead: OnDead,
        *,
        enabled: bool = True,
    ) -> None:
        self._enabled = enabled
        """False: nothing is watched (behind an RDS Proxy, whose queueing is silence too)."""
        self._opener_for = opener_for
        self._adapter = adapter
        self._detection = detection_time
        self._on_dead = on_dead
        self._watches: dict[tuple[str, str | None], HostWatch] = {}
        # The address each open driver connection went to (weak: gone with the connection).
        self._addresses: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def opened(self, raw: Any, address: str | None) -> None:
        """``raw`` was just opened to ``address`` (None: to its name, resolved by the driver)."""
        if address is not None:
            with self._lock:
                self._addresses[raw] = address

    def watch(self, target: Target, raw: Any, last: HostWatch | None = None) -> HostWatch | None:
        """``raw`` is in use on ``target`` from now on: the watch to tell when it no longer
        is (``HostWatch.discard``, what `unwatch` looks up), None when nothing is watched.

        ``last``: the watch ``watch`` gave for ``raw`` on ``target`` before (a pooled
        connection lent again), used without a lookup while it is still open: a watch is
        closed when another replaces it."""
        if not self._enabled:
            return None
        if last is not None and last.target is target and not last._closed:
            last.add(raw)
            return last
        with self._lock:
            key = (target.instance_id, self._addresses.get(raw))
            watch = self._watches.get(key)
            if watch is None or (watch.target is not target and watch.target != target):
                if watch is not None:
                    watch.close()
                watch = HostWatch(
                    target,
                    self._opener_for(target, key[1]),
                    self._adapter,
                    self._detection,
                    self._on_dead,
                    address=key[1],
                )
                self._watches[key] = watch
        watch.add(raw)
        return watch

    def unwatch(self, target: Target, raw: Any) -> None:
        """``raw`` is no longer in use."""
        with self._lock:
            watch = self._watches.get((target.instance_id, self._addresses.get(raw)))
        if watch is not None:
            watch.discard(raw)

    def probing(self, instance_id: str) -> bool:
        """Whether a probe of ``instance_id`` is connected (hung-host detection is armed)."""
        with self._lock:
            watches = [w for (iid, _), w in self._watches.items() if iid == instance_id]
        return any(w.probing for w in watches)

    def verdicts(self) -> int:
        with self._lock:
            return sum(w.verdicts for w in self._watches.values())

    def close(self) -> None:
        """Stop every watch (their threads end and their probes close shortly after)."""
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            watch.close()
