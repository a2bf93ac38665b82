"""Read-your-writes on the wire: a session's position read on the writer, waited for on a
replica, and a reader lent only once it has the session's writes.

The decisions (what covers what) are `aurora_smartdriver.consistency`'s; this module runs the
queries. Positions are read on the writer after each commit of a session's connection, and
for autocommit work where the session leaves the writer (the end of a borrow, a move to a
reader, a token asked for): at most one round trip per write transaction. A read pays a round
trip only when it has a position to honour that no replica was just seen to have.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

from aurora_smartdriver import consistency
from aurora_smartdriver.consistency import Kind, Position

if TYPE_CHECKING:
    from aurora_smartdriver._runtime import Lease, Runtime, SharedCluster
    from aurora_smartdriver.drivers import DriverAdapter
    from aurora_smartdriver.dsn import ConnectionSpec
    from aurora_smartdriver.monitor import ClusterMonitor
    from aurora_smartdriver.pool import Target

__all__ = [
    "capture",
    "cluster_name",
    "kind",
    "lease_for",
    "lease_reader",
    "observed",
    "on_writer",
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
    # writer or were never acknowledged). PostgreSQL's flush position covers every commit
    # acknowledged (synchronous_commit=on flushes first) and a replica can reach it (WAL is
    # sent once flushed).
    "postgresql": "SELECT pg_current_wal_flush_lsn()::text",
    "mariadb": "SELECT @@global.gtid_binlog_pos",
    "mysql": "SELECT @@global.gtid_executed",
}
_REPLICA_SQL: dict[Kind, str] = {
    # In recovery, and replayed how far (NULL before the first record replayed).
    "postgresql": "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text",
    # What replication applied: the position MASTER_GTID_WAIT() waits on (a replica's own
    # binary log could hold errant transactions that replicated nothing).
    "mariadb": "SELECT true, @@global.gtid_slave_pos",
    "mysql": "SELECT true, @@global.gtid_executed",
}
_POLL_FIRST = 0.001
_POLL_MAX = 0.005

SEEN_FOR = 0.5
"""Seconds a replica's observed position is trusted without asking it again. Short: a replica
that restarts, or is rebuilt under the same id, may come back behind what it had."""

# What each cluster's replicas were last seen to have, by instance id, with when: a reader
# seen moments ago at or past a session's position is lent without a query.
_seen: weakref.WeakKeyDictionary[SharedCluster, dict[str, tuple[Position, float]]] = (
    weakref.WeakKeyDictionary()
)
_seen_lock = threading.Lock()
_blind_warned: set[str] = set()


def kind(spec: ConnectionSpec) -> Kind:
    """Which engine's positions `spec`'s cluster speaks."""
    if spec.engine == "postgresql":
        return "postgresql"
    return "mariadb" if spec.mariadb else "mysql"


def cluster_name(spec: ConnectionSpec) -> str:
    """The identity tokens carry: the same for every DSN of the cluster (see `cluster_key`)."""
    from aurora_smartdriver.monitor import cluster_key

    return "|".join(cluster_key(spec))


def _row(
    adapter: DriverAdapter, raw: Any, engine: Kind, sql: str, params: Any = None
) -> tuple[object, ...]:
    """One row of `sql`: one round trip, and no transaction left open by it.

    psycopg opens a transaction for a query without autocommit, which would cost a ROLLBACK
    more; its autocommit switch is client-side while idle, so it is flipped around the query.
    (MySQL opens none for these queries: they read no table.)
    """
    flip = engine == "postgresql" and not raw.autocommit and not adapter.in_transaction(raw)
    if flip:
        raw.autocommit = True
    try:
        rows = adapter.query(raw, sql, params).rows
    finally:
        if flip:
            raw.autocommit = False
    return rows[0] if rows else ()


def writer_position(adapter: DriverAdapter, raw: Any, engine: Kind) -> Position | None:
    """The writer's position now: every transaction committed there so far is within it
    (None when the writer publishes none)."""
    row = _row(adapter, raw, engine, _WRITER_SQL[engine])
    value = row[0] if row else None
    return consistency.parse(engine, "" if value is None else str(value))


class _Monitored(Protocol):
    """A sync or async runtime: what `on_writer` reads of it."""

    @property
    def monitor(self) -> ClusterMonitor: ...


class _Lent(Protocol):
    """A sync or async lease: what `on_writer` reads of it."""

    as_writer: bool

    @property
    def target(self) -> Target: ...


def on_writer(runtime: _Monitored, lease: _Lent) -> bool:
    """Whether `lease` is on the writer: lent as the writer, or the topology's writer now."""
    if lease.as_writer:
        return True
    topo = runtime.monitor.topology
    writer = topo.writer if topo is not None else None
    return writer is not None and writer.instance_id == lease.target.instance_id


