"""The async connection proxies: psycopg's ``AsyncConnection`` and aiomysql's ``Connection``.

As the sync proxy (`aurora_smartdriver.connection`), a proxy intercepts only what the library
must act on: ``execute`` (to see errors), ``commit``/``rollback``/``close``, and the session
switches it replays on a new node (autocommit, isolation, read-only, deferrable, driver
attributes). Fetch methods are the driver cursor's own bound methods; everything else reaches
the driver connection by delegation.

When a connection is lost, the proxy gathers the facts (`_facts`: the driver's transaction
status before the call, whether it was sent, the statement) and `aurora_smartdriver.outcome`
decides what the application is told: the same decision, the same exceptions, as the sync
side. The failover procedure is `AsyncRuntime.fail_over`; it never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Mapping
from types import MappingProxyType
from typing import Any

from aurora_smartdriver import _causal as _sync_causal
from aurora_smartdriver import _recovery, consistency, outcome
from aurora_smartdriver._dbapi import error_class, keep_driver_details
from aurora_smartdriver.aio import _causal, _drivers, _facts
from aurora_smartdriver.aio._runtime import AsyncLease, AsyncRuntime
from aurora_smartdriver.errors import AuroraSmartDriverError
from aurora_smartdriver.outcome import Call, Transaction

__all__ = ["AiomysqlConnection", "AsyncConnection", "AsyncCursor", "PsycopgAsyncConnection"]


_closing: set[asyncio.Future[Any]] = set()


def _keep(closing: Awaitable[Any]) -> asyncio.Future[Any]:
    """``closing`` under way on the running loop, referenced until done (the loop keeps only
    weak references to tasks)."""
    future = asyncio.ensure_future(closing)
    _closing.add(future)
    future.add_done_callback(_closing.discard)
    return future


_MISSING = object()
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_NO_PARAMS: Any = object()  # `AsyncCursor.execute` called with no parameters


class Detached(AuroraSmartDriverError):
    """The connection is on no node just now: its next statement reconnects."""


_short = _recovery.short


class AsyncCursor:
    """A driver cursor behind a thin proxy that reports errors to its connection."""

    def __init__(self, conn: AsyncConnection, raw: Any, made_with: tuple[Any, ...]) -> None:
        d = self.__dict__
        d["_conn"] = conn
        d["_made_with"] = made_with
        d["_generation"] = conn._generation
        self._bind(raw)

    def _bind(self, raw: Any) -> None:
        d = self.__dict__
        d["_raw"] = raw
        if raw is not None:
            d["fetchone"] = raw.fetchone
            d["fetchmany"] = raw.fetchmany
            d["fetchall"] = raw.fetchall

    async def _current(self) -> Any:
        """The driver cursor, made anew on the connection's driver connection when that
        changed since (a failover); the rows the old one held are gone with it."""
        conn = self._conn
        if self._generation != conn._generation or self._raw is None:
            args, kwargs = self._made_with
            raw = await conn._raw_cursor(*args, **kwargs)
            self.__dict__["_generation"] = conn._generation
            self._bind(raw)
        return self._raw

    async def execute(self, query: Any, params: Any = _NO_PARAMS, **kwargs: Any) -> Any:
        # The drivers take (query, params) positionally: one optional positional here, not
        # *args, and a plain call without parameters; packing and unpacking empty ones was
        # half of this path's cost (~0.45 us of ~0.9 us; bench/aio_overhead.py "own path").
        conn = self._conn
        driver = conn._raw
        before = conn._before(driver)
        try:
            raw = self._raw
            if self._generation != conn._generation or raw is None:
                raw = await self._current()
            if kwargs:
                args = () if params is _NO_PARAMS else (params,)
                result = await raw.execute(query, *args, **kwargs)
            elif params is _NO_PARAMS:
                result = await raw.execute(query)
            else:
                result = await raw.execute(query, params)
        except conn._errors as exc:
            args = () if params is _NO_PARAMS else (params,)
            try:
                return await conn._retry(
                    exc,
                    "statement",
                    query,
                    before,
                    lambda: self._run(query, args, kwargs),
                    failed=driver,
                )
            finally:
                if conn._raw is driver:  # it ran there (an error of the statement's own)
                    conn.__dict__["_sent"] = True
        except BaseException:
            conn._interrupted = True  # cut off mid-call (cancelled): nothing is known
            raise
        conn.__dict__["_sent"] = True  # see AiomysqlConnection._rows_since_boundary
        return self if result is raw else result

    async def _run(self, query: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raw = await self._current()
        result = await raw.execute(query, *args, **kwargs)
        return self if result is raw else result

    async def executemany(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        conn = self._conn
        driver = conn._raw
        before = conn._before(driver)

        async def run() -> Any:
            raw = await self._current()
            result = await raw.executemany(query, *args, **kwargs)
            return self if result is raw else result

        try:
            return await run()
        except conn._errors as exc:
            # A batch is never re-run as a read, and a refused one may have committed rows.
            return await conn._retry(
                exc, "statement", query, before, run, failed=driver, retry_reads=False, batch=True
            )
        except BaseException:
            conn._interrupted = True
            raise
        finally:
            if conn._raw is driver:
                conn.__dict__["_sent"] = True

    @property
    def connection(self) -> AsyncConnection:
        conn: AsyncConnection = self.__dict__["_conn"]
        return conn

    async def close(self) -> None:
        raw = self._raw
        if raw is not None:
            result = raw.close()
            if asyncio.iscoroutine(result):
                await result

    async def __aenter__(self) -> AsyncCursor:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __aiter__(self) -> Any:
        return self._raw.__aiter__()

    def _close(self) -> None:
        """psycopg's local cursor close (SQLAlchemy's adapter calls it)."""
        raw = self._raw
        if raw is not None:
            raw._close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_raw"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._raw, name, value)

    def __repr__(self) -> str:
        return f"<aurora_smartdriver.aio cursor over {self._raw!r}>"


class AsyncConnection:
    """What both async proxies share; use ``aurora_smartdriver.aio.connect`` to get one."""

    # Each borrow makes a proxy: its state starts as these class defaults, and an instance
    # gets its own value (its own dict or list) when it first changes one.
    _generation = 0
    _closed = False
    _interrupted = False
    _settled_result: Any = None
    _reset_hook: Any = None
    _give_back_task: Any = None
    _read_only = False  # routed to a reader (a writer connection asked for one)
    _read_only_set = False
    _pending_move = False
    _discard = False  # closed for good: the driver connection is not lent again
    _session: Mapping[str, Any] = _EMPTY  # session switches set, replayed on a new node
    _driver_attrs: Mapping[str, Any] = _EMPTY  # driver attributes set through the proxy
    _driver_defaults: Mapping[str, Any] = _EMPTY  # their values before, put back on return
    _closers: tuple[Callable[[], Any], ...] = ()  # run on close (see _on_close)

    def __init__(
        self, runtime: AsyncRuntime, role: str, lease: AsyncLease, *, autocommit: bool
    ) -> None:
        d = self.__dict__
        base = runtime.proxy_base  # what every proxy of the runtime holds: set in one call
        if base is None:
            base = runtime.proxy_base = {
                "_runtime": runtime,
                "_adapter": runtime.adapter,
                "_errors": runtime.errors,
                "_detached_error": error_class(runtime.engine, Detached),
            }
        d.update(base)
        d["_role"] = role
        d["_lease"] = lease
        d["_raw"] = lease.raw
        d["_autocommit"] = autocommit
        # What the driver connection last read was settled when it was lent (aiomysql: a
        # result left by its previous borrower is no transaction of this one's).
        d["_settled_result"] = getattr(lease.raw, "_result", None)

    @property
    def _lock(self) -> asyncio.Lock:
        """One failover at a time, however many tasks see it (made when first needed)."""
        lock: asyncio.Lock | None = self.__dict__.get("_failover_lock")
        if lock is None:
            lock = self.__dict__["_failover_lock"] = asyncio.Lock()
        return lock

    def _own(self, name: str) -> dict[str, Any]:
        """This connection's own dict ``name`` (a copy of the shared empty default)."""
        found: dict[str, Any] = self.__dict__.setdefault(name, {})
        return found

    # -- the library's view -----------------------------------------------------------------
    @property
    def instance_id(self) -> str:
        """The instance this connection is on now (the last one, while it is on none)."""
        return str(self._lease.target.instance_id)

    @property
    def role(self) -> str:
        """The role asked for now: ``writer``, ``reader`` or ``any`` (``reader`` when read-only)."""
        return "reader" if self._read_only and self._role == "writer" else str(self._role)

    @property
    def _detached(self) -> bool:
        return self._raw is None

    async def consistency_token(self) -> str:
        """Read-your-writes: this connection's position as a token for
        ``Cluster.session(token=...)`` or ``Cluster.reader(consistency_token=...)`` elsewhere
        (see docs/consistency.md); from now on its own reads honour it too. A coroutine (the
        sync proxy's property): reading the writer's position is a round trip."""
        self._check_open()
        async with self._lock:
            runtime = self._runtime
            tracker = self.__dict__.get("_tracker")
            if tracker is None:
                tracker = self.__dict__["_tracker"] = consistency.Tracker(
                    _sync_causal.cluster_name(runtime.spec)
                )
            raw = self._raw
            writer = raw is not None and _causal.on_writer(runtime, self._lease)
            if writer and (
                _drivers.in_transaction(self._adapter, raw) or self._rows_since_boundary(raw)
            ):
                raise runtime.module.ProgrammingError(
                    "consistency_token inside a transaction cannot cover its writes: commit first"
                )
            if tracker.unsure:
                await _causal.settle(runtime, tracker)
            elif writer:
                await _causal.capture(runtime, raw, tracker)
                self._settled(raw)
            return tracker.token

    def _on_close(self, callback: Callable[[], Awaitable[None] | None]) -> None:
        """Run ``callback`` when this connection closes; an awaitable it returns is awaited
        before the close returns (the last connection's pools close then, not later)."""
        self.__dict__["_closers"] = (*self._closers, callback)

    # -- transaction boundaries ----------------------------------------------------------
    async def commit(self) -> None:
        self._check_open()
        raw = self._raw
        if raw is None:
            return  # on no node: nothing open to commit
        before = self._before(raw)
        try:
            await raw.commit()
        except self._errors as exc:
            await self._recover(exc, "commit", None, before, failed=raw)  # returns: nothing lost
        except BaseException:
            self.__dict__["_interrupted"] = True  # a COMMIT cut off: its outcome is unknown
            self._commit_unread()
            raise
        else:
            self._settled(raw)
            await self._committed(raw)
        await self._boundary()

    async def _committed(self, raw: Any) -> None:
        """Read-your-writes: a transaction just committed on ``raw``; its session (if any)
        takes the writer's position."""
        tracker = self.__dict__.get("_tracker")
        if tracker is not None and _causal.on_writer(self._runtime, self._lease):
            await _causal.capture(self._runtime, raw, tracker)
            self._settled(raw)  # the position's query opened nothing

    def _commit_unread(self) -> None:
        """Read-your-writes: a COMMIT was cut off (cancelled, interrupted): it may have
        committed, so the session's next read asks the writer first."""
        tracker = self.__dict__.get("_tracker")
        if tracker is not None and _causal.on_writer(self._runtime, self._lease):
            tracker.mark_unsure()

    async def rollback(self) -> None:
        self._check_open()
        raw = self._raw
        if raw is None:
            return
        before = self._before(raw)
        try:
            await raw.rollback()
        except self._errors as exc:
            await self._recover(exc, "rollback", None, before, failed=raw)
        else:
            self._settled(raw)
        await self._boundary()

    def _settled(self, raw: Any) -> None:
        self.__dict__["_interrupted"] = False
        self.__dict__["_sent"] = False
        self.__dict__["_settled_result"] = getattr(raw, "_result", None)

    async def _release(self) -> None:
        """Give the driver connection back (reset to the defaults) and run the closers."""
        if self._closed:
            return
        self.__dict__["_closed"] = True
        lease = self._lease
        try:
            if self._raw is not None:
                await self._give_back(lease)
        finally:
            # Run even when the reset failed or was cancelled: a closer left out would hold
            # the shared monitor for ever (a second close returns at once).
            closings = [_keep(c) for c in (cb() for cb in self._closers) if c is not None]
        for closing in closings:
            # Cancelling the close does not stop the pools' closing: nothing else reaches them.
            await asyncio.shield(closing)

    def _release_now(self) -> bool:
        """`_release` when it needs no await: nothing to undo on the driver connection and
        no closer to run. True when released; False leaves everything to `_release`."""
        if self._closed:
            return True
        lease = self._lease
        if self._closers or self._raw is None or not self._clean(lease, self._read_only):
            return False
        self.__dict__["_closed"] = True
        lease.give_back()
        return True

    def _clean(self, lease: AsyncLease, read_only: bool) -> bool:
        """Whether ``lease``'s driver connection may go back to its pool as it is: open, no
        transaction, nothing this connection changed, no reset hook to run."""
        return (
            lease.pooled
            and not self._discard
            and not self._driver_defaults
            and self._reset_hook is None
            and self._as_lent(lease.raw, read_only)
        )

    def _as_lent(self, raw: Any, read_only: bool) -> bool:
        """Whether ``raw`` is open, in no transaction, with nothing for `_restore_defaults`
        to undo (no I/O; ``read_only``: whether it was switched to read-only)."""
        raise NotImplementedError

    async def _give_back(self, lease: AsyncLease, *, read_only: bool | None = None) -> None:
        """Return ``lease`` to its pool reset to the defaults (or close it); ``read_only``:
        whether its driver connection is in read-only mode (default: as this connection)."""
        raw = lease.raw
        if self._clean(lease, self._read_only if read_only is None else read_only):
            lease.give_back()
            return
        broken = bool(self._discard) or _drivers.closed(self._adapter, raw)
        done = False
        if lease.pooled and not broken:
            try:
                if _drivers.in_transaction(self._adapter, raw) or self._rows_since_boundary(raw):
                    await raw.rollback()
                await self._restore_defaults(
                    raw, read_only=self._read_only if read_only is None else read_only
                )
                for name, value in self._driver_defaults.items():
                    if value is _MISSING:
                        broken = True
                    else:
                        setattr(raw, name, value)
                hook = self._reset_hook
                if hook is not None and not broken:
                    await hook(raw)
                    if _drivers.in_transaction(self._adapter, raw):
                        await raw.commit()
                done = True
            except Exception:
                broken = True  # a connection that cannot be reset is not lent again
            finally:
                # Cancelled while resetting (done still False): not lent again, never lost.
                lease.give_back(broken=broken or not done)
            return
        lease.give_back(broken=broken)

    def _check_open(self) -> None:
        if self._closed:
            raise self._runtime.module.InterfaceError("the connection is closed")

    # -- failures ------------------------------------------------------------------------
    def _before(self, raw: Any) -> Any:
        raise NotImplementedError

    def _facts(self, exc: BaseException, before: Any, raw: Any) -> tuple[Transaction, bool]:
        raise NotImplementedError

    def _rows_since_boundary(self, raw: Any) -> bool:
        return False

    def _session_read_only(self) -> bool:
        return bool(self._read_only)

    async def _raw_cursor(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def _apply_session(self, raw: Any) -> None:
        raise NotImplementedError

    async def _restore_defaults(self, raw: Any, *, read_only: bool) -> None:
        """Undo what this connection changed on ``raw`` (``read_only``: whether ``raw`` was
        switched to read-only) before it goes back to a pool."""
        raise NotImplementedError

    async def _apply_read_only(self, raw: Any) -> None:
        raise NotImplementedError

    # -- routing between the writer and a reader ------------------------------------------
    async def _set_read_only(self, value: bool) -> None:
        """Move between the writer and a reader, at the next transaction boundary (the sync
        proxy's rule: a connection asked for the writer that is set read-only moves)."""
        self._check_open()
        value = bool(value)
        d = self.__dict__
        d["_read_only_set"] = True
        if value == self._read_only:
            return
        if self._raw is None:
            d["_read_only"] = value  # the next statement connects to that role
            return
        if self._role != "writer":
            d["_read_only"] = value
            try:
                await self._apply_read_only(self._raw)  # psycopg refuses it inside a transaction
            except BaseException:
                d["_read_only"] = not value
                raise
            return
        d["_read_only"] = value
        if _drivers.in_transaction(self._adapter, self._raw) or self._rows_since_boundary(
            self._raw
        ):
            d["_pending_move"] = True
        else:
            await self._move()

    async def _route_lazily(self, read_only: bool) -> None:
        """Ask for the writer (or a reader) without connecting now: the driver connection goes
        back to its pool, and the next statement borrows one of the role asked for.

        For a connection parked between uses (SQLAlchemy's pool): putting it back on the
        writer must not wait for a writer, least of all while the writer is down.
        """
        if self._closed:
            return
        d = self.__dict__
        was = self._read_only
        d["_read_only"] = bool(read_only)
        d["_pending_move"] = False
        tracker = d.get("_tracker")
        if (
            tracker is not None
            and self._autocommit
            and self._raw is not None
            and _causal.on_writer(self._runtime, self._lease)
        ):
            tracker.mark_unsure()  # autocommit writes' position unread: asked when needed
        if self._raw is not None:
            lease = self._lease
            d["_raw"] = None
            d["_generation"] = self._generation + 1
            await self._give_back(lease, read_only=was)

    async def _boundary(self) -> None:
        if not self._pending_move:
            return
        self.__dict__["_pending_move"] = False
        wanted = self._read_only
        try:
            await self._move()
        except Exception:
            # The transaction ended fine; the move is for the next one: on no node until then.
            self.__dict__["_read_only"] = wanted
            if self._raw is not None:
                self._detach()

    async def _move(self) -> None:
        """Continue on a node of the role now asked for, with the same session state."""
        old = self._lease
        runtime = self._runtime
        tracker = self.__dict__.get("_tracker")
        if (
            tracker is not None
            and self._autocommit
            and self.role != "writer"
            and self._raw is not None
            and _causal.on_writer(runtime, old)
        ):
            # Read-your-writes: autocommit writes' position, before leaving the writer (a
            # commit reads it itself).
            await _causal.capture(runtime, old.raw, tracker)
        try:
            lease = await self._new_lease(self.role, old.pooled)
            try:
                await self._take(lease)
            except self._errors as exc:
                # Borrowed from a node that died a moment ago: the failover finds the right one.
                if _drivers.error_kind(self._adapter, exc) != "disconnect":
                    raise
                lease = await self._failover_lease(lease.target, "disconnect", old.pooled, exc)
                await self._take(lease)
        except BaseException:
            self.__dict__["_read_only"] = not self._read_only  # still where it was: say so
            raise
        # Back to its pool clean: read-only above all must not follow it to its next borrower.
        await self._give_back(old, read_only=not self._read_only)
        runtime.events.emit(
            "connection_moved", old=old.target.instance_id, new=lease.target.instance_id
        )

    def _is_failover_error(self, exc: BaseException) -> bool:
        if isinstance(exc, self._detached_error):
            return True
        return outcome.is_failover_signal(
            _drivers.error_kind(self._adapter, exc),
            failover=bool(self._runtime.settings.failover),
            asked_writer=self.role == "writer",
            session_read_only=self._session_read_only(),
            lent_as_writer=bool(self._lease.as_writer),
        )

    async def _retry(
        self,
        exc: BaseException,
        call: Call,
        query: Any,
        before: Any,
        run: Callable[[], Awaitable[Any]],
        *,
        failed: Any,
        retry_reads: bool | None = None,
        batch: bool = False,
    ) -> Any:
        """After a failed call: `_recover` raises what the application must see, or returns
        when the call is to run again, which ``run`` does (up to three times)."""
        for _ in range(3):
            await self._recover(
                exc, call, query, before, failed=failed, retry_reads=retry_reads, batch=batch
            )
            raw = self._raw
            before, failed = self._before(raw), raw
            try:
                return await run()
            except self._errors as again:
                exc = again
        await self._recover(exc, call, query, before, failed=failed, retry_reads=False, batch=batch)
        gave_up = self._runtime.failover_succeeded(
            f"the call could not be run on a live node in three attempts ({_short(exc)}); "
            "nothing of it ran: run the work again",
            transaction_rolled_back=False,
        )
        raise keep_driver_details(gave_up, exc) from exc

    async def _recover(
        self,
        exc: BaseException,
        call: Call,
        query: Any,
        before: Any,
        *,
        failed: Any,
        retry_reads: bool | None = None,
        batch: bool = False,
    ) -> None:
        """Turn a driver error into what the application must see (the sync proxy's
        `_recover`, on the loop): application errors re-raised as they are; a lost or
        demoted node decided by `outcome.decide`. Returns only when the call is to run again
        or nothing of it was lost."""
        if self._closed or not self._is_failover_error(exc):
            raise exc
        async with self._lock:
            await self._recover_locked(
                exc, call, query, before, failed=failed, retry_reads=retry_reads, batch=batch
            )

    async def _recover_locked(
        self,
        exc: BaseException,
        call: Call,
        query: Any,
        before: Any,
        *,
        failed: Any,
        retry_reads: bool | None,
        batch: bool,
    ) -> None:
        runtime = self._runtime
        detached = isinstance(exc, self._detached_error)
        if detached and not self._detached:
            return  # another task connected it meanwhile: run the call
        moved = not detached and failed is not None and failed is not self._raw
        kind = "disconnect" if detached else _drivers.error_kind(self._adapter, exc)
        if kind == "read_only" and await runtime.still_writer(self._lease.target):
            raise exc
        interrupted = self._interrupted
        self.__dict__["_interrupted"] = False
        decided = outcome.decide(
            _recovery.situation(
                call,
                None
                if detached
                else self._facts(exc, before, self._raw if failed is None else failed),
                interrupted=interrupted,
                query=query,
                engine=runtime.engine,
                retry_reads=runtime.settings.retry_reads if retry_reads is None else retry_reads,
                refused=kind == "read_only",
                batch=batch,
            )
        )
        old = self.instance_id
        step = _recovery.next_step(
            decided, detached=detached, moved=moved, still_detached=self._detached
        )
        if step == "detach":
            self._detach()
        if step in ("stay", "detach"):
            return
        started = time.monotonic()
        try:
            if step == "attach":
                await self._attach()
            elif step == "fail_over":
                await self._fail_over(exc, kind)
        except BaseException as failure:
            if not self._detached:
                self._detach()
            message = _recovery.unreachable(decided, call=call, exc=exc, old=old, failure=failure)
            if message is None:
                raise
            self._unknown_event(old, started)
            if not isinstance(failure, Exception):
                raise  # cancelled (or interrupted) meanwhile: that is what the task sees
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

    async def _fail_over(self, exc: BaseException, kind: str) -> None:
        """Replace the dead driver connection by one on the right node, same session state;
        the dead one goes back first (a full pool would otherwise wait for it)."""
        old = self._lease
        self._detach()
        lease = await self._failover_lease(old.target, kind, old.pooled, exc)
        await self._take(lease)
        self._runtime.events.emit(
            "connection_moved", old=old.target.instance_id, new=lease.target.instance_id
        )

    async def _attach(self) -> None:
        """Put a connection that is on no node on one of its role (waiting for a writer as
        a new connection does)."""
        lease = await self._new_lease(self.role, self._lease.pooled)
        await self._take(lease)

    async def _new_lease(self, role: str, pooled: bool) -> AsyncLease:
        """A lease for ``role``; for a reader in a read-your-writes session, one on a node
        that has the session's writes."""
        runtime: AsyncRuntime = self._runtime
        tracker = self.__dict__.get("_tracker") if role != "writer" else None
        if tracker is None:
            return await runtime.lease(role, pooled=pooled)
        return await _causal.lease_for(runtime, tracker, pooled=pooled)

    async def _failover_lease(
        self, failed: Any, kind: str, pooled: bool, cause: BaseException
    ) -> AsyncLease:
        """`AsyncRuntime.fail_over` for this connection's role; a reader it finds for a
        read-your-writes session must have the session's writes."""
        role, runtime = self.role, self._runtime
        lease: AsyncLease = await runtime.fail_over(role, failed, kind, pooled=pooled, cause=cause)
        tracker = self.__dict__.get("_tracker") if role != "writer" else None
        if tracker is not None:
            lease = await _causal.verified_for(runtime, lease, tracker, pooled=pooled)
        return lease

    async def _take(self, lease: AsyncLease) -> None:
        try:
            await self._replay(lease.raw)
        except BaseException:
            lease.give_back(broken=True)
            raise
        d = self.__dict__
        d["_lease"] = lease
        d["_raw"] = lease.raw
        d["_generation"] = self._generation + 1
        d["_settled_result"] = getattr(lease.raw, "_result", None)
        d["_sent"] = False

    async def _replay(self, raw: Any) -> None:
        await self._apply_session(raw)
        if self._read_only:
            await self._apply_read_only(raw)
        for name, value in self._driver_attrs.items():
            self._own("_driver_defaults").setdefault(name, getattr(raw, name, _MISSING))
            setattr(raw, name, value)

    def _detach(self) -> None:
        """Let go of the (dead) driver connection; the next statement reconnects."""
        lease = self._lease
        tracker = self.__dict__.get("_tracker")
        if tracker is not None and (lease.as_writer or self._role != "reader"):
            # Writes whose position was not read (autocommit, or a COMMIT cut off) may have
            # been made on the node let go: the next read asks the writer.
            tracker.mark_unsure()
        if self._raw is not None:
            lease.give_back(broken=True)
        d = self.__dict__
        d["_raw"] = None
        d["_generation"] = self._generation + 1

    def _detached_failure(self) -> BaseException:
        error: BaseException = self._detached_error(
            f"the connection to {self.instance_id} was lost: it is on no node now; its next "
            "statement reconnects"
        )
        return error

    # -- delegation ------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raw = self.__dict__.get("_raw")
        if raw is None:
            raise self._detached_failure()
        return getattr(raw, name)

    def __setattr__(self, name: str, value: Any) -> None:
        cls_attr = getattr(type(self), name, None)
        if isinstance(cls_attr, property):
            object.__setattr__(self, name, value)
        elif name.startswith("_"):
            self.__dict__[name] = value
        else:
            # A driver attribute (row_factory, ...): follows the connection to a new node and
            # is put back before the driver connection returns to its pool.
            self._check_open()
            raw = self._raw
            if raw is not None:
                self._own("_driver_defaults").setdefault(name, getattr(raw, name, _MISSING))
                setattr(raw, name, value)
            self._own("_driver_attrs")[name] = value

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._detached:
            state = f"on no node (was {self.instance_id})"
        else:
            state = f"on {self.instance_id}"
        return f"<aurora_smartdriver.aio {type(self).__name__} role={self.role} {state}>"


class PsycopgAsyncConnection(AsyncConnection):
    """Behaves like ``psycopg.AsyncConnection``."""

    def cursor(self, *args: Any, **kwargs: Any) -> AsyncCursor:
        self._check_open()
        raw = self._raw
        cur = AsyncCursor(
            self, raw.cursor(*args, **kwargs) if raw is not None else None, (args, kwargs)
        )
        return cur

    async def _raw_cursor(self, *args: Any, **kwargs: Any) -> Any:
        raw = self._raw
        if raw is None:
            raise self._detached_failure()
        return raw.cursor(*args, **kwargs)

    async def execute(self, query: Any, *args: Any, **kwargs: Any) -> AsyncCursor:
        """``AsyncConnection.execute``: a new cursor that executed ``query``."""
        cur = self.cursor()
        await cur.execute(query, *args, **kwargs)
        return cur

    @contextlib.asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[Any]:
        """``AsyncConnection.transaction()``: psycopg's own block, with its end judged as the
        library judges ``commit()``: a COMMIT lost with the connection is
        ``TransactionOutcomeUnknown``, a ROLLBACK lost with it is a rollback."""
        self._check_open()
        if self._raw is None:
            await self._attach()
        raw = self._raw
        block = raw.transaction(savepoint_name, force_rollback)
        tx = await block.__aenter__()
        try:
            yield tx
        except BaseException as exc:
            before = self._before(raw)
            try:
                suppressed = await block.__aexit__(type(exc), exc, exc.__traceback__)
            except self._errors as lost:
                await self._recover(lost, "rollback", None, before, failed=raw)
                raise exc from None
            if not suppressed:
                raise
        else:
            before = self._before(raw)
            try:
                await block.__aexit__(None, None, None)
            except self._errors as lost:
                await self._recover(lost, "commit", None, before, failed=raw)
            except BaseException:
                self.__dict__["_interrupted"] = True  # a COMMIT cut off: its outcome is unknown
                self._commit_unread()
                raise
            else:
                if not raw.pgconn.transaction_status:  # the outermost block: a boundary
                    self._settled(raw)
                    await self._committed(raw)
            await self._boundary()

    @property
    def autocommit(self) -> bool:
        return bool(self._autocommit)

    async def set_autocommit(self, value: bool) -> None:
        self._check_open()
        if self._raw is not None:
            await self._raw.set_autocommit(value)
        self.__dict__["_autocommit"] = bool(value)

    async def _switch(self, name: str, value: Any) -> None:
        self._check_open()
        if self._raw is not None:
            await getattr(self._raw, f"set_{name}")(value)
        self._own("_session")[name] = value

    async def set_isolation_level(self, value: Any) -> None:
        await self._switch("isolation_level", value)

    async def set_read_only(self, value: bool | None) -> None:
        """``AsyncConnection.set_read_only``: True moves a writer connection to a reader (at
        the next transaction boundary) and makes its transactions read-only, as the sync
        proxy's ``read_only``."""
        await self._set_read_only(bool(value))
        self.__dict__["_read_only_set"] = value is not None

    @property
    def read_only(self) -> bool | None:
        """None until set (the server's default), as psycopg's; True routes to a reader."""
        if self._read_only:
            return True
        return False if self._read_only_set else None

    async def set_deferrable(self, value: bool | None) -> None:
        await self._switch("deferrable", value)

    def _session_read_only(self) -> bool:
        return bool(self._read_only) or (
            self._raw is not None and getattr(self._raw, "read_only", None) is True
        )

    async def _apply_read_only(self, raw: Any) -> None:
        # On a reader the server refuses writes anyway; on the writer (a reader request that
        # fell back) psycopg's own switch makes transactions READ ONLY, as the caller asked.
        await raw.set_read_only(True if self._read_only else None)

    async def close(self) -> None:
        """Give the driver connection back (to its pool, or close it); idempotent."""
        await self._release()

    @property
    def closed(self) -> bool:
        return bool(self._closed)

    async def __aenter__(self) -> PsycopgAsyncConnection:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._closed:
            return
        try:
            if exc_type is None:
                await self.commit()
            else:
                await self.rollback()
        finally:
            await self.close()

    def _before(self, raw: Any) -> Any:
        return raw.pgconn.transaction_status if raw is not None else _facts.IDLE

    def _facts(self, exc: BaseException, before: Any, raw: Any) -> tuple[Transaction, bool]:
        return _facts.psycopg(
            before,
            autocommit=bool(getattr(raw, "autocommit", self._autocommit)),
            pipeline=getattr(raw, "_pipeline", None) is not None,
        )

    async def _apply_session(self, raw: Any) -> None:
        if raw.autocommit != self._autocommit:
            await raw.set_autocommit(self._autocommit)
        for name, value in self._session.items():
            await getattr(raw, f"set_{name}")(value)

    def _as_lent(self, raw: Any, read_only: bool) -> bool:
        return (
            not raw.closed
            and raw.pgconn.transaction_status == 0
            and raw.autocommit == self._runtime.default_autocommit
            and not self._session
            and raw.read_only is None
        )

    async def _restore_defaults(self, raw: Any, *, read_only: bool) -> None:
        default = self._runtime.default_autocommit
        if raw.autocommit != default:
            await raw.set_autocommit(default)
        for name in self._session:
            await getattr(raw, f"set_{name}")(None)
        if raw.read_only is not None:
            await raw.set_read_only(None)  # a local attribute in psycopg: no round trip


class _CursorOpening:
    """What aiomysql's ``conn.cursor()`` returns: awaitable, and an async context manager."""

    def __init__(self, opening: Awaitable[AsyncCursor]) -> None:
        self._opening = opening
        self._cursor: AsyncCursor | None = None

    def __await__(self) -> Generator[Any, None, AsyncCursor]:
        return self._opening.__await__()

    async def __aenter__(self) -> AsyncCursor:
        self._cursor = await self._opening
        return self._cursor

    async def __aexit__(self, *exc: Any) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class AiomysqlConnection(AsyncConnection):
    """Behaves like ``aiomysql.Connection``."""

    def cursor(self, *args: Any, **kwargs: Any) -> _CursorOpening:
        self._check_open()
        return _CursorOpening(self._open_cursor(args, kwargs))

    async def _open_cursor(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncCursor:
        raw = self._raw
        made = await raw.cursor(*args, **kwargs) if raw is not None else None
        return AsyncCursor(self, made, (args, kwargs))

    async def _raw_cursor(self, *args: Any, **kwargs: Any) -> Any:
        raw = self._raw
        if raw is None:
            raise self._detached_failure()
        return await raw.cursor(*args, **kwargs)

    async def autocommit(self, value: bool) -> None:
        """``Connection.autocommit(value)``, as aiomysql spells it."""
        self._check_open()
        if self._raw is not None:
            await self._raw.autocommit(value)
        self.__dict__["_autocommit"] = bool(value)

    def get_autocommit(self) -> bool:
        return bool(self._autocommit)

    async def begin(self) -> None:
        """``Connection.begin()``, seen by the library."""
        self._check_open()
        raw = self._raw
        before = self._before(raw)

        async def again() -> None:
            current = self._raw
            if current is None:
                raise self._detached_failure()
            await current.begin()

        try:
            await again()
        except self._errors as exc:
            await self._retry(exc, "statement", "BEGIN", before, again, failed=raw)

    def close(self) -> None:
        """As aiomysql's ``close()``: at once; the driver connection goes back to its pool in
        the background (``await conn.ensure_closed()`` waits for it)."""
        if self._closed or self._give_back_task is not None:
            return
        self.__dict__["_give_back_task"] = asyncio.get_running_loop().create_task(self._release())

    async def ensure_closed(self) -> None:
        self.close()
        task = self._give_back_task
        if task is not None:
            await task

    @property
    def closed(self) -> bool:
        return bool(self._closed or self._give_back_task is not None)

    async def __aenter__(self) -> AiomysqlConnection:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.ensure_closed()

    def _before(self, raw: Any) -> Any:
        return getattr(raw, "_result", None)

    def _rows_since_boundary(self, raw: Any) -> bool:
        """A transaction no flag shows may be open: a statement returned rows, or any
        statement went to the server (an error's reply carries no flags), since the last
        commit or rollback, without autocommit."""
        if (getattr(raw, "server_status", 0) or 0) & _facts.MYSQL_AUTOCOMMIT:
            return False
        result = getattr(raw, "_result", None)
        return bool(self.__dict__.get("_sent")) or (
            result is not None
            and bool(getattr(result, "field_count", 0))
            and result is not self._settled_result
        )

    def _facts(self, exc: BaseException, before: Any, raw: Any) -> tuple[Transaction, bool]:
        status = getattr(raw, "server_status", None) or 0
        rows = bool(self.__dict__.get("_sent")) or (
            before is not None
            and bool(getattr(before, "field_count", 0))
            and before is not self._settled_result
        )
        return _facts.mysql(
            status, rows_since_boundary=rows, sent=not _drivers.not_sent(self._adapter, exc)
        )

    async def set_read_only(self, value: bool) -> None:
        """Route to a reader (True) or back to the writer, at the next transaction boundary,
        with the session's transactions READ ONLY while on a reader (the sync proxy's
        ``read_only``; aiomysql has no switch of its own)."""
        await self._set_read_only(bool(value))

    @property
    def read_only(self) -> bool:
        return bool(self._read_only)

    async def _apply_session(self, raw: Any) -> None:
        await raw.autocommit(self._autocommit)

    async def _apply_read_only(self, raw: Any) -> None:
        mode = "READ ONLY" if self._read_only else "READ WRITE"
        await _drivers.run(self._adapter, raw, f"SET SESSION TRANSACTION {mode}")

    def _as_lent(self, raw: Any, read_only: bool) -> bool:
        return (
            not raw.closed
            and not read_only
            and self._autocommit == self._runtime.default_autocommit
            and not _drivers.in_transaction(self._adapter, raw)
            and not self._rows_since_boundary(raw)
        )

    async def _restore_defaults(self, raw: Any, *, read_only: bool) -> None:
        default = self._runtime.default_autocommit
        if self._autocommit != default:
            await raw.autocommit(default)
        if read_only:
            await _drivers.run(self._adapter, raw, "SET SESSION TRANSACTION READ WRITE")
