"""``connect()`` and ``Cluster``: the library's two front doors."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from aurora_smartdriver import _causal, _runtime, consistency, dsn
from aurora_smartdriver.auth import CredentialsSource
from aurora_smartdriver.connection import Connection, PsycopgConnection, PyMySQLConnection
from aurora_smartdriver.errors import FailoverSucceeded, TransactionOutcomeUnknown
from aurora_smartdriver.metrics import ClusterMetrics
from aurora_smartdriver.topology import Topology

T = TypeVar("T")

__all__ = ["Cluster", "Session", "connect"]

_ROLES = ("writer", "reader", "any")


def _spec(dsn_text: str | None, engine: str | None, kwargs: dict[str, Any]) -> dsn.ConnectionSpec:
    if dsn_text:
        return dsn.parse(dsn_text, **kwargs)
    # Driver-style keywords only (host=..., user=..., dbname=/database=...).
    scheme = {"postgresql": "postgresql", "mysql": "mysql", None: ""}[engine]
    if not scheme:
        return dsn.parse("", **kwargs)  # raises ConfigError("empty DSN ...")
    return dsn.parse(f"{scheme}://", **kwargs)


def _proxy_class(runtime: _runtime.Runtime) -> type[Connection]:
    return PsycopgConnection if runtime.spec.engine == "postgresql" else PyMySQLConnection


def _role(role: str | None, runtime: _runtime.Runtime) -> str:
    chosen = role or runtime.spec.settings.role
    if chosen not in _ROLES:
        from aurora_smartdriver.errors import ConfigError

        raise ConfigError(
            f"unknown role {chosen!r}",
            parameter="role",
            value=str(chosen),
            suggestion="use writer, reader or any",
        )
    return chosen


def connect(
    dsn: str | None = None,
    /,
    *,
    _engine: str | None = None,
    credentials: CredentialsSource | None = None,
    **kwargs: Any,
) -> Connection:
    """A connection to the cluster ``dsn`` names, on a node of the DSN's ``role`` (the writer).

    Behaves like the wrapped driver's connection (psycopg 3 for ``postgresql://``, PyMySQL for
    ``mysql://`` and ``mariadb://``). Keyword arguments override the DSN. ``credentials``, a
    ``aurora_smartdriver.auth.CredentialsProvider`` or a function returning ``(user,
    password)``, replaces the DSN's user and password (see docs/authentication.md).

    With ``consistency=session`` the connection is a read-your-writes session: moved to a
    reader (``read_only = True``), it reads on one that has its writes. ``consistency_token``
    (a token from another session or process) makes it see that token's writes too.
    """
    token = kwargs.pop("consistency_token", None)
    spec = _spec(dsn, _engine, kwargs)
    runtime = _runtime.acquire(spec, credentials)
    if spec.engine == "mysql" and spec.driver_params.get("defer_connect"):
        return _deferred(runtime, spec)
    try:
        role = _role(spec.settings.role, runtime)
        tracker = (
            consistency.Tracker(_causal.cluster_name(spec), token)
            if token is not None or spec.settings.consistency == "session"
            else None
        )
        if tracker is not None and role != "writer":
            lease = _causal.lease_for(runtime, tracker, pooled=False)
        else:
            lease = runtime.lease(role, pooled=False)
    except BaseException:
        _runtime.release(runtime)
        raise
    conn = _proxy_class(runtime)(runtime, role, lease, autocommit=runtime.default_autocommit)
    if tracker is not None:
        conn.__dict__["_tracker"] = tracker
    conn._on_close(lambda: _runtime.release(runtime))
    return conn


def _note_writes(runtime: _runtime.Runtime, conn: Connection, tracker: consistency.Tracker) -> None:
    """At the end of a borrow that may have written in autocommit (a commit reads the
    position itself): the writer's position into `tracker`, or, when the connection is no
    longer on the writer (closed, failed over to none, moved), "unsure": the next read asks
    the writer first."""
    if not conn._autocommit:
        return  # every transaction that committed had its position read by commit()
    if conn._closed or conn._detached:
        if conn._base_role != "reader":  # it may have written before it lost its node
            tracker.mark_unsure()
    elif _causal.on_writer(runtime, conn._lease):
        _causal.capture(runtime, conn._raw, tracker)
    # On a reader now: a move there from the writer read the position before leaving it.


def _deferred(runtime: _runtime.Runtime, spec: dsn.ConnectionSpec) -> Connection:
    """PyMySQL's ``defer_connect=True``: nothing connected until ``conn.connect()`` (the DSN is
    read and the cluster's monitor started now)."""
    try:
        role = _role(spec.settings.role, runtime)
    except BaseException:
        _runtime.release(runtime)
        raise
    conn = PyMySQLConnection.unconnected(runtime, role, autocommit=runtime.default_autocommit)
    conn._on_close(lambda: _runtime.release(runtime))
    return conn


