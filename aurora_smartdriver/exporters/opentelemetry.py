"""OpenTelemetry export: observable instruments whose callbacks read the metrics snapshot.

>>> from aurora_smartdriver.exporters import opentelemetry as asd_otel
>>> handle = asd_otel.instrument()   # on the global MeterProvider  # doctest: +SKIP

Counters become ``ObservableCounter``, gauges ``ObservableGauge``, named
``aurora_smartdriver.<name>`` (see `aurora_smartdriver.metrics.CATALOGUE`), with the attribute
``cluster`` plus the catalogue's labels. OpenTelemetry has no observable histogram, so each
histogram ``<name>`` is published as ``<name>.count`` and ``<name>.sum`` (observable counters)
and ``<name>.max`` (a gauge); bucket counts are available from the snapshot and the Prometheus
collector.

One snapshot serves every instrument of one collection: a snapshot younger than ``max_age``
seconds is reused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from aurora_smartdriver import __version__
from aurora_smartdriver import metrics as _metrics
from aurora_smartdriver.exporters import missing

try:
    from opentelemetry import metrics as otel
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise missing("opentelemetry", "opentelemetry-api", exc) from exc

__all__ = ["Instrumentation", "instrument"]

_UNITS = {"seconds": "s", "ms": "ms", "": "1"}

Reading = Callable[[_metrics.HistogramSnapshot], float]


class Instrumentation:
    """The instruments `instrument` created; `close` makes their callbacks report nothing
    (the OpenTelemetry API cannot remove an instrument)."""

    def __init__(self, source: Callable[[], _metrics.MetricsSnapshot], max_age: float) -> None:
        self._source = source
        self._max_age = max_age
        self._lock = threading.Lock()
        self._taken = -1.0
        self._families: dict[str, _metrics.Family] = {}
        self.closed = False
        self.names: list[str] = []
        """The instruments' names."""

    def close(self) -> None:
        self.closed = True

    def _family(self, name: str) -> _metrics.Family | None:
        if self.closed:
            return None
        with self._lock:
            now = time.monotonic()
            if self._taken < 0 or now - self._taken > self._max_age:
                self._families = {f.name: f for f in _metrics.families(self._source())}
                self._taken = now
            return self._families.get(name)

    def plain(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            family = self._family(name)
            if family is None:
                return []
            return [
                Observation(float(value), dict(labels))
                for labels, value in family.samples
                if not isinstance(value, _metrics.HistogramSnapshot)
            ]

        return callback

    def part(self, name: str, read: Reading) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            family = self._family(name)
            if family is None:
                return []
            return [
                Observation(read(value), dict(labels))
                for labels, value in family.samples
                if isinstance(value, _metrics.HistogramSnapshot)
            ]

        return callback


def _count(h: _metrics.HistogramSnapshot) -> float:
    return float(h.count)


def _sum(h: _metrics.HistogramSnapshot) -> float:
    return h.sum


def _max(h: _metrics.HistogramSnapshot) -> float:
    return h.max


def instrument(
    meter_provider: MeterProvider | None = None,
    *,
    source: Callable[[], _metrics.MetricsSnapshot] = _metrics.snapshot,
    max_age: float = 1.0,
) -> Instrumentation:
    """Create the library's observable instruments on a meter of ``meter_provider`` (default:
    the global one). Call it once per provider."""
    meter = otel.get_meter("aurora_smartdriver", __version__, meter_provider=meter_provider)
    handle = Instrumentation(source, max_age)
    for name, kind, unit, _labels, text in _metrics.CATALOGUE:
        full = f"aurora_smartdriver.{name}"
        if kind == "counter":
            meter.create_observable_counter(
                full, [handle.plain(name)], unit=_UNITS[unit], description=text
            )
            handle.names.append(full)
        elif kind == "gauge":
            meter.create_observable_gauge(
                full, [handle.plain(name)], unit=_UNITS[unit], description=text
            )
            handle.names.append(full)
        else:
            meter.create_observable_counter(
                f"{full}.count", [handle.part(name, _count)], unit="1", description=text
            )
            meter.create_observable_counter(
                f"{full}.sum", [handle.part(name, _sum)], unit=_UNITS[unit], description=text
            )
            meter.create_observable_gauge(
                f"{full}.max", [handle.part(name, _max)], unit=_UNITS[unit], description=text
            )
            handle.names += [f"{full}.count", f"{full}.sum", f"{full}.max"]
    return handle
