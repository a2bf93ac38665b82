"""A global database in the lab: secondary regions replicating from the primary region's writer.

Aurora Global Database keeps one primary cluster (the only writer) and up to five read-only
secondary clusters in other regions, fed asynchronously from the primary's storage. The lab
grows the same shape on a running lab: `add_region` starts a secondary cluster of its own nodes
(each replicating from the writer, asynchronously: they never acknowledge a commit), with its
own cluster and reader endpoints under ``<region>.aurora.test`` and a global writer endpoint
``<name>.global-<hash>.global.aurora.test`` that follows the writer. Every node answers the
global metadata with Aurora's column names (PostgreSQL ``aurora_global_db_instance_status()`` and
``aurora_global_db_status()``; MariaDB tables of the same names in the lab's schema), including
each region's RPO lag, kept fresh by the supervisor.

`switchover` is Aurora's planned switchover (no data loss: writes stop, the target region
catches up, the old writer is demoted, a node of the target region is promoted); `failover` is
the managed failover after a region outage ("allow data loss"): the old primary region is lost
(its nodes crash) and the target region is promoted at once with what it has. `hold` stops a
region's replication so that a failover loses writes reproducibly. `restore` returns to the
original one-region lab.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aurora_smartdriver.lab import _procs
from aurora_smartdriver.lab import _state as st
from aurora_smartdriver.lab._engine import MASTER_SESSION_ID, Engine, Fresh, LabError, node_dir

if TYPE_CHECKING:
    from aurora_smartdriver.lab._cluster import Lab

HOME = st.REGION  # the region every lab starts in
GLOBAL_ORIGIN = f"global.{st.DOMAIN}"


@dataclass(frozen=True, slots=True)
class GlobalReport:
    """What a global switchover or failover did and when (wall-clock seconds)."""

    kind: str  # "switchover" | "failover"
    old_writer: str
    new_writer: str
    old_region: str
    new_region: str
    started_at: float
    writable_at: float  # the new writer accepts writes
    completed_at: float
    lost_position: int  # how far the old writer was ahead of the new one (0: nothing lost)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "old_writer": self.old_writer,
            "new_writer": self.new_writer,
            "old_region": self.old_region,
            "new_region": self.new_region,
            "started_at": self.started_at,
            "writable_at": self.writable_at,
            "completed_at": self.completed_at,
            "lost_position": self.lost_position,
        }


# -- names -----------------------------------------------------------------------------------
def check_region(region: str) -> None:
    """Refuse a region name the lab's DNS cannot serve (letters, digits, '-'; not 'global')."""
    if (
        not region
        or not region.replace("-", "").isalnum()
        or not region[0].isalpha()
        or region != region.lower()
        or region == "global"
        or len(region) > 30
    ):
        raise LabError(
            f"region must be lowercase letters, digits and '-' starting with a letter "
            f"(not 'global'): {region!r}"
        )


def region_hash(state: st.LabState, region: str) -> str:
    return state.cluster_hash if region == HOME else state.regions[region]


def cluster_endpoint(state: st.LabState, region: str) -> str:
    return f"{state.name}.cluster-{region_hash(state, region)}.{region}.{st.DOMAIN}"


def reader_endpoint(state: st.LabState, region: str) -> str:
    return f"{state.name}.cluster-ro-{region_hash(state, region)}.{region}.{st.DOMAIN}"


def global_endpoint(state: st.LabState) -> str:
    if state.global_hash is None:
        raise LabError("the lab has no secondary region (add one with add_region)")
    return f"{state.name}.global-{state.global_hash}.{GLOBAL_ORIGIN}"


def host_patterns(state: st.LabState) -> str:
    """The setting ``global_instance_host_patterns`` for this lab: ``region:pattern,...``."""
    regions = [HOME, *sorted(state.regions)]
    return ",".join(f"{r}:?.{region_hash(state, r)}.{r}.{st.DOMAIN}" for r in regions)


def regions_of(state: st.LabState) -> list[str]:
    return [HOME, *sorted(state.regions)] if state.regions else [HOME]


def region_nodes(state: st.LabState, region: str) -> list[st.NodeState]:
    return [n for n in state.nodes if n.region == region]


