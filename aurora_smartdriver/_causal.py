"""Read-your-writes on the wire: a session's position read on the writer, waited for on a
replica, and a reader lent only once it has the session's writes.

The decisions (what covers what) are `aurora_smartdriver.consistency`'s; this module runs the
queries. Positions are read where the session hands over from writing to reading (the end of a
writer borrow in a session, a connection's move to a reader, a token asked for), never per
statement: a session pays at most one round trip per write transaction, and reads without a
position to honour pay nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from aurora_smartdriver import consistency
from aurora_smartdriver.consistency import Kind, Position

if TYPE_CHECKING:
    from aurora_smartdriver._runtime import Lease, Runtime, SharedCluster
    from aurora_smartdriver.drivers import DriverAdapter
    from aurora_smartdriver.dsn import ConnectionSpec

__all__ = [
    "capture",
    "cluster_name",
    "kind",
    "lease_for",
    "lease_reader",
    "observed",
    "settle",
    "verified",
    "verified_for",
    "wait_for",
    "writer_position",
]

log = logging.getLogger("aurora_smartdriver.consistency")

_WRITER_SQL: dict[Kind, str] = {
    # Global positions: they cover the session's own commits whichever connection made them,
    # also those made on a writer the session has since failed over from (they are on the new
    # writer or were never acknowledged).
    # The flush position: it covers every commit acknowledged (synchronous_commit=on flushes
    # before acknowledging) and a replica can reach it (WAL is sent once flushed).
    "postgresql": "SELECT pg_current_wal_flush_lsn()::text",
    "mariadb": "SELECT @@global.gtid_binlog_pos",
    "mysql": "SELECT @@global.gtid_executed",
}
_REPLICA_SQL: dict[Kind, str] = {
    # NULL on PostgreSQL when the node is not in recovery: it is a writer and has it all.
    "postgresql": "SELECT pg_last_wal_replay_lsn()::text",
    "mariadb": "SELECT @@global.gtid_current_pos",
    "mysql": "SELECT @@global.gtid_executed",
}
_POLL_FIRST = 0.001
_POLL_MAX = 0.005

# What each cluster's replicas were last seen to have, by instance id: a reader whose last
# seen position already covers a session's is lent without a query.
_seen: weakref.WeakKeyDictionary[SharedCluster, dict[str, Position]] = weakref.WeakKeyDictionary()
_seen_lock = threading.Lock()


def kind(spec: ConnectionSpec) -> Kind:
    """Which engine's positions `spec`'s cluster speaks."""
    if spec.engine == "postgresql":
        return "postgresql"
    return "mariadb" if spec.mariadb else "mysql"


def cluster_name(spec: ConnectionSpec) -> str:
    """The identity tokens carry: the same for every DSN of the cluster (see `cluster_key`)."""
    from aurora_smartdriver.monitor import cluster_key

    return "|".join(cluster_key(spec))


def _single(adapter: DriverAdapter, raw: Any, sql: str, params: Any = None) -> str:
    rows = adapter.query(raw, sql, params).rows
    value = rows[0][0] if rows else None
    return "" if value is None else str(value)


def _settle(adapter: DriverAdapter, raw: Any) -> None:
    """End the transaction a position query opened on a non-autocommit connection."""
    if adapter.in_transaction(raw):
        adapter.rollback(raw)


def writer_position(adapter: DriverAdapter, raw: Any, engine: Kind) -> Position | None:
    """The writer's position now: every transaction committed there so far is within it."""
    try:
        return consistency.parse(engine, _single(adapter, raw, _WRITER_SQL[engine]))
    finally:
        _settle(adapter, raw)


def observed(shared: SharedCluster) -> dict[str, Position]:
    """The replica positions last seen for a cluster (a copy)."""
    with _seen_lock:
        return dict(_seen.get(shared, {}))


def _note(shared: SharedCluster, instance_id: str, position: Position | None) -> None:
    if position is None:
        return
    with _seen_lock:
        table = _seen.setdefault(shared, {})
        table[instance_id] = consistency.merge(table.get(instance_id), position) or position


def wait_for(
    adapter: DriverAdapter, raw: Any, engine: Kind, want: Position, timeout: float
) -> tuple[bool, bool, Position | None]:
    """Whether the replica behind `raw` has `want` (waiting up to `timeout` s for it), whether
    it had to wait, and the position it was last seen at (None when it did not say)."""
    deadline = time.monotonic() + max(0.0, timeout)
    try:
        text = _single(adapter, raw, _REPLICA_SQL[engine])
        if engine == "postgresql" and not text:
            return True, False, None  # not in recovery: the writer, it has everything
        seen = consistency.parse(engine, text)
        if seen is not None and consistency.covers(seen, want):
            return True, False, seen
        if engine == "mariadb":
            # One round trip that waits on the server: 0 when reached, -1 when timed out.
            rows = adapter.query(
                raw,
                "SELECT MASTER_GTID_WAIT(%(pos)s, %(t)s)",
                {"pos": str(want), "t": max(0.0, timeout)},
            ).rows
            reached = bool(rows) and rows[0][0] is not None and int(str(rows[0][0])) == 0
            return reached, True, want if reached else seen
        pause = _POLL_FIRST
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, True, seen
            time.sleep(min(pause, left))
            pause = min(pause * 2, _POLL_MAX)
            text = _single(adapter, raw, _REPLICA_SQL[engine])
            if not text:
                return True, True, None
            seen = consistency.parse(engine, text)
            if seen is not None and consistency.covers(seen, want):
                return True, True, seen
    finally:
        _settle(adapter, raw)