def _took(runtime: Runtime, tracker: consistency.Tracker, position: Position | None) -> None:
    engine = kind(runtime.spec)
    tracker.blind = position is None and engine != "postgresql"
    if tracker.blind and runtime.spec.settings.consistency == "session":
        name = cluster_name(runtime.spec)
        if name not in _blind_warned:
            _blind_warned.add(name)
            log.warning(
                "consistency=session: the writer publishes no GTID position (%s); the "
                "session's reads go to the writer",
                "gtid_mode off" if engine == "mysql" else "no binary log",
            )


def capture(runtime: Runtime, raw: Any, tracker: consistency.Tracker) -> None:
    """Advance `tracker` to the writer's position, read on `raw` (a writer connection outside
    a transaction); when that fails, mark it unsure so that the next read asks the writer."""
    snap = tracker.snapshot()
    try:
        position = writer_position(runtime.adapter, raw, kind(runtime.spec))
    except Exception as exc:
        log.info("could not read the writer's position (%s); the next read asks again", exc)
        tracker.mark_unsure()
        return
    _took(runtime, tracker, position)
    tracker.advance(position, settles=snap)


def settle(runtime: Runtime, tracker: consistency.Tracker) -> None:
    """Read the writer's position on a writer lease of its own (after a write whose position
    is unknown). Does not wait for a writer: without one it raises `NoHostAvailable`."""
    snap = tracker.snapshot()
    lease = runtime.lease("writer", pooled=True, wait=False)
    try:
        position = writer_position(runtime.adapter, lease.raw, kind(runtime.spec))
    except BaseException:
        lease.give_back(broken=runtime.adapter.closed(lease.raw))
        raise
    lease.give_back()
    _took(runtime, tracker, position)
    tracker.advance(position, settles=snap)


def observed(shared: SharedCluster, now: float | None = None) -> dict[str, Position]:
    """The replica positions seen within the last `SEEN_FOR` seconds for a cluster."""
    now = time.monotonic() if now is None else now
    with _seen_lock:
        table = _seen.get(shared, {})
        return {i: p for i, (p, at) in table.items() if now - at <= SEEN_FOR}


def _note(shared: SharedCluster, instance_id: str, position: Position | None) -> None:
    now = time.monotonic()
    with _seen_lock:
        table = _seen.setdefault(shared, {})
        for stale in [i for i, (_, at) in table.items() if now - at > SEEN_FOR]:
            del table[stale]
        if position is None:
            table.pop(instance_id, None)
        else:
            table[instance_id] = (position, now)


def replica_seen(engine: Kind, row: tuple[object, ...]) -> tuple[bool, Position | None]:
    """From a row of `_REPLICA_SQL`: whether the node is a replica, and its position."""
    replica = bool(row and row[0])
    text = str(row[1]) if len(row) > 1 and row[1] is not None else ""
    return replica, consistency.parse(engine, text) if replica else None


def gtid_wait(want: Position, timeout: float) -> tuple[str, dict[str, object]]:
    """MariaDB's one round trip that waits on the server for `want` (``MASTER_GTID_WAIT``)."""
    return "SELECT MASTER_GTID_WAIT(%(pos)s, %(t)s)", {"pos": str(want), "t": max(0.0, timeout)}


def gtid_wait_reached(row: tuple[object, ...]) -> bool:
    """``MASTER_GTID_WAIT``'s answer: 0 when reached, -1 when it timed out."""
    return bool(row) and row[0] is not None and int(str(row[0])) == 0


def wait_for(
    adapter: DriverAdapter, raw: Any, engine: Kind, want: Position, timeout: float
) -> tuple[bool, bool, Position | None]:
    """Whether the replica behind `raw` has `want` (waiting up to `timeout` s for it), whether
    it had to wait, and the position it was last seen at (None when it did not say).

    A node not in recovery (promoted, or a writer) is not a replica whose data can be
    compared: it does not cover.
    """
    deadline = time.monotonic() + max(0.0, timeout)

    def look() -> tuple[bool, Position | None]:
        return replica_seen(engine, _row(adapter, raw, engine, _REPLICA_SQL[engine]))

    replica, seen = look()
    if not replica:
        return False, False, None
    if seen is not None and consistency.covers(seen, want):
        return True, False, seen
    if engine == "mariadb":
        # One round trip that waits on the server: 0 when reached, -1 when timed out.
        reached = gtid_wait_reached(_row(adapter, raw, engine, *gtid_wait(want, timeout)))
        return reached, True, want if reached else seen
    pause = _POLL_FIRST
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, True, seen
        time.sleep(min(pause, left))
        pause = min(pause * 2, _POLL_MAX)
        replica, seen = look()
        if not replica:
            return False, True, None
        if seen is not None and consistency.covers(seen, want):
            return True, True, seen


