"""Read-your-writes on the loop: `aurora_smartdriver._causal`'s queries as coroutines.

What covers what is `aurora_smartdriver.consistency`'s, and the replica positions seen lately
are `_causal`'s table, shared with the cluster's sync users; only the round trips are written
again here, so that none of them blocks the event loop: a session's position read on the
writer after each commit (and where autocommit work leaves the writer), waited for on a
replica (``MASTER_GTID_WAIT`` on MariaDB, ``asyncio.sleep`` between looks on PostgreSQL and
MySQL), and a reader lent only once it has the session's writes, else the writer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aurora_smartdriver import _causal, consistency
from aurora_smartdriver._causal import on_writer
from aurora_smartdriver.aio import _drivers
from aurora_smartdriver.consistency import Position

if TYPE_CHECKING:
    from aurora_smartdriver.aio._runtime import AsyncLease, AsyncRuntime

__all__ = ["capture", "lease_for", "on_writer", "settle", "verified_for"]

log = logging.getLogger("aurora_smartdriver.consistency")


async def _row(runtime: AsyncRuntime, raw: Any, sql: str, params: Any = None) -> tuple[Any, ...]:
    """One row of ``sql``: one round trip, and no transaction left open by it (psycopg's
    autocommit switch is client-side while idle: flipped around the query, as `_causal._row`
    does; MySQL opens none for these queries, which read no table)."""
    if runtime.engine == "postgresql":
        flip = not raw.autocommit and raw.pgconn.transaction_status == 0
        if flip:
            await raw.set_autocommit(True)
        try:
            cur = raw.cursor()
            async with cur:
                await cur.execute(sql, params)
                row = await cur.fetchone()
        finally:
            if flip:
                await raw.set_autocommit(False)
    else:
        async with raw.cursor() as cur:
            await cur.execute(sql, params)
            row = await cur.fetchone()
    return tuple(row) if row else ()


async def _writer_position(runtime: AsyncRuntime, raw: Any) -> Position | None:
    engine = _causal.kind(runtime.spec)
    row = await _row(runtime, raw, _causal._WRITER_SQL[engine])
    value = row[0] if row else None
    return consistency.parse(engine, "" if value is None else str(value))


async def capture(runtime: AsyncRuntime, raw: Any, tracker: consistency.Tracker) -> None:
    """Advance ``tracker`` to the writer's position, read on ``raw`` (a writer connection
    outside a transaction); when that fails, mark it unsure: the next read asks the writer."""
    snap = tracker.snapshot()
    try:
        position = await _writer_position(runtime, raw)
    except BaseException as exc:
        tracker.mark_unsure()  # cancelled too: the write is done, its position unread
        if not isinstance(exc, Exception):
            raise
        log.info("could not read the writer's position (%s); the next read asks again", exc)
        return
    _causal._took(runtime.sync, tracker, position)
    tracker.advance(position, settles=snap)


async def settle(runtime: AsyncRuntime, tracker: consistency.Tracker) -> None:
    """Read the writer's position on a writer lease of its own (after a write whose position
    is unknown). Does not wait for a writer: without one it raises `NoHostAvailable`."""
    snap = tracker.snapshot()
    lease = await runtime.lease("writer", pooled=True, wait=False)
    try:
        position = await _writer_position(runtime, lease.raw)
    except BaseException as exc:  # cut off (cancelled): not lent again, whatever it says
        cut = not isinstance(exc, Exception)
        lease.give_back(broken=cut or _drivers.closed(runtime.adapter, lease.raw))
        raise
    lease.give_back()
    _causal._took(runtime.sync, tracker, position)
    tracker.advance(position, settles=snap)


async def _wait_for(
    runtime: AsyncRuntime, raw: Any, want: Position, timeout: float
) -> tuple[bool, bool, Position | None]:
    """`_causal.wait_for` on the loop: whether the replica behind ``raw`` has ``want``
    (waiting up to ``timeout`` s), whether it waited, and the position it was seen at."""
    engine = _causal.kind(runtime.spec)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, timeout)

    async def look() -> tuple[bool, Position | None]:
        return _causal.replica_seen(engine, await _row(runtime, raw, _causal._REPLICA_SQL[engine]))

    replica, seen = await look()
    if not replica:
        return False, False, None
    if seen is not None and consistency.covers(seen, want):
        return True, False, seen
    if engine == "mariadb":
        row = await _row(runtime, raw, *_causal.gtid_wait(want, timeout))
        reached = _causal.gtid_wait_reached(row)
        return reached, True, want if reached else seen
    pause = _causal._POLL_FIRST
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return False, True, seen
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 2, _causal._POLL_MAX)
        replica, seen = await look()
        if not replica:
            return False, True, None
        if seen is not None and consistency.covers(seen, want):
            return True, True, seen


async def _readers(runtime: AsyncRuntime) -> tuple[str | None, frozenset[str]]:
    """The writer's instance id and the readers', from the current snapshot."""
    topo = await runtime.topology()
    if topo is None:
        return None, frozenset()
    writer = topo.writer.instance_id if topo.writer is not None else None
    return writer, frozenset(r.instance_id for r in topo.readers)


async def _writer_instead(
    runtime: AsyncRuntime, readers: frozenset[str], *, pooled: bool
) -> AsyncLease:
    lease = await runtime.lease("reader", pooled=pooled, exclude=readers)
    runtime.metrics.session_reads.add("writer")
    return lease


async def lease_for(
    runtime: AsyncRuntime, tracker: consistency.Tracker, *, pooled: bool
) -> AsyncLease:
    """A reader lease that sees every write ``tracker`` knows of: a replica seen moments ago
    at or past its position at once, else the reader the routing picks once it has caught up
    (``consistency_wait``), else the writer (``reader_fallback=fail``: `NoHostAvailable`)."""
    if tracker.unsure:
        await settle(runtime, tracker)
    if tracker.blind:
        return await _writer_instead(runtime, (await _readers(runtime))[1], pooled=pooled)
    want = tracker.position
    if want is None:
        return await runtime.lease("reader", pooled=pooled)
    _, readers = await _readers(runtime)
    seen = _causal.observed(runtime.sync.shared)
    ready = frozenset(i for i in readers if i in seen and consistency.covers(seen[i], want))
    if ready and ready != readers:
        lease = await runtime.lease("reader", pooled=pooled, exclude=readers - ready)
    else:
        lease = await runtime.lease("reader", pooled=pooled)
    if lease.target.instance_id in ready:
        runtime.metrics.session_reads.add("replica")
        return lease
    return await _verified(runtime, lease, want, pooled=pooled)


async def _verified(
    runtime: AsyncRuntime, lease: AsyncLease, want: Position | None, *, pooled: bool
) -> AsyncLease:
    """``lease`` when its node has every transaction within ``want`` (waiting up to
    ``consistency_wait``), else a lease on the writer in its place."""
    if want is None:
        return lease
    writer, readers = await _readers(runtime)
    instance = lease.target.instance_id
    if instance == writer and instance not in readers:
        runtime.metrics.session_reads.add("writer")  # no reader qualified: the writer it is
        return lease
    try:
        if instance in readers:
            caught_up, waited, position = await _wait_for(
                runtime, lease.raw, want, runtime.settings.consistency_wait
            )
            _causal._note(runtime.sync.shared, instance, position)
            if caught_up:
                runtime.metrics.session_reads.add("replica_after_wait" if waited else "replica")
                return lease
    except Exception as exc:  # the replica failed the check: not a reader for this session
        log.info("%s: position check failed (%s); using the writer", lease.target, exc)
        _causal._note(runtime.sync.shared, instance, None)
        lease.give_back(broken=_drivers.closed(runtime.adapter, lease.raw))
    except BaseException:
        lease.give_back(broken=True)
        raise
    else:
        lease.give_back()
    log.debug("no replica had the session's writes within consistency_wait; using the writer")
    return await _writer_instead(runtime, readers, pooled=pooled)


async def verified_for(
    runtime: AsyncRuntime, lease: AsyncLease, tracker: consistency.Tracker, *, pooled: bool
) -> AsyncLease:
    """`_verified` for what ``tracker`` knows (asking the writer first when it is unsure), for
    a reader lease found some other way (a failover); ``lease`` is given back when that
    fails."""
    try:
        if tracker.unsure:
            await settle(runtime, tracker)
    except BaseException:
        lease.give_back()
        raise
    if tracker.blind:
        lease.give_back()
        return await _writer_instead(runtime, (await _readers(runtime))[1], pooled=pooled)
    return await _verified(runtime, lease, tracker.position, pooled=pooled)