def capture(runtime: Runtime, raw: Any, tracker: consistency.Tracker) -> None:
    """Advance `tracker` to the writer's position, read on `raw` (a writer connection); when
    that fails, mark it unsure so that the next read asks the writer first."""
    try:
        position = writer_position(runtime.adapter, raw, kind(runtime.spec))
    except Exception as exc:
        log.info("could not read the writer's position (%s); the next read asks again", exc)
        tracker.unsure = True
    else:
        tracker.advance(position)


def settle(runtime: Runtime, tracker: consistency.Tracker) -> None:
    """Read the writer's position on a writer lease of its own (after a failed capture, or
    for a connection that is not on the writer now)."""
    lease = runtime.lease("writer", pooled=True)
    try:
        position = writer_position(runtime.adapter, lease.raw, kind(runtime.spec))
    except BaseException:
        lease.give_back(broken=runtime.adapter.closed(lease.raw))
        raise
    lease.give_back()
    tracker.advance(position)


def lease_for(runtime: Runtime, tracker: consistency.Tracker, *, pooled: bool) -> Lease:
    """A reader lease that sees every write `tracker` knows of (see `lease_reader`)."""
    if tracker.unsure:
        settle(runtime, tracker)
    return lease_reader(runtime, tracker.position, pooled=pooled)


def verified_for(
    runtime: Runtime, lease: Lease, tracker: consistency.Tracker, *, pooled: bool
) -> Lease:
    """`verified` for what `tracker` knows (asking the writer first when it is unsure)."""
    if tracker.unsure:
        settle(runtime, tracker)
    return verified(runtime, lease, tracker.position, pooled=pooled)


def lease_reader(runtime: Runtime, want: Position | None, *, pooled: bool) -> Lease:
    """A reader lease that sees every transaction within `want` (any reader when None).

    A replica last seen at or past `want` is lent at once; otherwise the reader the routing
    strategy picks is waited for up to ``consistency_wait``; when it does not catch up, the
    writer serves the read (``reader_fallback=fail``: `NoHostAvailable` instead). Each way is
    counted in the metrics' ``session_reads``.
    """
    if want is None:
        return runtime.lease("reader", pooled=pooled)
    readers = _readers(runtime)
    seen = observed(runtime.shared)
    ready = frozenset(i for i in readers if i in seen and consistency.covers(seen[i], want))
    if ready:
        lease = runtime.lease("reader", pooled=pooled, exclude=readers - ready)
        if lease.target.instance_id in ready:
            runtime.metrics.session_reads.add("replica")
            return lease
        lease.give_back()
    return verified(runtime, runtime.lease("reader", pooled=pooled), want, pooled=pooled)


def _readers(runtime: Runtime) -> frozenset[str]:
    topo = runtime.topology(runtime.spec.settings.connect_timeout)
    return frozenset(r.instance_id for r in topo.readers) if topo is not None else frozenset()


def verified(runtime: Runtime, lease: Lease, want: Position | None, *, pooled: bool) -> Lease:
    """`lease` when its node has every transaction within `want` (waiting up to
    ``consistency_wait``), else a lease on the writer in its place (see `lease_reader`)."""
    if want is None:
        return lease
    readers = _readers(runtime)
    if lease.target.instance_id not in readers:  # no reader qualified: the writer it is
        runtime.metrics.session_reads.add("writer")
        return lease
    try:
        caught_up, waited, position = wait_for(
            runtime.adapter,
            lease.raw,
            kind(runtime.spec),
            want,
            runtime.spec.settings.consistency_wait,
        )
    except Exception as exc:  # the replica failed the check: not a reader for this session
        log.info("%s: position check failed (%s); using another host", lease.target, exc)
        lease.give_back(broken=runtime.adapter.closed(lease.raw))
    else:
        _note(runtime.shared, lease.target.instance_id, position)
        if caught_up:
            runtime.metrics.session_reads.add("replica_after_wait" if waited else "replica")
            return lease
        lease.give_back()
    log.debug("no replica had the session's writes within consistency_wait; using the writer")
    fallback = runtime.lease("reader", pooled=pooled, exclude=readers)
    runtime.metrics.session_reads.add("writer")
    return fallback