def head(state: st.LabState, region: str) -> st.NodeState | None:
    """The node a region's cluster endpoint names: the writer, else its first running node."""
    nodes = region_nodes(state, region)
    for node in nodes:
        if node.role == "writer":
            return node
    running = [n for n in nodes if n.status == "running"]
    return running[0] if running else (nodes[0] if nodes else None)


def records(state: st.LabState) -> dict[str, tuple[str, str | tuple[str, ...]]]:
    """Extra DNS names of a global lab: ``name -> ("cname", target) | ("a", addresses)``.

    The home region's own names are included too: while another region holds the writer,
    its cluster endpoint names its head and its reader endpoint its own readers.
    """
    out: dict[str, tuple[str, str | tuple[str, ...]]] = {}
    if not state.regions:
        return out
    writer = state.writer
    if writer is not None:
        out[global_endpoint(state)] = ("cname", state.instance_endpoint(writer.id))
    for region in regions_of(state):
        top = head(state, region)
        if top is None:
            continue
        out[cluster_endpoint(state, region)] = ("cname", state.instance_endpoint(top.id))
        readers = [
            n.address
            for n in region_nodes(state, region)
            if n.role == "reader" and n is not top and n.status in ("running", "hung")
        ]
        out[reader_endpoint(state, region)] = ("a", tuple(readers or [top.address]))
    return out


# -- engine operations -----------------------------------------------------------------------
_PG_GLOBAL_SQL = """
CREATE TABLE IF NOT EXISTS aurora_lab.global_instances (
    server_id text PRIMARY KEY,
    session_id text NOT NULL,
    aws_region text NOT NULL,
    durable_lsn bigint,
    highest_lsn_rcvd bigint,
    visibility_lag_in_msec real
);
CREATE TABLE IF NOT EXISTS aurora_lab.global_regions (
    aws_region text PRIMARY KEY,
    highest_lsn_written bigint,
    durability_lag_in_msec real,
    rpo_lag_in_msec real,
    last_lag_calculation_time timestamptz
);
CREATE OR REPLACE FUNCTION pg_catalog.aurora_global_db_instance_status()
RETURNS TABLE (
    server_id text, session_id text, aws_region text, durable_lsn bigint,
    highest_lsn_rcvd bigint, feedback_epoch integer, feedback_xmin integer,
    oldest_read_view_lsn bigint, visibility_lag_in_msec real
) LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT g.server_id, g.session_id, g.aws_region, g.durable_lsn,
           CASE WHEN g.session_id = 'MASTER_SESSION_ID' THEN NULL ELSE g.highest_lsn_rcvd END,
           NULL::integer, NULL::integer, NULL::bigint,
           CASE WHEN g.session_id = 'MASTER_SESSION_ID' THEN NULL
                ELSE g.visibility_lag_in_msec END
    FROM aurora_lab.global_instances g ORDER BY g.aws_region, g.server_id
$$;
CREATE OR REPLACE FUNCTION pg_catalog.aurora_global_db_status()
RETURNS TABLE (
    aws_region text, highest_lsn_written bigint, durability_lag_in_msec real,
    rpo_lag_in_msec real, last_lag_calculation_time timestamptz, feedback_epoch integer,
    feedback_xmin integer
) LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT r.aws_region, r.highest_lsn_written, r.durability_lag_in_msec, r.rpo_lag_in_msec,
           r.last_lag_calculation_time, NULL::integer, NULL::integer
    FROM aurora_lab.global_regions r ORDER BY r.aws_region
$$;
"""