class Cluster:
    """A cluster with pooled connections: ``writer()``, ``reader()``, ``topology``.

    >>> cluster = Cluster("postgresql://app@orders.cluster-abc.us-east-1.rds.amazonaws.com/app")
    >>> with cluster.writer() as conn:          # doctest: +SKIP
    ...     conn.execute("INSERT ...")
    """

    def __init__(
        self,
        dsn: str | None = None,
        /,
        *,
        credentials: CredentialsSource | None = None,
        reset: Callable[[Any], None] | None = None,
        **kwargs: Any,
    ) -> None:
        """``credentials`` as for ``connect``; keyword arguments override the DSN.

        ``reset(driver_connection)`` runs before a borrowed driver connection goes back to its
        pool, after the library's own reset (transaction rolled back, autocommit, isolation,
        read-only and driver attributes set through the library put back): undo there the
        session state your code changes in SQL (``RESET ALL``, ``SET search_path ...``). When
        it raises, the driver connection is closed instead of lent again.
        """
        if reset is not None and not callable(reset):
            from aurora_smartdriver.errors import ConfigError

            raise ConfigError(
                f"reset must be a function taking the driver connection, not {reset!r}",
                parameter="reset",
                value=repr(reset),
            )
        self._reset = reset
        self.spec = _spec(dsn, None, kwargs)
        self._credentials = credentials
        self._own_runtime = _runtime.acquire(self.spec, credentials)
        self._generation = _runtime.generation()
        self._closed = False
        self._name = _causal.cluster_name(self.spec)
        self._threads = threading.local()  # consistency=session outside a session(): per thread

    @property
    def _runtime(self) -> _runtime.Runtime:
        """The cluster's runtime in this process.

        After ``os.fork()`` (pre-fork servers make the ``Cluster`` before forking) the child
        gets machinery of its own on first use: the parent's pools, threads and sockets are
        never touched, nor closed, by the child.
        """
        if self._generation != _runtime.generation():
            self._generation = _runtime.generation()
            if not self._closed:
                self._own_runtime = _runtime.acquire(self.spec, self._credentials)
        return self._own_runtime

    @property
    def topology(self) -> Topology | None:
        """The current snapshot (waits for the first one)."""
        return self._runtime.topology(self.spec.settings.connect_timeout)

    def session(self, token: str | None = None) -> Session:
        """A read-your-writes session: its readers see every write made through it before
        (and those of ``token``, a :attr:`Session.token` from another request or process).

        >>> with cluster.session(token=request.cookies.get("rw")) as s:  # doctest: +SKIP
        ...     with s.writer() as conn:
        ...         conn.execute("INSERT ...")
        ...     with s.reader() as conn:  # on a replica that has the INSERT, or the writer
        ...         conn.execute("SELECT ...")
        ...     response.set_cookie("rw", s.token)

        Raises ``ConsistencyTokenError`` (a ``ValueError``) for a malformed token or one
        made for another cluster.
        """
        return Session(self, consistency.Tracker(self._name, token))

    def _thread_tracker(self) -> consistency.Tracker | None:
        """With ``consistency=session``, the calling thread's session; else None."""
        if self.spec.settings.consistency != "session":
            return None
        tracker: consistency.Tracker | None = getattr(self._threads, "tracker", None)
        if tracker is None:
            tracker = self._threads.tracker = consistency.Tracker(self._name)
        return tracker

    def connection(self, role: str | None = None) -> contextlib.AbstractContextManager[Connection]:
        """A pooled connection for ``role``: committed on success, rolled back on error."""
        return self._connection(role, self._thread_tracker())

    @contextlib.contextmanager
    def _connection(
        self, role: str | None, tracker: consistency.Tracker | None
    ) -> Iterator[Connection]:
        if self._closed:
            raise self._runtime.module.InterfaceError("the cluster is closed")
        runtime = self._runtime
        chosen = _role(role, runtime)
        if tracker is not None and chosen != "writer":
            lease = _causal.lease_for(runtime, tracker, pooled=True)
        else:
            lease = runtime.lease(chosen, pooled=True)
        conn = _proxy_class(runtime)(runtime, chosen, lease, autocommit=runtime.default_autocommit)
        if tracker is not None:
            conn.__dict__["_tracker"] = tracker  # a move to a reader inside the borrow too
        if self._reset is not None:
            conn.__dict__["_reset_hook"] = self._reset
        try:
            yield conn
        except BaseException:
            if not conn._closed:
                with contextlib.suppress(Exception):
                    conn.rollback()
            raise
        else:
            if not conn._closed and conn._in_transaction(conn._raw):
                conn.commit()
        finally:
            try:
                if tracker is not None:
                    _note_writes(runtime, conn, tracker)
            finally:
                conn.close()

    def writer(self) -> contextlib.AbstractContextManager[Connection]:
        """A pooled connection to the writer."""
        return self.connection("writer")

    def reader(
        self, *, consistency_token: str | None = None
    ) -> contextlib.AbstractContextManager[Connection]:
        """A pooled connection to a reader (the writer when none qualifies, unless told to fail).

        With ``consistency_token`` (a :attr:`Session.token`), only a reader that has the
        token's writes, or the writer: see :meth:`session`.
        """
        if consistency_token is None:
            return self.connection("reader")
        tracker = consistency.Tracker(self._name, consistency_token)
        own = self._thread_tracker()
        if own is not None:  # the thread's own session still counts
            tracker.joined(own)
        return self._connection("reader", tracker)

    def run_transaction(
        self,
        fn: Callable[[Connection], T],
        *,
        retries: int = 3,
        idempotent: bool = False,
        role: str = "writer",
    ) -> T:
        """Run ``fn(conn)`` in a transaction, committed when it returns; re-run after a failover.

        ``fn`` runs in one transaction, also on an ``autocommit=on`` DSN. It is re-run, on a
        fresh connection, when the attempt ended in ``FailoverSucceeded``
        (the server rolled the transaction back), up to ``retries`` times. After
        ``TransactionOutcomeUnknown`` (the connection died during COMMIT) it is re-run only when
        ``idempotent=True``, since the first attempt may have committed.
        """
        return self._run_transaction(fn, retries, idempotent, role, self._thread_tracker())

    def _run_transaction(
        self,
        fn: Callable[[Connection], T],
        retries: int,
        idempotent: bool,
        role: str,
        tracker: consistency.Tracker | None,
    ) -> T:
        attempt = 0
        while True:
            try:
                with self._connection(role, tracker) as conn:
                    # An explicit transaction whatever the DSN's autocommit: with autocommit
                    # each statement of fn would commit on its own, and a failover in the
                    # second would re-run the first.
                    conn._switch_autocommit(False)
                    return fn(conn)
            except FailoverSucceeded:
                if attempt >= retries:
                    raise
            except TransactionOutcomeUnknown:
                if not idempotent or attempt >= retries:
                    raise
            attempt += 1

    def stats(self) -> dict[str, Any]:
        """Pools per instance and the monitor's counters."""
        return {
            "pools": self._runtime.shared.pool_stats(),
            "monitor": self._runtime.monitor.stats(),
            "routing_decisions": self._runtime.decisions,
            "blue_green": self._runtime.monitor.blue_green.stats(),
        }

    def metrics(self) -> ClusterMetrics:
        """The cluster's counters and timings now, an immutable value (see docs/operations.md):
        connections, borrows and pool gauges per instance, routing decisions, failovers,
        topology refreshes and DNS lookups. ``print()`` it, or ``json.dumps(m.to_json())``."""
        return self._runtime.metrics_snapshot()

    def close(self) -> None:
        """Stop using the cluster; its pools and monitor close when no one else uses them."""
        if not self._closed:
            self._closed = True
            if self._generation == _runtime.generation():
                _runtime.release(self._own_runtime, linger=0)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<aurora_smartdriver.Cluster {self.spec}>"


