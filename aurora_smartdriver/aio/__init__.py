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
import contextvars
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aurora_smartdriver import _causal as _sync_causal
from aurora_smartdriver import consistency, dsn
from aurora_smartdriver.aio import _causal, _drivers
from aurora_smartdriver.aio._runtime import AsyncLease, AsyncRuntime
from aurora_smartdriver.aio.connection import (
    AiomysqlConnection,
    AsyncConnection,
    AsyncCursor,
    PsycopgAsyncConnection,
)
from aurora_smartdriver.auth import CredentialsSource
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
    "ConsistencyTokenError",
    "FailoverSucceeded",
    "InstanceResumeTimeout",
    "NoHostAvailable",
    "NoWriterAvailable",
    "PoolClosed",
    "PoolTimeout",
    "Session",
    "TransactionOutcomeUnknown",
    "connect",
]

T = TypeVar("T")
_ROLES = ("writer", "reader", "any")


def _spec(dsn_text: str | None, kwargs: dict[str, Any]) -> dsn.ConnectionSpec:
    return dsn.parse(dsn_text or "", **kwargs)


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

    With ``consistency=session`` the connection is a read-your-writes session: moved to a
    reader (``await conn.set_read_only(True)``), it reads on one that has its writes;
    ``consistency_token`` (from another session or process) adds that token's writes.
    """
    token = kwargs.pop("consistency_token", None)
    spec = _spec(dsn, kwargs)
    runtime = AsyncRuntime(spec, credentials)
    try:
        role = _role(spec.settings.role, runtime)
        tracker = (
            consistency.Tracker(_sync_causal.cluster_name(spec), token)
            if token is not None or spec.settings.consistency == "session"
            else None
        )
        if tracker is not None and role != "writer":
            lease = await _causal.lease_for(runtime, tracker, pooled=False)
        else:
            lease = await runtime.lease(role, pooled=False)
    except BaseException:
        runtime.release()
        raise
    conn = _proxy_class(runtime)(runtime, role, lease, autocommit=runtime.default_autocommit)
    if tracker is not None:
        conn.__dict__["_tracker"] = tracker
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
        self._name = _sync_causal.cluster_name(self.spec)
        # consistency=session outside a session(): each task's own (see _task_tracker)
        self._sessions: contextvars.ContextVar[consistency.Tracker | None] = contextvars.ContextVar(
            f"aurora_smartdriver.aio session {id(self):x}", default=None
        )

    @property
    def topology(self) -> Topology | None:
        """The monitor's current snapshot (None before its first answer)."""
        snapshot: Topology | None = self._runtime.monitor.topology
        return snapshot

    def connection(self, role: str | None = None) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection for ``role``: committed on success, rolled back on error."""
        return _Borrowed(self, role, self._task_tracker())

    def session(self, token: str | None = None) -> Session:
        """A read-your-writes session: its readers see every write made through it before
        (and those of ``token``, a :attr:`Session.token` from another request or process).

        >>> async with cluster.session(token=request.cookies.get("rw")) as s:  # doctest: +SKIP
        ...     async with s.writer() as conn:
        ...         await conn.execute("INSERT ...")
        ...     async with s.reader() as conn:  # a replica that has the INSERT, or the writer
        ...         await conn.execute("SELECT ...")
        ...     response.set_cookie("rw", s.token)

        Raises ``ConsistencyTokenError`` (a ``ValueError``) for a malformed token or one made
        for another cluster.
        """
        return Session(self, consistency.Tracker(self._name, token))

    def _task_tracker(self) -> consistency.Tracker | None:
        """With ``consistency=session``, the current task's session: made at the task's first
        borrow, and shared by the tasks it starts after that (they copy its context); tasks it
        started before have their own. (A borrow in ``main()`` before the server starts its
        request tasks would make one session of them all: use `session` there.)"""
        if self.spec.settings.consistency != "session":
            return None
        tracker = self._sessions.get()
        if tracker is None:
            tracker = consistency.Tracker(self._name)
            self._sessions.set(tracker)
        return tracker

    def writer(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection to the writer."""
        return self.connection("writer")

    def reader(
        self, *, consistency_token: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection to a reader (the writer when none qualifies, unless told to fail).

        With ``consistency_token`` (a :attr:`Session.token`), only a reader that has the
        token's writes, or the writer: see :meth:`session`.
        """
        if consistency_token is None:
            return self.connection("reader")
        tracker = consistency.Tracker(self._name, consistency_token)
        own = self._task_tracker()
        if own is not None:  # the task's own session still counts
            tracker.joined(own)
        return _Borrowed(self, "reader", tracker)

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
        return await self._run_transaction(fn, retries, idempotent, role, self._task_tracker())

    async def _run_transaction(
        self,
        fn: Callable[[Any], Awaitable[T]],
        retries: int,
        idempotent: bool,
        role: str,
        tracker: consistency.Tracker | None,
    ) -> T:
        attempt = 0
        while True:
            try:
                async with _Borrowed(self, role, tracker) as conn:
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


class Session:
    """A read-your-writes session over an `aio.Cluster` (see :meth:`Cluster.session`): its
    reader connections see every write made through it, on a replica that has them or on the
    writer. Not bound to a task: pass it where the work goes."""

    __slots__ = ("_cluster", "_tracker")

    def __init__(self, cluster: Cluster, tracker: consistency.Tracker) -> None:
        self._cluster = cluster
        self._tracker = tracker

    def connection(self, role: str | None = None) -> contextlib.AbstractAsyncContextManager[Any]:
        """A pooled connection for ``role`` in this session."""
        return _Borrowed(self._cluster, role, self._tracker)

    def writer(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.connection("writer")

    def reader(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A reader that has this session's writes (or the writer)."""
        return self.connection("reader")

    async def run_transaction(
        self,
        fn: Callable[[Any], Awaitable[T]],
        *,
        retries: int = 3,
        idempotent: bool = False,
        role: str = "writer",
    ) -> T:
        """`Cluster.run_transaction` in this session."""
        return await self._cluster._run_transaction(fn, retries, idempotent, role, self._tracker)

    @property
    def token(self) -> str:
        """This session's position as a string ("" before its first write): give it to
        ``Cluster.session(token=...)`` or ``reader(consistency_token=...)`` elsewhere."""
        return self._tracker.token

    def absorb(self, token: str) -> None:
        """Also see the writes of ``token`` (made by another session or process)."""
        self._tracker.absorb(token)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:
        return f"<aurora_smartdriver.aio.Session of {self._cluster.spec} {self._tracker!r}>"


class _Borrowed:
    """``async with cluster.connection(role)``: borrow on entering; commit on leaving (or roll
    back on an error), then give back. A class, not an ``asynccontextmanager``: this is every
    borrow's path, and an async generator per borrow costs a third of an uncontended one."""

    __slots__ = ("_cluster", "_conn", "_role", "_tracker")

    def __init__(
        self, cluster: Cluster, role: str | None, tracker: consistency.Tracker | None
    ) -> None:
        self._cluster = cluster
        self._role = role
        self._tracker = tracker
        self._conn: AsyncConnection | None = None

    async def __aenter__(self) -> Any:
        cluster = self._cluster
        runtime = cluster._runtime
        if cluster._closed:
            raise runtime.module.InterfaceError("the cluster is closed")
        if self._conn is not None:
            raise RuntimeError("this connection() context is already entered; call it again")
        chosen = _role(self._role, runtime)
        tracker = self._tracker
        lease: AsyncLease | None = None
        if tracker is not None and chosen != "writer":
            lease = await _causal.lease_for(runtime, tracker, pooled=True)
        else:
            target = runtime.choose_now(chosen, frozenset())
            if target is not None:
                lease = runtime.lend_idle(target, chosen)
            if lease is None:
                lease = await runtime.lease(chosen, pooled=True, first=target)
        conn = _proxy_class(runtime)(runtime, chosen, lease, autocommit=runtime.default_autocommit)
        if tracker is not None:
            conn.__dict__["_tracker"] = tracker  # a move to a reader inside the borrow too
        if cluster._reset is not None:
            conn.__dict__["_reset_hook"] = cluster._reset
        self._conn = conn
        return conn

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None
        if exc_type is None and self._tracker is None and conn._release_now():
            return  # nothing open, nothing to undo: given back as it is
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
            try:
                if self._tracker is not None:
                    await _note_writes(conn._runtime, conn, self._tracker)
            finally:
                if not conn._release_now():
                    await conn._release()


async def _note_writes(
    runtime: AsyncRuntime, conn: AsyncConnection, tracker: consistency.Tracker
) -> None:
    """At the end of a borrow that may have written in autocommit (a commit reads the
    position itself): the writer's position into ``tracker``, or, when the connection is no
    longer on the writer (closed, on no node), "unsure": the next read asks the writer."""
    if not conn._autocommit:
        return  # every transaction that committed had its position read by commit()
    if conn._closed or conn._raw is None:
        if conn._role != "reader":  # it may have written before it lost its node
            tracker.mark_unsure()
    elif _causal.on_writer(runtime, conn._lease):
        await _causal.capture(runtime, conn._raw, tracker)
        conn._settled(conn._raw)
    # On a reader now: a move there from the writer read the position before leaving it.


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
