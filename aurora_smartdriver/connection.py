"""The DB-API connection proxy: behaves like the wrapped driver's connection, knows its cluster.

The proxy intercepts only what the library must act on — ``cursor``/``execute`` (to see errors),
``commit``/``rollback``/``close`` and psycopg's ``transaction()``, PyMySQL's ``begin()`` and
``ping()`` (transaction boundaries), and the session switches (``autocommit``,
``isolation_level``, ``read_only``, driver attributes) it replays on a new node. Everything else
reaches the driver's own connection through attribute delegation, and cursors are thin proxies
whose fetch methods are the driver cursor's own bound methods (no indirection on the hot path).

When a connection is lost, the proxy gathers the facts (the driver's transaction status before
the call, the statement, whether it could have been sent) and `aurora_smartdriver.outcome`
decides what the application is told; the failover procedure itself is the runtime's. A
connection whose failover failed is "on no node": a stand-in driver connection makes its next
statement reconnect, without a check on the hot path.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from aurora_smartdriver import _causal, _recovery, _runtime, consistency, outcome
from aurora_smartdriver._dbapi import error_class, keep_driver_details
from aurora_smartdriver._runtime import Lease, Runtime
from aurora_smartdriver.errors import AuroraSmartDriverError
from aurora_smartdriver.outcome import Call, Transaction, is_read

__all__ = ["Connection", "Cursor", "PsycopgConnection", "PyMySQLConnection", "is_read"]

log = logging.getLogger(__name__)

_IDLE, _ACTIVE, _INTRANS, _INERROR, _UNKNOWN = 0, 1, 2, 3, 4
"""libpq's PQtransactionStatus values (psycopg's ``pq.TransactionStatus``), without the import."""
_MYSQL_IN_TRANS, _MYSQL_AUTOCOMMIT = 1, 2
"""PyMySQL ``server_status`` flags (``SERVER_STATUS_IN_TRANS``, ``SERVER_STATUS_AUTOCOMMIT``)."""


class Detached(AuroraSmartDriverError):
    """The connection is on no node just now (it was lost and not yet replaced): the next
    statement reconnects; results of statements run before are gone with the old node."""


_short = _recovery.short


_MISSING = object()
_AFTER_CLOSE: dict[str, Any] = {"broken": False, "open": False, "cancel": lambda: None}
"""What a closed connection still answers (as the drivers do) once its driver connection went
back to a pool."""


class _DetachedStatus:
    __slots__ = ()
    transaction_status = _IDLE


class _DetachedCursor:
    """Stands in for a driver cursor while its connection is on no node."""

    def __init__(self, error: type[Exception], why: str) -> None:
        self._error_cls = error
        self._why = why
        self.connection = _DetachedRaw(error, why)
        self.description = None
        self.rowcount = -1

    def _fail(self, *args: Any, **kwargs: Any) -> Any:
        raise self._error_cls(self._why)

    execute = executemany = callproc = fetchone = fetchmany = fetchall = nextset = _fail

    def close(self) -> None:
        return None

    def __iter__(self) -> Iterator[Any]:
        raise self._error_cls(self._why)

    def __enter__(self) -> _DetachedCursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _DetachedRaw:
    """Stands in for the driver connection while the proxy is on no node.

    Every statement through it raises ``Detached`` (a driver ``OperationalError``), which the
    proxy takes as "nothing was sent": it connects to the right node and runs the statement.
    That keeps the hot path free of checks for this rare state.
    """

    pgconn = _DetachedStatus()
    server_status = _MYSQL_AUTOCOMMIT
    _result = None
    closed = False
    open = True

    def __init__(self, error: type[Exception], why: str) -> None:
        self._error_cls = error
        self._why = why

    def cursor(self, *args: Any, **kwargs: Any) -> _DetachedCursor:
        return _DetachedCursor(self._error_cls, self._why)

    def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        raise self._error_cls(self._why)


class _Nowhere:
    """The target of a connection that was never on a node (PyMySQL's ``defer_connect``)."""

    __slots__ = ()
    instance_id = ""
    host = ""
    port = 0


class _DetachedLease:
    """The lease of a connection on no node: nothing to give back."""

    __slots__ = ("pooled", "raw", "target")
    as_writer = False
    detached = True

    def __init__(self, raw: _DetachedRaw, target: Any, pooled: bool) -> None:
        self.raw = raw
        self.target = target
        self.pooled = pooled

    def mark_broken(self) -> None:
        return None

    def give_back(self, *, broken: bool = False) -> None:
        return None


class _Deferred:
    """A cursor's next driver cursor, made at its next statement on a new driver connection.

    Until then the rows the old driver cursor already holds stay readable: a move to a reader
    or a failover does not take them away from a cursor that has not finished fetching.
    """

    def __init__(self, owner: Cursor, old: Any, raw_conn: Any) -> None:
        self._owner = owner
        self._old = old
        self._raw_conn = raw_conn

    def _real(self) -> Any:
        args, kwargs = self._owner._made_with
        real = self._raw_conn.cursor(*args, **kwargs)
        self._owner._bind(real)
        with contextlib.suppress(Exception):
            self._old.close()
        return real

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        real = self._real()
        result = real.execute(*args, **kwargs)
        return self if result is real else result

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        real = self._real()
        result = real.executemany(*args, **kwargs)
        return self if result is real else result

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        return self._real().callproc(*args, **kwargs)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._old.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._old)

    def __getattr__(self, name: str) -> Any:
        if name in self._owner._io:
            return getattr(self._real(), name)  # on the connection of now, never the old one
        return getattr(self._old, name)


_CURSOR_IO = frozenset({"copy", "stream", "nextset", "scroll", "setinputsizes", "results"})
"""Cursor methods that may talk to the server: a deferred cursor makes its new driver cursor
for them (the old one's connection may be lent to someone else by now)."""
_PSYCOPG_CURSOR_IO = frozenset({"copy", "stream"})
"""The same for psycopg's client-side cursors, which receive every result set of a statement
with it: ``nextset``, ``set_result``, ``results`` and ``scroll`` move among the rows held."""


def _server_side(raw_cursor: Any) -> bool:
    """Whether a driver cursor reads its rows from the server as it goes (psycopg's named
    cursors, PyMySQL's SS cursors): those rows are gone with their connection."""
    if isinstance(raw_cursor, _Deferred):
        raw_cursor = raw_cursor._old
    return getattr(raw_cursor, "name", None) is not None or hasattr(
        raw_cursor, "fetchall_unbuffered"
    )