class Session:
    """A read-your-writes session of a :class:`Cluster` (see :meth:`Cluster.session`).

    Borrows made through it share one position: a reader is lent only when it has every
    write the session made (or was given a token for), else the writer serves the read.
    Thread-safe; it holds no connection, so it can live as long as a user's session does.
    """

    __slots__ = ("_cluster", "_tracker")

    def __init__(self, cluster: Cluster, tracker: consistency.Tracker) -> None:
        self._cluster = cluster
        self._tracker = tracker

    def connection(self, role: str | None = None) -> contextlib.AbstractContextManager[Connection]:
        """A pooled connection for ``role`` within the session."""
        return self._cluster._connection(role, self._tracker)

    def writer(self) -> contextlib.AbstractContextManager[Connection]:
        """A pooled connection to the writer; its writes are the session's."""
        return self.connection("writer")

    def reader(self) -> contextlib.AbstractContextManager[Connection]:
        """A pooled connection to a reader that has the session's writes (or the writer)."""
        return self.connection("reader")

    def run_transaction(
        self,
        fn: Callable[[Connection], T],
        *,
        retries: int = 3,
        idempotent: bool = False,
        role: str = "writer",
    ) -> T:
        """:meth:`Cluster.run_transaction` within the session."""
        return self._cluster._run_transaction(fn, retries, idempotent, role, self._tracker)

    @property
    def token(self) -> str:
        """The session's position as a short opaque string ("" before its first write): give
        it to ``Cluster.session(token=...)`` or ``reader(consistency_token=...)`` elsewhere."""
        return self._tracker.token

    def absorb(self, token: str) -> None:
        """Also see the writes of ``token`` (made by another session or process)."""
        self._tracker.absorb(token)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __repr__(self) -> str:
        return f"<aurora_smartdriver.Session of {self._cluster.spec} {self._tracker!r}>"