# Aurora MySQL's information_schema tables, in the lab's schema (nothing can be created in
# information_schema on MariaDB; the library reads the schema of `replica_status_schema`).
_MARIADB_GLOBAL_SQL = (
    "CREATE TABLE IF NOT EXISTS aurora_lab.aurora_global_db_instance_status ("
    " SERVER_ID varchar(100) PRIMARY KEY, SESSION_ID varchar(100) NOT NULL,"
    " AWS_REGION varchar(100) NOT NULL, DURABLE_LSN bigint unsigned,"
    " HIGHEST_LSN_RCVD bigint unsigned, OLDEST_READ_VIEW_TRX_ID bigint unsigned,"
    " OLDEST_READ_VIEW_LSN bigint unsigned, VISIBILITY_LAG_IN_MSEC float(10,0) unsigned)",
    "CREATE TABLE IF NOT EXISTS aurora_lab.aurora_global_db_status ("
    " AWS_REGION varchar(100) PRIMARY KEY, HIGHEST_LSN_WRITTEN bigint unsigned,"
    " DURABILITY_LAG_IN_MILLISECONDS bigint, RPO_LAG_IN_MILLISECONDS bigint,"
    " LAST_LAG_CALCULATION_TIMESTAMP datetime(6), OLDEST_READ_VIEW_TRX_ID bigint unsigned)",
)


@dataclass(frozen=True, slots=True)
class _Names:
    """Where an engine keeps the global metadata, and how it writes times."""

    instances: str
    regions: str
    server_id: str
    session_id: str
    region: str
    durable: str
    received: str
    visibility: str
    written: str
    durability: str
    rpo: str
    calculated: str
    now: str
    epoch: str


_NAMES = {
    "postgresql": _Names(
        "aurora_lab.global_instances",
        "aurora_lab.global_regions",
        "server_id",
        "session_id",
        "aws_region",
        "durable_lsn",
        "highest_lsn_rcvd",
        "visibility_lag_in_msec",
        "highest_lsn_written",
        "durability_lag_in_msec",
        "rpo_lag_in_msec",
        "last_lag_calculation_time",
        "now()",
        "'1970-01-01 00:00:00+00'::timestamptz",
    ),
    "mariadb": _Names(
        "aurora_lab.aurora_global_db_instance_status",
        "aurora_lab.aurora_global_db_status",
        "SERVER_ID",
        "SESSION_ID",
        "AWS_REGION",
        "DURABLE_LSN",
        "HIGHEST_LSN_RCVD",
        "VISIBILITY_LAG_IN_MSEC",
        "HIGHEST_LSN_WRITTEN",
        "DURABILITY_LAG_IN_MILLISECONDS",
        "RPO_LAG_IN_MILLISECONDS",
        "LAST_LAG_CALCULATION_TIMESTAMP",
        "NOW(6)",
        "'1970-01-01 00:00:00'",
    ),
}

Statement = tuple[str, tuple[object, ...]]


def _run(
    engine: Engine, state: st.LabState, node: st.NodeState, statements: list[Statement]
) -> None:
    """Run statements in one transaction on a node, as the administrator."""
    impl: Any = engine
    if state.engine == "postgresql":
        with impl._connect(state, node, 5.0) as conn:
            conn.execute("SET synchronous_commit = local")  # the lab's bookkeeping
            with conn.transaction():
                for sql, params in statements:
                    conn.execute(sql, params)
        return
    conn = impl._connect(state, node, 5.0, database=state.database)
    try:
        with conn.cursor() as cur:
            conn.begin()
            for sql, params in statements:
                cur.execute(sql, params or None)
            conn.commit()
    finally:
        conn.close()


def _install(lab: Lab, state: st.LabState, writer: st.NodeState) -> None:
    """Create the global metadata objects on the writer (they replicate everywhere)."""
    if state.engine == "postgresql":
        _run(lab.engine, state, writer, [(_PG_GLOBAL_SQL, ())])
    else:
        _run(lab.engine, state, writer, [(sql, ()) for sql in _MARIADB_GLOBAL_SQL])


@dataclass(frozen=True, slots=True)
class RegionFigures:
    """One region's published lag figures (milliseconds; -1 for the primary, as on Aurora)."""

    region: str
    position: int
    durability_lag_ms: float
    rpo_lag_ms: float


