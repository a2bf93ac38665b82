"""A plain-driver write load: what an application without this library does during a failover.

Each thread inserts rows with unique ids through a bare PyMySQL/psycopg connection, reconnecting
through the cluster endpoint name (resolved by the lab's DNS on every reconnect, as a client
without a cache would) and records which inserts the database acknowledged. Afterwards
:meth:`WriteLoad.lost` lists acknowledged ids missing on the current writer: it must be empty.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aurora_smartdriver.lab._cluster import Lab

TABLE = "lab_writes"


@dataclass(frozen=True, slots=True)
class Event:
    """One outcome seen by a client thread (wall-clock time)."""

    at: float
    ok: bool
    detail: str = ""


@dataclass(slots=True)
class WriteLoadResult:
    acknowledged: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    connects: int = 0

    def first_ack_after(self, t: float) -> float | None:
        return min((e.at for e in self.events if e.ok and e.at >= t), default=None)

    @property
    def errors(self) -> int:
        return sum(1 for e in self.events if not e.ok)


class WriteLoad:
    """Background writer threads through the cluster endpoint, with bare drivers."""

    def __init__(
        self, lab: Lab, *, threads: int = 4, pause: float = 0.002, timeout: float = 2.0
    ) -> None:
        self.lab = lab
        self.threads = threads
        self.pause = pause
        self.timeout = timeout
        self.result = WriteLoadResult()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        state = lab.state()
        self._engine = state.engine
        self._endpoint = state.cluster_endpoint
        self._run_id = f"{time.time_ns():x}"
        lab.execute(
            lab.writer.id,
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id VARCHAR(64) PRIMARY KEY, client INT)",
        )
        if self._engine == "postgresql":
            # Created by the administrator; the application user writes to it.
            lab.execute(lab.writer.id, f"ALTER TABLE {TABLE} OWNER TO {state.user}")

    def _resolve(self) -> str:
        import dns.resolver

        address, port = self.lab.dns
        res = dns.resolver.Resolver(configure=False)
        res.nameservers, res.port, res.cache, res.lifetime = [address], port, None, self.timeout
        return str(res.resolve(self._endpoint, "A")[0])

    def _connect(self) -> Any:
        state = self.lab.state()
        address = self._resolve()
        with self._lock:
            self.result.connects += 1
        if self._engine == "postgresql":
            import psycopg

            return psycopg.connect(
                host=address,
                port=state.port,
                user=state.user,
                password=state.password,
                dbname=state.database,
                connect_timeout=max(2, int(self.timeout)),
                autocommit=True,
            )
        import pymysql

        return pymysql.connect(
            host=address,
            port=state.port,
            user=state.user,
            password=state.password,
            database=state.database,
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
            write_timeout=self.timeout,
            autocommit=True,
        )

    def _insert(self, conn: Any, row_id: str, client: int) -> None:
        sql = f"INSERT INTO {TABLE} (id, client) VALUES (%s, %s)"
        if self._engine == "postgresql":
            conn.execute(sql, (row_id, client))
        else:
            with conn.cursor() as cur:
                cur.execute(sql, (row_id, client))

    def _run(self, client: int) -> None:
        conn: Any = None
        seq = 0
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                seq += 1
                row_id = f"{self._run_id}-{client}-{seq}"
                self._insert(conn, row_id, client)
                with self._lock:
                    self.result.acknowledged.append(row_id)
                    self.result.events.append(Event(time.time(), True))
            except Exception as exc:
                with self._lock:
                    self.result.events.append(Event(time.time(), False, _describe(exc)))
                if conn is not None:
                    with contextlib.suppress(Exception):  # thrown away anyway
                        conn.close()
                conn = None
                self._stop.wait(0.05)
                continue
            if self.pause:
                self._stop.wait(self.pause)
        if conn is not None:
            conn.close()

    def start(self) -> WriteLoad:
        for client in range(self.threads):
            worker = threading.Thread(target=self._run, args=(client,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self, timeout: float = 10.0) -> WriteLoadResult:
        """Stop the writers; one stuck on a silent node (no read timeout) is left behind."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        return self.result

    def lost(self) -> list[str]:
        """Acknowledged ids that the current writer does not have (must be empty)."""
        present = {
            str(row[0])
            for row in self.lab.execute(
                self.lab.writer.id, f"SELECT id FROM {TABLE} WHERE id LIKE '{self._run_id}-%'"
            )
        }
        return [row_id for row_id in self.result.acknowledged if row_id not in present]

    def __enter__(self) -> WriteLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "sqlstate", None) or (exc.args[0] if exc.args else "")
    return f"{type(exc).__name__}({code})"
