"""aurora_smartdriver for asyncio: the same library, never blocking the event loop.

import aurora_smartdriver.aio as aio

conn = await aio.connect("postgresql://app:pw@orders.cluster-abc.us-east-1.rds.amazonaws.com/app")
cluster = aio.Cluster("mysql://app@orders.cluster-abc.us-east-1.rds.amazonaws.com/app")
async with cluster.writer() as conn:
    ...
await cluster.run_transaction(fn)

PostgreSQL goes through ``psycopg.AsyncConnection``, MySQL and MariaDB through aiomysql. The
DSN parameters, the exceptions and what the application is told after a failover are the sync
library's (DESIGN.md, "Failure semantics"); the monitor and the resolver are shared with sync
users of the same cluster in the process. See docs/asyncio.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aurora_smartdriver import dsn
from aurora_smartdriver.aio import _drivers
from aurora_smartdriver.aio._runtime import AsyncRuntime
from aurora_smartdriver.aio.connection import (
    AiomysqlConnection,
    AsyncConnection,
    AsyncCursor,
    PsycopgAsyncConnection,
)
from aurora_smartdriver.auth import CredentialsSource
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
from aurora_smartdriver.metrics import ClusterMetrics
from aurora_smartdriver.pool._errors import PoolClosed, PoolTimeout
from aurora_smartdriver.topology import Topology

__all__ = [
    "AsyncConnection",
    "AsyncCursor",
    "AuroraSmartDriverError",
    "AuthenticationFailed",
    "Cluster",
    "ConfigError",
    "FailoverSucceeded",
    "InstanceResumeTimeout",
    "NoHostAvailable",
    "NoWriterAvailable",
    "PoolClosed",
    "PoolTimeout",
    "TransactionOutcomeUnknown",
    "connect",
]

T = TypeVar("T")
_ROLES = ("writer", "reader", "any")


def _spec(dsn_text: str | None, kwargs: dict[str, Any]) -> dsn.ConnectionSpec:
    spec = dsn.parse(dsn_text or "", **kwargs)
    if spec.settings.consistency != "eventual":
        # Refused rather than ignored: a session that reads stale data believing otherwise
        # is worse than no session.
        raise ConfigError(
            "consistency=session is not supported by aurora_smartdriver.aio yet "
            "(read-your-writes is in the sync library; see docs/consistency.md)",
            parameter="consistency",
            value=spec.settings.consistency,
            suggestion="leave consistency out (eventual) on async connections",
        )
    return spec


def _proxy_class(runtime: AsyncRuntime) -> type[AsyncConnection]:
    return PsycopgAsyncConnection if runtime.engine == "postgresql" else AiomysqlConnection


def _role(role: str | None, runtime: AsyncRuntime) -> str:
    chosen = role or runtime.settings.role
    if chosen not in _ROLES:
        raise ConfigError(
            f"unknown role {chosen!r}",
            parameter="role",
            value=str(chosen),
            suggestion="use writer, reader or any",
        )
    return chosen


async def connect(
    dsn: str | None = None, /, *, credentials: CredentialsSource | None = None, **kwargs: Any
) -> Any:
    """A connection of its own to the cluster ``dsn`` names, on a node of the DSN's ``role``.

    Behaves like ``psycopg.AsyncConnection`` (``postgresql://``) or ``aiomysql.Connection``
    (``mysql://``, ``mariadb://``); keyword arguments override the DSN, as for
    ``aurora_smartdriver.connect``.
    """
    spec = _spec(dsn, kwargs)
    runtime = AsyncRuntime(spec, credentials)
    try:
        role = _role(spec.settings.role, runtime)
        lease = await runtime.lease(role, pooled=False)
    except BaseException:
        runtime.release()
        raise
    conn = _proxy_class(runtime)(runtime, role, lease, autocommit=runtime.default_autocommit)
    conn._on_close(runtime.release)
    return conn


class Cluster:
    """A cluster with pooled connections on one event loop: ``writer()``, ``reader()``.

    >>> cluster = Cluster("postgresql://app@orders.cluster-abc.us-east-1.rds.amazonaws.com/app")
    >>> async with cluster.writer() as conn:          # doctest: +SKIP
    ...     await conn.execute("INSERT ...")

    Its pools belong to the event loop it is first used on; the monitor and the resolver are
    shared with every other user of the cluster in the process, sync or async.
    """

    def __init__(
        self,
        dsn: str | None = None,
        /,
        *,
        credentials: CredentialsSource | None = None,
        reset: Callable[[Any], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> None:
        """``credentials`` as for ``connect``; ``reset(driver_connection)``, a coroutine
        function, runs before a borrowed driver connection goes back to its pool, after the
        library's own reset (when it raises, the connection is closed instead)."""
        if reset is not None and not callable(reset):
            raise ConfigError(
                f"reset must be a coroutine function taking the driver connection, not {reset!r}",
                parameter="reset",
                value=repr(reset),
            )
        self.spec = _spec(dsn, kwargs)
        self._reset = reset
        self._runtime = AsyncRuntime(self.spec, credentials)
        self._closed = False

    @property
    def topology(self) -> Topology | None:
        """The monitor's current snapshot (None before its first answer)."""
        snapshot: Topology | None = self._runtime.monitor.topology
        return snapshot

    def connection(self, role: str | None = None) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection for ``role``: committed on success, rolled back on error."""
        return _Borrowed(self, role)

    def writer(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection to the writer."""
        return self.connection("writer")

    def reader(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection to a reader (the writer when none qualifies, unless told to fail)."""
        return self.connection("reader")

    async def run_transaction(
        self,
        fn: Callable[[Any], Awaitable[T]],
        *,
        retries: int = 3,
        idempotent: bool = False,
        role: str = "writer",
    ) -> T:
        """Run ``await fn(conn)`` in a transaction, committed when it returns; re-run after a
        failover, as ``Cluster.run_transaction``: after ``FailoverSucceeded`` up to
        ``retries`` times, after ``TransactionOutcomeUnknown`` only when ``idempotent``."""
        attempt = 0
        while True:
            try:
                async with self.connection(role) as conn:
                    await _explicit_transaction(conn)
                    return await fn(conn)
            except FailoverSucceeded:
                if attempt >= retries:
                    raise
            except TransactionOutcomeUnknown:
                if not idempotent or attempt >= retries:
                    raise
            attempt += 1

    def metrics(self) -> ClusterMetrics:
        """The cluster's counters and timings now (shared with sync users of the cluster)."""
        return self._runtime.sync.metrics_snapshot()

    async def close(self) -> None:
        """Close this cluster's pools; the shared monitor closes when no one else uses it."""
        if not self._closed:
            self._closed = True
            await self._runtime.close()

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<aurora_smartdriver.aio.Cluster {self.spec}>"


class _Borrowed:
    """``async with cluster.connection(role)``: borrow on entering; commit on leaving (or roll
    back on an error), then give back. A class, not an ``asynccontextmanager``: this is every
    borrow's path, and an async generator per borrow costs a third of an uncontended one."""

    __slots__ = ("_cluster", "_conn", "_role")

    def __init__(self, cluster: Cluster, role: str | None) -> None:
        self._cluster = cluster
        self._role = role
        self._conn: AsyncConnection | None = None

    async def __aenter__(self) -> Any:
        cluster = self._cluster
        runtime = cluster._runtime
        if cluster._closed:
            raise runtime.module.InterfaceError("the cluster is closed")
        if self._conn is not None:
            raise RuntimeError("this connection() context is already entered; call it again")
        chosen = _role(self._role, runtime)
        lease = runtime.lease_now(chosen) or await runtime.lease(chosen, pooled=True)
        conn = _proxy_class(runtime)(runtime, chosen, lease, autocommit=runtime.default_autocommit)
        if cluster._reset is not None:
            conn.__dict__["_reset_hook"] = cluster._reset
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None
        try:
            if exc_type is not None:
                if not conn._closed:
                    with contextlib.suppress(Exception):
                        await conn.rollback()
            else:
                raw = conn._raw
                # Only when something may be open (aiomysql would send a COMMIT for nothing).
                if not conn._closed and raw is not None and _open_work(conn, raw):
                    await conn.commit()
        finally:
            if not conn._release_now():
                await conn._release()


def _open_work(conn: AsyncConnection, raw: Any) -> bool:
    """Whether ``raw`` may hold uncommitted work (no I/O; when in doubt, yes)."""
    return _drivers.in_transaction(conn._adapter, raw) or conn._rows_since_boundary(raw)


async def _explicit_transaction(conn: AsyncConnection) -> None:
    """Autocommit off for the work of ``run_transaction``, whatever the DSN says (each
    statement committing on its own would make a re-run apply the first ones twice)."""
    if isinstance(conn, PsycopgAsyncConnection):
        await conn.set_autocommit(False)
    elif isinstance(conn, AiomysqlConnection):
        await conn.autocommit(False)