def publish(
    engine: Engine,
    state: st.LabState,
    writer: st.NodeState,
    fresh: Mapping[str, Fresh],
    regions: Mapping[str, RegionFigures],
    *,
    structure: bool = True,
) -> None:
    """Write the global metadata on the writer: every node of every region, and each region's
    lag. Only nodes in ``fresh`` get new figures; ``structure`` rewrites the membership."""
    n = _NAMES[state.engine]
    out: list[Statement] = []
    if structure:
        out += [(f"DELETE FROM {n.instances}", ()), (f"DELETE FROM {n.regions}", ())]
        for node in state.nodes:
            session = MASTER_SESSION_ID if node.role == "writer" else node.session_id
            out.append(
                (
                    f"INSERT INTO {n.instances} ({n.server_id}, {n.session_id}, {n.region})"
                    " VALUES (%s, %s, %s)",
                    (node.id, session, node.region),
                )
            )
        for region in regions_of(state):
            primary = region == writer.region
            out.append(
                (
                    f"INSERT INTO {n.regions} ({n.region}, {n.durability}, {n.rpo}, {n.calculated})"
                    f" VALUES (%s, %s, %s, {n.epoch if primary else n.now})",
                    (region, -1 if primary else 0, -1 if primary else 0),
                )
            )
    for node_id, figures in fresh.items():
        out.append(
            (
                f"UPDATE {n.instances} SET {n.durable} = %s, {n.received} = %s,"
                f" {n.visibility} = %s WHERE {n.server_id} = %s",
                (figures.position, figures.position, figures.lag_ms, node_id),
            )
        )
    for fig in regions.values():
        primary = fig.region == writer.region
        out.append(
            (
                f"UPDATE {n.regions} SET {n.written} = %s, {n.durability} = %s, {n.rpo} = %s,"
                f" {n.calculated} = {n.epoch if primary else n.now} WHERE {n.region} = %s",
                (
                    fig.position,
                    -1 if primary else round(fig.durability_lag_ms),
                    -1 if primary else round(fig.rpo_lag_ms),
                    fig.region,
                ),
            )
        )
    if out:
        _run(engine, state, writer, out)


def _forget(lab: Lab, state: st.LabState, writer: st.NodeState) -> None:
    """Empty the global metadata (the lab is one region again)."""
    n = _NAMES[state.engine]
    _run(
        lab.engine,
        state,
        writer,
        [(f"DELETE FROM {n.instances}", ()), (f"DELETE FROM {n.regions}", ())],
    )


class LagClock:
    """Each region's RPO lag from the writer's position over time, as the supervisor sees it.

    The lag of a region is how long ago the writer first passed the position the region has
    received: the age of the oldest commit the region lacks (0 when it has everything).
    """

    def __init__(self, keep: int = 3600) -> None:
        self.history: deque[tuple[float, int]] = deque(maxlen=keep)

    def figures(
        self, state: st.LabState, fresh: Mapping[str, Fresh], now: float
    ) -> dict[str, RegionFigures]:
        writer = state.writer
        if writer is None or writer.id not in fresh:
            return {}
        top = fresh[writer.id].position or 0
        if not self.history or self.history[-1][1] != top:
            self.history.append((now, top))
        out = {}
        for region in regions_of(state):
            positions = [
                fresh[n.id].position or 0 for n in region_nodes(state, region) if n.id in fresh
            ]
            if region == writer.region:
                out[region] = RegionFigures(region, top, -1.0, -1.0)
                continue
            if not positions:
                continue  # no node of the region answered: its figures stay as they were
            have = max(positions)
            lag = 0.0
            if have < top:
                first_missing = next((t for t, p in self.history if p > have), now)
                lag = max(0.0, (now - first_missing) * 1000.0)
            out[region] = RegionFigures(region, have, lag, lag)
        return out


# -- operations ------------------------------------------------------------------------------
def add_region(lab: Lab, region: str, replicas: int = 1, timeout: float = 60.0) -> list[str]:
    """Start a secondary cluster of ``replicas + 1`` nodes in ``region``; returns their ids."""
    from aurora_smartdriver.lab._cluster import _new_node

    check_region(region)
    if replicas < 0:
        raise LabError(f"replicas must be 0 or more, not {replicas}")
    with lab._change() as state:
        if region == HOME or region in state.regions:
            raise LabError(f"the lab already has a region {region!r}")
        writer = state.writer
        if writer is None or writer.status != "running":
            raise LabError("cannot add a region: the writer is not running")
        if writer.region != HOME:
            raise LabError("add regions while the home region holds the writer")
        if not state.regions:
            _install(lab, state, writer)
            state.global_hash = secrets.token_hex(6)
        state.regions[region] = secrets.token_hex(6)
        nodes = []
        for _ in range(replicas + 1):
            node = _new_node(state, state.prefix, "reader")
            node.region = region
            nodes.append(node)
        st.save(lab.state_path, state)
        lab.engine.set_sync(state, writer, bool(state.readers))  # regional readers only
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            list(pool.map(lambda n: _start_follower(lab, state, n, writer, timeout), nodes))
        lab.engine.publish(state, writer, {n.id: Fresh(0.0, 0.0) for n in nodes})
        publish(lab.engine, state, writer, {}, {})
        ids = [n.id for n in nodes]
    lab.wait_replicated(timeout)
    _wait_region(lab, region, timeout)
    return ids


