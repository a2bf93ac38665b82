"""RDS Proxy under a writer failover: the chaos rows of issue #16's "RDS Proxy" part.

    .venv/bin/python bench/shape_proxy.py [--engines postgresql,mariadb] [--runs 1]

One lab per engine, with the lab's RDS Proxy imitation (lab/_rds_proxy.py): its default
(read/write) endpoint and a read-only endpoint. An application works through ONE `Cluster`
built on the proxy's DSN (`rds_proxy_read_only_endpoint` for readers): writer threads insert
unique rows (`Cluster.writer()`), reader threads ask who served them and from which address
the server saw them (`Cluster.reader()`), and a ledger (`aurora_smartdriver.lab._ledger`)
writes through the same DSN and audits what the library said. Then the writer is crashed and
a replica promoted (`lab.failover()`); the proxy holds new connections until the new writer
accepts them. For comparison, the same load and failover through the cluster endpoint with the
library's own failover (no proxy).

Printed, per scenario and engine (medians over the runs): the table issue #16 asks for, then
the proxy's own figures: reads whose session the server saw coming from elsewhere than the
proxy (must be 0 behind the proxy), and seconds from the new writer accepting writes to the
first acknowledged write. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aurora_smartdriver as asd
from aurora_smartdriver._demo import lost_writes, write_gap
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._ledger import Ledger
from aurora_smartdriver.lab._workload import TABLE

SETTINGS = {"fast_refresh_interval": "0.05s"}
SETTLE_S = 2.0


@dataclass
class _Seen:
    acked: list[str] = field(default_factory=list)
    write_ok_at: list[float] = field(default_factory=list)
    reads: list[tuple[float, str, str]] = field(default_factory=list)  # (time, instance, client)
    read_errors: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)  # borrowing a connection raised
    lock: threading.Lock = field(default_factory=threading.Lock)


class Load:
    """Writers and identity readers through one `Cluster` on `dsn`."""

    def __init__(self, lab: Lab, dsn: str, writers: int = 3, readers: int = 3) -> None:
        state = lab.state()
        if state.engine == "postgresql":
            self.sql = "SELECT aurora_db_instance_identifier(), host(inet_client_addr())"
        else:
            self.sql = (
                "SELECT aurora_lab.aurora_server_id(), (SELECT SUBSTRING_INDEX(host, ':', 1) "
                "FROM information_schema.processlist WHERE id = CONNECTION_ID())"
            )
        lab.execute(
            lab.writer.id,
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id VARCHAR(64) PRIMARY KEY, client INT)",
        )
        if state.engine == "postgresql":
            lab.execute(lab.writer.id, f"ALTER TABLE {TABLE} OWNER TO {state.user}")
        lab.wait_replicated()
        self.cluster = asd.Cluster(dsn, cluster_id=uuid.uuid4().hex, pool_max_size=8, **SETTINGS)
        self.seen = _Seen()
        self.stop = threading.Event()
        self.prefix = uuid.uuid4().hex[:10]
        self.threads = [
            threading.Thread(target=self._write, args=(i,), daemon=True) for i in range(writers)
        ] + [threading.Thread(target=self._read, daemon=True) for _ in range(readers)]

    def _lend(self, role: str, stack: contextlib.ExitStack) -> Any:
        """A connection of `role`, or None when borrowing it raised (counted as refused)."""
        try:
            return stack.enter_context(self.cluster.connection(role))
        except Exception:
            with self.seen.lock:
                self.seen.refused.append(time.time())
            return None

    def _write(self, client: int) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            row = f"{self.prefix}-{client}-{seq}"
            ok = False
            try:  # giving the connection back may raise too
                with contextlib.ExitStack() as stack:
                    conn = self._lend("writer", stack)
                    if conn is not None:
                        conn.cursor().execute(
                            f"INSERT INTO {TABLE} (id, client) VALUES (%s, %s)", (row, client)
                        )
                        conn.commit()
                        ok = True
            except Exception:
                ok = False
            if ok:
                with self.seen.lock:
                    self.seen.acked.append(row)
                    self.seen.write_ok_at.append(time.time())
            else:
                self.stop.wait(0.01)
            self.stop.wait(0.003)

    def _read(self) -> None:
        while not self.stop.is_set():
            found = None
            try:  # giving the connection back commits, which may raise too
                with contextlib.ExitStack() as stack:
                    conn = self._lend("reader", stack)
                    if conn is not None:
                        cur = conn.cursor()
                        cur.execute(self.sql)
                        who, client = cur.fetchone()
                        found = (str(who), str(client))
            except Exception:
                found = None
            with self.seen.lock:
                if found is not None:
                    self.seen.reads.append((time.time(), *found))
                else:
                    self.seen.read_errors.append(time.time())
            if found is None:
                self.stop.wait(0.01)
            self.stop.wait(0.003)

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.cluster.close()


@dataclass
class Row:
    acked: int
    lost: int
    twice: int
    unknown: int
    gap_s: float
    reads_ok: int
    read_errors: int
    refused: int
    around_proxy: int | None
    first_write_s: float | None


def run_once(lab: Lab, proxied: bool) -> Row:
    if proxied:
        dsn = lab.rds_proxy_dsn(read_only_endpoint="ro")
        proxies = {e.address for e in lab.state().proxy_endpoints}
    else:
        dsn, proxies = lab.dsn, set()
    load = Load(lab, dsn).start()
    ledger = Ledger(
        dsn,
        lab.state().engine,
        writers=(("cluster", "autocommit"), ("cluster", "transaction")),
        **SETTINGS,
    ).start()
    time.sleep(1.5)
    start = time.time()
    report = lab.failover()
    end = time.time() + SETTLE_S
    time.sleep(SETTLE_S)
    load.finish()
    audit = ledger.stop()
    seen = load.seen
    during = [r for r in seen.reads if start <= r[0] <= end]
    first = min((t for t in seen.write_ok_at if t >= report.writable_at), default=None)
    return Row(
        acked=len([t for t in seen.write_ok_at if start <= t <= end]),
        lost=lost_writes(lab, seen.acked) + len(audit.lost),
        twice=len(audit.twice),
        unknown=audit.unknown,
        gap_s=write_gap(seen.write_ok_at, start, end),
        reads_ok=len(during),
        read_errors=sum(1 for t in seen.read_errors if start <= t <= end),
        refused=sum(1 for t in seen.refused if start <= t <= end),
        around_proxy=sum(1 for r in seen.reads if r[2] not in proxies) if proxied else None,
        first_write_s=None if first is None else first - report.writable_at,
    )


def _med(values: list[float]) -> float:
    return statistics.median(values)


SCENARIOS = {
    "proxy: writer failover": True,
    "cluster endpoint (no proxy): writer failover": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results: list[tuple[str, str, list[Row]]] = []
    for engine in args.engines.split(","):
        lab = Lab.start(engine, replicas=2, name=f"shape{engine[:2]}")
        try:
            for name, proxied in SCENARIOS.items():
                rows = []
                for _ in range(args.runs):
                    rows.append(run_once(lab, proxied))
                    lab.restore()
                results.append((name, engine, rows))
        finally:
            lab.down()
    print(
        "| scenario | engine | writes acked | acked writes lost | applied twice | "
        "outcome unknown | write unavailability s | reads ok | read errors | "
        "reads in home region | new connections refused |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, engine, rows in results:
        print(
            f"| {name} | {engine} | {_med([r.acked for r in rows]):.0f} "
            f"| {_med([r.lost for r in rows]):.0f} | {_med([r.twice for r in rows]):.0f} "
            f"| {_med([r.unknown for r in rows]):.0f} | {_med([r.gap_s for r in rows]):.2f} "
            f"| {_med([r.reads_ok for r in rows]):.0f} "
            f"| {_med([r.read_errors for r in rows]):.0f} | - "
            f"| {_med([r.refused for r in rows]):.0f} |"
        )
    print()
    print(
        "| scenario | engine | reads the server saw from elsewhere than the proxy "
        "| s from the new writer accepting writes to the first acknowledged write |"
    )
    print("| --- | --- | --- | --- |")
    for name, engine, rows in results:
        around = [r.around_proxy for r in rows if r.around_proxy is not None]
        firsts = [r.first_write_s for r in rows if r.first_write_s is not None]
        shown_around = f"{_med([float(a) for a in around]):.0f}" if around else "-"
        shown_first = f"{_med(firsts):.2f}" if firsts else "-"
        print(f"| {name} | {engine} | {shown_around} | {shown_first} |")


if __name__ == "__main__":
    main()
