"""Optional exporters of ``aurora_smartdriver.metrics``.

- ``aurora_smartdriver.exporters.opentelemetry``: observable instruments on an OpenTelemetry
  meter (``pip install 'aurora-smartdriver[opentelemetry]'``);
- ``aurora_smartdriver.exporters.prometheus``: a ``prometheus_client`` collector
  (``pip install 'aurora-smartdriver[prometheus]'``).

Each imports its package only when imported itself, and says which extra to install when the
package is missing. Both publish `aurora_smartdriver.metrics.CATALOGUE`, read from
`aurora_smartdriver.metrics.snapshot()` at collection time.
"""

from __future__ import annotations

__all__: list[str] = []


def missing(extra: str, package: str, exc: ImportError) -> ImportError:
    """The error to raise when an exporter's package is not installed."""
    error = ImportError(
        f"aurora_smartdriver.exporters.{extra} needs the {package} package: "
        f"pip install 'aurora-smartdriver[{extra}]'"
    )
    error.__cause__ = exc
    return error
