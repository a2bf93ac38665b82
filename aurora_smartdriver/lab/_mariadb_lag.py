"""Sub-second replica lag for MariaDB, whose ``MASTER_DELAY`` counts whole seconds.

A thread of the lab's process holds a replica's SQL thread back: every few milliseconds it notes
the writer's GTID position, and lets the replica apply only up to the position the writer had
``seconds`` ago (``STOP SLAVE SQL_THREAD`` once it is there, ``START SLAVE SQL_THREAD`` when it
falls behind it). The I/O thread keeps receiving, so semi-synchronous commits are not slowed;
reads on the replica see the writer as it was ``seconds`` ago, give or take one step of writes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("aurora_smartdriver.lab.lag")

STEP = 0.005
"""Seconds between two looks at the writer and the replica."""


def _seq(cur: Any, sql: str) -> int:
    cur.execute(sql)
    row = cur.fetchone()
    text = str(row[0] if row and row[0] is not None else "")
    seqs = [int(part.rsplit("-", 1)[1]) for part in text.split(",") if part.strip()]
    return max(seqs, default=0)


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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lab-lag-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen: deque[tuple[float, int]] = deque()
        running = True
        try:
            with self._writer.cursor() as wcur, self._replica.cursor() as rcur:
                start = _seq(wcur, "SELECT @@global.gtid_binlog_pos")
                while not self._stop.is_set():
                    now = time.monotonic()
                    seen.append((now, _seq(wcur, "SELECT @@global.gtid_binlog_pos")))
                    horizon = now - self.seconds
                    while len(seen) > 1 and seen[1][0] <= horizon:
                        seen.popleft()
                    allowed = seen[0][1] if seen[0][0] <= horizon else start
                    applied = _seq(rcur, "SELECT @@global.gtid_slave_pos")
                    if running and applied >= allowed:
                        rcur.execute("STOP SLAVE SQL_THREAD")
                        running = False
                    elif not running and applied < allowed:
                        rcur.execute("START SLAVE SQL_THREAD")
                        running = True
                    self._stop.wait(STEP)
        except Exception as exc:  # logged; the replica is let go below
            log.warning("replica lag thread %s ended: %s", self._thread.name, exc)
        finally:
            if not running:  # never leave a replica that stopped applying behind
                with contextlib.suppress(Exception), self._replica.cursor() as cur:
                    cur.execute("START SLAVE SQL_THREAD")

    def stop(self) -> None:
        """Let the replica apply everything again, and wait until its SQL thread runs."""
        self._stop.set()
        self._thread.join(10)
        try:
            with self._replica.cursor() as cur:
                cur.execute("START SLAVE SQL_THREAD")
        finally:
            for conn in (self._writer, self._replica):
                with contextlib.suppress(Exception):
                    conn.close()
