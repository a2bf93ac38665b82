"""A ledger check of what the library tells applications: writers that obey it, and an audit.

Writer threads insert unique operation ids into a table with no unique constraint, through
``connect()``, ``Cluster`` or SQLAlchemy, in autocommit or in explicit transactions. Each obeys
the library literally: it re-runs an operation after ``FailoverSucceeded`` or a
``NoHostAvailable`` (nothing of it committed), and never after ``TransactionOutcomeUnknown``.
The audit then reads the table on the writer and checks it like a ledger:

- every acknowledged operation is present exactly once (nothing lost, nothing applied twice);
- an operation the library only ever reported as not committed is absent;
- an operation with an unknown outcome is present at most once.

Used by the test suite and ``bench/chaos.py``; any failure here is a broken promise.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aurora_smartdriver as asd
from aurora_smartdriver.pool import PoolTimeout

__all__ = ["Ledger", "LedgerReport", "Path"]

Path = Literal["connect", "cluster", "sqlalchemy"]
Mode = Literal["autocommit", "transaction"]
Said = Literal["ack", "rolled_back", "unknown", "no_host", "error"]

TABLE = "ledger_ops"
_ATTEMPTS = 6


@dataclass(frozen=True, slots=True)
class LedgerReport:
    """What the audit found; `ok` when every promise held."""

    operations: int
    acknowledged: int
    reruns: int
    """Attempts re-run because the library said nothing of them committed."""
    unknown: int
    errors: int
    lost: tuple[str, ...]
    """Acknowledged, yet absent."""
    twice: tuple[str, ...]
    """Present more than once: applied twice."""
    phantom: tuple[str, ...]
    """Reported as not committed every time, yet present."""
    error_samples: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.lost or self.twice or self.phantom)

    def __str__(self) -> str:
        return (
            f"{self.operations} operations, {self.acknowledged} acknowledged, "
            f"{self.reruns} re-runs, {self.unknown} unknown, {self.errors} other errors; "
            f"lost {len(self.lost)}, applied twice {len(self.twice)}, "
            f"reported rolled back but present {len(self.phantom)}"
        )


@dataclass
class _Op:
    said: list[Said] = field(default_factory=list)


class Ledger:
    """Writers of one kind each (``path`` x ``mode``) against a lab DSN; `stop` audits."""

    def __init__(
        self,
        dsn: str,
        engine: str,
        *,
        writers: tuple[tuple[Path, Mode], ...] = (
            ("connect", "autocommit"),
            ("connect", "transaction"),
            ("cluster", "autocommit"),
            ("cluster", "transaction"),
            ("sqlalchemy", "autocommit"),
            ("sqlalchemy", "transaction"),
        ),
        pause: float = 0.005,
        **settings: Any,
    ) -> None:
        self._dsn = dsn
        self._engine = engine
        self._writers = writers
        self._pause = pause
        self._settings = {"cluster_id": f"ledger-{uuid.uuid4().hex[:8]}", **settings}
        self._ops: dict[str, _Op] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: list[str] = []
        self._closers: list[Callable[[], None]] = []
        self._anchor: asd.Cluster | None = None
        self._report: LedgerReport | None = None

    # -- running --------------------------------------------------------------------------
    def start(self) -> Ledger:
        conn = asd.connect(self._dsn, **self._settings)
        try:
            cur = conn.cursor()
            cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (op VARCHAR(80))")
            conn.commit()
        finally:
            conn.close()
        # A user of the cluster's machinery in this process (its monitor, what it learned of
        # a Blue/Green deployment) until the audit is made, with no connection of its own:
        # whatever order the writers close in (a Cluster's close ends unused machinery at
        # once), the audit connects with what they knew, not as a process that joins late.
        if self._anchor is None:
            self._anchor = asd.Cluster(self._dsn, **self._settings)
        try:
            for index, (path, mode) in enumerate(self._writers):
                insert = self._writer(path, mode)
                name = f"{path[:2]}{mode[:2]}{index}-{uuid.uuid4().hex[:6]}"
                thread = threading.Thread(target=self._run, args=(name, insert), daemon=True)
                self._threads.append(thread)
                thread.start()
        except BaseException:
            self._let_go()
            raise
        return self

    def stop(self, timeout: float = 60.0) -> LedgerReport:
        """Stop the writers and audit the table on the writer (once: a second call returns
        the same report)."""
        if self._report is not None:
            return self._report
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        try:
            for close in self._closers:
                close()
            self._closers.clear()
        except BaseException:
            self._let_go()
            raise
        return self._final_audit()

    def _final_audit(self) -> LedgerReport:
        """`audit`, then the cluster held since `start` let go. The report is kept for a
        second `stop` only when every writer had ended (else a late acknowledgement could
        be missing from it)."""
        try:
            report = self.audit()
        finally:
            self._let_go()
        if not any(thread.is_alive() for thread in self._threads):
            self._report = report
        return report

    def _let_go(self) -> None:
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            anchor.close()

    def acknowledged(self) -> int:
        """Operations acknowledged so far: progress of this ledger's own writers, whatever
        else writes to the table."""
        with self._lock:
            records = list(self._ops.values())
        return sum(1 for record in records if "ack" in record.said)

    def _run(self, name: str, insert: Callable[[str], None]) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            op = f"{name}-{n}"
            record = _Op()
            with self._lock:
                self._ops[op] = record
            for _ in range(_ATTEMPTS):
                said = self._attempt(insert, op)
                record.said.append(said)
                if said not in ("rolled_back", "no_host"):
                    break
                if said == "no_host":
                    time.sleep(0.05)
            time.sleep(self._pause)

    def _attempt(self, insert: Callable[[str], None], op: str) -> Said:
        try:
            insert(op)
        except Exception as exc:  # what the application sees, SQLAlchemy's wrapping removed
            error: BaseException = getattr(exc, "orig", None) or exc
            if isinstance(error, asd.TransactionOutcomeUnknown):
                return "unknown"
            if isinstance(error, asd.FailoverSucceeded):
                return "rolled_back"
            if isinstance(error, asd.NoHostAvailable | PoolTimeout):
                return "no_host"
            with self._lock:
                if len(self._errors) < 20:
                    self._errors.append(f"{type(error).__name__}: {error}")
            return "error"
        return "ack"

    # -- the three client paths ------------------------------------------------------------
    def _writer(self, path: Path, mode: Mode) -> Callable[[str], None]:
        sql = f"INSERT INTO {TABLE} VALUES (%s)"
        autocommit: Any = "on" if self._engine == "postgresql" else True
        if path == "connect":
            holder: list[Any] = []

            def via_connect(op: str) -> None:
                if not holder:
                    kwargs = dict(self._settings)
                    if mode == "autocommit":
                        kwargs["autocommit"] = autocommit
                    holder.append(asd.connect(self._dsn, **kwargs))
                    self._closers.append(holder[0].close)
                conn = holder[0]
                cur = conn.cursor()
                cur.execute(sql, (op,))
                if mode == "transaction":
                    conn.commit()

            return via_connect
        if path == "cluster":
            kwargs = dict(self._settings)
            if mode == "autocommit":
                kwargs["autocommit"] = autocommit
            cluster = asd.Cluster(self._dsn, **kwargs)
            self._closers.append(cluster.close)

            def via_cluster(op: str) -> None:
                with cluster.writer() as conn:
                    conn.cursor().execute(sql, (op,))

            return via_cluster
        from sqlalchemy import create_engine, text

        scheme = "postgresql+aurora_psycopg" if self._engine == "postgresql" else "mysql"
        if scheme == "mysql":
            scheme = "mariadb+aurora_pymysql"
        rest = self._dsn.split("://", 1)[1]
        extra = "&".join(f"{k}={v}" for k, v in self._settings.items())
        options: dict[str, Any] = {"pool_size": 2}
        if mode == "autocommit":
            options["isolation_level"] = "AUTOCOMMIT"
        engine = create_engine(f"{scheme}://{rest}&{extra}", **options)
        self._closers.append(engine.dispose)
        statement = text(f"INSERT INTO {TABLE} VALUES (:op)")

        def via_sqlalchemy(op: str) -> None:
            if mode == "autocommit":
                with engine.connect() as conn:
                    conn.execute(statement, {"op": op})
            else:
                with engine.begin() as conn:
                    conn.execute(statement, {"op": op})

        return via_sqlalchemy

    # -- the audit ------------------------------------------------------------------------
    def audit(self) -> LedgerReport:
        conn = asd.connect(self._dsn, **self._settings)
        try:
            cur = conn.cursor()
            cur.execute(f"SELECT op FROM {TABLE}")
            present = Counter(str(row[0]) for row in cur.fetchall())
            conn.commit()
        finally:
            conn.close()
        with self._lock:
            ops = dict(self._ops)
        lost, twice, phantom = [], [], []
        acknowledged = reruns = unknown = errors = 0
        for op, record in ops.items():
            count = present.get(op, 0)
            said = record.said
            reruns += sum(1 for s in said if s in ("rolled_back", "no_host"))
            if count > 1:
                twice.append(op)
            if "ack" in said:
                acknowledged += 1
                if count == 0:
                    lost.append(op)
            elif "unknown" in said:
                unknown += 1
            elif "error" in said:
                errors += 1
            elif said and count:
                phantom.append(op)
        return LedgerReport(
            operations=len(ops),
            acknowledged=acknowledged,
            reruns=reruns,
            unknown=unknown,
            errors=errors,
            lost=tuple(lost),
            twice=tuple(twice),
            phantom=tuple(phantom),
            error_samples=tuple(self._errors),
        )
