"""The counting primitives behind ``aurora_smartdriver.metrics``: a histogram and a tally.

A leaf module (nothing of the library imported), so the pool, the monitor and the resolver can
count without depending on what reads the counts. Snapshots are immutable values; the pure
parts (bucketing, merging, cumulating) are functions tested with hypothesis.

Cost and semantics:

- `Histogram.observe` takes the histogram's own lock (one uncontended acquire, a bisect and
  three additions). It is used only off the hot path: connection attempts, DNS lookups,
  topology refreshes, failovers, and borrows that had to wait, validate or connect.
- `Tally.add` takes no lock: each thread counts in a dict of its own, and a snapshot sums them
  (copying a dict is atomic under the GIL). Counts are exact; a snapshot taken while another
  thread is adding sees that addition or not.
"""

from __future__ import annotations

import bisect
import math
import threading
import weakref
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

__all__ = [
    "DEFAULT_BOUNDS",
    "Histogram",
    "HistogramSnapshot",
    "Tally",
    "bucket_index",
    "empty_histogram",
]

K = TypeVar("K", bound=Hashable)

DEFAULT_BOUNDS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (seconds) of the histogram buckets; a last, unbounded bucket follows."""


def bucket_index(bounds: tuple[float, ...], value: float) -> int:
    """The bucket ``value`` falls in: the first whose upper bound is >= ``value``
    (Prometheus' ``le``), or ``len(bounds)`` (the unbounded bucket) above the last bound."""
    return bisect.bisect_left(bounds, value)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Observations counted per bucket, with their count, sum and largest value.

    ``counts[i]`` counts the observations in bucket ``i`` only (not cumulative):
    ``bounds[i-1] < value <= bounds[i]``, the last entry those above ``bounds[-1]``.
    ``max`` is 0.0 when there is none.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float
    max: float

    @property
    def count(self) -> int:
        """The number of observations."""
        return sum(self.counts)

    @property
    def mean(self) -> float:
        """The average observation, 0.0 when there is none."""
        n = self.count
        return self.sum / n if n else 0.0

    def cumulative(self) -> tuple[int, ...]:
        """Observations <= each bound, then the total (Prometheus' ``_bucket{le=...}``)."""
        out: list[int] = []
        running = 0
        for c in self.counts:
            running += c
            out.append(running)
        return tuple(out)

    def merged(self, other: HistogramSnapshot) -> HistogramSnapshot:
        """Both histograms' observations together (their bounds must be equal)."""
        if other.bounds != self.bounds:
            raise ValueError("cannot merge histograms with different bucket bounds")
        return HistogramSnapshot(
            self.bounds,
            tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            self.sum + other.sum,
            max(self.max, other.max),
        )

    def with_zeros(self, n: int) -> HistogramSnapshot:
        """This histogram plus ``n`` observations of 0.0 (counted in the first bucket)."""
        if n <= 0:
            return self
        return HistogramSnapshot(
            self.bounds, (self.counts[0] + n, *self.counts[1:]), self.sum, self.max
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: ``{"count", "sum", "max", "buckets": {"0.001": n, ..., "+Inf": n}}``,
        the buckets cumulative as in Prometheus."""
        labels = [_bound_label(b) for b in self.bounds] + ["+Inf"]
        return {
            "count": self.count,
            "sum": self.sum,
            "max": self.max,
            "buckets": dict(zip(labels, self.cumulative(), strict=True)),
        }


def _bound_label(bound: float) -> str:
    return repr(float(bound)) if not math.isinf(bound) else "+Inf"


def empty_histogram(bounds: tuple[float, ...] = DEFAULT_BOUNDS) -> HistogramSnapshot:
    """A histogram with no observation."""
    return HistogramSnapshot(bounds, (0,) * (len(bounds) + 1), 0.0, 0.0)


class Histogram:
    """A thread-safe histogram of durations in seconds (see the module docstring for cost)."""

    __slots__ = ("_bounds", "_counts", "_lock", "_max", "_sum")

    def __init__(self, bounds: tuple[float, ...] = DEFAULT_BOUNDS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"histogram bounds must be strictly increasing, got {bounds!r}")
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._max = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        """Count one observation (negative values count as 0.0)."""
        value = max(value, 0.0)
        index = bucket_index(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value
            self._max = max(self._max, value)

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            return HistogramSnapshot(self._bounds, tuple(self._counts), self._sum, self._max)


class Tally(Generic[K]):
    """Counts keyed by a label (a string or a tuple of strings), added without a lock.

    Each thread adds into a dict of its own; `snapshot` sums them. The dicts of threads that
    ended are folded into one when a snapshot notices, so a process that churns threads does
    not accumulate them.
    """

    __slots__ = ("__weakref__", "_local", "_lock", "_past", "_shards")

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._shards: list[tuple[weakref.ref[threading.Thread], dict[K, int]]] = []
        self._past: dict[K, int] = {}

    def add(self, key: K, n: int = 1) -> None:
        """Add ``n`` to the count of ``key`` (no lock; exact)."""
        try:
            counts: dict[K, int] = self._local.counts
        except AttributeError:
            counts = self._new_shard()
        counts[key] = counts.get(key, 0) + n

    def _new_shard(self) -> dict[K, int]:
        counts: dict[K, int] = {}
        self._local.counts = counts
        with self._lock:
            self._shards.append((weakref.ref(threading.current_thread()), counts))
        return counts

    def snapshot(self) -> Mapping[K, int]:
        """Every key's count, summed over threads."""
        with self._lock:
            total = dict(self._past)
            live: list[tuple[weakref.ref[threading.Thread], dict[K, int]]] = []
            for ref, counts in self._shards:
                thread = ref()
                alive = thread is not None and thread.is_alive()  # before the copy: see below
                copy = counts.copy()
                _add_into(total, copy.items())
                if alive:
                    live.append((ref, counts))
                else:  # ended before the copy, so the copy has every addition it made
                    _add_into(self._past, copy.items())
            self._shards = live
        return MappingProxyType(total)

    def total(self) -> int:
        """The sum of every key's count."""
        return sum(self.snapshot().values())


def _add_into(total: dict[K, int], items: Iterable[tuple[K, int]]) -> None:
    for key, n in items:
        total[key] = total.get(key, 0) + n
