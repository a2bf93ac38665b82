"""Replica lag for MariaDB at any resolution (its ``MASTER_DELAY`` counts whole seconds).

A thread of the lab's process holds a replica's SQL thread back: every few milliseconds it
notes the writer's binary log coordinates, and lets the replica apply exactly up to the
coordinates the writer had ``seconds`` ago (``START SLAVE SQL_THREAD UNTIL MASTER_LOG_FILE=...,
MASTER_LOG_POS=...``; the SQL thread stops there by itself). The I/O thread keeps receiving, so
semi-synchronous commits are not slowed; reads on the replica see the writer as it was
``seconds`` ago, give or take one step.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("aurora_smartdriver.lab.lag")

STEP = 0.005
"""Seconds between two looks at the writer and the replica."""

Coordinates = tuple[str, int]

_alive: weakref.WeakSet[Lagger] = weakref.WeakSet()


@atexit.register
def _let_go() -> None:
    """At exit, no replica stays held back by a thread that is about to vanish."""
    for lagger in list(_alive):
        with contextlib.suppress(Exception):
            lagger.stop()


def _coordinates(cur: Any) -> Coordinates:
    cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    return (str(row[0]), int(row[1]))


def _sql_running(cur: Any) -> bool:
    cur.execute("SHOW SLAVE STATUS")
    row = cur.fetchone()
    if row is None:
        return False
    status = dict(zip((d[0] for d in cur.description), row, strict=True))
    return str(status.get("Slave_SQL_Running")) == "Yes"


class Lagger:
    """Keeps one MariaDB replica ``seconds`` behind its writer until :meth:`stop`."""

    def __init__(
        self,
        connect_writer: Callable[[], Any],
        connect_replica: Callable[[], Any],
        seconds: float,
        name: str,
    ) -> None:
        self.seconds = seconds
        self._writer = connect_writer()
        self._replica = connect_replica()
        with self._replica.cursor() as cur:
            cur.execute("STOP SLAVE SQL_THREAD")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lab-lag-{name}", daemon=True)
        self._thread.start()
        _alive.add(self)

    def _run(self) -> None:
        seen: deque[tuple[float, Coordinates]] = deque()
        target: Coordinates | None = None
        try:
            with self._writer.cursor() as wcur, self._replica.cursor() as rcur:
                while not self._stop.is_set():
                    now = time.monotonic()
                    seen.append((now, _coordinates(wcur)))
                    horizon = now - self.seconds
                    while len(seen) > 1 and seen[1][0] <= horizon:
                        seen.popleft()
                    allowed = seen[0][1] if seen[0][0] <= horizon else None
                    if allowed is not None and allowed != target and not _sql_running(rcur):
                        rcur.execute(
                            "START SLAVE SQL_THREAD UNTIL MASTER_LOG_FILE = %s, "
                            "MASTER_LOG_POS = %s",
                            allowed,
                        )
                        target = allowed
                    self._stop.wait(STEP)
        except Exception as exc:  # logged; the replica is let go in stop()
            log.warning("replica lag thread %s ended: %s", self._thread.name, exc)

    def stop(self) -> None:
        """Let the replica apply everything again (its SQL thread runs when this returns)."""
        _alive.discard(self)
        self._stop.set()
        self._thread.join(10)
        try:
            with self._replica.cursor() as cur:
                cur.execute("STOP SLAVE SQL_THREAD")  # ends a pending UNTIL
                cur.execute("START SLAVE SQL_THREAD")
        finally:
            for conn in (self._writer, self._replica):
                with contextlib.suppress(Exception):
                    conn.close()
