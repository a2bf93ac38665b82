"""A Blue/Green deployment grown on a running lab: green nodes, the metadata, a switchover.

What RDS does (Amazon RDS / Aurora User Guides, "Switching a blue/green deployment"): a green
environment replicates from the blue one; at a switchover RDS stops writes on the blue primary,
drops the connections of both environments, lets green catch up, renames the instances (each
green instance takes its blue counterpart's name, each blue one gets ``-old1`` appended, so the
blue endpoints now lead to green), then allows connections and writes on green. The deployment's
metadata, ``rds_tools.show_topology()`` (RDS PostgreSQL), ``get_blue_green_fast_switchover_
metadata()`` (Aurora PostgreSQL) and ``mysql.rds_topology`` (MySQL), lists every instance of both
environments with its ``role`` (``BLUE_GREEN_DEPLOYMENT_SOURCE`` / ``..._TARGET``), ``status``
(``AVAILABLE``, ``SWITCHOVER_INITIATED``, ``SWITCHOVER_IN_PROGRESS``,
``SWITCHOVER_IN_POST_PROCESSING``, ``SWITCHOVER_COMPLETED``) and ``version`` (``1.0``).

The lab does the same with its own nodes: green nodes are new servers (a green writer
replicating from the blue writer, green readers from it) named ``<blue id>-green-<6 hex>``; the
metadata is written on the blue writer (so it reaches every node through replication) and, once
the environments part, on each environment's writer. At the switchover the lab's node list
becomes the green nodes under the blue names (their data stays where it is), and the old blue
nodes are kept aside under their ``-old1`` names until `delete` (or `Lab.restore`) removes them.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aurora_smartdriver.lab import _net, _procs
from aurora_smartdriver.lab import _state as st
from aurora_smartdriver.lab._engine import Fresh, LabError, node_dir

if TYPE_CHECKING:
    from aurora_smartdriver.lab._cluster import Lab

__all__ = [
    "STATUSES",
    "SwitchoverReport",
    "create",
    "delete",
    "extra_nodes",
    "switchover",
    "zone_addresses",
]

SOURCE = "BLUE_GREEN_DEPLOYMENT_SOURCE"
TARGET = "BLUE_GREEN_DEPLOYMENT_TARGET"
VERSION = "1.0"
STATUSES = (
    "AVAILABLE",
    "SWITCHOVER_INITIATED",
    "SWITCHOVER_IN_PROGRESS",
    "SWITCHOVER_IN_POST_PROCESSING",
    "SWITCHOVER_COMPLETED",
)
OLD_SUFFIX = "-old1"


@dataclass(frozen=True, slots=True)
class SwitchoverReport:
    """When each step of a switchover happened (wall-clock, seconds since the epoch)."""

    deployment: str
    renamed: tuple[tuple[str, str], ...]  # (green id before, the blue name it took)
    started_at: float  # SWITCHOVER_INITIATED published
    in_progress_at: float  # SWITCHOVER_IN_PROGRESS published, blue writer read-only
    promoted_at: float  # the green writer accepts writes
    renamed_at: float  # blue names lead to green nodes
    completed_at: float  # SWITCHOVER_COMPLETED published on both environments
    dns_flip_at: float  # when the blue names' DNS answers lead to green

    @property
    def duration_s(self) -> float:
        return self.completed_at - self.started_at

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["renamed"] = [list(pair) for pair in self.renamed]
        doc["duration_s"] = round(self.duration_s, 3)
        return doc


# -- the deployment's record in the lab's state -------------------------------------------------
# state.blue_green = {
#   "id": "bgd-...", "status": one of STATUSES, "switched": bool,
#   "pairs": {blue id: green id},          # as created
#   "green": [NodeState...],               # before the switchover: the green nodes
#   "old": [NodeState...],                 # after it: the old blue nodes, ids ending in -old1
#   "dns_flip_at": float | None,           # blue names lead to old blue nodes until then
#   "old_addresses": {blue name: address}, # what the blue names led to before the flip
# }


def _record(state: st.LabState) -> dict[str, Any]:
    record = state.blue_green
    if not record:
        raise LabError(f"lab {state.name!r} has no Blue/Green deployment (blue_green_create())")
    return record


def _nodes(record: dict[str, Any], key: str) -> list[st.NodeState]:
    return [st.NodeState(**n) for n in record.get(key, [])]


def extra_nodes(state: st.LabState) -> list[st.NodeState]:
    """The deployment's nodes outside the lab's node list (green ones, or old blue ones)."""
    record = state.blue_green or {}
    return [*_nodes(record, "green"), *_nodes(record, "old")]


def zone_addresses(state: st.LabState, now: float) -> dict[str, tuple[str, ...]]:
    """DNS names the deployment adds (or, until a delayed flip, overrides): fully qualified
    name -> addresses."""
    record = state.blue_green
    if not record:
        return {}
    names: dict[str, tuple[str, ...]] = {
        state.instance_endpoint(n.id) + ".": (n.address,) for n in extra_nodes(state)
    }
    flip = record.get("dns_flip_at")
    if record.get("switched") and flip is not None and now < flip:
        for name, address in record.get("old_addresses", {}).items():
            names[name + "."] = (address,)
    return names


# -- SQL ----------------------------------------------------------------------------------------
_PG_SETUP = [
    "CREATE TABLE IF NOT EXISTS aurora_lab.blue_green (id text PRIMARY KEY, endpoint text,"
    " port integer, role text, status text, version text)",
    "CREATE TABLE IF NOT EXISTS aurora_lab.bg_names (lab_id text PRIMARY KEY, name text NOT NULL,"
    " dbi text NOT NULL)",
    "GRANT SELECT ON aurora_lab.blue_green TO PUBLIC",
    "DROP FUNCTION IF EXISTS rds_tools.show_topology(text)",
    """CREATE FUNCTION rds_tools.show_topology(client text DEFAULT NULL)
