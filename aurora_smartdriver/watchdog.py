"""Hung-host detection: a node that stops answering is declared dead within a bounded time.

A node that accepts TCP but never answers (a stopped process, a cut network) leaves a statement
waiting for the operating system's TCP timeouts, which are minutes long. While connections to an
instance are in use, a probe thread asks that instance, every ``failure_detection_time / 3``,
to answer a ping on a connection of its own, with the same bound. When no probe has succeeded
for ``failure_detection_time``, the instance is declared dead and the sockets of every connection
in use on it are cut: the waiting statements fail as lost connections, and the failover
procedure takes over. The cost: one extra connection per instance in use, and one ping per
interval on it.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from aurora_smartdriver.drivers import DriverAdapter
from aurora_smartdriver.pool import Target

__all__ = ["HostWatch", "Watchdog"]

log = logging.getLogger("aurora_smartdriver.watchdog")

_LINGER = 30.0
"""Seconds a watch (its thread and probe connection) outlives the last connection in use."""


class HostWatch:
    """Probes one instance while it has connections in use; cuts them when it stops answering."""

    def __init__(
        self,
        target: Target,
        opener: Callable[[float], Any],
        adapter: DriverAdapter,
        detection_time: float,
        on_dead: Callable[[Target, float], None],
    ) -> None:
        self.target = target
        self._opener = opener
        self._adapter = adapter
        self._detection = detection_time
        self._interval = detection_time / 3.0
        self._on_dead = on_dead
        self._lock = threading.Lock()
        # Connections in use. Weak, so one its user dropped without giving it back cannot keep
        # the watch busy for ever; adding one twice counts it once.
        self._users: weakref.WeakSet[Any] = weakref.WeakSet()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.verdicts = 0

    def add(self, raw: Any) -> None:
        with self._lock:
            self._users.add(raw)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run,
                    name=f"aurora-smartdriver-watch {self.target.instance_id}",
                    daemon=True,
                )
                self._thread.start()

    def discard(self, raw: Any) -> None:
        with self._lock:
            self._users.discard(raw)

    def _busy(self) -> bool:
        with self._lock:
            return len(self._users) > 0

    def _run(self) -> None:
        probe: Any = None
        last_ok = time.monotonic()
        idle_since: float | None = None
        try:
            while True:
                started = time.monotonic()
                if not self._busy():
                    # Borrow-and-return traffic comes and goes: keep the thread and its probe
                    # connection for a while rather than starting both again on every borrow.
                    idle_since = started if idle_since is None else idle_since
                    if started - idle_since >= _LINGER:
                        with self._lock:
                            if not self._users:
                                self._thread = None
                                return
                    self._wake.wait(self._interval)
                    last_ok = time.monotonic()  # silence while unused is not a verdict
                    continue
                idle_since = None
                try:
                    if probe is None:
                        probe = self._opener(self._interval)
                    self._adapter.ping(probe, self._interval)
                    last_ok = time.monotonic()
                except Exception as exc:
                    if probe is not None:
                        self._adapter.abort(probe)
                        self._adapter.close(probe)
                        probe = None
                    silent = time.monotonic() - last_ok
                    log.debug("%s did not answer (%.1fs): %s", self.target.instance_id, silent, exc)
                    if silent >= self._detection:
                        self._declare_dead(silent)
                        last_ok = time.monotonic()
                self._wake.wait(max(0.0, self._interval - (time.monotonic() - started)))
        finally:
            if probe is not None:
                self._adapter.close(probe)

    def _declare_dead(self, silent: float) -> None:
        with self._lock:
            users = list(self._users)
        self.verdicts += 1
        log.warning(
            "%s has not answered for %.1fs: cutting %d connection(s)",
            self.target.instance_id,
            silent,
            len(users),
        )
        for raw in users:
            self._adapter.abort(raw)
        self._on_dead(self.target, silent)


class Watchdog:
    """The hung-host watches of one cluster, one per instance with connections in use."""

    def __init__(
        self,
        opener_for: Callable[[Target], Callable[[float], Any]],
        adapter: DriverAdapter,
        detection_time: float,
        on_dead: Callable[[Target, float], None],
    ) -> None:
        self._opener_for = opener_for
        self._adapter = adapter
        self._detection = detection_time
        self._on_dead = on_dead
        self._watches: dict[str, HostWatch] = {}
        self._lock = threading.Lock()

    def watch(self, target: Target, raw: Any) -> None:
        """``raw`` is in use on ``target`` from now on."""
        with self._lock:
            watch = self._watches.get(target.instance_id)
            if watch is None or watch.target != target:
                watch = HostWatch(
                    target, self._opener_for(target), self._adapter, self._detection, self._on_dead
                )
                self._watches[target.instance_id] = watch
        watch.add(raw)

    def unwatch(self, target: Target, raw: Any) -> None:
        """``raw`` is no longer in use."""
        with self._lock:
            watch = self._watches.get(target.instance_id)
        if watch is not None:
            watch.discard(raw)

    def verdicts(self) -> int:
        with self._lock:
            return sum(w.verdicts for w in self._watches.values())