class Cursor:
    """A driver cursor behind a thin proxy that reports errors to its connection."""

    _io: frozenset[str] = _CURSOR_IO

    def __init__(self, conn: Connection, raw: Any, made_with: tuple[Any, ...] = ((), {})) -> None:
        self._conn = conn
        self._error = conn._error
        self._made_with = made_with
        self._bind(raw)

    def _bind(self, raw: Any) -> None:
        self._raw = raw
        # The hot methods are the driver cursor's own bound methods: no proxy call at all.
        self.fetchone = raw.fetchone
        self.fetchmany = raw.fetchmany
        self.fetchall = raw.fetchall

    def _rebind(self, raw_conn: Any) -> None:
        """Continue on a new driver connection (a fresh driver cursor)."""
        args, kwargs = self._made_with
        self._bind(raw_conn.cursor(*args, **kwargs))

    def _carry_over(self, raw_conn: Any) -> None:
        """Continue on ``raw_conn`` from the next statement on (rows held stay readable)."""
        old = self._raw
        if _server_side(old):
            with contextlib.suppress(Exception):
                old.close()
            self._rebind(raw_conn)
            return
        object.__setattr__(self, "_raw", _Deferred(self, old, raw_conn))

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        """Each driver's cursor has its own (see `PsycopgCursor`, `PyMySQLCursor`): what to
        note before a statement differs, and the hot path stays one call deep."""
        raise NotImplementedError

    def _again(
        self, exc: BaseException, query: Any, params: Any, kwargs: dict[str, Any], before: Any
    ) -> Any:
        """After a failed ``execute``: what the application must see, or the statement run
        again on the new node when it never ran or is a read that may be re-run."""

        def run() -> Any:
            raw = self._raw
            result = raw.execute(query, params, **kwargs)
            return self if result is raw else result

        failed = getattr(self._raw, "connection", None)
        return self._conn._retry(exc, "statement", query, before, run, failed=failed)

    def executemany(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        before = self._conn._before(self._conn._raw)

        def run() -> Any:
            raw = self._raw
            result = raw.executemany(query, *args, **kwargs)
            return self if result is raw else result

        try:
            return run()
        except self._error as exc:
            # Re-run only when nothing was sent; a batch is never re-run as a read, and a
            # refused one may have committed its first rows.
            failed = getattr(self._raw, "connection", None)
            return self._conn._retry(
                exc, "statement", query, before, run, retry_reads=False, batch=True, failed=failed
            )

    @property
    def connection(self) -> Connection:
        return self._conn

    def __iter__(self) -> Iterator[Any]:
        return iter(self._raw)

    def __next__(self) -> Any:
        return next(self._raw)

    def __enter__(self) -> Cursor:
        self._raw.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._raw.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name in ("fetchone", "fetchmany", "fetchall"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._raw, name, value)

    def __repr__(self) -> str:
        return f"<aurora_smartdriver cursor over {self._raw!r}>"


class PsycopgCursor(Cursor):
    """A psycopg cursor: notes the transaction status before each statement (one attribute
    read), since a lost connection no longer knows whether a transaction was open."""

    _io = _PSYCOPG_CURSOR_IO

    def set_result(self, index: int) -> PsycopgCursor:
        """psycopg's ``set_result``: returns this cursor, as psycopg's returns itself."""
        self._raw.set_result(index)
        return self

    def results(self) -> Iterator[PsycopgCursor]:
        """psycopg's ``results``: this cursor on each result set in turn."""
        for _ in self._raw.results():
            yield self

    def _bind(self, raw: Any) -> None:
        super()._bind(raw)
        self._pgconn = raw.connection.pgconn

    def _carry_over(self, raw_conn: Any) -> None:
        super()._carry_over(raw_conn)
        self._pgconn = raw_conn.pgconn

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        """The driver cursor's class: ``isinstance(cur, psycopg.Cursor)`` holds."""
        raw = self._raw
        if isinstance(raw, _Deferred):
            raw = raw._old
        return type(self) if isinstance(raw, _DetachedCursor) else type(raw)

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        raw = self._raw
        before = self._pgconn.transaction_status
        try:
            result = raw.execute(query, params, **kwargs) if kwargs else raw.execute(query, params)
        except self._error as exc:
            return self._again(exc, query, params, kwargs, before)
        except BaseException:
            self._conn.__dict__["_interrupted"] = True  # cut off mid-call: nothing is known
            raise
        return self if result is raw else result


class PyMySQLCursor(Cursor):
    """A PyMySQL cursor (the server's status flags survive a lost connection)."""

    def __iter__(self) -> PyMySQLCursor:
        return self  # as PyMySQL's cursors: the cursor is its own iterator

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row

    def execute(self, query: Any, args: Any = None) -> Any:  # type: ignore[override]
        """``Cursor.execute(query, args=None)``, as PyMySQL names it."""
        raw = self._raw
        conn = self._conn
        on = conn._raw
        before = on._result  # PyMySQL forgets it when it sends the next statement
        try:
            result = raw.execute(query, args)
        except self._error as exc:
            try:
                return self._again(exc, query, args, {}, before)
            finally:
                if conn._raw is on:  # it ran there (an error of the statement's own)
                    conn.__dict__["_sent"] = True
        except BaseException:
            conn.__dict__["_interrupted"] = True  # cut off mid-call: nothing is known
            raise
        conn.__dict__["_sent"] = True  # see PyMySQLConnection._in_transaction
        return self if result is raw else result

    def executemany(self, query: Any, args: Any) -> Any:
        """``Cursor.executemany(query, args)``, as PyMySQL names it."""
        conn = self._conn
        on = conn._raw
        try:
            return super().executemany(query, args)
        finally:
            if conn._raw is on:
                conn.__dict__["_sent"] = True

    def callproc(self, procname: str, args: Any = ()) -> Any:
        before = self._conn._before(self._conn._raw)
        try:
            return self._raw.callproc(procname, args)
        except self._error as exc:
            failed = getattr(self._raw, "connection", None)
            return self._conn._retry(
                exc,
                "statement",
                f"CALL {procname}",
                before,
                lambda: self._raw.callproc(procname, args),
                retry_reads=False,
                failed=failed,
            )


class Connection:
    """What both drivers' proxies share; use ``aurora_smartdriver.connect`` to get one."""

    _cursor_class: type[Cursor] = Cursor
    _driver_warns_unclosed = False
    """Whether the driver's own connection warns when collected open (psycopg's does): then a
    connection of its own (``connect()``) leaves the warning to it, one per connection."""

    def __init__(self, runtime: Runtime, role: str, lease: Lease, *, autocommit: bool) -> None:
        d = self.__dict__
        d["_runtime"] = runtime
        d["_adapter"] = runtime.adapter
        d["_error"] = runtime.adapter.Error
        d["_detached_error"] = error_class(runtime.spec.engine, Detached)
        d["_base_role"] = role
        d["_lease"] = lease
        d["_raw"] = lease.raw
        d["_closed"] = False
        d["_released"] = False  # the close callbacks ran (the runtime was let go)
        d["_autocommit"] = autocommit
        d["_read_only"] = False
        d["_isolation"] = None
        d["_pending_move"] = False
        d["_cursors"] = weakref.WeakSet()
        d["_closers"] = []
        d["_lock"] = threading.RLock()  # one failover at a time, however many threads see it
        d["_driver_attrs"] = {}  # driver attributes set through the proxy: replayed, reset
        d["_driver_defaults"] = {}
        _runtime.give_back_abandoned()

    @classmethod
    def unconnected(cls, runtime: Runtime, role: str, *, autocommit: bool) -> Connection:
        """A connection that holds no driver connection yet (PyMySQL's ``defer_connect``):
        closed to statements until ``connect()``, which borrows one as a reopen does."""
        why = "not connected yet (defer_connect): call connect()"
        raw = _DetachedRaw(error_class(runtime.spec.engine, Detached), why)
        conn = cls(runtime, role, _DetachedLease(raw, _Nowhere(), False), autocommit=autocommit)
        conn.__dict__["_closed"] = True
        conn.__dict__["_closed_why"] = why
        return conn

    def _on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once, after the connection is given back.

        The callbacks let go of what the connection holds (its runtime); a closed connection
        opened again (`_reopen`) acquires a runtime again and replaces them by its release.
        """
        self._closers.append(callback)

    def _release(self) -> None:
        """Run the close callbacks, once per opening."""
        d = self.__dict__
        if d["_released"]:
            return
        d["_released"] = True
        for callback in self._closers:
            callback()

    # -- the library's view --------------------------------------------------------------
    @property
    def instance_id(self) -> str:
        """The instance this connection is on now (the last one, while it is on none)."""
        return str(self._lease.target.instance_id)

    @property
    def role(self) -> str:
        """The role asked for now: ``writer``, ``reader`` or ``any`` (``reader`` when read-only)."""
        return "reader" if self._read_only and self._base_role == "writer" else self._base_role

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by the application, or under it)."""
        return bool(self._closed or getattr(self._raw, "closed", False))

    @property
    def consistency_token(self) -> str:
        """Read-your-writes: this connection's position as a token for
        ``Cluster.session(token=...)`` or ``Cluster.reader(consistency_token=...)`` elsewhere
        (see docs/consistency.md); from now on its own reads honour it too."""
        self._check_open()
        with self._lock:
            tracker = self.__dict__.get("_tracker")
            if tracker is None:
                tracker = self.__dict__["_tracker"] = consistency.Tracker(
                    _causal.cluster_name(self._runtime.spec)
                )
            lease = self._lease
            writer = not self._detached and _causal.on_writer(self._runtime, lease)
            if writer and self._in_transaction(self._raw):
                raise self._runtime.module.ProgrammingError(
                    "consistency_token inside a transaction cannot cover its writes: commit first"
                )
            if tracker.unsure:
                _causal.settle(self._runtime, tracker)
            elif writer:
                _causal.capture(self._runtime, self._raw, tracker)
            return tracker.token

    @property
    def _detached(self) -> bool:
        return getattr(self._lease, "detached", False) is True

    # -- PEP 249 -------------------------------------------------------------------------
    def cursor(self, *args: Any, **kwargs: Any) -> Cursor:
        self._check_open()
        raw = self._raw
        try:
            raw_cursor = raw.cursor(*args, **kwargs)
        except self._error as exc:
            # The driver connection is already known dead (another thread saw it die): as a
            # statement that was never sent; whatever transaction was open is gone.
            raw_cursor = self._retry(
                exc,
                "statement",
                None,
                _UNKNOWN,
                lambda: self._raw.cursor(*args, **kwargs),
                failed=raw,
            )
        cur = self._cursor_class(self, raw_cursor, (args, kwargs))
        self._cursors.add(cur)
        return cur

    def commit(self) -> None:
        self._check_open()
        raw = self._raw
        before = self._before(raw)
        try:
            raw.commit()
        except self._error as exc:
            self._recover(exc, "commit", None, before, failed=raw)  # returns: nothing lost
        except BaseException:
            self.__dict__["_interrupted"] = True  # a COMMIT cut off: its outcome is unknown
            raise
        else:
            self._settled(raw)
            tracker = self.__dict__.get("_tracker")
            if tracker is not None and _causal.on_writer(self._runtime, self._lease):
                _causal.capture(self._runtime, raw, tracker)  # read-your-writes: see _causal
        self._boundary()

    def rollback(self) -> None:
        self._check_open()
        raw = self._raw
        before = self._before(raw)
        try:
            raw.rollback()
        except self._error as exc:
            # The server lost the transaction with the connection: that is a rollback. The
            # next statement finds the new node; nothing waits for it here.
            self._recover(exc, "rollback", None, before, failed=raw)
        else:
            self._settled(raw)
        self._boundary()

    def close(self) -> None:
        """Give the driver connection back (to its pool, or close it); idempotent."""
        if self._closed:
            self._release()  # never connected (defer_connect), or a reopen failed
            return
        self.__dict__["_closed"] = True
        if getattr(self._runtime, "inherited", False):
            # Made before a fork, in the parent: its socket is the parent's. No rollback, no
            # reset, no goodbye to the server from here: only let go of it.
            self._release()
            return
        if self._cursors:
            for cur in list(self._cursors):
                try:
                    cur._raw.close()
                except Exception:  # noqa: S112 - a cursor of a dead connection may fail to close
                    continue
        self._give_back(self._lease)
        self._release()

    def _reopen(self) -> None:
        """Open a closed connection again (PyMySQL's ``connect()``, ``ping(reconnect=True)``).

        A fresh driver connection for the role asked for now, from its pool for a pooled
        connection, with the session state set through the proxy replayed; cursors made
        before continue on it. A connection that let go of its runtime at ``close()``
        acquires it again (or a new one, after a fork). When no node can be had, the
        connection stays closed and the error is raised.
        """
        d = self.__dict__
        with self._lock:
            if not d["_closed"]:
                return
            old = self._runtime
            fresh: Runtime | None = None
            if (d["_released"] and d["_closers"]) or old.inherited:
                fresh = _runtime.acquire(old.spec, old.credentials_source)
                d["_runtime"] = fresh
            try:
                lease = self._fresh_lease(self.role, self._lease.pooled)
            except BaseException:
                if fresh is not None:
                    d["_runtime"] = old
                    _runtime.release(fresh)
                raise
            if fresh is not None:
                d["_closers"] = [lambda: _runtime.release(fresh)]
                d["_released"] = False
            d["_closed"] = False
            d.pop("_closed_why", None)
            d.pop("_interrupted", None)  # a new session: nothing of the old one is in flight
            self._take(lease)

    def _give_back(self, lease: Lease, *, read_only: bool | None = None) -> None:
        """Return ``lease`` to its pool reset to the defaults (or close it)."""
        broken = bool(self.__dict__.get("_patched"))
        if lease.pooled and not getattr(lease, "detached", False) and not broken:
            raw = lease.raw
            try:
                if self._in_transaction(raw):
                    raw.rollback()
                self._restore_defaults(raw, read_only=read_only)
                for name, value in self._driver_defaults.items():
                    if value is _MISSING:
                        broken = True  # nothing to put back: not handed out again
                    else:
                        setattr(raw, name, value)
                hook = self.__dict__.get("_reset_hook")
                if hook is not None and not broken:
                    hook(raw)  # the application's own reset (Cluster(reset=...))
                    if self._in_transaction(raw):
                        raw.commit()  # keep what the hook did; lend no open transaction
            except Exception:
                broken = True  # a connection that cannot be reset is not handed out again
        lease.give_back(broken=broken)

    # -- session state -------------------------------------------------------------------
    def _set_read_only(self, value: bool) -> None:
        """Move between the writer and a reader, at the next transaction boundary."""
        value = bool(value)
        if value == self._read_only:
            return
        if self._detached:
            self.__dict__["_read_only"] = value  # the next statement connects to that role
            return
        if self._base_role != "writer":
            self.__dict__["_read_only"] = value
            try:
                self._apply_read_only(self._raw)  # psycopg refuses it inside a transaction
            except BaseException:
                self.__dict__["_read_only"] = not value
                raise
            return
        if self._in_transaction(self._raw):
            self.__dict__["_read_only"] = value
            self.__dict__["_pending_move"] = True
        else:
            self.__dict__["_read_only"] = value
            self._move()

    def _route_lazily(self, read_only: bool) -> None:
        """Ask for the writer (or a reader) without connecting now: the driver connection goes
        back to its pool and the next statement borrows one of the role asked for.

        For a connection parked between uses (SQLAlchemy's pool): putting it back on the
        writer must not wait for a writer, least of all while the writer is down.
        """
        if self._closed:
            return
        self.__dict__["_read_only"] = bool(read_only)
        self.__dict__["_pending_move"] = False
        if not self._detached:
            self._detach(f"asked for a {self.role}", give_back=True)

    def _boundary(self) -> None:
        if self._pending_move:
            self.__dict__["_pending_move"] = False
            wanted = self._read_only
            try:
                self._move()
            except Exception as exc:
                # The transaction ended fine; the move is for the next one. Try again then.
                self.__dict__["_read_only"] = wanted
                self._detach(f"moving to a {self.role} failed ({_short(exc)})", give_back=True)

    def _move(self) -> None:
        """Continue on a node of the role now asked for, with the same session state."""
        old = self._lease
        tracker = self.__dict__.get("_tracker")
        if (
            tracker is not None
            and self._autocommit
            and self.role != "writer"
            and not self._detached
            and _causal.on_writer(self._runtime, old)
        ):
            # Read-your-writes: autocommit writes' position, before leaving the writer (a
            # commit reads it itself; see _causal).
            _causal.capture(self._runtime, old.raw, tracker)
        try:
            lease = self._fresh_lease(self.role, old.pooled)
        except BaseException:
            self.__dict__["_read_only"] = not self._read_only  # still where it was: say so
            raise
        self._take(lease)
        # Back to its pool clean: the session state this connection set (read-only above
        # all) must not follow the driver connection to its next borrower.
        self._give_back(old, read_only=not self._read_only)

    def _fresh_lease(
        self,
        role: str,
        pooled: bool,
        *,
        cause: BaseException | None = None,
        failed: Any = None,
        kind: str = "disconnect",
    ) -> Lease:
        """A driver connection for ``role`` with this connection's session replayed on it.

        With ``failed`` (the target whose connection died), or when a borrowed connection
        turns out dead at the replay (its node failed a moment ago and the pool did not know
        yet), the failover procedure finds the right node.
        """
        runtime = self._runtime
        tracker = self.__dict__.get("_tracker") if role != "writer" else None
        if failed is None:
            lease: Lease = (
                runtime.lease(role, pooled=pooled)
                if tracker is None
                else _causal.lease_for(runtime, tracker, pooled=pooled)
            )
            try:
                self._replay(lease.raw)
                return lease
            except self._error as exc:
                lease.give_back(broken=True)
                if self._adapter.error_kind(exc) != "disconnect":
                    raise
                cause, failed = exc, lease.target
            except BaseException:
                lease.give_back(broken=True)
                raise
        lease = runtime.fail_over(role, failed, kind, pooled=pooled, cause=cause)
        if tracker is not None:  # a replica the failover found must have the session's writes
            lease = _causal.verified_for(runtime, lease, tracker, pooled=pooled)
        try:
            self._replay(lease.raw)
        except BaseException as replay_error:
            lease.give_back(broken=True)
            if cause is not None:
                raise replay_error from cause
            raise
        return lease

    def _replay(self, raw: Any) -> None:
        """Apply the session state set through the API to a new driver connection: the
        session switches, and the driver attributes set through the proxy (psycopg's
        ``row_factory`` or ``prepare_threshold``, say)."""
        self._apply_session(raw)
        self._apply_read_only(raw)
        for name, value in self._driver_attrs.items():
            # The value to put back before ``raw`` returns to its pool: what it had.
            self._driver_defaults.setdefault(name, getattr(raw, name, _MISSING))
            setattr(raw, name, value)

    def _apply_session(self, raw: Any) -> None:
        raise NotImplementedError

    def _apply_read_only(self, raw: Any) -> None:
        raise NotImplementedError

    def _restore_defaults(self, raw: Any, *, read_only: bool | None = None) -> None:
        """Undo what this connection changed on ``raw`` before it goes back to a pool.

        ``read_only`` is whether ``raw`` was switched to read-only (default: as this
        connection is now; a move leaves the old driver connection in the other mode).
        """
        raise NotImplementedError

    def _switch_autocommit(self, value: bool) -> None:
        """Set autocommit as the driver spells it."""
        raise NotImplementedError

    def _in_transaction(self, raw: Any) -> bool:
        """Whether a transaction may be open on ``raw`` (no I/O): when in doubt, yes."""
        return bool(self._adapter.in_transaction(raw))

    def _settled(self, raw: Any) -> None:
        """A transaction boundary passed on ``raw`` (commit or rollback succeeded)."""
        self.__dict__.pop("_interrupted", None)

    # -- failures ------------------------------------------------------------------------
    def _before(self, raw: Any) -> Any:
        """What the driver knows of the transaction before a call, when a lost connection
        would forget it (psycopg); None where it survives (PyMySQL's status flags)."""
        return None

    def _facts(self, exc: BaseException, before: Any, raw: Any) -> tuple[Transaction, bool]:
        """The transaction as the driver ``raw`` knew it before the failed call, and whether
        the call may have reached the server."""
        raise NotImplementedError

    def _session_read_only(self) -> bool:
        return bool(self._read_only)

    def _is_failover_error(self, exc: BaseException) -> bool:
        if isinstance(exc, self._detached_error):
            return True
        return outcome.is_failover_signal(
            self._adapter.error_kind(exc),
            failover=bool(self._runtime.spec.settings.failover),
            asked_writer=self.role == "writer",
            session_read_only=self._session_read_only(),
            lent_as_writer=bool(getattr(self._lease, "as_writer", False)),
        )

    def _still_writer(self) -> bool:
        """Whether the node this connection is on still says it is the writer, asked on a
        connection of its own: then a read-only error is the session's doing (PostgreSQL's
        ``SET default_transaction_read_only``, say), not a demotion."""
        runtime = self._runtime
        # A fresh session sees what every session sees: a replica, or a node made read-only
        # for all (a demoted writer), but not a read-only setting of this session alone.
        sql = (
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'"
            if runtime.spec.engine == "postgresql"
            else "SELECT @@global.read_only OR @@global.innodb_read_only"  # Aurora: the latter
        )
        try:
            raw = runtime.open(self._lease.target)
        except Exception:
            return False  # cannot ask: treat it as gone
        try:
            rows = runtime.adapter.query(raw, sql).rows
        except Exception:
            return False
        finally:
            runtime.adapter.close(raw)
        return bool(rows) and not rows[0][0]

    def _retry(
        self,
        exc: BaseException,
        call: Call,
        query: Any,
        before: Any,
        run: Callable[[], Any],
        *,
        retry_reads: bool | None = None,
        batch: bool = False,
        failed: Any = None,
    ) -> Any:
        """After a failed call: `_recover` raises what the application must see, or returns
        when the call is to run again, which ``run`` does (up to three times, each failure
        judged the same way; a call that still cannot run never ran: FailoverSucceeded)."""
        for _ in range(3):
            self._recover(
                exc, call, query, before, retry_reads=retry_reads, batch=batch, failed=failed
            )
            raw = self._raw
            before, failed = self._before(raw), raw
            try:
                return run()
            except self._error as again:
                exc = again
        self._recover(exc, call, query, before, retry_reads=False, batch=batch, failed=failed)
        raise keep_driver_details(
            self._runtime.failover_succeeded(
                f"the call could not be run on a live node in three attempts ({_short(exc)}); "
                "nothing of it ran: run the work again",
                transaction_rolled_back=False,
            ),
            exc,
        ) from exc

    def _recover(
        self,
        exc: BaseException,
        call: Call,
        query: Any = None,
        before: Any = None,
        *,
        retry_reads: bool | None = None,
        batch: bool = False,
        failed: Any = None,
    ) -> None:
        """Turn a driver error into what the application must see (see docs/failover.md).

        Application errors are re-raised as they are. A lost or demoted node: `outcome.decide`
        says what the application is told, from what was in flight and the transaction state
        the driver knew. Returns only when the call is to be run again (it never ran, or it
        is a read re-run with ``retry_reads``) or when nothing of it was lost (``rollback``).
        The library never re-sends a COMMIT or a write. ``failed`` is the driver connection
        the call ran on: when another thread already replaced it, the failover is not done
        twice.
        """
        if self._closed:
            # The application closed it: not a failover, and nothing to reopen. A cursor of a
            # connection that holds no driver connection says so as the driver would.
            if isinstance(exc, self._detached_error):
                raise self._closed_error() from None
            raise exc
        if not self._is_failover_error(exc):
            raise exc
        with self._lock:
            self._recover_locked(
                exc, call, query, before, retry_reads=retry_reads, batch=batch, failed=failed
            )

    def _recover_locked(
        self,
        exc: BaseException,
        call: Call,
        query: Any,
        before: Any,
        *,
        retry_reads: bool | None,
        batch: bool,
        failed: Any,
    ) -> None:
        detached = isinstance(exc, self._detached_error)
        if detached and not self._detached:
            return  # another thread connected it meanwhile: run the statement
        moved = not detached and failed is not None and failed is not self._raw
        kind = "disconnect" if detached else self._adapter.error_kind(exc)
        if kind == "read_only" and self._still_writer():
            raise exc
        runtime = self._runtime
        decided = outcome.decide(
            _recovery.situation(
                call,
                None
                if detached
                else self._facts(exc, before, self._raw if failed is None else failed),
                interrupted=self.__dict__.pop("_interrupted", False),
                query=query,
                engine=runtime.spec.engine,
                retry_reads=runtime.spec.settings.retry_reads
                if retry_reads is None
                else retry_reads,
                refused=kind == "read_only",
                batch=batch,
            )
        )
        old = self.instance_id
        step = _recovery.next_step(
            decided, detached=detached, moved=moved, still_detached=self._detached
        )
        if step == "detach":
            self._detach(_recovery.lost(old, exc))
        if step in ("stay", "detach"):
            return
        started = time.monotonic()
        try:
            if step == "attach":
                self._attach()
            elif step == "fail_over":
                self._fail_over(exc, kind)
        except BaseException as failure:
            if not self._detached:
                self._detach(_recovery.lost(old, exc))
            message = _recovery.unreachable(decided, call=call, exc=exc, old=old, failure=failure)
            if message is None:
                raise
            self._unknown_event(old, started)
            if not isinstance(failure, Exception):
                raise  # interrupted meanwhile (Ctrl-C): that is what the program sees
            raise keep_driver_details(runtime.outcome_unknown(message), exc) from failure
        after = round(time.monotonic() - started, 3)
        told = _recovery.answer(
            decided, call=call, exc=exc, old=old, new=self.instance_id, after=after
        )
        _recovery.tell(told, runtime, exc)

    def _unknown_event(self, lost: str, started: float) -> None:
        self._runtime.events.emit(
            "outcome_unknown",
            old=lost,
            new=self.instance_id,
            after_s=round(time.monotonic() - started, 3),
        )

    def _fail_over(self, exc: BaseException, kind: str) -> None:
        """Replace the dead driver connection by one on the right node, same session state.

        The dead one goes back (as broken) first: with a full pool, waiting for a new one
        while holding it would wait until failover_timeout.
        """
        old = self._lease
        self._detach(_recovery.lost(old.target.instance_id, exc))
        lease = self._fresh_lease(self.role, old.pooled, cause=exc, failed=old.target, kind=kind)
        self._take(lease)
        self._runtime.events.emit(
            "connection_moved", old=old.target.instance_id, new=lease.target.instance_id
        )

    def _attach(self) -> None:
        """Put a connection that is on no node on one of the role asked for (waiting for a
        writer as a new connection does)."""
        self._take(self._fresh_lease(self.role, self._lease.pooled))

    def _take(self, lease: Lease) -> None:
        """Continue on ``lease`` (its session already replayed)."""
        self.__dict__["_pending_move"] = False
        self.__dict__["_sent"] = False  # nothing sent on this one yet
        self.__dict__["_lease"] = lease
        self.__dict__["_raw"] = lease.raw
        for cur in list(self._cursors):
            cur._carry_over(lease.raw)

    def _detach(self, why: str, *, give_back: bool = False, read_only: bool | None = None) -> None:
        """Let go of the driver connection (back to its pool when ``give_back``, as broken
        otherwise); statements then reconnect (see `_DetachedRaw`).

        ``read_only``: whether the driver connection given back is in read-only mode (default:
        the opposite of what is asked now, as after a lazy route or a failed move).
        """
        old = self._lease
        tracker = self.__dict__.get("_tracker")
        if (
            tracker is not None
            and (old.as_writer or self._base_role != "reader")
            and (self._autocommit or not give_back)
        ):
            # Writes whose position was not read (autocommit, or a COMMIT cut off) may have
            # been made on the node let go: the next read asks the writer.
            tracker.mark_unsure()
        if give_back:
            self._give_back(old, read_only=not self._read_only if read_only is None else read_only)
        else:
            old.mark_broken()
            old.give_back(broken=True)
        text = f"{why}: this connection is on no node now; its next statement reconnects"
        raw = _DetachedRaw(self._detached_error, text)
        self.__dict__["_lease"] = _DetachedLease(raw, old.target, old.pooled)
        self.__dict__["_raw"] = raw
        for cur in list(self._cursors):
            if _server_side(cur._raw):
                with contextlib.suppress(Exception):
                    cur._raw.close()
                cur._bind(_DetachedCursor(self._detached_error, text))
            else:
                cur._carry_over(raw)

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> Exception:
        """What the driver raises for a closed connection."""
        raise NotImplementedError

    # -- delegation and context management ------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        if d.get("_closed"):
            if not d["_lease"].pooled and not getattr(d["_lease"], "detached", False):
                return getattr(d["_raw"], name)  # its own, closed: it answers as the driver
            if name in _AFTER_CLOSE:
                return _AFTER_CLOSE[name]
            raise self._closed_error()
        return getattr(d["_raw"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        cls_attr = getattr(type(self), name, None)
        if isinstance(cls_attr, property):
            object.__setattr__(self, name, value)
        elif name.startswith("_"):
            d = self.__dict__
            if name in d or cls_attr is not None or d["_closed"] or self._detached:
                d[name] = value
            elif hasattr(d["_raw"], name):
                # The driver's own private attribute (a test patching ``_exec_command``, say):
                # on the driver connection, as without the library. Not replayed, and the
                # driver connection is not lent again after it (nothing to put back).
                setattr(d["_raw"], name, value)
                d["_patched"] = True
            else:
                d[name] = value
        else:
            # A driver attribute (row_factory, ...): follows the connection to a new node and
            # is put back before the driver connection returns to its pool.
            self._check_open()
            raw = self._raw
            if not self._detached:
                self._driver_defaults.setdefault(name, getattr(raw, name, _MISSING))
                setattr(raw, name, value)
            self._driver_attrs[name] = value

    def __delattr__(self, name: str) -> None:
        d = self.__dict__
        if name in d:
            del d[name]
        elif name in getattr(d.get("_raw"), "__dict__", ()):
            delattr(d["_raw"], name)  # one `__setattr__` put on the driver connection
        else:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __del__(self, _warn: Any = warnings.warn) -> None:
        # No I/O and no locks in the garbage collector (a self-deadlock when it runs while
        # this thread holds a pool's lock): warn, and give the connection back later.
        d = self.__dict__
        if d.get("_closed", True):
            if not d.get("_released", True):  # closed, never connected: let its runtime go
                d["_released"] = True
                _runtime.abandon(None, list(d["_closers"]))
            return
        d["_closed"] = True
        lease = d["_lease"]
        if lease.pooled or getattr(lease, "detached", False) or not self._driver_warns_unclosed:
            _warn(
                f"{type(self).__name__} to {lease.target.instance_id} was never closed: "
                "close it (or use it as a context manager)",
                ResourceWarning,
                stacklevel=2,
            )
        closers = list(d["_closers"])
        if lease.pooled:
            _runtime.abandon(lease, closers)  # given back at the next borrow or connect
        else:
            # Its own driver connection: let it go, and the driver's finalizer closes it (the
            # server ends the session, its transaction and locks), as a bare driver's would.
            counts = getattr(lease, "_metrics", None)
            instance = lease.target.instance_id
            if counts is not None:
                closers.insert(0, lambda: counts.closed.add(instance))
            _runtime.abandon(None, closers)

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._detached:
            state = f"on no node (was {self._lease.target.instance_id})"
        else:
            state = f"on {self._lease.target.instance_id}"
        summary = self._summary()
        return (
            f"<aurora_smartdriver {type(self).__name__} role={self.role} {state}"
            + (f" {summary}" if summary else "")
            + ">"
        )

    def _summary(self) -> str:
        """The driver's own status summary, for the ``repr`` (no secrets)."""
        return ""


class PsycopgConnection(Connection):
    """Behaves like ``psycopg.Connection``.

    ``isinstance(conn, psycopg.Connection)`` is true (through ``__class__``), so psycopg's own
    functions that take a connection accept it: ``TypeInfo.fetch``, ``register_hstore``,
    pgvector's ``register_vector``. They run on the driver connection of the moment.
    """

    _cursor_class = PsycopgCursor
    _driver_warns_unclosed = True

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._raw) if not self._detached else type(self)

    def _closed_error(self) -> Exception:
        error: Exception = self._runtime.module.OperationalError("the connection is closed")
        return error

    def _summary(self) -> str:
        """psycopg's ``[STATUS] (host=... user=... database=...)``; ``[BAD]`` once closed."""
        if self._closed:
            return "[BAD]"
        if self._detached:
            return ""
        summary: str = self._runtime.module.pq.misc.connection_summary(self._raw.pgconn)
        return summary

    def set_autocommit(self, value: bool) -> None:
        """``psycopg.Connection.set_autocommit``: as setting ``autocommit``."""
        self.autocommit = value

    def set_isolation_level(self, value: Any) -> None:
        """``psycopg.Connection.set_isolation_level``: as setting ``isolation_level``."""
        self.isolation_level = value

    def set_read_only(self, value: bool | None) -> None:
        """``psycopg.Connection.set_read_only``: as setting ``read_only``."""
        self.read_only = value

    def set_deferrable(self, value: bool | None) -> None:
        """``psycopg.Connection.set_deferrable``: as setting ``deferrable``."""
        self.deferrable = value

    @property
    def deferrable(self) -> bool | None:
        return self.__dict__.get("_deferrable")

    @deferrable.setter
    def deferrable(self, value: bool | None) -> None:
        self._check_open()
        value = None if value is None else bool(value)
        if not self._detached:
            self._raw.deferrable = value
        self.__dict__["_deferrable"] = value

    @property
    def autocommit(self) -> bool:
        return bool(self._autocommit)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._check_open()
        self._switch_autocommit(value)

    def _switch_autocommit(self, value: bool) -> None:
        if not self._detached:
            self._raw.autocommit = value
        self.__dict__["_autocommit"] = bool(value)

    @property
    def isolation_level(self) -> Any:
        return self._isolation

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:
        self._check_open()
        if value is not None:
            value = self._runtime.module.IsolationLevel(value)  # as psycopg: ValueError if bad
        if not self._detached:
            self._raw.isolation_level = value
        self.__dict__["_isolation"] = value

    @property
    def read_only(self) -> bool | None:
        """None until set (the server's default), as psycopg's; True routes to a reader."""
        if self._read_only:
            return True
        return False if self.__dict__.get("_read_only_set") else None

    @read_only.setter
    def read_only(self, value: bool | None) -> None:
        self._check_open()
        self._set_read_only(bool(value))
        self.__dict__["_read_only_set"] = value is not None

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool = False
    ) -> Cursor:
        """``psycopg.Connection.execute``: a new cursor that executed ``query`` (binary: its
        results in binary format, as ``cursor.format``)."""
        cur = self.cursor()
        if binary:
            cur.format = self._runtime.module.pq.Format.BINARY
        if prepare is None:
            return cur.execute(query, params)  # type: ignore[no-any-return]
        return cur.execute(query, params, prepare=prepare)  # type: ignore[no-any-return]

    def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> _TransactionBlock:
        """``psycopg.Connection.transaction``, with its BEGIN and COMMIT seen by the library:
        a connection lost at the COMMIT of the block is ``TransactionOutcomeUnknown``, inside
        the block ``FailoverSucceeded(transaction_rolled_back=True)``."""
        self._check_open()
        return _TransactionBlock(self, savepoint_name, force_rollback)

    def _before(self, raw: Any) -> Any:
        return raw.pgconn.transaction_status

    def _facts(self, exc: BaseException, before: Any, raw: Any) -> tuple[Transaction, bool]:
        if before is None or before == _UNKNOWN:
            # Lost before this call: whatever transaction was open is gone.
            return "open", False
        if before == _ACTIVE or getattr(raw, "_pipeline", None) is not None:
            # A statement was still running (a pipeline's queue, another thread's call): it
            # may have been a COMMIT or a write of its own, so nothing can be promised.
            return "busy", True
        if before in (_INTRANS, _INERROR):
            return "open", True
        return ("none" if raw.autocommit else "implicit"), True

    def _session_read_only(self) -> bool:
        return bool(self._read_only) or (
            not self._detached and getattr(self._raw, "read_only", None) is True
        )

    def _apply_session(self, raw: Any) -> None:
        raw.autocommit = self._autocommit
        raw.isolation_level = self._isolation
        raw.deferrable = self.__dict__.get("_deferrable")

    def _apply_read_only(self, raw: Any) -> None:
        # On a reader the server refuses writes anyway; on the writer (a reader request that
        # fell back) psycopg's own switch makes transactions READ ONLY, as the caller asked.
        raw.read_only = True if self._read_only else None

    def _restore_defaults(self, raw: Any, *, read_only: bool | None = None) -> None:
        # Local attribute changes in psycopg (no round trip), made only where they differ:
        # each setter takes the connection's lock and runs a generator.
        default = self._runtime.default_autocommit
        if raw.autocommit != default:
            raw.autocommit = default
        if raw.isolation_level is not None:
            raw.isolation_level = None
        if raw.read_only is not None:
            raw.read_only = None
        if raw.deferrable is not None:
            raw.deferrable = None

    def __enter__(self) -> PsycopgConnection:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # psycopg's semantics: commit on success, roll back on error, then close; a failed
        # rollback is logged, not raised over the error that ended the block.
        if self._closed:
            return
        try:
            if exc_type is None:
                self.commit()
            else:
                try:
                    self.rollback()
                except Exception as exc2:
                    log.warning("error ignored in rollback on %s: %s", self, exc2)
        finally:
            self.close()


class _TransactionBlock:
    """What `PsycopgConnection.transaction` returns: psycopg's context manager, entered on the
    driver connection of the moment (connecting first when on no node), with its BEGIN and
    COMMIT seen by the library. ``with`` gives a `_Transaction`."""

    def __init__(
        self, conn: PsycopgConnection, savepoint_name: str | None, force_rollback: bool
    ) -> None:
        self._conn = conn
        self._args = (savepoint_name, force_rollback)
        self._raw: Any = None
        self._block: Any = None  # psycopg's context manager, once entered
        self._tx: _Transaction | None = None
        self._outer = False

    def __enter__(self) -> _Transaction:
        conn = self._conn
        if self._block is not None:
            raise TypeError("transaction blocks can be used only once")  # as psycopg's
        if conn._detached:
            conn._attach()
        raw = conn._raw
        before = conn._before(raw)
        self._outer = before == _IDLE
        block = raw.transaction(*self._args)
        try:
            tx = block.__enter__()
        except conn._error as exc:
            conn._recover(
                exc, "statement", "BEGIN" if self._outer else "SAVEPOINT s", before, failed=raw
            )
            raw = conn._raw
            block = raw.transaction(*self._args)
            tx = block.__enter__()
        self._raw, self._block = raw, block
        self._tx = _Transaction(conn, tx)
        return self._tx

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        conn, raw, block = self._conn, self._raw, self._block
        if exc is not None:
            tx = self._tx
            real = None if tx is None else tx._tx
            if tx is not None and getattr(exc, "transaction", None) is tx:
                exc.transaction = real  # psycopg.Rollback(tx) names this block
            if conn._raw is not raw:
                return False  # already failed over: the error that ended the block tells it
            try:
                return bool(block.__exit__(exc_type, exc, tb))
            except conn._error as exit_error:
                if not conn._is_failover_error(exit_error):
                    raise
                # The server rolled the block back with its connection; the error that ended
                # the block is the one to see.
                conn._detach(f"the connection to {conn.instance_id} was lost")
                return False
        if conn._raw is not raw:
            raise conn._runtime.failover_succeeded(
                "the connection of this transaction block was lost and replaced by one to "
                f"{conn.instance_id}: the block's transaction was rolled back: run it again",
                transaction_rolled_back=True,
            )
        before = conn._before(raw)
        try:
            suppressed = bool(block.__exit__(None, None, None))
        except conn._error as commit_error:
            if self._outer:
                conn._recover(commit_error, "commit", None, before, failed=raw)
            else:
                conn._recover(commit_error, "statement", "RELEASE SAVEPOINT s", before, failed=raw)
            return False
        tracker = conn.__dict__.get("_tracker")
        if (
            tracker is not None
            and self._outer
            and not conn._in_transaction(raw)
            and _causal.on_writer(conn._runtime, conn._lease)
        ):
            _causal.capture(conn._runtime, raw, tracker)  # read-your-writes, as commit() does
        return suppressed


class _Transaction:
    """psycopg's ``Transaction`` of a block, with the library's connection as its
    ``connection``: a ``psycopg.Transaction`` to ``isinstance``; ``savepoint_name``,
    ``status``, ``force_rollback`` and its ``repr`` are psycopg's, and ``raise
    psycopg.Rollback(tx)`` ends the block it names, as with psycopg's own."""

    _conn: PsycopgConnection
    _tx: Any

    def __init__(self, conn: PsycopgConnection, tx: Any) -> None:
        object.__setattr__(self, "_conn", conn)
        object.__setattr__(self, "_tx", tx)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._tx)

    @property
    def connection(self) -> PsycopgConnection:
        return self._conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tx, name, value)  # read-only properties raise AttributeError, as psycopg

    def __enter__(self) -> _Transaction:
        self._tx.__enter__()  # psycopg: "transaction blocks can be used only once"
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._tx.__exit__(*exc)

    def __repr__(self) -> str:
        return repr(self._tx)


