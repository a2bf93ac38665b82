"""Pool statistics from pools the sync `PoolSet`s do not hold (the async pools of
`aurora_smartdriver.aio`), added to a cluster's metrics alongside the sync pools'.

A source is a function returning statistics per instance id; it is asked from any thread (an
exporter's), so it must only read. When its pools go (their cluster closed), its last figures
are kept with the gauges at zero: counters never go backwards in the exporters.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Callable, Mapping

from aurora_smartdriver.pool._host import PoolStats
from aurora_smartdriver.pool._set import combine

__all__ = ["PoolSources"]

Source = Callable[[], Mapping[str, PoolStats]]


class PoolSources:
    """The extra pool-statistics sources of one cluster, and what the retired ones left."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._live: dict[int, Source] = {}
        self._past: dict[str, PoolStats] = {}

    def add(self, source: Source) -> Callable[[], None]:
        """Count ``source()`` in `totals` until the returned function retires it."""
        key = next(self._ids)
        with self._lock:
            self._live[key] = source

        def retire() -> None:
            with self._lock:
                found = self._live.pop(key, None)
            if found is None:
                return
            final = {name: _at_rest(stats) for name, stats in found().items()}
            with self._lock:
                for name, stats in final.items():
                    before = self._past.get(name)
                    self._past[name] = stats if before is None else combine(before, stats)

        return retire

    def totals(self) -> dict[str, PoolStats]:
        """Every source's statistics now, per instance id, added up (retired ones included)."""
        with self._lock:
            totals = dict(self._past)
            live = list(self._live.values())
        for source in live:
            for name, stats in source().items():
                before = totals.get(name)
                totals[name] = stats if before is None else combine(before, stats)
        return totals


def _at_rest(stats: PoolStats) -> PoolStats:
    """A retired source's counters, its gauges at zero (nothing of it is open any more)."""
    return dataclasses.replace(stats, size=0, idle=0, in_use=0, waiting=0, connecting=0, down=False)
