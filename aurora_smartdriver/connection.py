"""The DB-API connection proxy: behaves like the wrapped driver's connection, knows its cluster.

The proxy intercepts only what the library must act on — ``cursor``/``execute`` (to see errors),
``commit``/``rollback``/``close`` (transaction boundaries), and the session switches
(``autocommit``, ``isolation_level``, ``read_only``) it replays on a new node. Everything else
reaches the driver's own connection through attribute delegation, and cursors are thin proxies
whose fetch methods are the driver cursor's own bound methods (no indirection on the hot path).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from aurora_smartdriver._runtime import Lease, Runtime

__all__ = ["Connection", "Cursor", "PsycopgConnection", "PyMySQLConnection", "is_read"]

_READ_PREFIXES = ("select", "show", "with", "values", "table", "explain", "describe", "desc ")
_PUNCTUATION = str.maketrans("(),;", "    ")  # so "(DELETE" is seen as the word DELETE


def is_read(query: Any) -> bool:
    """Whether a statement only reads (worth re-running after a failover with retry_reads).

    Conservative: SELECT/SHOW/VALUES/TABLE/EXPLAIN/DESCRIBE and WITH ... SELECT, without a
    locking clause or INTO; anything else (or anything not text) counts as a write.
    """
    if isinstance(query, bytes):
        query = query.decode(errors="replace")
    if not isinstance(query, str):
        return False
    text = query.lstrip(" \t\r\n(").lower()
    if not text.startswith(_READ_PREFIXES):
        return False
    padded = f" {' '.join(text.translate(_PUNCTUATION).split())} "
    writes = (
        " for update",
        " for share",
        " for no key update",
        " lock in share mode",
        " into ",
        " insert ",
        " update ",
        " delete ",
        " merge ",
    )
    return not any(w in padded for w in writes)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class Cursor:
    """A driver cursor behind a thin proxy that reports errors to its connection."""

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
        """Continue on a new driver connection after a failover (a fresh driver cursor)."""
        args, kwargs = self._made_with
        self._bind(raw_conn.cursor(*args, **kwargs))

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        raw = self._raw
        try:
            result = raw.execute(query, params, **kwargs) if kwargs else raw.execute(query, params)
        except self._error as exc:
            # Raises what the application must see; returns only when the statement is a read
            # that may be re-run on the new node (retry_reads).
            self._conn._recover(exc, query)
            raw = self._raw
            result = raw.execute(query, params, **kwargs)
        return self if result is raw else result

    def executemany(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self._raw.executemany(query, *args, **kwargs)
        except self._error as exc:
            self._conn._recover(exc, None)
            raise  # not reached: a batch is never re-run
        return self if result is self._raw else result

    def callproc(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._raw.callproc(*args, **kwargs)
        except self._error as exc:
            self._conn._recover(exc, None)
            raise

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


class Connection:
    """What both drivers' proxies share; use ``aurora_smartdriver.connect`` to get one."""

    def __init__(self, runtime: Runtime, role: str, lease: Lease, *, autocommit: bool) -> None:
        d = self.__dict__
        d["_runtime"] = runtime
        d["_adapter"] = runtime.adapter
        d["_error"] = runtime.adapter.Error
        d["_base_role"] = role
        d["_lease"] = lease
        d["_raw"] = lease.raw
        d["_closed"] = False
        d["_autocommit"] = autocommit
        d["_read_only"] = False
        d["_isolation"] = None
        d["_pending_move"] = False
        d["_cursors"] = weakref.WeakSet()
        d["_closers"] = []

    def _on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once, after the connection is given back."""
        self._closers.append(callback)

    # -- the library's view --------------------------------------------------------------
    @property
    def instance_id(self) -> str:
        """The instance this connection is on now."""
        return str(self._lease.target.instance_id)

    @property
    def role(self) -> str:
        """The role asked for now: ``writer``, ``reader`` or ``any`` (``reader`` when read-only)."""
        return "reader" if self._read_only and self._base_role == "writer" else self._base_role

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by the application, or under it)."""
        return bool(self._closed or getattr(self._raw, "closed", False))

    # -- PEP 249 -------------------------------------------------------------------------
    def cursor(self, *args: Any, **kwargs: Any) -> Cursor:
        self._check_open()
        cur = Cursor(self, self._raw.cursor(*args, **kwargs), (args, kwargs))
        self._cursors.add(cur)
        return cur

    def commit(self) -> None:
        self._check_open()
        try:
            self._raw.commit()
        except self._error as exc:
            self._recover(exc, None, during_commit=True)
            raise
        self._boundary()

    def rollback(self) -> None:
        self._check_open()
        try:
            self._raw.rollback()
        except self._error as exc:
            if self._is_failover_error(exc):
                # The server lost the transaction with the connection: that is a rollback.
                self._fail_over(exc)
                self._boundary()
                return
            raise
        self._boundary()

    def close(self) -> None:
        """Give the driver connection back (to its pool, or close it); idempotent."""
        if self._closed:
            return
        self.__dict__["_closed"] = True
        for cur in list(self._cursors):
            try:
                cur._raw.close()
            except Exception:  # noqa: S112 - a cursor of a dead connection may fail to close
                continue
        broken = False
        if self._lease.pooled:
            raw = self._raw
            try:
                if self._adapter.in_transaction(raw):
                    raw.rollback()
                self._restore_defaults(raw)
            except Exception:
                broken = True  # a connection that cannot be reset is not handed out again
        self._lease.give_back(broken=broken)
        for callback in self._closers:
            callback()

    # -- session state -------------------------------------------------------------------
    def _set_read_only(self, value: bool) -> None:
        """Move between the writer and a reader, at the next transaction boundary."""
        value = bool(value)
        if value == self._read_only:
            return
        self.__dict__["_read_only"] = value
        if self._base_role != "writer":
            self._apply_read_only(self._raw)
            return
        if self._adapter.in_transaction(self._raw):
            self.__dict__["_pending_move"] = True
        else:
            self._move()

    def _boundary(self) -> None:
        if self._pending_move:
            self.__dict__["_pending_move"] = False
            self._move()

    def _move(self) -> None:
        """Continue on a node of the role now asked for, with the same session state."""
        try:
            lease = self._runtime.lease(self.role, pooled=self._lease.pooled)
        except BaseException:
            self.__dict__["_read_only"] = not self._read_only  # still where it was: say so
            raise
        old = self._lease
        self.__dict__["_lease"] = lease
        self.__dict__["_raw"] = lease.raw
        try:
            self._replay(lease.raw)
        except BaseException:
            lease.give_back(broken=True)
            self.__dict__["_lease"] = old
            self.__dict__["_raw"] = old.raw
            self.__dict__["_read_only"] = not self._read_only
            raise
        for cur in list(self._cursors):
            try:
                cur._raw.close()
            except Exception:  # noqa: S112
                continue
        broken = False
        if old.pooled:
            # Back to its pool clean: the session state this connection set (read-only above
            # all) must not follow the driver connection to its next borrower.
            try:
                self._restore_defaults(old.raw, read_only=not self._read_only)
            except Exception:
                broken = True
        old.give_back(broken=broken)

    def _replay(self, raw: Any) -> None:
        """Apply the session state set through the API to a new driver connection."""
        self._apply_session(raw)
        self._apply_read_only(raw)

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

    # -- failures ------------------------------------------------------------------------
    def _is_failover_error(self, exc: BaseException) -> bool:
        return self._adapter.error_kind(exc) in ("disconnect", "read_only") and bool(
            self._runtime.spec.settings.failover
        )

    def _recover(self, exc: BaseException, query: Any, *, during_commit: bool = False) -> None:
        """Turn a driver error into what the application must see (see docs/failover.md).

        Application errors are re-raised as they are. A lost or demoted node triggers the
        failover procedure, then: ``TransactionOutcomeUnknown`` when COMMIT was interrupted;
        a transparent re-run (by returning) for a read in autocommit mode with
        ``retry_reads``; otherwise ``FailoverSucceeded``. The library never re-sends a COMMIT
        or a write.
        """
        if not self._is_failover_error(exc):
            raise exc
        in_transaction = not self._autocommit or during_commit
        lost = self.instance_id
        started = time.monotonic()
        self._fail_over(exc)
        runtime = self._runtime
        after = round(time.monotonic() - started, 3)
        if during_commit:
            runtime.events.emit("outcome_unknown", old=lost, new=self.instance_id, after_s=after)
            raise runtime.outcome_unknown(
                f"the connection to {lost} was lost during COMMIT: the transaction "
                "may or may not have been committed; the connection is now on "
                f"{self.instance_id}"
            ) from exc
        if (
            query is not None
            and not in_transaction
            and runtime.spec.settings.retry_reads
            and is_read(query)
        ):
            runtime.events.emit("read_retried", instance=self.instance_id, after_s=after)
            return
        if in_transaction:
            runtime.events.emit(
                "transaction_rolled_back", old=lost, new=self.instance_id, after_s=after
            )
        raise runtime.failover_succeeded(
            f"the connection to {lost} was lost ({_short(exc)}); reconnected to {self.instance_id}"
            + ("; the open transaction was rolled back" if in_transaction else "")
            + ": run the work again",
            transaction_rolled_back=in_transaction,
        ) from exc

    def _fail_over(self, exc: BaseException) -> None:
        """Replace the dead driver connection by one on the right node, same session state."""
        old = self._lease
        old.mark_broken()
        kind = self._adapter.error_kind(exc)
        lease = self._runtime.fail_over(self.role, old.target, kind, pooled=old.pooled, cause=exc)
        self.__dict__["_lease"] = lease
        self.__dict__["_raw"] = lease.raw
        self.__dict__["_pending_move"] = False
        try:
            self._replay(lease.raw)
            for cur in list(self._cursors):
                cur._rebind(lease.raw)
        except self._error as replay_error:
            lease.give_back(broken=True)
            raise replay_error from exc
        finally:
            old.give_back(broken=True)
        self._runtime.events.emit(
            "connection_moved", old=old.target.instance_id, new=lease.target.instance_id
        )

    def _check_open(self) -> None:
        if self._closed:
            raise self._runtime.module.InterfaceError("the connection is closed")

    # -- delegation and context management ------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if self.__dict__.get("_closed"):
            raise self._runtime.module.InterfaceError("the connection is closed")
        return getattr(self.__dict__["_raw"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        cls_attr = getattr(type(self), name, None)
        if isinstance(cls_attr, property):
            object.__setattr__(self, name, value)
        elif name.startswith("_"):
            self.__dict__[name] = value
        else:
            setattr(self._raw, name, value)

    def __del__(self) -> None:
        if not self.__dict__.get("_closed", True):
            with contextlib.suppress(Exception):  # nothing to report to at garbage collection
                self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"on {self._lease.target.instance_id}"
        return f"<aurora_smartdriver {type(self).__name__} role={self.role} {state}>"


class PsycopgConnection(Connection):
    """Behaves like ``psycopg.Connection``."""

    @property
    def autocommit(self) -> bool:
        return bool(self._autocommit)

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._check_open()
        self._raw.autocommit = value
        self.__dict__["_autocommit"] = bool(value)

    @property
    def isolation_level(self) -> Any:
        return self._isolation

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:
        self._check_open()
        self._raw.isolation_level = value
        self.__dict__["_isolation"] = value

    @property
    def read_only(self) -> bool | None:
        return bool(self._read_only)

    @read_only.setter
    def read_only(self, value: bool | None) -> None:
        self._check_open()
        self._set_read_only(bool(value))

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Cursor:
        """``psycopg.Connection.execute``: a new cursor that executed ``query``."""
        cur = self.cursor()
        cur.execute(query, *args, **kwargs)
        return cur

    def _apply_session(self, raw: Any) -> None:
        raw.autocommit = self._autocommit
        raw.isolation_level = self._isolation

    def _apply_read_only(self, raw: Any) -> None:
        # On a reader the server refuses writes anyway; on the writer (a reader request that
        # fell back) psycopg's own switch makes transactions READ ONLY, as the caller asked.
        raw.read_only = True if self._read_only else None

    def _restore_defaults(self, raw: Any, *, read_only: bool | None = None) -> None:
        # Local attribute changes in psycopg: no round trip.
        raw.autocommit = self._runtime.default_autocommit
        raw.isolation_level = None
        raw.read_only = None

    def __enter__(self) -> PsycopgConnection:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # psycopg's semantics: commit on success, roll back on error, then close.
        if self._closed:
            return
        try:
            if exc_type is None:
                self.commit()
            else:
                self.rollback()
        finally:
            self.close()


class PyMySQLConnection(Connection):
    """Behaves like ``pymysql.connections.Connection``."""

    def autocommit(self, value: bool) -> None:
        """``Connection.autocommit(value)``, as PyMySQL spells it."""
        self._check_open()
        self._raw.autocommit(value)
        self.__dict__["_autocommit"] = bool(value)

    def get_autocommit(self) -> bool:
        return bool(self._raw.get_autocommit())

    def ping(self, reconnect: bool = True) -> None:
        """PyMySQL's ``ping``, failing over where PyMySQL would reconnect to the same address.

        PyMySQL's own ``reconnect=True`` reopens a socket to the address the connection was
        on: after a failover, the dead or demoted writer. Here a lost node starts the failover
        procedure and the ping returns on the right node, unless a transaction was open:
        then ``FailoverSucceeded(transaction_rolled_back=True)``, since its work is gone. With
        ``reconnect=False`` the driver's error is raised, as PyMySQL does.
        """
        self._check_open()
        raw = self._raw
        in_transaction = self._adapter.in_transaction(raw)
        try:
            raw.ping(reconnect=False)
        except self._error as exc:
            if not reconnect or not self._is_failover_error(exc):
                raise
            if in_transaction:
                self._recover(exc, None)  # raises FailoverSucceeded(transaction_rolled_back)
            self._fail_over(exc)

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