class PyMySQLConnection(Connection):
    """Behaves like ``pymysql.connections.Connection``."""

    _cursor_class = PyMySQLCursor

    def _in_transaction(self, raw: Any) -> bool:
        """PyMySQL's flags come from OK packets only: a statement that returned rows (SELECT
        ... FOR UPDATE, INSERT ... RETURNING) leaves them as they were, although without
        autocommit it may have opened a transaction. Such a result since the last commit or
        rollback counts as a transaction that may be open."""
        if self._adapter.in_transaction(raw):
            return True
        status = getattr(raw, "server_status", None) or 0
        return self._opened_by_rows(status, getattr(raw, "_result", None)) or self._sent_open(
            status
        )

    def _sent_open(self, status: int) -> bool:
        """A statement went to the server since the last commit or rollback, without
        autocommit: a transaction may be open although no flag says so (an error's reply
        carries no status flags, and a ping makes PyMySQL forget the last result)."""
        return bool(self.__dict__.get("_sent")) and not status & _MYSQL_AUTOCOMMIT

    def _opened_by_rows(self, status: int, result: Any) -> bool:
        """Whether ``result`` (the last statement's, rows returned) may have opened a
        transaction that is still open: no autocommit, and no boundary since it."""
        return (
            not status & _MYSQL_AUTOCOMMIT
            and result is not None
            and bool(getattr(result, "field_count", 0))
            and result is not self.__dict__.get("_settled_result")
        )

    def _before(self, raw: Any) -> Any:
        return getattr(raw, "_result", None)  # PyMySQL forgets it when it sends the next call

    def _settled(self, raw: Any) -> None:
        super()._settled(raw)
        self.__dict__["_settled_result"] = getattr(raw, "_result", None)
        self.__dict__["_sent"] = False

    def _closed_error(self) -> Exception:
        why = self.__dict__.get("_closed_why") or "the connection is closed"
        error: Exception = self._runtime.module.err.InterfaceError(0, why)
        return error

    def connect(self, sock: Any = None) -> None:
        """PyMySQL's ``connect()``: opens a closed (or ``defer_connect``) connection through
        the library, on a node of the role asked for, with the session state replayed.

        On an open connection, as PyMySQL's, a new session replaces the old one, whose open
        transaction is rolled back. ``sock`` (a socket the application opened) is refused: the
        library connects to the node it chose itself.
        """
        if sock is not None:
            raise self._runtime.module.err.NotSupportedError(
                "connect(sock): the library opens its own connection to the node it chose "
                "(resolved, routed, TLS checked); call connect() without a socket"
            )
        with self._lock:
            if not self._closed and getattr(self._runtime, "inherited", False):
                # Made before a fork, in the parent: let go of its socket without a word to
                # the server (close() knows how); the child gets a connection of its own.
                self.close()
            elif not self._closed:
                self._detach(
                    "connect() asked for a new session", give_back=True, read_only=self._read_only
                )
                self.__dict__["_closed"] = True
                self.__dict__["_closed_why"] = "connect() failed: call connect() again"
            self._reopen()

    @property
    def open(self) -> bool:
        """Whether the connection is open (``if conn.open:``, as with PyMySQL)."""
        return not self._closed and (self._detached or bool(self._raw.open))

    def autocommit(self, value: bool) -> None:
        """``Connection.autocommit(value)``, as PyMySQL spells it."""
        self._check_open()
        self._switch_autocommit(value)

    def _switch_autocommit(self, value: bool) -> None:
        if not self._detached:
            self._raw.autocommit(value)
        self.__dict__["_autocommit"] = bool(value)

    def get_autocommit(self) -> bool:
        if self._detached:
            return bool(self._autocommit)
        return bool(self._raw.get_autocommit())

    def begin(self) -> None:
        """``Connection.begin()``: BEGIN, seen by the library (a lost connection fails over)."""
        self._check_open()
        raw = self._raw
        before = self._before(raw)
        try:
            raw.begin()
        except self._error as exc:

            def again() -> None:
                self._raw.begin()  # the new node's, by then

            self._retry(exc, "statement", "BEGIN", before, again, failed=raw)

    def ping(self, reconnect: bool | None = None) -> None:
        """PyMySQL's ``ping``, failing over where PyMySQL would reconnect to the same address.

        A lost node (by default, or with ``reconnect=True``) starts the failover procedure and
        the ping returns on the right node, unless a transaction was open: then
        ``FailoverSucceeded(transaction_rolled_back=True)``, since its work is gone. PyMySQL's
        own reconnect would reopen a socket to the address the connection was on: after a
        failover, the dead or demoted writer.

        ``reconnect=False`` asks only "is it alive?": a lost session raises the driver's error
        (2006/2013), as PyMySQL's, and nothing reconnects; the next statement then continues
        on a live node and says what became of an open transaction, as after any loss.

        A closed connection is opened again only with ``reconnect=True`` (PyMySQL 1.2's
        default is False); otherwise the ping raises ``InterfaceError``, as PyMySQL's.
        """
        if self._closed:
            if not reconnect:
                raise self._closed_error()
            self._reopen()
            self._raw.ping(reconnect=False)
            return
        raw = self._raw
        before = self._before(raw)
        try:
            if reconnect is not False and not raw.open:
                # PyMySQL closed the socket after an error ("Already closed" to a ping): as
                # lost as a socket that fails now, and nothing was sent.
                raise self._runtime.module.err.InterfaceError(0, "")
            raw.ping(reconnect=False)
        except self._error as exc:
            detached = isinstance(exc, self._detached_error)  # the library let go, not the server
            if not detached and (reconnect is False or not self._is_failover_error(exc)):
                # PyMySQL forgets the last result when it sends the ping: put it back, for
                # the next statement to see a transaction that only returned rows opened.
                raw._result = before
                raise
            self._retry(
                exc, "ping", None, before, lambda: self._raw.ping(reconnect=False), failed=raw
            )

    def _facts(self, exc: BaseException, before: Any, raw: Any) -> tuple[Transaction, bool]:
        # PyMySQL raises InterfaceError(0, '') for a statement on a socket it already closed.
        sent = not (isinstance(exc, self._runtime.module.InterfaceError) and exc.args[:1] == (0,))
        status = getattr(raw, "server_status", None) or 0
        if (
            status & _MYSQL_IN_TRANS
            or self._opened_by_rows(status, before)
            or self._sent_open(status)
        ):
            return "open", sent
        # An unbuffered result still being read is a statement the server already ran (it
        # is sending its rows): the flags of its reply say what the transaction was.
        return ("none" if status & _MYSQL_AUTOCOMMIT else "implicit"), sent

    @property
    def read_only(self) -> bool:
        """Route to a reader when True (PyMySQL has no switch of its own; this is the library's)."""
        return bool(self._read_only)

    @read_only.setter
    def read_only(self, value: bool) -> None:
        self._check_open()
        self._set_read_only(bool(value))

    def _apply_session(self, raw: Any) -> None:
        raw.autocommit(self._autocommit)

    def _apply_read_only(self, raw: Any) -> None:
        mode = "READ ONLY" if self._read_only else "READ WRITE"
        with raw.cursor() as cur:
            cur.execute(f"SET SESSION TRANSACTION {mode}")

    def _restore_defaults(self, raw: Any, *, read_only: bool | None = None) -> None:
        if self._autocommit != self._runtime.default_autocommit:
            raw.autocommit(self._runtime.default_autocommit)
        if self._read_only if read_only is None else read_only:
            with raw.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION READ WRITE")

    def __enter__(self) -> PyMySQLConnection:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()  # PyMySQL's semantics: leaving the block closes the connection