def _start_follower(
    lab: Lab, state: st.LabState, node: st.NodeState, writer: st.NodeState, timeout: float
) -> None:
    """Start a new node replicating from the writer, acknowledging only if in its region."""
    if state.engine == "postgresql":  # the synchronous standby names say who acknowledges
        lab._start_replica(state, node, writer, timeout)
        return
    engine: Any = lab.engine
    engine.prepare(state, node, writer)
    node.pid = engine.start(state, node)
    node.status = "running"
    engine.wait_ready(state, node, timeout)
    conn = engine._connect(state, node, 5.0)
    try:
        with conn.cursor() as cur:  # before replication starts: a restart would race the replay
            acks = int(node.region == writer.region)
            cur.execute(f"SET GLOBAL rpl_semi_sync_slave_enabled = {acks}")
            # A replica skips events of its own server id: a node rebuilt from scratch would
            # skip every transaction it wrote as a writer before. Give the new copy a new id.
            cur.execute(f"SET GLOBAL server_id = {1000 * (state.failovers + 1) + node.index}")
    finally:
        conn.close()
    engine.attach_replica(state, node, writer)


def _wait_region(lab: Lab, region: str, timeout: float) -> None:
    """Wait until every running node of ``region`` has what the writer has."""
    state = lab.state()
    writer = state.writer
    if writer is None:
        return
    goal = lab.engine.writer_position(state, writer)
    deadline = time.monotonic() + timeout
    for node in region_nodes(state, region):
        if node.status != "running" or node.role == "writer":
            continue
        while lab.engine.position(state, node) < goal:
            if time.monotonic() > deadline:
                raise LabError(f"{node.id} in {region} did not catch up in {timeout}s")
            time.sleep(0.02)
        lab.engine.drain(state, node, max(1.0, deadline - time.monotonic()))  # and applied it


def hold(lab: Lab, region: str, timeout: float = 30.0) -> None:
    """Stop replication into a secondary region: it keeps what it has and falls behind.

    Returns once no node of the region receives anything more: PostgreSQL stops a WAL
    receiver some time after the reload that tells it to, and it streams until then.
    """
    with lab._change() as state:
        nodes = _secondary(state, region)
        for node in nodes:
            _set_source(lab, state, node, None)
        _wait_streaming(lab, state, nodes, None, timeout)


def release(lab: Lab, region: str, timeout: float = 30.0) -> None:
    """Undo `hold`: the region replicates from the writer again (every node streams from it
    when this returns)."""
    with lab._change() as state:
        writer = state.writer
        if writer is None:
            raise LabError("the lab has no writer")
        nodes = [n for n in _secondary(state, region) if n.status == "running"]
        for node in nodes:
            _set_source(lab, state, node, writer)
        _wait_streaming(lab, state, nodes, writer, timeout)


def _streaming_from(lab: Lab, state: st.LabState, node: st.NodeState) -> str | None:
    """The address ``node`` streams the writer's log from; "" while its receiver runs without
    streaming (yet, or any more); None when it has no receiver (nothing can arrive)."""
    engine: Any = lab.engine
    if state.engine == "postgresql":
        rows = engine.execute(state, node, "SELECT status, sender_host FROM pg_stat_wal_receiver")
        if not rows:
            return None
        doing, host = rows[0]
        return str(host) if doing == "streaming" and host else ""
    conn = engine._connect(state, node, 5.0)
    try:
        status: dict[str, Any] = engine._status(conn)
    finally:
        conn.close()
    if status.get("Slave_IO_Running", "No") == "No":
        return None
    if status["Slave_IO_Running"] == "Yes" and status.get("Slave_SQL_Running") == "Yes":
        return str(status.get("Master_Host") or "")
    return ""