RETURNS TABLE (id text, endpoint text, port integer, role text, status text, version text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT b.id, b.endpoint, b.port, b.role, b.status, b.version FROM aurora_lab.blue_green b
    UNION ALL
    SELECT i.dbi_resource_id, i.endpoint, i.port, NULL, NULL, NULL FROM aurora_lab.instances i
    WHERE NOT EXISTS (SELECT 1 FROM aurora_lab.blue_green)
    ORDER BY 1
$$""",
    """CREATE OR REPLACE FUNCTION pg_catalog.get_blue_green_fast_switchover_metadata(
    client text DEFAULT NULL)
RETURNS TABLE (id text, endpoint text, port integer, role text, status text, version text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT id, endpoint, port, role, status, version FROM aurora_lab.blue_green ORDER BY id
$$""",
    # A renamed node answers with its new name (its own setting keeps the id it started with).
    """CREATE OR REPLACE FUNCTION pg_catalog.aurora_db_instance_identifier() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT COALESCE((SELECT name FROM aurora_lab.bg_names
                     WHERE lab_id = current_setting('lab.instance_id')),
                    current_setting('lab.instance_id'))
$$""",
    """CREATE OR REPLACE FUNCTION rds_tools.dbi_resource_id()
RETURNS TABLE (dbi_resource_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT COALESCE((SELECT dbi FROM aurora_lab.bg_names
                     WHERE lab_id = current_setting('lab.instance_id')),
                    current_setting('lab.dbi_resource_id'))
$$""",
]

_MY_SETUP = [
    "ALTER TABLE mysql.rds_topology ADD COLUMN IF NOT EXISTS role VARCHAR(64) NULL,"
    " ADD COLUMN IF NOT EXISTS status VARCHAR(64) NULL,"
    " ADD COLUMN IF NOT EXISTS version VARCHAR(16) NULL",
    "CREATE TABLE IF NOT EXISTS aurora_lab.bg_names (server_id BIGINT UNSIGNED PRIMARY KEY,"
    " name VARCHAR(255) NOT NULL)",
    # A renamed node answers with its new name (its report_host keeps the id it started with).
    "CREATE OR REPLACE FUNCTION aurora_lab.aurora_server_id() RETURNS VARCHAR(255)"
    " NOT DETERMINISTIC READS SQL DATA RETURN COALESCE("
    "(SELECT name FROM aurora_lab.bg_names WHERE server_id = @@server_id), @@report_host)",
]


def _pg_dbi(name: str) -> str:
    from aurora_smartdriver.lab._postgresql import dbi_resource_id

    return dbi_resource_id(name)


class _Admin:
    """Administrator statements on one node, allowed to write where the app may not (a blue
    writer made read-only) and never waiting for a standby."""

    def __init__(self, lab: Lab, state: st.LabState, node: st.NodeState, *, log: bool = True):
        engine: Any = lab.engine
        self.pg = state.engine == "postgresql"
        self.conn = engine._connect(state, node, 5.0)
        if self.pg:
            self.conn.execute("SET default_transaction_read_only = off")
            self.conn.execute("SET synchronous_commit = local")
        else:
            with self.conn.cursor() as cur:
                cur.execute(f"USE {state.database}")
                if not log:  # a replica: keep its binlog free of errant GTIDs
                    cur.execute("SET SESSION sql_log_bin = 0")

    def run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        if self.pg:
            cur = self.conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


@contextlib.contextmanager
def _admin(lab: Lab, state: st.LabState, node: st.NodeState, *, log: bool = True) -> Any:
    admin = _Admin(lab, state, node, log=log)
    try:
        yield admin
    finally:
        admin.close()


def _write_rows(
    lab: Lab,
    state: st.LabState,
    writer: st.NodeState,
    rows: list[tuple[st.NodeState, str, str]],
    status: str,
) -> None:
    """Replace the deployment's rows on ``writer`` (node, name, role) with ``status``."""
    with _admin(lab, state, writer) as db:
        if db.pg:
            db.run("DELETE FROM aurora_lab.blue_green")
            for node, name, role in rows:
                db.run(
                    "INSERT INTO aurora_lab.blue_green VALUES (%s, %s, %s, %s, %s, %s)",
                    (
                        _pg_dbi(name),
                        state.instance_endpoint(name),
                        node.port,
                        role,
                        status,
                        VERSION,
                    ),
                )
        else:
            db.run("UPDATE mysql.rds_topology SET role = NULL, status = NULL, version = NULL")
            for node, name, role in rows:
                db.run(
                    "REPLACE INTO mysql.rds_topology (id, endpoint, port, role, status, version)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (
                        node.server_id,
                        state.instance_endpoint(name),
                        node.port,
                        role,
                        status,
                        VERSION,
                    ),
                )


def _set_status(lab: Lab, state: st.LabState, writer: st.NodeState, status: str) -> None:
    with _admin(lab, state, writer) as db:
        if db.pg:
            db.run("UPDATE aurora_lab.blue_green SET status = %s", (status,))
        else:
            db.run("UPDATE mysql.rds_topology SET status = %s WHERE role IS NOT NULL", (status,))


def _clear_rows(lab: Lab, state: st.LabState, writer: st.NodeState) -> None:
    with _admin(lab, state, writer) as db:
        if db.pg:
            db.run("DELETE FROM aurora_lab.blue_green")
        else:
            db.run("UPDATE mysql.rds_topology SET role = NULL, status = NULL, version = NULL")


def _name_nodes(
    lab: Lab, state: st.LabState, writer: st.NodeState, names: list[tuple[st.NodeState, str]]
) -> None:
    """Make each node answer with its new name (written on its environment's writer)."""
    with _admin(lab, state, writer) as db:
        for node, name in names:
            if db.pg:
                lab_id = _pg_setting(lab, state, node)
                db.run(
                    "INSERT INTO aurora_lab.bg_names VALUES (%s, %s, %s) ON CONFLICT (lab_id)"
                    " DO UPDATE SET name = EXCLUDED.name, dbi = EXCLUDED.dbi",
                    (lab_id, name, _pg_dbi(name)),
                )
            else:
                db.run("REPLACE INTO aurora_lab.bg_names VALUES (%s, %s)", (node.server_id, name))


def _pg_setting(lab: Lab, state: st.LabState, node: st.NodeState) -> str:
    rows = lab.engine.execute(state, node, "SELECT current_setting('lab.instance_id')")
    return str(rows[0][0])


def _drop_sessions(lab: Lab, state: st.LabState, nodes: list[st.NodeState]) -> None:
    """End every client session on ``nodes``, whatever its login (what RDS does to both
    environments); the lab's own administration and replication are left running."""

    def drop(node: st.NodeState) -> None:
        if state.engine == "postgresql":
            lab.engine.execute(
                state,
                node,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND usename NOT IN ('postgres', 'repl')",
            )
            return
        with _admin(lab, state, node, log=False) as db:
            ids = db.run(
                "SELECT id FROM information_schema.processlist"
                " WHERE user NOT IN ('root', 'repl', 'system user', 'event_scheduler')"
                " AND id <> CONNECTION_ID()"
            )
            for (session,) in ids:
                with contextlib.suppress(Exception):  # it may have ended meanwhile
                    db.run(f"KILL CONNECTION {int(session)}")

    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        list(pool.map(drop, [n for n in nodes if n.status == "running"]))


def _read_only(lab: Lab, state: st.LabState, writer: st.NodeState, on: bool) -> None:
    """Stop (or allow again) writes of the application on a primary."""
    if state.engine == "postgresql":
        value = "on" if on else "off"
        lab.engine.execute(
            state, writer, f"ALTER SYSTEM SET default_transaction_read_only = {value}"
        )
        lab.engine.execute(state, writer, "SELECT pg_reload_conf()")
    else:
        lab.engine.execute(state, writer, f"SET GLOBAL read_only = {'ON' if on else 'OFF'}")


# -- operations --------------------------------------------------------------------------------
def create(lab: Lab, timeout: float = 60.0) -> dict[str, Any]:
    """Start the green environment: one green node per blue node, the green writer replicating
    from the blue writer, the green readers from it; publish the deployment (AVAILABLE)."""
    with lab._change() as state:
        if state.blue_green:
            raise LabError(f"lab {state.name!r} already has a Blue/Green deployment")
        writer = state.writer
        if writer is None or writer.status != "running" or not _procs.alive(writer.pid):
            raise LabError("cannot create a Blue/Green deployment: the writer is not running")
        if state.tls_ca is not None:
            raise LabError("Blue/Green deployments are not available on a TLS lab")
        blue = [writer, *[n for n in state.readers if n.status == "running"]]
        suffix = secrets.token_hex(3)
        green: list[st.NodeState] = []
        for source in blue:
            index = state.next_index
            state.next_index += 1
            node = st.NodeState(
                id=f"{source.id}-green-{suffix}",
                index=index,
                address=f"{state.prefix}.{_net.FIRST_NODE_HOST + index - 1}",
                port=state.port,
                role="reader",
                status="stopped",
                datadir="",
                server_id=index,
                session_id=secrets.token_hex(16),
            )
            node.datadir = str(node_dir(state, node))
            green.append(node)
        state.blue_green = {
            "id": f"bgd-{secrets.token_hex(8)}",
            "status": "AVAILABLE",
            "switched": False,
            "pairs": {b.id: g.id for b, g in zip(blue, green, strict=True)},
            "green": [asdict(n) for n in green],
            "old": [],
            "dns_flip_at": None,
            "old_addresses": {},
        }
        st.save(lab.state_path, state)  # teardown finds the green nodes from here on
        with _admin(lab, state, writer) as db:
            for sql in _PG_SETUP if state.engine == "postgresql" else _MY_SETUP:
                db.run(sql)
        green_writer = green[0]
        try:
            lab._start_replica(state, green_writer, writer, timeout)
            for node in green[1:]:
                lab._start_replica(state, node, green_writer, timeout)
        finally:
            state.blue_green["green"] = [asdict(n) for n in green]
        rows = [(n, n.id, SOURCE) for n in blue] + [(n, n.id, TARGET) for n in green]
        _write_rows(lab, state, writer, rows, "AVAILABLE")
        info = {
            "id": state.blue_green["id"],
            "blue": [n.id for n in blue],
            "green": [n.id for n in green],
        }
    _wait_green(lab, timeout)
    return info


def _wait_green(lab: Lab, timeout: float) -> None:
    """Wait until every green node has what the blue writer has."""
    state = lab.state()
    writer = state.writer
    assert writer is not None
    goal = lab.engine.writer_position(state, writer)
    deadline = time.monotonic() + timeout
    for node in _nodes(_record(state), "green"):
        while True:
            lab.engine.drain(state, node, timeout)
            if lab.engine.position(state, node) >= goal:
                break
            if time.monotonic() > deadline:
                raise LabError(f"green node {node.id} did not catch up with {writer.id}")
            time.sleep(0.02)


def switchover(
    lab: Lab,
    *,
    in_progress_s: float = 1.0,
    dns_lag: float = 0.0,
    timeout: float = 30.0,
) -> SwitchoverReport:
    """Switch over: blue read-only, sessions dropped, green caught up and promoted, names
    swapped, COMPLETED published on both environments.

    ``in_progress_s`` is the least time the deployment stays SWITCHOVER_IN_PROGRESS (RDS takes
    seconds to a minute); with ``dns_lag`` the blue names keep leading to the old blue nodes
    for that many seconds after the rename (stale DNS).
    """
    if not 0 <= in_progress_s <= 600:
        raise LabError(f"in_progress_s must be between 0 and 600 seconds, not {in_progress_s!r}")
    if not 0 <= dns_lag <= 3600:
        raise LabError(f"dns_lag must be between 0 and 3600 seconds, not {dns_lag!r}")
    engine = lab.engine
    with lab._change() as state:
        record = _record(state)
        if record["switched"]:
            raise LabError(f"deployment {record['id']} has switched over already")
        blue_writer = state.writer
        if blue_writer is None or not _procs.alive(blue_writer.pid):
            raise LabError("cannot switch over: the blue writer is not running")
        blue = [blue_writer, *state.readers]
        green = _nodes(record, "green")
        by_id = {n.id: n for n in green}
        pairs: dict[str, str] = record["pairs"]
        green_writer = by_id[pairs[blue_writer.id]]
        started = time.time()
        record["status"] = "SWITCHOVER_INITIATED"
        _set_status(lab, state, blue_writer, "SWITCHOVER_INITIATED")
        # Stop writes on blue, drop every application session of both environments.
        _set_status(lab, state, blue_writer, "SWITCHOVER_IN_PROGRESS")
        record["status"] = "SWITCHOVER_IN_PROGRESS"
        in_progress = time.time()
        _read_only(lab, state, blue_writer, True)
        _drop_sessions(lab, state, [*blue, *green])
        # Green catches up with everything blue committed, then is promoted.
        goal = engine.writer_position(state, blue_writer)
        deadline = time.monotonic() + timeout
        while True:
            engine.drain(state, green_writer, timeout)
            if engine.position(state, green_writer) >= goal:
                break
            if time.monotonic() > deadline:
                raise LabError(f"{green_writer.id} did not catch up with {blue_writer.id}")
            time.sleep(0.02)
        engine.promote(state, green_writer)
        promoted = time.time()
        green_writer.role = "writer"
        engine.set_sync(state, green_writer, len(green) > 1)
        # Rename: green nodes take the blue names, blue ones get -old1.
        renamed: list[tuple[str, str]] = []
        new_nodes: list[st.NodeState] = []
        old_nodes: list[st.NodeState] = []
        old_addresses = {state.instance_endpoint(b.id): b.address for b in blue}
        green_names: list[tuple[st.NodeState, str]] = []
        blue_names: list[tuple[st.NodeState, str]] = []
        for b in blue:
            g = by_id.get(pairs.get(b.id, ""))
            if g is None:
                continue
            renamed.append((g.id, b.id))
            green_names.append((g, b.id))
            blue_names.append((b, b.id + OLD_SUFFIX))
        _name_nodes(lab, state, green_writer, green_names)
        _name_nodes(lab, state, blue_writer, blue_names)
        for g, name in green_names:
            g.id = name
            new_nodes.append(g)
        for b, name in blue_names:
            b.id = name
            old_nodes.append(b)
        for b in blue:  # a blue reader without a green counterpart goes with the old ones
            if b not in old_nodes:
                old_nodes.append(b)
        state.nodes = new_nodes
        state.dns.cluster_target = green_writer.id
        state.dns.pending_target = state.dns.pending_at = None
        record["switched"] = True
        record["green"] = []
        record["old"] = [asdict(n) for n in old_nodes]
        record["old_addresses"] = old_addresses if dns_lag > 0 else {}
        renamed_at = time.time()
        record["dns_flip_at"] = renamed_at + dns_lag
        engine.publish(state, green_writer, {n.id: Fresh(0.0, 0.0) for n in new_nodes})
        rows = [(b, b.id, SOURCE) for b in old_nodes] + [(g, g.id, TARGET) for g in new_nodes]
        _write_rows(lab, state, green_writer, rows, "SWITCHOVER_IN_PROGRESS")
        _write_rows(lab, state, blue_writer, rows, "SWITCHOVER_IN_PROGRESS")
        st.save(lab.state_path, state)  # DNS follows the rename from here on
        rest = in_progress + in_progress_s - time.time()
        if rest > 0:
            time.sleep(rest)
        record["status"] = "SWITCHOVER_IN_POST_PROCESSING"
        _set_status(lab, state, green_writer, "SWITCHOVER_IN_POST_PROCESSING")
        _set_status(lab, state, blue_writer, "SWITCHOVER_IN_POST_PROCESSING")
        _set_status(lab, state, green_writer, "SWITCHOVER_COMPLETED")
        _set_status(lab, state, blue_writer, "SWITCHOVER_COMPLETED")
        record["status"] = "SWITCHOVER_COMPLETED"
        return SwitchoverReport(
            deployment=record["id"],
            renamed=tuple(renamed),
            started_at=started,
            in_progress_at=in_progress,
            promoted_at=promoted,
            renamed_at=renamed_at,
            completed_at=time.time(),
            dns_flip_at=renamed_at + dns_lag,
        )


def delete(lab: Lab) -> bool:
    """Delete the deployment: stop and remove the nodes outside the cluster (green ones before a
    switchover, old blue ones after) and clear the metadata. False when there was none."""
    with lab._change() as state:
        record = state.blue_green
        if not record:
            return False
        for node in extra_nodes(state):
            if node.pid is not None:
                _procs.kill_tree(node.pid)
                with contextlib.suppress(Exception):
                    lab.engine.after_kill(state, node)
            shutil.rmtree(node_dir(state, node), ignore_errors=True)
        state.blue_green = None
        writer = state.writer
        if writer is not None and writer.status == "running" and _procs.alive(writer.pid):
            _clear_rows(lab, state, writer)
            lab.engine.publish(state, writer, {n.id: Fresh(0.0, 0.0) for n in state.nodes})
        return True
