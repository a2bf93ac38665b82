"""PostgreSQL nodes: a primary and streaming replicas that look like Aurora PostgreSQL.

The Aurora and RDS Multi-AZ metadata functions are real SQL functions in the lab's database
(``pg_catalog.aurora_replica_status()`` and friends) reading one table that the lab writes on
the writer, so every node answers with the same topology, as on Aurora.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aurora_smartdriver.lab import _procs
from aurora_smartdriver.lab._engine import (
    MASTER_SESSION_ID,
    Fresh,
    LabError,
    Probe,
    fresh_dir,
    node_dir,
    remove_sysv_segment,
    retry_until,
)
from aurora_smartdriver.lab._state import LabState, NodeState

SYNC_NAMES = "ANY 1 (*)"

_BASE_CONF = """
# --- aurora_smartdriver lab ---
port = {port}
unix_socket_permissions = 0700
wal_level = replica
max_wal_senders = 16
max_replication_slots = 16
wal_keep_size = '256MB'
hot_standby = on
hot_standby_feedback = on
wal_retrieve_retry_interval = '100ms'
wal_receiver_status_interval = '1s'
wal_receiver_timeout = '10s'
wal_sender_timeout = '10s'
synchronous_commit = on
# A lab node dies by kill -9, never by power loss: the OS page cache survives, so no fsync.
fsync = off
shared_buffers = '32MB'
max_connections = 400
dynamic_shared_memory_type = mmap
password_encryption = 'scram-sha-256'
log_min_messages = warning
log_connections = off
track_functions = 'all'  # pg_stat_user_functions counts topology queries per node
rds.extensions = 'aurora_stat_utils,rds_tools,pg_stat_statements'
include_if_exists = 'node.conf'
"""

_NODE_CONF = """
listen_addresses = '{address}'
unix_socket_directories = '{rundir}'
cluster_name = '{id}'
lab.instance_id = '{id}'
lab.dbi_resource_id = '{dbi}'
"""

# Per node (a replica's data directory is a copy of the writer's, its node.conf is its own).
# Clients may still connect without TLS: pg_hba.conf has "host", not "hostssl", lines.
_NODE_TLS_CONF = """
ssl = on
ssl_cert_file = '{cert}'
ssl_key_file = '{key}'
"""

_HBA = """
local all all trust
host replication repl 127.0.0.0/8 scram-sha-256
host all all 127.0.0.0/8 scram-sha-256
"""

# Aurora's aurora_replica_status() columns, in Aurora's order.
_METADATA_SQL = """
CREATE SCHEMA aurora_lab;
REVOKE ALL ON SCHEMA aurora_lab FROM PUBLIC;
CREATE TABLE aurora_lab.instances (
    server_id text PRIMARY KEY,
    session_id text NOT NULL,
    dbi_resource_id text NOT NULL,
    endpoint text NOT NULL,
    port integer NOT NULL,
    is_writer boolean NOT NULL,
    cpu real,
    replica_lag_in_msec real,
    durable_lsn bigint,
    read_lsn bigint,
    last_update_timestamp timestamptz
);
CREATE FUNCTION pg_catalog.aurora_replica_status()
RETURNS TABLE (
    server_id text, session_id text, durable_lsn bigint, highest_lsn_rcvd bigint,
    current_read_lsn bigint, cur_replay_latency_in_usec bigint, active_txns text,
    is_current boolean, last_transport_error integer, last_error_timestamp timestamptz,
    last_update_timestamp timestamptz, feedback_xmin bigint, feedback_epoch integer,
    replica_lag_in_msec real, log_stream_speed_in_kib_per_second real,
    log_buffer_sequence_number bigint, oldest_read_view_trx_id bigint,
    oldest_read_view_lsn bigint, pending_read_ios integer, read_ios bigint, iops integer,
    cpu real
) LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT i.server_id, i.session_id, i.durable_lsn,
           CASE WHEN i.is_writer THEN NULL ELSE i.read_lsn END,
           CASE WHEN i.is_writer THEN NULL ELSE i.read_lsn END,
           CASE WHEN i.is_writer THEN NULL ELSE (i.replica_lag_in_msec * 1000)::bigint END,
           NULL::text, true, 0, NULL::timestamptz, i.last_update_timestamp, NULL::bigint,
           NULL::integer,
           CASE WHEN i.is_writer THEN NULL ELSE i.replica_lag_in_msec END,
           NULL::real, NULL::bigint, NULL::bigint, NULL::bigint, 0, 0, 0, i.cpu
    FROM aurora_lab.instances i ORDER BY i.server_id