def _wait_streaming(
    lab: Lab,
    state: st.LabState,
    nodes: list[st.NodeState],
    source: st.NodeState | None,
    timeout: float,
) -> None:
    """Wait until every node of ``nodes`` streams from ``source`` (None: from nothing)."""
    goal = None if source is None else source.address
    deadline = time.monotonic() + timeout
    for node in nodes:
        while (now := _streaming_from(lab, state, node)) != goal:
            if time.monotonic() > deadline:
                wanted = "stop receiving" if source is None else f"stream from {source.id}"
                found = {None: "no receiver", "": "a receiver not streaming"}.get(now)
                raise LabError(
                    f"{node.id} did not {wanted} within {timeout:g}s: "
                    f"it has {found or f'a receiver streaming from {now}'}"
                )
            time.sleep(0.01)


def _secondary(state: st.LabState, region: str) -> list[st.NodeState]:
    if region not in regions_of(state):
        raise LabError(f"no region {region!r} in the lab (regions: {', '.join(regions_of(state))})")
    writer = state.writer
    if writer is not None and writer.region == region:
        raise LabError(f"{region} holds the writer; only a secondary region can be held")
    return region_nodes(state, region)


def _set_source(
    lab: Lab, state: st.LabState, node: st.NodeState, source: st.NodeState | None
) -> None:
    """Make ``node`` replicate from ``source``, or from nothing (held). Only a node of the
    source's own region acknowledges its commits (MariaDB semi-sync; PostgreSQL's list of
    synchronous standbys names the writer's region's nodes only)."""
    engine: Any = lab.engine
    if state.engine == "postgresql":
        info = "" if source is None else engine._conninfo(state, node, source)
        with engine._connect(state, node, 5.0) as conn:
            conn.execute(f"ALTER SYSTEM SET primary_conninfo = '{info}'")
            conn.execute("SELECT pg_reload_conf()")
        return
    conn = engine._connect(state, node, 5.0)  # no database: a new replica may lack it yet
    try:
        with conn.cursor() as cur:
            if source is None:
                cur.execute("STOP SLAVE IO_THREAD")
                return
            acks = int(node.region == source.region)
            cur.execute(f"SET GLOBAL rpl_semi_sync_slave_enabled = {acks}")
    finally:
        conn.close()
    engine.repoint(state, node, source)


def switchover(
    lab: Lab, region: str, timeout: float = 60.0, *, rebuild: bool = True
) -> GlobalReport:
    """Aurora's planned switchover: no committed write is lost.

    The target region catches up, the old writer shuts down cleanly (PostgreSQL sends every
    WAL record to its standbys before it exits), the target region's most advanced node is
    promoted once it has the old writer's last record, and the old primary region's nodes
    return as replicas of the new writer (from fresh copies).
    """
    engine: Any = lab.engine
    with lab._change() as state:
        started = time.time()
        old = _writer(state)
        targets = _candidates(state, region)
        for node in targets:
            _set_source(lab, state, node, old)  # a held region catches up too
        _wait_position(lab, state, targets, engine.writer_position(state, old), timeout)
        if state.engine == "postgresql":
            os.kill(old.pid or 0, signal.SIGINT)  # fast shutdown: sessions end, WAL is sent
            if not _procs.wait_gone(old.pid or 0, 30):
                raise LabError(f"{old.id} did not shut down within 30s")
            _wait_position(lab, state, targets, _last_checkpoint(lab, state, old) + 1, timeout)
        else:
            # Writes stop (the application user cannot bypass read_only; its sessions end),
            # then the target region receives everything the old writer has.
            engine.execute(state, old, "SET GLOBAL read_only = ON")
            for (pid,) in engine.execute(
                state,
                old,
                f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{state.user}'",
            ):
                with contextlib.suppress(Exception):
                    engine.execute(state, old, f"KILL {int(str(pid))}")
            _wait_position(lab, state, targets, engine.writer_position(state, old), timeout)
        new = max(targets, key=lambda n: (engine.position(state, n), -n.index))
        # The old region's nodes return from fresh copies of the new writer (`_rebuild`): a
        # demoted PostgreSQL primary may hold WAL past the fork point.
        for node in region_nodes(state, old.region):
            lab._kill(state, node)
            node.status = "stopped"
        report = _promote(lab, state, kind="switchover", old=old, new=new, started=started, lost=0)
    if rebuild:  # `restore` removes the old region right after: no need
        _rebuild(lab, old.region, timeout)
    return report


