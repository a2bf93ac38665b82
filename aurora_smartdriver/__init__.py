"""aurora_smartdriver: one database out of a replicated cluster, surviving failover.

import aurora_smartdriver as asd

conn = asd.connect("postgresql://app:pw@orders.cluster-abc.us-east-1.rds.amazonaws.com/app")
cluster = asd.Cluster("mysql://app@orders.cluster-abc.us-east-1.rds.amazonaws.com/app")
with cluster.reader() as conn:
    ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aurora_smartdriver.consistency import ConsistencyTokenError
from aurora_smartdriver.errors import (
    AuroraSmartDriverError,
    AuthenticationFailed,
    ConfigError,
    FailoverSucceeded,
    InstanceResumeTimeout,
    NoHostAvailable,
    NoWriterAvailable,
    TransactionOutcomeUnknown,
)
from aurora_smartdriver.pool._errors import PoolClosed, PoolTimeout

if TYPE_CHECKING:
    from aurora_smartdriver.cluster import Cluster, connect
    from aurora_smartdriver.connection import Connection

__version__ = "0.1.0.dev0"

__all__ = [
    "AuroraSmartDriverError",
    "AuthenticationFailed",
    "Cluster",
    "ConfigError",
    "Connection",
    "ConsistencyTokenError",
    "FailoverSucceeded",
    "InstanceResumeTimeout",
    "NoHostAvailable",
    "NoWriterAvailable",
    "PoolClosed",
    "PoolTimeout",
    "TransactionOutcomeUnknown",
    "__version__",
    "connect",
]


def __getattr__(name: str) -> Any:
    # connect and Cluster load the connection machinery on first use, so that importing the
    # package (or only its lab) stays cheap.
    if name in ("connect", "Cluster"):
        from aurora_smartdriver import cluster

        return getattr(cluster, name)
    if name == "Connection":  # for type hints: what connect() and Cluster's methods return
        from aurora_smartdriver.connection import Connection

        return Connection
    raise AttributeError(f"module 'aurora_smartdriver' has no attribute {name!r}")