def lease_for(runtime: Runtime, tracker: consistency.Tracker, *, pooled: bool) -> Lease:
    """A reader lease that sees every write `tracker` knows of (see `lease_reader`)."""
    if tracker.unsure:
        settle(runtime, tracker)
    if tracker.blind:
        return _writer_instead(runtime, _readers(runtime)[1], pooled=pooled)
    return lease_reader(runtime, tracker.position, pooled=pooled)


def lease_reader(runtime: Runtime, want: Position | None, *, pooled: bool) -> Lease:
    """A reader lease that sees every transaction within `want` (any reader when None).

    A replica seen moments ago at or past `want` is lent at once; otherwise the reader the
    routing strategy picks is waited for up to ``consistency_wait``; when it does not catch
    up, the writer serves the read (``reader_fallback=fail``: `NoHostAvailable` instead). Each
    way is counted in the metrics' ``session_reads``.
    """
    if want is None:
        return runtime.lease("reader", pooled=pooled)
    _, readers = _readers(runtime)
    seen = observed(runtime.shared)
    ready = frozenset(i for i in readers if i in seen and consistency.covers(seen[i], want))
    if ready and ready != readers:
        lease = runtime.lease("reader", pooled=pooled, exclude=readers - ready)
    else:
        lease = runtime.lease("reader", pooled=pooled)
    if lease.target.instance_id in ready:
        runtime.metrics.session_reads.add("replica")
        return lease
    return verified(runtime, lease, want, pooled=pooled)


def _readers(runtime: Runtime) -> tuple[str | None, frozenset[str]]:
    """The writer's instance id and the readers', from the current snapshot."""
    topo = runtime.topology(runtime.spec.settings.connect_timeout)
    if topo is None:
        return None, frozenset()
    writer = topo.writer.instance_id if topo.writer is not None else None
    return writer, frozenset(r.instance_id for r in topo.readers)


def _writer_instead(runtime: Runtime, readers: frozenset[str], *, pooled: bool) -> Lease:
    lease = runtime.lease("reader", pooled=pooled, exclude=readers)
    runtime.metrics.session_reads.add("writer")
    return lease


def verified(runtime: Runtime, lease: Lease, want: Position | None, *, pooled: bool) -> Lease:
    """`lease` when its node has every transaction within `want` (waiting up to
    ``consistency_wait``), else a lease on the writer in its place (see `lease_reader`)."""
    if want is None:
        return lease
    writer, readers = _readers(runtime)
    instance = lease.target.instance_id
    if instance == writer and instance not in readers:
        runtime.metrics.session_reads.add("writer")  # no reader qualified: the writer it is
        return lease
    caught_up = False
    try:
        if instance in readers:
            caught_up, waited, position = wait_for(
                runtime.adapter,
                lease.raw,
                kind(runtime.spec),
                want,
                runtime.spec.settings.consistency_wait,
            )
            _note(runtime.shared, instance, position)
            if caught_up:
                runtime.metrics.session_reads.add("replica_after_wait" if waited else "replica")
                return lease
    except Exception as exc:  # the replica failed the check: not a reader for this session
        log.info("%s: position check failed (%s); using the writer", lease.target, exc)
        _note(runtime.shared, instance, None)
        lease.give_back(broken=runtime.adapter.closed(lease.raw))
    except BaseException:
        lease.give_back(broken=True)
        raise
    else:
        lease.give_back()
    log.debug("no replica had the session's writes within consistency_wait; using the writer")
    return _writer_instead(runtime, readers, pooled=pooled)


def verified_for(
    runtime: Runtime, lease: Lease, tracker: consistency.Tracker, *, pooled: bool
) -> Lease:
    """`verified` for what `tracker` knows (asking the writer first when it is unsure);
    `lease` is given back when that fails."""
    try:
        if tracker.unsure:
            settle(runtime, tracker)
    except BaseException:
        lease.give_back()
        raise
    if tracker.blind:
        lease.give_back()
        return _writer_instead(runtime, _readers(runtime)[1], pooled=pooled)
    return verified(runtime, lease, tracker.position, pooled=pooled)
