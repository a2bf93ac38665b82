"""The async side of a cluster: choosing, opening, pooling and failing over on an event loop.

Everything shared stays the sync side's (`aurora_smartdriver._runtime`): one `SharedCluster`
per cluster and process, whose monitor thread keeps the topology, whose resolver cache, events,
metrics, round-robin turns and credentials providers serve sync and async callers alike. The
routing decision is `Runtime.choose` itself (a pure decision over the monitor's snapshot, once
one exists). What is written again here is only the I/O that must not block the loop: opening
a connection, the per-host pools, waiting for a writer (the monitor's snapshots are read on a
shared tick, never with a blocking wait) and the failover procedure's loop.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from aurora_smartdriver import _runtime, auth
from aurora_smartdriver._dbapi import keep_driver_details
from aurora_smartdriver._resume import AsyncResumeGate
from aurora_smartdriver.aio import _drivers
from aurora_smartdriver.aio._pool import AsyncHostPool, AsyncPoolSet, PooledConn
from aurora_smartdriver.aio._resolve import AsyncResolver
from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.errors import InstanceResumeTimeout, NoHostAvailable
from aurora_smartdriver.pool import HostDown, PoolClosed, PoolTimeout, Target
from aurora_smartdriver.resolver import ResolveError
from aurora_smartdriver.topology import Topology, diff

__all__ = ["AsyncLease", "AsyncRuntime"]

_CR_CONN_HOST_ERROR = 2003
_TICK = 0.01
"""How often waiters for a writer look at the monitor's snapshot (one timer for all)."""
_WRITER_GONE = frozenset({"disconnect", "read_only"})


class AsyncLease:
    """One driver connection held by one async library connection, watched by the shared
    hung-host watchdog while held (its verdict cuts the socket from the watchdog's thread:
    the statement waiting on the loop sees a lost connection)."""

    __slots__ = (
        "_pool",
        "_pooled",
        "_runtime",
        "_watch",
        "as_writer",
        "pooled",
        "raw",
        "target",
    )

    def __init__(
        self,
        runtime: AsyncRuntime,
        raw: Any,
        target: Target,
        *,
        as_writer: bool,
        pool: AsyncHostPool | None = None,
        pooled: PooledConn | None = None,
    ) -> None:
        self._runtime = runtime
        self.raw = raw
        self.target = target
        self.as_writer = as_writer
        self._pool = pool
        self._pooled = pooled
        self.pooled = pool is not None
        last = None if pooled is None else pooled.watch
        self._watch = runtime.sync.watchdog.watch(target, raw, last)
        if pooled is not None:
            pooled.watch = self._watch

    def give_back(self, *, broken: bool = False) -> None:
        """Return the connection to its pool (closed when broken), or close it (no wait)."""
        if self.raw is not None and self._watch is not None:
            self._watch.discard(self.raw)
        if self._pool is not None and self._pooled is not None:
            pooled, self._pooled = self._pooled, None
            self._pool.release(pooled, broken=broken)
            return
        raw, self.raw = self.raw, None
        if raw is not None:
            self._runtime.close_soon(raw)
            self._runtime.metrics.closed.add(self.target.instance_id)