def failover(lab: Lab, region: str, timeout: float = 60.0) -> GlobalReport:
    """Aurora's managed failover after losing the primary region (data loss allowed).

    Every node of the old primary region crashes (the outage), and the most advanced node of
    ``region`` is promoted at once with what it has received: commits it had not received are
    lost, as the region's RPO lag said they could be.
    """
    engine: Any = lab.engine
    with lab._change() as state:
        started = time.time()
        old = _writer(state)
        targets = _candidates(state, region)
        try:
            ahead = engine.writer_position(state, old)
        except Exception:
            ahead = 0
        for node in region_nodes(state, old.region):
            lab._kill(state, node)
            node.status = "crashed"
        new = max(targets, key=lambda n: (engine.position(state, n), -n.index))
        lost = max(0, ahead - engine.position(state, new))
        return _promote(lab, state, kind="failover", old=old, new=new, started=started, lost=lost)


def _writer(state: st.LabState) -> st.NodeState:
    writer = state.writer
    if writer is None:
        raise LabError("the lab has no writer")
    return writer


def _candidates(state: st.LabState, region: str) -> list[st.NodeState]:
    nodes = [n for n in _secondary(state, region) if n.status == "running"]
    nodes = [n for n in nodes if _procs.alive(n.pid)]
    if not nodes:
        raise LabError(f"no running node in {region} to promote")
    return nodes


def _promote(
    lab: Lab,
    state: st.LabState,
    *,
    kind: str,
    old: st.NodeState,
    new: st.NodeState,
    started: float,
    lost: int,
) -> GlobalReport:
    engine: Any = lab.engine
    engine.drain(state, new, 10.0)  # MariaDB: apply what it received (PostgreSQL: no-op)
    engine.promote(state, new)
    old.role = "reader"
    new.role = "writer"
    writable = time.time()
    others = [n for n in state.nodes if n is not new and n.status == "running"]
    with ThreadPoolExecutor(max_workers=max(1, len(others))) as pool:
        list(pool.map(lambda n: _set_source(lab, state, n, new), others))
    engine.set_sync(state, new, any(n.status == "running" for n in state.readers))
    engine.publish(state, new, {n.id: Fresh(0.0, 0.0) for n in state.cluster_nodes})
    publish(engine, state, new, {}, {})
    state.failovers += 1
    return GlobalReport(
        kind=kind,
        old_writer=old.id,
        new_writer=new.id,
        old_region=old.region,
        new_region=new.region,
        started_at=started,
        writable_at=writable,
        completed_at=time.time(),
        lost_position=lost,
    )


def _rebuild(lab: Lab, region: str, timeout: float) -> None:
    """Bring every stopped or crashed node of ``region`` back as a replica of the writer."""
    with lab._change() as state:
        writer = _writer(state)
        nodes = [n for n in region_nodes(state, region) if not _procs.alive(n.pid)]
        if not nodes:
            return
        for node in nodes:
            lab._kill(state, node)
            node.role = "reader"
            node.status = "stopped"
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            list(pool.map(lambda n: _start_follower(lab, state, n, writer, timeout), nodes))
        lab.engine.set_sync(state, writer, bool(state.readers))
        lab.engine.publish(state, writer, {n.id: Fresh(0.0, 0.0) for n in state.cluster_nodes})
        publish(lab.engine, state, writer, {}, {})
    _wait_region(lab, region, timeout)  # a MariaDB copy starts empty: back once caught up


