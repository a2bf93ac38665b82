"""Prometheus export: a ``prometheus_client`` collector reading the metrics snapshot.

>>> from aurora_smartdriver.exporters import prometheus
>>> prometheus.register()                      # on prometheus_client.REGISTRY  # doctest: +SKIP
>>> prometheus_client.start_http_server(9100)  # doctest: +SKIP

Every family of `aurora_smartdriver.metrics.CATALOGUE` is published with the prefix
``aurora_smartdriver_`` (counters gain ``_total``, units are appended to names that lack them),
labelled ``cluster`` plus the catalogue's labels. Histograms use the snapshot's buckets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from aurora_smartdriver import metrics as _metrics
from aurora_smartdriver.exporters import missing

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise missing("prometheus", "prometheus-client", exc) from exc

__all__ = ["SmartDriverCollector", "register"]


class SmartDriverCollector(Collector):
    """Yields the library's metrics on each scrape from one snapshot (``source()``)."""

    def __init__(
        self,
        source: Callable[[], _metrics.MetricsSnapshot] = _metrics.snapshot,
        *,
        prefix: str = "aurora_smartdriver",
    ) -> None:
        self._source = source
        self._prefix = prefix

    def describe(self) -> list[Metric]:
        """Nothing: registering must not take a snapshot (names are fixed by the catalogue)."""
        return []

    def collect(self) -> Iterator[Metric]:
        for family, (_n, _k, _u, extra, _h) in zip(
            _metrics.families(self._source()), _metrics.CATALOGUE, strict=True
        ):
            names = ["cluster", *extra]
            name = f"{self._prefix}_{family.name}"
            unit = family.unit
            if family.kind == "counter":
                out: Metric = CounterMetricFamily(name, family.help, labels=names, unit=unit)
            elif family.kind == "gauge":
                out = GaugeMetricFamily(name, family.help, labels=names, unit=unit)
            else:
                out = HistogramMetricFamily(name, family.help, labels=names, unit=unit)
            for labels, value in family.samples:
                given = dict(labels)
                values = [given[k] for k in names]
                if isinstance(value, _metrics.HistogramSnapshot):
                    assert isinstance(out, HistogramMetricFamily)
                    bounds = [repr(float(b)) for b in value.bounds] + ["+Inf"]
                    buckets = list(zip(bounds, map(float, value.cumulative()), strict=True))
                    out.add_metric(values, buckets, value.sum)
                else:
                    assert isinstance(out, CounterMetricFamily | GaugeMetricFamily)
                    out.add_metric(values, float(value))
            yield out


def register(registry: CollectorRegistry = REGISTRY) -> SmartDriverCollector:
    """Register a `SmartDriverCollector` on ``registry`` (default: the global one) and return
    it (``registry.unregister(collector)`` undoes it)."""
    collector = SmartDriverCollector()
    registry.register(collector)
    return collector
