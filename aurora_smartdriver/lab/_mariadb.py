"""MariaDB nodes: a primary and GTID replicas with semi-synchronous replication.

``information_schema.replica_host_status`` cannot be created on MariaDB, so the lab keeps a
table with Aurora MySQL's columns in its own schema (``aurora_lab``), which a driver is told to
read instead; ``mysql.rds_topology`` is the RDS Multi-AZ table as is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
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
    retry_until,
)
from aurora_smartdriver.lab._state import LabState, NodeState

METADATA_SCHEMA = "aurora_lab"

_CNF = """
[mariadbd]
datadir = {data}
socket = {sock}
pid-file = {base}/mariadbd.pid
tmpdir = {tmp}
log-error = {base}/server.log
bind-address = {address}
port = {port}
server_id = {server_id}
report_host = {id}
report_port = {port}
log_bin = binlog
log_slave_updates = ON
binlog_format = ROW
gtid_strict_mode = ON
relay_log = relay
skip_name_resolve = ON
log_bin_trust_function_creators = ON
character_set_server = utf8mb4
max_connections = 600
performance_schema = OFF
innodb_buffer_pool_size = 32M
innodb_log_file_size = 8M
# A lab node dies by kill -9, never by power loss: the OS page cache survives.
innodb_flush_log_at_trx_commit = 2
sync_binlog = 0
innodb_doublewrite = 0
rpl_semi_sync_master_wait_point = AFTER_SYNC
rpl_semi_sync_master_timeout = 10000
rpl_semi_sync_slave_enabled = ON
# A replica leaving its master connects to it to kill its dump thread; bound that wait when the
# master does not answer (see ReplicationStop).
rpl_semi_sync_slave_kill_conn_timeout = 1
slave_net_timeout = 5
default_time_zone = "+00:00"
"""

# Appended to the [mariadbd] section of a TLS lab's nodes; clients may still connect without
# TLS (no require_secure_transport), as they can to Aurora MySQL by default.
_CNF_TLS = """ssl_ca = {ca}
ssl_cert = {cert}
ssl_key = {key}
"""

# Aurora MySQL's information_schema.replica_host_status columns, in Aurora's order.
_METADATA_SQL = [
    f"CREATE DATABASE {METADATA_SCHEMA}",
    f"""CREATE TABLE {METADATA_SCHEMA}.replica_host_status (
        SERVER_ID VARCHAR(100) NOT NULL PRIMARY KEY,
        SESSION_ID VARCHAR(100) NOT NULL,
        IOPS INT UNSIGNED NOT NULL DEFAULT 0,
        READ_IOS BIGINT UNSIGNED NOT NULL DEFAULT 0,
        PENDING_READ_IOS INT UNSIGNED NOT NULL DEFAULT 0,
        CPU DOUBLE NOT NULL DEFAULT 0,
        DURABLE_LSN BIGINT UNSIGNED NULL,
        ACTIVE_TRX_COUNT INT UNSIGNED NOT NULL DEFAULT 0,
        LAST_TRANSPORT_ERROR INT NOT NULL DEFAULT 0,
        LAST_ERROR_TIMESTAMP DATETIME(6) NULL,
        LAST_UPDATE_TIMESTAMP DATETIME(6) NULL,
        MASTER_SLAVE_LATENCY_IN_MICROSECONDS BIGINT NOT NULL DEFAULT 0,
        REPLICA_LAG_IN_MILLISECONDS DOUBLE NOT NULL DEFAULT 0,
        LOG_STREAM_SPEED_IN_KiB_PER_SECOND DOUBLE NOT NULL DEFAULT 0,
        LOG_BUFFER_SEQUENCE_NUMBER BIGINT UNSIGNED NULL,
        IS_CURRENT TINYINT UNSIGNED NOT NULL DEFAULT 1,
        OLDEST_READ_VIEW_TRX_ID BIGINT UNSIGNED NULL,
        OLDEST_READ_VIEW_LSN BIGINT UNSIGNED NULL,
        HIGHEST_LSN_RECEIVED BIGINT UNSIGNED NULL,
        CURRENT_READ_POINT BIGINT UNSIGNED NULL,
        CURRENT_REPLAY_LATENCY_IN_MICROSECONDS BIGINT UNSIGNED NOT NULL DEFAULT 0,
        AVERAGE_REPLAY_LATENCY_IN_MICROSECONDS BIGINT UNSIGNED NOT NULL DEFAULT 0,
        MAX_REPLAY_LATENCY_IN_MICROSECONDS BIGINT UNSIGNED NOT NULL DEFAULT 0
    )""",
    f"CREATE FUNCTION {METADATA_SCHEMA}.aurora_server_id() RETURNS VARCHAR(255)"
    " DETERMINISTIC RETURN @@report_host",
    "CREATE TABLE mysql.rds_topology ("
    " id BIGINT UNSIGNED NOT NULL PRIMARY KEY, endpoint VARCHAR(255) NOT NULL,"
    " port INT UNSIGNED NOT NULL)",
]


def find_binaries() -> tuple[Path, Path]:
    """Paths of ``mariadbd`` and ``mariadb-install-db`` (env, PATH, then Debian's layout)."""
    env = os.environ.get("AURORA_SMARTDRIVER_MARIADB_BIN")
    dirs = [env] if env else []
    dirs += [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    dirs += ["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"]
    server = installer = None
    for d in dirs:
        if server is None:
            server = next(
                (Path(d) / n for n in ("mariadbd", "mysqld") if (Path(d) / n).exists()), None
            )
        if installer is None:
            installer = next(
                (
                    Path(d) / n
                    for n in ("mariadb-install-db", "mysql_install_db")
                    if (Path(d) / n).exists()
                ),
                None,
            )
    if server is None or installer is None:
        raise LabError(
            "MariaDB server binaries not found (mariadbd and mariadb-install-db in "
            "$AURORA_SMARTDRIVER_MARIADB_BIN, PATH or /usr/sbin); install them with "
            "`apt-get install --no-install-recommends mariadb-server-core mariadb-client-core`"
        )
    return server, installer


@dataclass(frozen=True, slots=True)
class ReplicationStop:
    """How the lab stopped a replica's replication (``MariaDB.stops``, per node id).

    A semi-synchronous replica's I/O thread, on its way out, connects to its master to kill the
    master's binlog dump thread. A master that drops packets (the partition fault) never
    answers, and a plain ``STOP SLAVE`` waits for that connect: its first interrupt is spent on
    the thread's read, and only its next one (MariaDB 10.11 resends it every 2 s) ends the
    connect, unless ``rpl_semi_sync_slave_kill_conn_timeout`` (5 s by default, 1 s in the lab)
    does first. So the lab kills the I/O thread first (it leaves its read at once), waits until
    the thread is gone or is in that connect, and only then says ``STOP SLAVE``, whose first
    interrupt ends the connect. A thread found reconnecting (the master silent for longer than
    ``slave_net_timeout``) needs that first interrupt for its own connect: the parting one then
    ends by its timeout.
    """

    io_thread_killed: bool
    """The I/O thread was running and the lab killed it before ``STOP SLAVE``."""
    master_unreachable: bool
    """The I/O thread was connecting to a master that does not answer (parting or reconnecting)."""
    seconds: float
    """From the kill to the end of ``STOP SLAVE`` (a figure, not a promise)."""


_SYN_SENT = "02"  # the state column of /proc/net/tcp


def _connects_to(pid: int | None, address: str, port: int) -> bool:
    """Whether process ``pid`` has a TCP connect to ``address:port`` that is unanswered (SYN_SENT).

    False also when ``/proc`` does not tell (process gone, not ours to read).
    """
    if pid is None:
        return False
    # /proc/net/tcp prints an IPv4 address as the hex of its bytes in host (little-endian) order.
    remote = f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
        pending = {f[9] for f in map(str.split, lines) if f[2] == remote and f[3] == _SYN_SENT}
        if not pending:  # the common case: no need to look at the process's sockets
            return False
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}")[len("socket:[") : -1] in pending:
                return True
    return False


def _seq(gtid_pos: str) -> int:
    """The sequence number of domain 0 in a GTID position like ``0-1-42`` (0 when empty)."""
    best = 0
    for part in gtid_pos.split(","):
        if not part.strip():
            continue
        domain, _server, seq = part.strip().split("-")
        if domain == "0":
            best = max(best, int(seq))
    return best


class MariaDB:
    """MariaDB 10.11 GTID replication with semi-synchronous (AFTER_SYNC) acknowledgement."""

    name = "mariadb"
    default_port = 3306
    # The lag stops only the SQL thread; the I/O thread reconnects and acknowledges.
    lagged_replicas_reconnect = True

    def __init__(self) -> None:
        self.server, self.installer = find_binaries()
        self.stops: dict[str, ReplicationStop] = {}
        """The last :class:`ReplicationStop` of each node (promotion and repointing)."""

    def _base(self, lab: LabState, node: NodeState) -> Path:
        return node_dir(lab, node)

    def _sock(self, lab: LabState, node: NodeState) -> Path:
        return self._base(lab, node) / "mariadbd.sock"

    def _connect(
        self, lab: LabState, node: NodeState, timeout: float, database: str | None = None
    ) -> Any:
        import pymysql

        return pymysql.connect(
            unix_socket=str(self._sock(lab, node)),
            user="root",
            database=database,
            ssl_disabled=True,  # a local socket; PyMySQL would build a TLS context per connect
            connect_timeout=timeout,
            read_timeout=max(timeout, 10.0),
            write_timeout=max(timeout, 10.0),
            autocommit=True,
        )

    def execute(self, lab: LabState, node: NodeState, sql: str) -> list[tuple[object, ...]]:
        conn = self._connect(lab, node, 5.0, database=lab.database)
        try:
            with conn.cursor() as cur:
                if node.role != "writer":
                    # A binlogged statement on a replica makes an errant GTID, which breaks
                    # replication under gtid_strict_mode: keep administration local there.
                    cur.execute("SET SESSION sql_log_bin = 0")
                cur.execute(sql)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def _status(self, conn: Any) -> dict[str, Any]:
        with conn.cursor() as cur:
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
            if row is None:
                return {}
            return dict(zip([d[0] for d in cur.description], row, strict=True))

    def _template(self, lab: LabState) -> Path:
        """A freshly installed data directory, made once per lab and copied for each node."""
        template = Path(lab.dir) / "mariadb-template"
        if (template / "mysql").exists():
            return template
        work = Path(lab.dir) / "mariadb-template.tmp"
        fresh_dir(work)
        (work / "tmp").mkdir()
        args = [
            str(self.installer),
            "--no-defaults",
            f"--datadir={work / 'data'}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            f"--tmpdir={work / 'tmp'}",
            "--innodb-log-file-size=8M",
            "--innodb-buffer-pool-size=16M",
            "--innodb-flush-method=nosync",
            "--innodb-doublewrite=0",
            "--innodb-flush-log-at-trx-commit=0",
        ]
        if os.geteuid() == 0:
            args.insert(2, "--user=root")
        _procs.run(args)
        os.replace(work / "data", template)
        shutil.rmtree(work)
        return template

    def prepare(self, lab: LabState, node: NodeState, writer: NodeState | None) -> None:
        base = self._base(lab, node)
        fresh_dir(base)
        (base / "tmp").mkdir()
        shutil.copytree(self._template(lab), base / "data", symlinks=True)
        cnf = _CNF.format(
            data=base / "data",
            sock=self._sock(lab, node),
            base=base,
            tmp=base / "tmp",
            address=node.address,
            port=node.port,
            server_id=node.server_id,
            id=node.id,
        )
        if lab.tls_ca is not None:
            from aurora_smartdriver.lab import _tls  # needs cryptography: only for TLS labs

            files = _tls.issue(lab, node)
            cnf += _CNF_TLS.format(ca=lab.tls_ca, cert=files.cert, key=files.key)
        (base / "my.cnf").write_text(cnf)

    def start(self, lab: LabState, node: NodeState) -> int:
        base = self._base(lab, node)
        args = [str(self.server), f"--defaults-file={base / 'my.cnf'}"]
        if os.geteuid() == 0:
            args.append("--user=root")
        if node.role == "reader":
            args.append("--read-only=ON")
        return _procs.spawn(args, log=base / "stdout.log")

    def wait_ready(self, lab: LabState, node: NodeState, timeout: float) -> None:
        def ready() -> None:
            if not _procs.alive(node.pid):
                log = (self._base(lab, node) / "server.log").read_text(errors="replace")
                raise LabError(f"MariaDB node {node.id} exited during start:\n{log[-2000:]}")
            self._connect(lab, node, 1.0).close()

        try:
            retry_until(ready, timeout, f"waiting for MariaDB node {node.id}")
        except LabError as exc:
            if isinstance(exc.__cause__, LabError):
                raise exc.__cause__ from None
            raise

    def bootstrap(self, lab: LabState, writer: NodeState) -> None:
        conn = self._connect(lab, writer, 5.0)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE USER 'repl'@'%%' IDENTIFIED BY %s", (lab.repl_password,))
                cur.execute("GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'")
                cur.execute(f"CREATE DATABASE {lab.database}")
                cur.execute(f"CREATE USER '{lab.user}'@'%%' IDENTIFIED BY %s", (lab.password,))
                cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{lab.user}'@'%'")
                # GRANT ALL includes READ_ONLY ADMIN (and SUPER), which bypass read_only: an
                # application user holding them could write on replicas.
                cur.execute(f"REVOKE READ_ONLY ADMIN, SUPER ON *.* FROM '{lab.user}'@'%'")
                for sql in _METADATA_SQL:
                    cur.execute(sql)
        finally:
            conn.close()
        self.publish(lab, writer, {})

    def attach_replica(self, lab: LabState, node: NodeState, writer: NodeState) -> None:
        conn = self._connect(lab, node, 5.0)
        try:
            with conn.cursor() as cur:
                cur.execute("SET GLOBAL read_only = ON")
                self._change_master(cur, lab, writer)
                cur.execute("START SLAVE")
        finally:
            conn.close()

        def running() -> None:
            c = self._connect(lab, node, 2.0)
            try:
                st = self._status(c)
            finally:
                c.close()
            if st.get("Slave_IO_Running") != "Yes" or st.get("Slave_SQL_Running") != "Yes":
                raise LabError(
                    f"{node.id} replication not running yet: IO={st.get('Slave_IO_Running')} "
                    f"SQL={st.get('Slave_SQL_Running')} {st.get('Last_Error') or ''}"
                    f"{st.get('Last_IO_Error') or ''}"
                )

        retry_until(running, 20.0, f"replica {node.id} attaching to {writer.id}")

    def _change_master(self, cur: Any, lab: LabState, writer: NodeState) -> None:
        cur.execute(
            "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER='repl', "
            "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
            (writer.address, writer.port, lab.repl_password),
        )

    def set_sync(self, lab: LabState, writer: NodeState, enabled: bool) -> None:
        self.execute(lab, writer, f"SET GLOBAL rpl_semi_sync_master_enabled = {int(enabled)}")

    def sync_active(self, lab: LabState, writer: NodeState) -> bool:
        rows = self.execute(lab, writer, "SHOW STATUS LIKE 'Rpl_semi_sync_master_status'")
        clients = self.execute(lab, writer, "SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")
        return bool(rows and rows[0][1] == "ON" and clients and int(str(clients[0][1])) > 0)

    def position(self, lab: LabState, node: NodeState) -> int:
        conn = self._connect(lab, node, 2.0)
        try:
            st = self._status(conn)
            with conn.cursor() as cur:
                cur.execute("SELECT @@gtid_slave_pos")
                applied = cur.fetchone()
        finally:
            conn.close()
        received = _seq(str(st.get("Gtid_IO_Pos") or ""))
        return max(received, _seq(str(applied[0] if applied else "")))

    def writer_position(self, lab: LabState, writer: NodeState) -> int:
        rows = self.execute(lab, writer, "SELECT @@gtid_binlog_pos")
        return _seq(str(rows[0][0]))

    def applied_position(self, lab: LabState, node: NodeState) -> int:
        # What arrived; `Lab._wait_applied` drains the relay log once it is far enough.
        return self.position(lab, node)

    def drain(self, lab: LabState, node: NodeState, timeout: float) -> None:
        """Wait until the SQL thread has applied every event the IO thread received."""
        deadline = time.monotonic() + timeout
        conn = self._connect(lab, node, 2.0)
        try:
            while True:
                st = self._status(conn)
                with conn.cursor() as cur:
                    cur.execute("SELECT @@gtid_slave_pos")
                    applied = _seq(str((cur.fetchone() or ("",))[0]))
                received = _seq(str(st.get("Gtid_IO_Pos") or ""))
                if applied >= received or st.get("Slave_SQL_Running") != "Yes":
                    return
                if time.monotonic() > deadline:
                    raise LabError(f"{node.id} did not apply its relay log within {timeout}s")
                time.sleep(0.01)
        finally:
            conn.close()

    def _stop_replication(self, conn: Any, node: NodeState) -> ReplicationStop:
        """``STOP SLAVE`` that does not wait on an unreachable master (see ReplicationStop)."""
        import pymysql

        started = time.monotonic()
        killed = unreachable = False
        with conn.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_IO'")
            row = cur.fetchone()
            if row is not None:
                io_thread = int(row[0])
                try:
                    cur.execute(f"KILL {io_thread}")
                    killed = True
                except pymysql.MySQLError as exc:
                    if exc.args[0] != 1094:  # unknown thread: it ended meanwhile
                        raise
                master: tuple[str, int] | None = None
                deadline = time.monotonic() + 0.5
                while killed and time.monotonic() < deadline:
                    cur.execute(
                        "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", (io_thread,)
                    )
                    if cur.fetchone() is None:
                        break  # gone: its master answered, or refused at once
                    if master is None:  # still there: look where it is, from the next round
                        status = self._status(conn)
                        master = (
                            str(status.get("Master_Host") or ""),
                            int(status.get("Master_Port") or 0),
                        )
                    elif master[0] and _connects_to(node.pid, *master):
                        # Connecting to a master that does not answer: its parting connect (or,
                        # if it was reconnecting, its own), which STOP SLAVE's interrupt ends.
                        unreachable = True
                        break
                    time.sleep(0.005)
            cur.execute("STOP SLAVE")
        stop = ReplicationStop(killed, unreachable, time.monotonic() - started)
        self.stops[node.id] = stop
        return stop

    def promote(self, lab: LabState, node: NodeState) -> None:
        conn = self._connect(lab, node, 5.0)
        try:
            self._stop_replication(conn, node)
            with conn.cursor() as cur:
                cur.execute("RESET SLAVE ALL")
                cur.execute("SET GLOBAL read_only = OFF")
        finally:
            conn.close()

    def repoint(self, lab: LabState, node: NodeState, writer: NodeState) -> None:
        conn = self._connect(lab, node, 5.0)
        try:
            self._stop_replication(conn, node)
            with conn.cursor() as cur:
                self._change_master(cur, lab, writer)
                cur.execute("START SLAVE")
        finally:
            conn.close()

    def set_lag(self, lab: LabState, node: NodeState, seconds: float) -> None:
        if seconds != int(seconds):
            raise LabError(
                f"MariaDB delays a replica in whole seconds (MASTER_DELAY), not {seconds}"
            )
        conn = self._connect(lab, node, 5.0)
        try:
            # A failover ends the lag with the writer gone: stop without waiting on it.
            self._stop_replication(conn, node)
            with conn.cursor() as cur:
                cur.execute(f"CHANGE MASTER TO MASTER_DELAY = {int(seconds)}")
                cur.execute("START SLAVE")
        finally:
            conn.close()

    def probe(self, lab: LabState, node: NodeState, timeout: float) -> Probe:
        conn = self._connect(lab, node, timeout)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@read_only")
                row = cur.fetchone()
            read_only = bool(row and int(row[0]))
            with conn.cursor() as cur:
                cur.execute("SELECT @@gtid_slave_pos" if read_only else "SELECT @@gtid_binlog_pos")
                position = _seq(str((cur.fetchone() or ("",))[0]))
            if not read_only:
                return Probe(is_writer=True, lag_ms=0.0, position=position)
            st = self._status(conn)
        finally:
            conn.close()
        behind = st.get("Seconds_Behind_Master")
        lag_ms = float(behind) * 1000.0 if behind is not None else 0.0
        return Probe(is_writer=False, lag_ms=lag_ms, position=position)

    def publish(
        self,
        lab: LabState,
        writer: NodeState,
        fresh: Mapping[str, Fresh],
        *,
        structure: bool = True,
    ) -> None:
        conn = self._connect(lab, writer, 2.0)
        table = f"{METADATA_SCHEMA}.replica_host_status"
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT @@gtid_binlog_pos")
                lsn = _seq(str((cur.fetchone() or ("",))[0]))
                conn.begin()
                ids = [n.id for n in lab.cluster_nodes]
                marks = ", ".join(["%s"] * len(ids))
                if structure:
                    cur.execute(f"DELETE FROM {table} WHERE SERVER_ID NOT IN ({marks})", ids)
                    cur.execute(
                        f"DELETE FROM mysql.rds_topology WHERE id NOT IN ({marks})",
                        [n.server_id for n in lab.cluster_nodes],
                    )
                for node in lab.cluster_nodes if structure else ():
                    session = MASTER_SESSION_ID if node.role == "writer" else node.session_id
                    cur.execute(
                        f"INSERT INTO {table} (SERVER_ID, SESSION_ID, LAST_UPDATE_TIMESTAMP)"
                        " VALUES (%s, %s, NOW(6))"
                        " ON DUPLICATE KEY UPDATE SESSION_ID = VALUES(SESSION_ID)",
                        (node.id, session),
                    )
                    cur.execute(
                        "REPLACE INTO mysql.rds_topology (id, endpoint, port) VALUES (%s, %s, %s)",
                        (node.server_id, lab.instance_endpoint(node.id), node.port),
                    )
                for node_id, figures in fresh.items():
                    cur.execute(
                        f"UPDATE {table} SET LAST_UPDATE_TIMESTAMP = NOW(6),"
                        " REPLICA_LAG_IN_MILLISECONDS = %s, CPU = %s, DURABLE_LSN = %s,"
                        " HIGHEST_LSN_RECEIVED = %s, CURRENT_READ_POINT = %s"
                        " WHERE SERVER_ID = %s",
                        (
                            figures.lag_ms,
                            figures.cpu,
                            lsn,
                            lsn if figures.position is None else figures.position,
                            lsn if figures.position is None else figures.position,
                            node_id,
                        ),
                    )
                conn.commit()
        finally:
            conn.close()

    def after_kill(self, lab: LabState, node: NodeState) -> None:
        (self._base(lab, node) / "mariadbd.pid").unlink(missing_ok=True)