def restore(lab: Lab, timeout: float = 60.0) -> bool:
    """Return to the one-region lab: the writer back home, every other region gone."""
    state = lab.state()
    if not state.regions:
        return False
    writer = state.writer
    if writer is not None and writer.region != HOME:
        _rebuild(lab, HOME, timeout)
        switchover(lab, HOME, timeout, rebuild=False)
    with lab._change() as state:
        for node in [n for n in state.nodes if n.region != HOME]:
            lab._kill(state, node)
            shutil.rmtree(node_dir(state, node), ignore_errors=True)
            state.nodes.remove(node)
        state.regions.clear()
        state.global_hash = None
        writer = _writer(state)
        if writer.status == "running" and _procs.alive(writer.pid):
            lab.engine.set_sync(state, writer, bool(state.readers))
            lab.engine.publish(state, writer, {})
            _forget(lab, state, writer)
        state.dns.cluster_target = writer.id
        state.dns.pending_target = state.dns.pending_at = None
    return True


# -- command line (``aurora-smartdriver lab ...``) ------------------------------------------
GLOBAL_COMMANDS = (
    "add-region",
    "global-switchover",
    "global-failover",
    "hold-region",
    "release-region",
)


def add_global_parsers(sub: Any, with_state: Callable[[Any], Any]) -> None:
    """The lab subcommands of a global database."""
    add = with_state(sub.add_parser("add-region", help="add a secondary region (global database)"))
    add.add_argument("region")
    add.add_argument("--replicas", type=int, default=1, help="readers besides its first node")
    for name, text in [
        ("global-switchover", "planned switchover of the writer to a region (no data loss)"),
        ("global-failover", "lose the primary region and promote another (data loss allowed)"),
        ("hold-region", "stop replication into a secondary region (it falls behind)"),
        ("release-region", "let a held region replicate again"),
    ]:
        with_state(sub.add_parser(name, help=text)).add_argument("region")


def global_command(lab: Lab, args: Any) -> tuple[dict[str, Any], str | None]:
    """Run one of `GLOBAL_COMMANDS`; the JSON document and the line to print."""
    text = None
    doc: dict[str, Any] = {}
    if args.lab_cmd == "add-region":
        ids = add_region(lab, args.region, args.replicas)
        state = lab.state()
        doc = {"added": ids, "global_dsn": lab.global_dsn(), "patterns": host_patterns(state)}
        text = f"region {args.region}: {', '.join(ids)}\n  global dsn: {doc['global_dsn']}"
    elif args.lab_cmd in ("global-switchover", "global-failover"):
        move = switchover if args.lab_cmd == "global-switchover" else failover
        report = move(lab, args.region)
        doc = report.to_json()
        text = (
            f"global {report.kind} {report.old_writer} ({report.old_region}) -> "
            f"{report.new_writer} ({report.new_region}), writable after "
            f"{report.writable_at - report.started_at:.2f}s"
        )
    elif args.lab_cmd == "hold-region":
        hold(lab, args.region)
    else:
        release(lab, args.region)
    doc["nodes"] = [n.to_json() for n in lab.nodes]
    return doc, text


def _wait_position(
    lab: Lab, state: st.LabState, nodes: list[st.NodeState], goal: int, timeout: float
) -> None:
    """Wait until one of ``nodes`` has received WAL up to ``goal``."""
    deadline = time.monotonic() + timeout
    while max(lab.engine.position(state, n) for n in nodes) < goal:
        if time.monotonic() > deadline:
            ids = ", ".join(n.id for n in nodes)
            raise LabError(f"none of {ids} reached position {goal} in {timeout}s")
        time.sleep(0.01)


def _last_checkpoint(lab: Lab, state: st.LabState, node: st.NodeState) -> int:
    """The position of a stopped PostgreSQL node's last (shutdown) checkpoint record."""
    engine: Any = lab.engine
    out = _procs.run(
        [engine._bin("pg_controldata"), str(engine._data(state, node))], user=state.server_user
    )
    for line in out.splitlines():
        if line.startswith("Latest checkpoint location:"):
            hi, lo = line.split(":", 1)[1].strip().split("/")
            return (int(hi, 16) << 32) | int(lo, 16)
    raise LabError(f"pg_controldata gave no checkpoint location for {node.id}:\n{out[-500:]}")
