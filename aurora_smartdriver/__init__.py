"""aurora_smartdriver: one database out of a replicated cluster, surviving failover."""

from __future__ import annotations

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