class AsyncRuntime:
    """One async ``connect()``'s or ``Cluster``'s view of its cluster, on one event loop."""

    def __init__(self, spec: ConnectionSpec, credentials: auth.CredentialsSource | None) -> None:
        self.sync = _runtime.acquire(spec, credentials)
        sync = self.sync
        self.spec = spec
        self.settings = spec.settings
        self.engine = spec.engine
        self.adapter = sync.adapter
        self.module = sync.module
        self.errors = _drivers.errors(sync.adapter)
        self.events = sync.events
        self.metrics = sync.metrics
        self.no_host = sync.no_host
        self.no_writer = sync.no_writer
        self.failover_succeeded = sync.failover_succeeded
        self.outcome_unknown = sync.outcome_unknown
        self.pool_timeout = sync.pool_timeout
        self.pool_closed = sync.pool_closed
        self.auth_failed = sync.auth_failed
        self.default_autocommit = sync.default_autocommit
        self.proxy_base: dict[str, Any] | None = None  # see AsyncConnection.__init__
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resolver: AsyncResolver | None = None
        self._pools: AsyncPoolSet | None = None
        self._tick: asyncio.Future[None] | None = None
        self._first: asyncio.Task[Topology | None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._released = False
        self._retire_pools: Callable[[], None] | None = None
        self._resume_gate: AsyncResumeGate | None = None

    # -- the loop this runtime lives on ---------------------------------------------------
    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "an aurora_smartdriver.aio Cluster or connection is bound to the event loop it "
                "was first used on; make one per event loop"
            )
        return loop

    @property
    def monitor(self) -> Any:
        return self.sync.monitor

    @property
    def resolver(self) -> AsyncResolver:
        shared = self.sync.resolver
        found = self._resolver
        if found is None or found._shared is not shared:  # restarted machinery: its resolver
            found = self._resolver = AsyncResolver(shared)
        return found

    @property
    def pools(self) -> AsyncPoolSet:
        if self._pools is None:
            self._bind()
            self._pools = AsyncPoolSet(self._make_pool)
            # Their gauges and counters in the cluster's metrics, with the sync pools'.
            self._retire_pools = self.sync._shared.pool_sources.add(self._pools.totals)
        return self._pools

    def _make_pool(self, target: Target) -> AsyncHostPool:
        return AsyncHostPool(
            target,
            settings=self.settings,
            opener=self._open_pooled,
            closer=self.close_raw,
            pinger=self._ping,
            kind_of=lambda exc: _drivers.error_kind(self.adapter, exc),
        )

    async def _open_pooled(self, target: Target, timeout: float) -> Any:
        return await self.open(target, timeout, counted=False)

    async def _ping(self, raw: Any, timeout: float) -> None:
        await _drivers.ping(self.adapter, raw, timeout)

    async def close_raw(self, raw: Any) -> None:
        await _drivers.close(self.adapter, raw)

    def close_soon(self, raw: Any) -> None:
        """Close ``raw`` in the background (it may need a round trip)."""
        if self.engine == "mysql":
            _drivers.close_now(raw)
            return
        task = asyncio.get_running_loop().create_task(self.close_raw(raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- topology ----------------------------------------------------------------------
    async def topology(self) -> Topology | None:
        """The monitor's snapshot; the first one is waited for in a thread (once)."""
        topo: Topology | None = self.monitor.topology
        if topo is not None:
            return topo
        first = self._first
        if first is None or first.done():
            timeout = _runtime.first_topology_wait(self.settings)
            first = self._first = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self.sync.topology, timeout)
            )
        return await asyncio.shield(first)

    async def choose(self, role: str, exclude: frozenset[str]) -> Target:
        """`Runtime.choose` on the snapshot (hosts the async pools know down avoided)."""
        target = self.choose_now(role, exclude)
        if target is not None:
            return target
        await self.topology()
        watch = self.sync.custom_watch
        if role != "writer" and watch is not None and watch.current() is None:
            # its first reading, off the loop
            await asyncio.to_thread(watch.wait_first, self.settings.connect_timeout)
        return self._choose(role, exclude)

    def choose_now(self, role: str, exclude: frozenset[str]) -> Target | None:
        """`choose` when it needs no wait (the snapshot there, the custom endpoint's
        members read); None when it does."""
        sync = self.sync
        topo = sync.monitor.topology
        if topo is None:
            return None
        if role == "writer" and not exclude and sync.proxy is None:
            known = sync.known_writer(topo)  # this snapshot's writer, decided already
            if known is not None:
                self.pools.follow(topo, diff)
                return known.target
        if role != "writer":
            watch = sync.custom_watch
            if watch is not None and watch.current() is None:
                return None
        return self._choose(role, exclude)

    def _choose(self, role: str, exclude: frozenset[str]) -> Target:
        pools = self.pools
        pools.follow(self.sync.monitor.topology, diff)
        resuming: frozenset[str] = frozenset()
        if role != "writer":
            exclude = exclude | pools.down()
            gate = self._resume_gate
            if gate is not None:
                resuming = gate.knocking()
        return self.sync.choose(role, exclude, resuming=resuming).target

    async def wait_for_writer(self, timeout: float, *, not_id: str | None = None) -> bool:
        """Wait until the monitor confirms a writer (not ``not_id``), reading its snapshots
        on a shared tick; False on timeout."""
        monitor = self.monitor
        monitor.enter_fast_mode("waiting for a writer")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            topo = monitor.topology
            confirmed = monitor._confirmed
            if (
                confirmed is not None
                and topo is not None
                and topo.writer is not None
                and topo.writer.instance_id == confirmed
                and confirmed != not_id
            ):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            tick = self._tick
            if tick is None or tick.done():
                tick = self._tick = loop.create_future()
                loop.call_later(_TICK, _settle, tick)
            try:
                async with asyncio.timeout(left):
                    await asyncio.shield(tick)
            except TimeoutError:
                return False

    def suspect(self, target: Target, why: str) -> None:
        self.sync.suspect(target, why)

    # -- connections --------------------------------------------------------------------
    async def open(
        self, target: Target, timeout: float | None = None, *, counted: bool = True
    ) -> Any:
        """A new driver connection to ``target``, resolved here, its session prepared."""
        settings = self.settings
        deadline = settings.connect_timeout if timeout is None else timeout
        started = time.perf_counter()
        gate = self.monitor.blue_green
        if gate.phase is not None:  # a Blue/Green switchover in progress: wait for its end
            waited = await gate.hold_async(lambda: self.monitor.refresh_now(0))
            if waited:
                self.events.emit("blue_green_held", instance=target.instance_id, waited_s=waited)
        try:
            address = (
                (await self.resolver.resolve(target.host)).addresses[0]
                if settings.resolve
                else None
            )
            if settings.resume_timeout > 0:  # the instance may be paused: one knock at a time
                raw = await self._knock(target, address, deadline)
            else:
                raw = await self._login(target, address, deadline)
            self.sync.watchdog.opened(raw, address)  # a hung node is probed at this address
        except Exception as exc:
            if counted:
                kind = _drivers.error_kind(self.adapter, exc)
                self.metrics.connect_failures.add((target.instance_id, kind))
            raise
        try:
            await self._prepare_session(raw)
        except BaseException:
            await self.close_raw(raw)
            raise
        if counted:
            self.metrics.connected(target.instance_id, time.perf_counter() - started)
        return raw

    async def _knock(self, target: Target, address: str | None, timeout: float) -> Any:
        """`_login` through the loop's resume gate (``resume_timeout``; see `_resume`)."""
        gate = self._resume_gate
        if gate is None:
            gate = self._resume_gate = AsyncResumeGate(self.sync._shared.resume_gate)
        pool = self._pools.existing(target.instance_id) if self._pools is not None else None
        return await gate.open(
            target.instance_id,
            lambda seconds: self._login(target, address, seconds),
            timeout,
            self.sync._resume_budget,
            holds_connections=pool is not None and pool.open_connections > 0,
        )

    async def _credentials(self, target: Target) -> auth.Credentials:
        provider = self.sync.credentials
        if isinstance(provider, auth.StaticCredentials):
            return provider.get(target.host, target.port)
        # IAM tokens and secrets may need a request to AWS: not on the loop's thread.
        return await asyncio.to_thread(
            auth._get, provider, target.host, target.port, self.auth_failed
        )

    async def _login(self, target: Target, address: str | None, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        used = await self._credentials(target)

        async def attempt(creds: auth.Credentials, left: float) -> Any:
            return await _drivers.open_connection(
                self.adapter,
                self.spec,
                target.host,
                target.port,
                address=address,
                timeout=left,
                autocommit=self.default_autocommit,
                user=creds.user,
                password=creds.password,
            )

        try:
            return await attempt(used, timeout)
        except self.errors as exc:
            if _drivers.error_kind(self.adapter, exc) != "auth":
                raise
            first: BaseException = exc
        provider = self.sync.credentials
        await asyncio.to_thread(
            auth._report, provider, target.host, target.port, used, self.auth_failed
        )
        fresh = await self._credentials(target)
        left = deadline - loop.time()
        if not auth.should_retry(used, fresh) or left <= 0:
            raise auth._failure(
                self.auth_failed, str(first), used, target.host, target.port
            ) from first
        try:
            return await attempt(fresh, left)
        except self.errors as exc:
            if _drivers.error_kind(self.adapter, exc) != "auth":
                raise
            raise auth._failure(
                self.auth_failed, str(exc), fresh, target.host, target.port, refreshed=True
            ) from exc

    async def _prepare_session(self, raw: Any) -> None:
        settings = self.settings
        statements = list(settings.session_init)
        if settings.statement_timeout is not None:
            if self.engine == "postgresql":
                statements.insert(
                    0, f"SET statement_timeout = {int(settings.statement_timeout * 1000)}"
                )
            elif self.spec.mariadb:
                statements.insert(
                    0, f"SET SESSION max_statement_time = {settings.statement_timeout}"
                )
            else:
                statements.insert(
                    0, f"SET SESSION max_execution_time = {int(settings.statement_timeout * 1000)}"
                )
        for sql in statements:
            await _drivers.run(self.adapter, raw, sql)
        if statements and not self.default_autocommit and self.engine == "postgresql":
            await raw.commit()

    def lend_idle(self, target: Target, role: str) -> AsyncLease | None:
        """A pooled lease on ``target`` (chosen for ``role`` by `choose_now`) when its pool
        has an idle connection with no check due, with no await; None when `lease` must do
        more (given ``target`` as ``first``, so that the host is not chosen twice)."""
        pools = self.pools
        if pools.closed:
            return None
        pool = pools.pool(target)
        conn = pool.take_idle()
        if conn is None:
            return None
        return AsyncLease(
            self, conn.raw, target, as_writer=role == "writer", pool=pool, pooled=conn
        )

    async def lease(
        self,
        role: str,
        *,
        pooled: bool,
        exclude: frozenset[str] = frozenset(),
        wait: bool = True,
        first: Target | None = None,
    ) -> AsyncLease:
        """A driver connection for ``role``; a writer that cannot be reached is waited for up
        to ``failover_timeout`` (then ``NoWriterAvailable``) unless ``wait`` is false.
        ``first``: the host already chosen for the first attempt (by `choose_now`)."""
        tried: set[str] = set(exclude)
        may_wait = role == "writer" and wait and self.settings.failover
        waiting: _WriterWait | None = None
        unresumed: InstanceResumeTimeout | None = None  # a paused instance that did not resume
        failed: BaseException | None = None  # why the last host tried was left
        while True:
            try:
                target = first or await self.choose(role, frozenset(tried))
                first = None
            except NoHostAvailable as exc:
                if unresumed is not None:  # nowhere else to go: say why the one host failed
                    raise unresumed from unresumed.__cause__
                if failed is not None and exc.__cause__ is None:
                    raise exc from failed  # "(x excluded)": the traceback says why
                raise
            try:
                if not pooled:
                    raw = await self.open(target)
                    return AsyncLease(self, raw, target, as_writer=role == "writer")
                pool = self.pools.pool(target)
                conn = await pool.borrow(self.settings.borrow_timeout, wait_if_down=False)
                return AsyncLease(
                    self, conn.raw, target, as_writer=role == "writer", pool=pool, pooled=conn
                )
            except InstanceResumeTimeout as exc:
                # A wait that ran out, not a dead writer: no failover; a read goes elsewhere.
                if role == "writer":
                    raise
                unresumed = exc
                tried.add(target.instance_id)
            except HostDown as exc:
                if exc.auth:
                    raise self.auth_failed(str(exc), host=target.host, port=target.port) from exc
                if may_wait:
                    waiting = waiting or _WriterWait(self)
                    await waiting.wait(target, "disconnect", exc)
                    continue
                tried.add(target.instance_id)
                failed = exc
            except PoolClosed as exc:
                if self.pools.closed:
                    raise self.pool_closed(f"{exc}: the cluster was closed") from exc
                continue
            except ResolveError as exc:
                if may_wait:
                    waiting = waiting or _WriterWait(self)
                    await waiting.wait(target, "disconnect", exc)
                    continue
                if role == "writer":
                    none = self.no_host(f"the writer {target.instance_id}: {exc}")
                    raise keep_driver_details(none, exc, default_code=_CR_CONN_HOST_ERROR) from exc
                self.suspect(target, f"resolve: {exc}")
                tried.add(target.instance_id)
                failed = exc
            except PoolTimeout as exc:
                raise self.pool_timeout(str(exc)) from exc
            except self.errors as exc:
                kind = _drivers.error_kind(self.adapter, exc)
                if may_wait and kind in _WRITER_GONE:
                    waiting = waiting or _WriterWait(self)
                    await waiting.wait(target, kind, exc)
                    continue
                if kind == "auth" or role == "writer":
                    raise
                self.suspect(target, f"{kind}: {exc}")
                tried.add(target.instance_id)
                failed = exc

    async def fail_over(
        self, role: str, old: Target, kind: str, *, pooled: bool, cause: BaseException
    ) -> AsyncLease:
        """`Runtime.fail_over` on the loop: fast mode; for a writer, wait for a confirmed
        writer; then a connection of ``role`` on the right node, within failover_timeout."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + settings.failover_timeout
        self.events.emit("failover_started", instance=old.instance_id, role=role, cause=kind)
        self.metrics.failovers_started.add((role, kind))
        if kind == "disconnect":
            found = self.pools.existing(old.instance_id)
            if found is not None:
                found.retire()
        topo = self.monitor.topology
        was_writer = (
            topo is not None
            and topo.writer is not None
            and topo.writer.instance_id == old.instance_id
        )
        exclude: frozenset[str] = frozenset()
        if role == "writer" or was_writer:
            self.monitor.enter_fast_mode(f"{kind} on {old.instance_id}")
            moves = kind == "read_only" and self.sync.proxy is None  # a proxy keeps its name
            ok = await self.wait_for_writer(
                max(0.0, deadline - loop.time()), not_id=old.instance_id if moves else None
            )
            if not ok:
                raise self._failed(role, started, "no node answered as the writer", cause)
            writer = self.monitor.topology.writer
            self.events.emit(
                "writer_found",
                instance=writer.instance_id if writer is not None else None,
                after_s=round(loop.time() - started, 3),
            )
        if role != "writer" and self.sync.proxy is None:  # a proxy endpoint picks another
            exclude = frozenset({old.instance_id})
        delay = settings.backoff_initial
        while True:
            try:
                lease = await self.lease(role, pooled=pooled, exclude=exclude, wait=False)
                if self.sync.proxy is not None:
                    async with asyncio.timeout_at(deadline):  # the proxy may queue it
                        await self._check_through_proxy(lease, role)
            except (self.adapter.Error, OSError, NoHostAvailable) as exc:  # TimeoutError too
                if _drivers.error_kind(self.adapter, exc) == "auth" or loop.time() >= deadline:
                    raise self._failed(role, started, str(exc), cause) from None
                await asyncio.sleep(min(random.uniform(0, delay), max(0.0, deadline - loop.time())))
                delay = min(settings.backoff_max, delay * 2)
                if role == "writer":
                    self.monitor.enter_fast_mode(f"no connection to the writer: {exc}")
            else:
                self.metrics.failover_ended(role, "succeeded", loop.time() - started)
                return lease

    def _failed(
        self, role: str, started: float, reason: str, cause: BaseException
    ) -> BaseException:
        elapsed = asyncio.get_running_loop().time() - started
        self.metrics.failover_ended(role, "failed", elapsed)
        after = round(elapsed, 3)
        self.events.emit("failover_failed", role=role, after_s=after, reason=reason)
        error = self.no_writer if role == "writer" else self.no_host
        failed = error(
            f"failover gave up after {after:.1f}s (failover_timeout="
            f"{self.settings.failover_timeout:g}s): {reason}"
        )
        failed.__cause__ = cause
        return keep_driver_details(failed, cause, default_code=_CR_CONN_HOST_ERROR)

    async def _check_through_proxy(self, lease: AsyncLease, role: str) -> None:
        """`Runtime._check_through_proxy` on the loop: a statement on the new connection
        says whether the proxy leads it to a writer (for a writer connection)."""
        sql = (
            "SELECT pg_is_in_recovery()"
            if self.engine == "postgresql"
            else "SELECT @@global.read_only OR @@global.innodb_read_only"
        )
        try:
            rows = await _drivers.run(self.adapter, lease.raw, sql)
            await lease.raw.rollback()  # leave no transaction (nor snapshot) behind
        except BaseException:
            lease.give_back(broken=True)
            raise
        if role == "writer" and (not rows or rows[0][0]):
            lease.give_back(broken=True)
            raise OSError(f"{lease.target.host} does not lead to the writer yet")

    async def still_writer(self, target: Target) -> bool:
        """Whether ``target`` still says it is the writer, asked on a connection of its own
        (then a read-only error is the session's doing, not a demotion)."""
        sql = (
            "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'"
            if self.engine == "postgresql"
            else "SELECT @@global.read_only OR @@global.innodb_read_only"
        )
        try:
            raw = await self.open(target, counted=False)
        except Exception:
            return False
        try:
            rows = await _drivers.run(self.adapter, raw, sql)
        except Exception:
            return False
        finally:
            await self.close_raw(raw)
        return bool(rows) and not rows[0][0]

    async def close(self) -> None:
        """Close this runtime's pools and give the shared machinery back."""
        if self._pools is not None:
            await self._pools.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.release()

    def release(self, *, linger: float = _runtime.LINGER_SECONDS) -> None:
        if not self._released:
            self._released = True
            if self._retire_pools is not None:
                self._retire_pools()  # the counters stay, the gauges go to zero
            _runtime.release(self.sync, linger=linger)


def _settle(tick: asyncio.Future[None]) -> None:
    if not tick.done():
        tick.set_result(None)


class _WriterWait:
    """A new writer connection's wait for a writer that answers (see `_runtime._WriterWait`)."""

    def __init__(self, runtime: AsyncRuntime) -> None:
        self._runtime = runtime
        self._started: float | None = None
        self._delay = runtime.settings.backoff_initial

    async def wait(self, target: Target, kind: str, cause: BaseException) -> None:
        runtime, settings = self._runtime, self._runtime.settings
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._started is None:
            self._started = now
        remaining = self._started + settings.failover_timeout - now
        found = False
        if remaining > 0:
            runtime.suspect(target, f"{kind}: {cause}")
            moves = kind == "read_only" and runtime.sync.proxy is None  # a proxy keeps its name
            found = await runtime.wait_for_writer(
                remaining, not_id=target.instance_id if moves else None
            )
        if not found:
            none = runtime.no_writer(
                f"no writer answered within failover_timeout={settings.failover_timeout:g}s "
                f"(last: {target.instance_id}: {cause})"
            )
            raise keep_driver_details(none, cause, default_code=_CR_CONN_HOST_ERROR) from cause
        await asyncio.sleep(min(random.uniform(0, self._delay), max(0.0, remaining)))
        self._delay = min(settings.backoff_max, self._delay * 2)