$$;
CREATE FUNCTION pg_catalog.aurora_db_instance_identifier() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT current_setting('lab.instance_id') $$;
CREATE SCHEMA rds_tools;
GRANT USAGE ON SCHEMA rds_tools TO PUBLIC;
CREATE FUNCTION rds_tools.show_topology(client text DEFAULT NULL)
RETURNS TABLE (id text, endpoint text, port integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT dbi_resource_id, endpoint, port FROM aurora_lab.instances ORDER BY dbi_resource_id
$$;
CREATE FUNCTION rds_tools.dbi_resource_id() RETURNS TABLE (dbi_resource_id text)
LANGUAGE sql STABLE AS $$ SELECT current_setting('lab.dbi_resource_id') $$;
CREATE FUNCTION rds_tools.multi_az_db_cluster_source_dbi_resource_id()
RETURNS TABLE (multi_az_db_cluster_source_dbi_resource_id text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT dbi_resource_id FROM aurora_lab.instances WHERE is_writer
$$;
"""

_PUBLISH_SQL = """
INSERT INTO aurora_lab.instances AS i
    (server_id, session_id, dbi_resource_id, endpoint, port, is_writer, last_update_timestamp)
VALUES (%(id)s, %(session)s, %(dbi)s, %(endpoint)s, %(port)s, %(writer)s, now())
ON CONFLICT (server_id) DO UPDATE SET
    session_id = EXCLUDED.session_id, dbi_resource_id = EXCLUDED.dbi_resource_id,
    endpoint = EXCLUDED.endpoint, port = EXCLUDED.port, is_writer = EXCLUDED.is_writer
"""

_HEARTBEAT_SQL = """
UPDATE aurora_lab.instances
SET last_update_timestamp = now(), replica_lag_in_msec = %(lag)s, cpu = %(cpu)s,
    durable_lsn = %(lsn)s, read_lsn = %(read)s
WHERE server_id = %(id)s
"""


def dbi_resource_id(node_id: str) -> str:
    """RDS-style resource id (``db-...``) for a node, stable across restarts."""
    return "db-" + re.sub(r"[^A-Z0-9]", "", node_id.upper())


def find_bindir() -> Path:
    """Directory of the PostgreSQL server binaries (env, Debian layout, then PATH)."""
    env = os.environ.get("AURORA_SMARTDRIVER_PG_BIN")
    candidates = [env] if env else []
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    candidates += versions
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for cand in candidates:
        if cand and (Path(cand) / "postgres").exists() and (Path(cand) / "initdb").exists():
            return Path(cand)
    raise LabError(
        "PostgreSQL server binaries not found (looked in $AURORA_SMARTDRIVER_PG_BIN, "
        "/usr/lib/postgresql/*/bin and PATH); install them with `apt-get install postgresql-15`"
    )


def _lsn(text: str | None) -> int:
    if not text:
        return 0
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class PostgreSQL:
    """PostgreSQL 15 streaming replication with synchronous commit to ANY 1 standby."""

    name = "postgresql"
    default_port = 5432
    # recovery_min_apply_delay keeps the startup process waiting, and only it starts a new
    # WAL receiver: a lagged replica reconnects once the delayed commit is applied.
    lagged_replicas_reconnect = False

    def __init__(self) -> None:
        self.bindir = find_bindir()

    # -- paths ---------------------------------------------------------------------------
    def _data(self, lab: LabState, node: NodeState) -> Path:
        return node_dir(lab, node) / "data"

    def _run(self, lab: LabState, node: NodeState) -> Path:
        return node_dir(lab, node) / "run"

    def _bin(self, tool: str) -> str:
        return str(self.bindir / tool)

    # -- connections ---------------------------------------------------------------------
    def _connect(self, lab: LabState, node: NodeState, timeout: float, dbname: str = "") -> Any:
        import psycopg

        return psycopg.connect(
            host=str(self._run(lab, node)),
            port=node.port,
            user="postgres",
            dbname=dbname or lab.database,
            connect_timeout=max(2, int(timeout)),
            autocommit=True,
        )

    def execute(self, lab: LabState, node: NodeState, sql: str) -> list[tuple[object, ...]]:
        with self._connect(lab, node, 5.0) as conn:
            cur = conn.execute(sql)
            return list(cur.fetchall()) if cur.description else []

    # -- lifecycle -----------------------------------------------------------------------
    def prepare(self, lab: LabState, node: NodeState, writer: NodeState | None) -> None:
        base = node_dir(lab, node)
        fresh_dir(base)
        self._run(lab, node).mkdir()
        data = self._data(lab, node)
        user = lab.server_user
        _procs.chown_tree(base, user)
        if writer is None:
            _procs.run(
                [
                    self._bin("initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                user=user,
            )
            with open(data / "postgresql.conf", "a") as conf:
                conf.write(_BASE_CONF.format(port=node.port))
            (data / "pg_hba.conf").write_text(_HBA)
        else:
            env = dict(os.environ, PGPASSWORD=lab.repl_password)
            _procs.run(
                [
                    self._bin("pg_basebackup"),
                    "-h",
                    writer.address,
                    "-p",
                    str(writer.port),
                    "-U",
                    "repl",
                    "-D",
                    str(data),
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                    "-w",
                ],
                user=user,
                env=env,
            )
            (data / "standby.signal").write_text("")
            with open(data / "postgresql.auto.conf", "a") as auto:
                auto.write(f"primary_conninfo = '{self._conninfo(lab, node, writer)}'\n")
            for stale in ("postmaster.pid", "postmaster.opts"):
                (data / stale).unlink(missing_ok=True)
        node_conf = _NODE_CONF.format(
            address=node.address,
            rundir=self._run(lab, node),
            id=node.id,
            dbi=dbi_resource_id(node.id),
        )
        if lab.tls_ca is not None:
            from aurora_smartdriver.lab import _tls  # needs cryptography: only for TLS labs

            files = _tls.issue(lab, node)
            node_conf += _NODE_TLS_CONF.format(cert=files.cert, key=files.key)
        (data / "node.conf").write_text(node_conf)
        _procs.chown_tree(base, user)

    def _conninfo(self, lab: LabState, node: NodeState, writer: NodeState) -> str:
        return (
            f"host={writer.address} port={writer.port} user=repl "
            f"password={lab.repl_password} application_name={node.id} connect_timeout=2"
        )

    def start(self, lab: LabState, node: NodeState) -> int:
        data = self._data(lab, node)
        # The lock files of a server the lab killed name its pid, which may be another
        # process's by now (pids come round again quickly with thousands of backends):
        # PostgreSQL would take the lock for held and refuse to start.
        (data / "postmaster.pid").unlink(missing_ok=True)
        for lock in self._run(lab, node).glob(".s.PGSQL.*.lock"):
            lock.unlink(missing_ok=True)
        return _procs.spawn(
            [self._bin("postgres"), "-D", str(data)],
            log=node_dir(lab, node) / "server.log",
            user=lab.server_user,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
        )

    def wait_ready(self, lab: LabState, node: NodeState, timeout: float) -> None:
        def ready() -> None:
            if not _procs.alive(node.pid):
                log = (node_dir(lab, node) / "server.log").read_text(errors="replace")
                raise LabError(f"PostgreSQL node {node.id} exited during start:\n{log[-2000:]}")
            with self._connect(lab, node, 2.0, dbname="postgres"):
                pass

        try:
            retry_until(ready, timeout, f"waiting for PostgreSQL node {node.id}")
        except LabError as exc:
            if isinstance(exc.__cause__, LabError):
                raise exc.__cause__ from None
            raise

    def bootstrap(self, lab: LabState, writer: NodeState) -> None:
        with self._connect(lab, writer, 5.0, dbname="postgres") as conn:
            conn.execute(f"CREATE ROLE repl WITH REPLICATION LOGIN PASSWORD '{lab.repl_password}'")
            conn.execute(f"CREATE ROLE {lab.user} WITH LOGIN PASSWORD '{lab.password}'")
            conn.execute(f"GRANT pg_monitor TO {lab.user}")
            conn.execute(f"CREATE DATABASE {lab.database} OWNER {lab.user}")
        with self._connect(lab, writer, 5.0) as conn:
            conn.execute(_METADATA_SQL)
        self.publish(lab, writer, {})

    def attach_replica(self, lab: LabState, node: NodeState, writer: NodeState) -> None:
        # The primary_conninfo written by prepare() already points at the writer.
        def streaming() -> None:
            rows = self.execute(
                lab,
                writer,
                f"SELECT 1 FROM pg_stat_replication WHERE application_name = '{node.id}'",
            )
            if not rows:
                raise LabError(f"{node.id} is not streaming from {writer.id} yet")

        retry_until(streaming, 20.0, f"replica {node.id} attaching to {writer.id}")

    def set_sync(self, lab: LabState, writer: NodeState, enabled: bool) -> None:
        names = SYNC_NAMES if enabled else ""
        if enabled and lab.regions:
            # A global database's other regions replicate asynchronously, as on Aurora: only
            # the writer's own cluster acknowledges commits.
            members = [f'"{n.id}"' for n in lab.readers]
            names = f"ANY 1 ({', '.join(members)})" if members else ""
        with self._connect(lab, writer, 5.0) as conn:
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
            conn.execute("SELECT pg_reload_conf()")

    def sync_active(self, lab: LabState, writer: NodeState) -> bool:
        rows = self.execute(
            lab,
            writer,
            "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')",
        )
        return bool(rows and int(str(rows[0][0])) > 0)

    def position(self, lab: LabState, node: NodeState) -> int:
        rows = self.execute(
            lab,
            node,
            "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text",
        )
        received, replayed = (str(v) if v is not None else None for v in rows[0])
        return max(_lsn(received), _lsn(replayed))

    def writer_position(self, lab: LabState, writer: NodeState) -> int:
        rows = self.execute(lab, writer, "SELECT pg_current_wal_lsn()::text")
        return _lsn(str(rows[0][0]))

    def drain(self, lab: LabState, node: NodeState, timeout: float) -> None:
        # pg_promote() replays everything received before it returns; nothing to wait for.
        # (Waiting for replay to reach the received position could wait for ever: a writer
        # that crashed mid-record leaves a partial record received that is never replayed.)
        return

    def applied_position(self, lab: LabState, node: NodeState) -> int:
        rows = self.execute(lab, node, "SELECT pg_last_wal_replay_lsn()::text")
        return _lsn(str(rows[0][0]) if rows and rows[0][0] is not None else None)

    def promote(self, lab: LabState, node: NodeState) -> None:
        with self._connect(lab, node, 5.0) as conn:
            row = conn.execute("SELECT pg_promote(true, 30)").fetchone()
        if not row or not row[0]:
            raise LabError(f"pg_promote() on {node.id} did not complete")

    def repoint(self, lab: LabState, node: NodeState, writer: NodeState) -> None:
        with self._connect(lab, node, 5.0) as conn:
            conn.execute(
                f"ALTER SYSTEM SET primary_conninfo = '{self._conninfo(lab, node, writer)}'"
            )
            conn.execute("SELECT pg_reload_conf()")

    def set_lag(self, lab: LabState, node: NodeState, seconds: float) -> None:
        # Replay of each commit waits until `seconds` after the writer committed it; WAL is
        # still received and flushed at once, so synchronous commit does not slow down.
        with self._connect(lab, node, 5.0) as conn:
            conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{round(seconds * 1000)}ms'")
            conn.execute("SELECT pg_reload_conf()")

    def probe(self, lab: LabState, node: NodeState, timeout: float) -> Probe:
        with self._connect(lab, node, timeout) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() THEN 0"
                " WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
                " ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())"
                " * 1000, 0) END,"
                " CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
                " ELSE pg_current_wal_lsn() END::text"
            ).fetchone()
        assert row is not None
        position = _lsn(str(row[2])) if row[2] is not None else None
        return Probe(is_writer=not row[0], lag_ms=float(row[1]), position=position)

    def publish(
        self,
        lab: LabState,
        writer: NodeState,
        fresh: Mapping[str, Fresh],
        *,
        structure: bool = True,
    ) -> None:
        with self._connect(lab, writer, 2.0) as conn:
            # The heartbeat must not wait for a standby: it is the lab's bookkeeping.
            conn.execute("SET synchronous_commit = local")
            with conn.transaction():
                ids = [n.id for n in lab.cluster_nodes]
                if structure:
                    conn.execute(
                        "DELETE FROM aurora_lab.instances WHERE NOT (server_id = ANY(%s))", (ids,)
                    )
                for node in lab.cluster_nodes if structure else ():
                    conn.execute(
                        _PUBLISH_SQL,
                        {
                            "id": node.id,
                            "session": MASTER_SESSION_ID
                            if node.role == "writer"
                            else node.session_id,
                            "dbi": dbi_resource_id(node.id),
                            "endpoint": lab.instance_endpoint(node.id),
                            "port": node.port,
                            "writer": node.role == "writer",
                        },
                    )
                lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
                for node_id, figures in fresh.items():
                    conn.execute(
                        _HEARTBEAT_SQL,
                        {
                            "id": node_id,
                            "lag": figures.lag_ms,
                            "cpu": figures.cpu,
                            "lsn": _lsn(str(lsn[0])) if lsn else None,
                            "read": figures.position
                            if figures.position is not None
                            else (_lsn(str(lsn[0])) if lsn else None),
                        },
                    )

    def after_kill(self, lab: LabState, node: NodeState) -> None:
        pidfile = self._data(lab, node) / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except OSError:
            return
        # Line 1 is the postmaster's pid, line 7 "<key> <shmid>" of the small System V
        # segment it created (see remove_sysv_segment: only that one, unattached, goes).
        if len(lines) >= 7 and len(lines[6].split()) == 2 and lines[0].strip().isdigit():
            key, shmid = (int(v) for v in lines[6].split())
            remove_sysv_segment(shmid, key=key, creator=int(lines[0]))
