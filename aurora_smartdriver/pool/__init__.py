"""Per-host connection pools: lending, recycling, a connect gate and backoff against storms.

`HostPool` lends raw driver connections to one instance: LIFO over idle connections,
validated (a ping) after `validate_after_idle`, replaced after their jittered `max_lifetime`
or `max_idle`, reset on return (open transaction rolled back, then the caller's reset).
Connection attempts go through a gate per host: at most `max_concurrent_connects` at once,
and after a failure none until an exponential backoff with full jitter has elapsed, when one
borrower probes for all; meanwhile borrowers wait for the outcome or, if they asked, get
`HostDown` at once to go elsewhere. `PoolSet` holds one pool per instance of a cluster and
follows the topology: pools of instances whose role changed are retired, those of departed
instances closed.

The decisions (recycling, backoff, admission) are pure functions in `_policy`; the pools keep
their state under one lock and do their I/O outside it.
"""

from __future__ import annotations

from aurora_smartdriver.pool._errors import HostDown, PoolClosed, PoolError, PoolTimeout
from aurora_smartdriver.pool._host import HostPool, Listener, Opener, Pooled, PoolStats, Target
from aurora_smartdriver.pool._policy import (
    BackoffPolicy,
    ConnState,
    HostHealth,
    RecyclePolicy,
    admit,
    after_failure,
    due_at,
    expiry,
    recycle,
)
from aurora_smartdriver.pool._set import PoolSet

__all__ = [
    "BackoffPolicy",
    "ConnState",
    "HostDown",
    "HostHealth",
    "HostPool",
    "Listener",
    "Opener",
    "PoolClosed",
    "PoolError",
    "PoolSet",
    "PoolStats",
    "PoolTimeout",
    "Pooled",
    "RecyclePolicy",
    "Target",
    "admit",
    "after_failure",
    "due_at",
    "expiry",
    "recycle",
]
