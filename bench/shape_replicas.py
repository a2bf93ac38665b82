"""Readers added, removed and resumed: the chaos rows of issue #16's "New replicas are used" and
"Serverless v2 at zero capacity" parts.

    .venv/bin/python bench/shape_replicas.py [--engines postgresql,mariadb] [--runs 1]
        [--resume-delay 15]

One lab per engine (a writer and three readers). For each scenario an application works
through ONE `Cluster` on the cluster endpoint (topology re-read every second; reads spread
round robin over the readers): writer threads insert unique rows (`Cluster.writer()`), reader
threads read each node's identity (`Cluster.reader()`), and a ledger
(`aurora_smartdriver.lab._ledger`) writes through the same DSN and audits what the library
said. Then the event:

- reader added: `Lab.add_replica()` (autoscaling adds a reader);
- reader removed: `Lab.remove(reader, drain=2)`: the instance leaves the metadata and the
  reader endpoint at once and shuts down 2 s later, as an Aurora instance being deleted;
- paused reader resuming: a reader paused before the application started (Aurora Serverless
  v2 at 0 ACUs; `Lab.pause`) resumes `--resume-delay` seconds after the first connection
  attempt; the application has ``resume_timeout=60s`` (``connect_timeout=2s``);
- the same with ``resume_timeout=0`` (off: the library as it was before the setting);
- paused cluster, program starting: the writer and every reader paused (an idle dev/test
  cluster at 0 ACUs) when the application starts, with ``resume_timeout=60s`` and with 0.

Printed, per scenario and engine (medians over the runs): the table issue #16 asks for, then
each scenario's own figures: reads served by the instance (added: after it was listed;
removed: after it was gone, must be 0), seconds from the change to the first read on the new
reader, the longest a read waited (from asking for a connection to its answer), and the
connection attempts the paused instance saw while paused (the first paused node: the writer
when the whole cluster is paused; the load and the ledger are two clusters, each with its own
monitor and its own knock). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime
from aurora_smartdriver._demo import lost_writes, write_gap
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._ledger import Ledger
from aurora_smartdriver.lab._workload import TABLE

SETTINGS = {
    "refresh_interval": "1s",
    "fast_refresh_interval": "0.05s",
    "reader_strategy": "round_robin",
    "connect_timeout": "2s",
}
SETTLE_S = 3.0


@dataclass
class _Seen:
    acked: list[str] = field(default_factory=list)
    write_ok_at: list[float] = field(default_factory=list)
    reads: list[tuple[float, str, float]] = field(default_factory=list)  # (end, instance, s)
    read_errors: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)  # borrowing a connection raised
    lock: threading.Lock = field(default_factory=threading.Lock)


class Load:
    """Writers and identity readers through one `Cluster` on the cluster endpoint."""

    def __init__(self, lab: Lab, dsn: str, writers: int = 3, readers: int = 4) -> None:
        self.sql = (
            "SELECT aurora_db_instance_identifier()"
            if lab.state().engine == "postgresql"
            else "SELECT aurora_lab.aurora_server_id()"
        )
        self.cluster = asd.Cluster(dsn, cluster_id=uuid.uuid4().hex, pool_max_size=8)
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
            who = None
            started = time.perf_counter()
            try:  # giving the connection back commits, which may raise too
                with contextlib.ExitStack() as stack:
                    conn = self._lend("reader", stack)
                    if conn is not None:
                        cur = conn.cursor()
                        cur.execute(self.sql)
                        who = str(cur.fetchone()[0])
            except Exception:
                who = None
            took = time.perf_counter() - started
            with self.seen.lock:
                if who is not None:
                    self.seen.reads.append((time.time(), who, took))
                else:
                    self.seen.read_errors.append(time.time())
            if who is None:
                self.stop.wait(0.01)
            self.stop.wait(0.003)

    @staticmethod
    def prepare(lab: Lab) -> None:
        """The table, made before any fault (an administrator's connection would wake a
        paused node)."""
        state = lab.state()
        lab.execute(
            lab.writer.id,
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id VARCHAR(64) PRIMARY KEY, client INT)",
        )
        if state.engine == "postgresql":
            lab.execute(lab.writer.id, f"ALTER TABLE {TABLE} OWNER TO {state.user}")
        lab.wait_replicated()

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)
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
    on_instance: int | None  # reads on the scenario's instance (see the module's docstring)
    first_read_s: float | None
    longest_read_s: float
    attempts: int | None


@dataclass
class Outcome:
    """What an event did: the instance it concerns and the moment that counts for it."""

    instance: str
    moment: float  # added: listed in the metadata; removed: gone; paused: first knock
    attempts: int | None = None


def _nothing(lab: Lab) -> None:
    return None


@dataclass
class Scenario:
    name: str
    event: Callable[[Lab, float], Outcome]
    extra: str = ""  # DSN parameters of the application in this scenario
    before: Callable[[Lab], str | None] = _nothing  # runs before the load starts


def _add(lab: Lab, resume_delay: float) -> Outcome:
    node = lab.add_replica()
    return Outcome(node.id, time.time())  # in the metadata and DNS when add_replica returns


def _remove(lab: Lab, resume_delay: float) -> Outcome:
    victim = lab.readers[0].id
    lab.remove(victim, drain=2.0)
    return Outcome(victim, time.time())


def _pause_first(resume_delay: float) -> Callable[[Lab], str | None]:
    def pause(lab: Lab) -> str:
        node = lab.readers[0].id
        lab.pause(node, resume_delay=resume_delay)
        return node

    return pause


def _pause_all(resume_delay: float) -> Callable[[Lab], str | None]:
    def pause(lab: Lab) -> str:
        writer = lab.writer.id
        for node in [writer, *(n.id for n in lab.readers)]:
            lab.pause(node, resume_delay=resume_delay)
        return writer

    return pause


def _resume(lab: Lab, resume_delay: float) -> Outcome:
    node = next(n.id for n in lab.nodes if n.status == "paused")
    deadline = time.monotonic() + resume_delay + 60
    while time.monotonic() < deadline:
        report = lab.pause_report(node)
        if report.resumed_at is not None:
            break
        time.sleep(0.05)
    time.sleep(1.0)
    report = lab.pause_report(node)
    return Outcome(node, report.knocked_at or time.time(), report.attempts)


def scenarios(resume_delay: float) -> dict[str, Scenario]:
    pause = _pause_first(resume_delay)
    everything = _pause_all(resume_delay)
    return {
        "reader added": Scenario("reader added", _add),
        "reader removed": Scenario("reader removed", _remove),
        "paused reader resuming": Scenario(
            "paused reader resuming", _resume, "&resume_timeout=60s", pause
        ),
        "paused reader resuming, resume_timeout=0": Scenario(
            "paused reader resuming, resume_timeout=0", _resume, "&resume_timeout=0", pause
        ),
        "paused cluster, program starting": Scenario(
            "paused cluster, program starting", _resume, "&resume_timeout=60s", everything
        ),
        "paused cluster, program starting, resume_timeout=0": Scenario(
            "paused cluster, program starting, resume_timeout=0",
            _resume,
            "&resume_timeout=0",
            everything,
        ),
    }


def run_once(lab: Lab, scenario: Scenario, resume_delay: float) -> Row:
    extra = "".join(f"&{k}={v}" for k, v in SETTINGS.items()) + scenario.extra
    # The machinery of earlier scenarios' clusters lingers after they close (its monitors
    # would knock on a paused node too): each scenario starts with none.
    _runtime.close_all()
    Load.prepare(lab)
    paused = scenario.before(lab) is not None
    start = time.time()  # a paused node is knocked on as soon as the application works
    load = Load(lab, lab.dsn + extra).start()
    ledger = _start_ledger(lab, lab.dsn + extra)
    if not paused:
        time.sleep(1.5)  # warm: the event meets an application at work
        start = time.time()
    outcome = scenario.event(lab, resume_delay)
    end = time.time() + SETTLE_S
    time.sleep(SETTLE_S)
    load.finish()
    audit = ledger.stop()
    seen = load.seen
    during = [(t, who, took) for t, who, took in seen.reads if start <= t <= end]
    mine = [t for t, who, _ in seen.reads if who == outcome.instance]
    if scenario.event is _remove:  # reads on it once it was gone: must be none
        on_instance = sum(1 for t in mine if t > outcome.moment)
        first = None
    else:
        on_instance = sum(1 for t in mine if start <= t <= end)
        first = min((t - outcome.moment for t in mine if t >= outcome.moment), default=None)
    return Row(
        acked=len([t for t in seen.write_ok_at if start <= t <= end]),
        lost=lost_writes(lab, seen.acked) + len(audit.lost),
        twice=len(audit.twice),
        unknown=audit.unknown,
        gap_s=write_gap(seen.write_ok_at, start, end),
        reads_ok=len(during),
        read_errors=sum(1 for t in seen.read_errors if start <= t <= end),
        refused=sum(1 for t in seen.refused if start <= t <= end),
        on_instance=on_instance,
        first_read_s=first,
        longest_read_s=max((took for _, _, took in during), default=0.0),
        attempts=outcome.attempts,
    )


def _start_ledger(lab: Lab, dsn: str) -> Ledger:
    """The ledger, started as an application would: again until its first connect works (on
    a paused cluster without resume_timeout it fails until the writer is back)."""
    deadline = time.monotonic() + 120
    while True:
        ledger = Ledger(
            dsn, lab.state().engine, writers=(("cluster", "autocommit"), ("cluster", "transaction"))
        )
        try:
            return ledger.start()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _shown(values: list[Any], fmt: str) -> str:
    known = [v for v in values if v is not None]
    return format(_med(known), fmt) if known else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--resume-delay", type=float, default=15.0)
    parser.add_argument("--scenarios", default=None, help="names separated by ;")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    table = scenarios(args.resume_delay)
    names = args.scenarios.split(";") if args.scenarios else list(table)
    results: list[tuple[str, str, list[Row]]] = []
    for engine in args.engines.split(","):
        lab = Lab.start(engine, replicas=3, name=f"shape{engine[:2]}")
        try:
            for name in names:
                rows = []
                for _ in range(args.runs):
                    rows.append(run_once(lab, table[name], args.resume_delay))
                    lab.restore()
                results.append((name, engine, rows))
        finally:
            lab.down()
    print(
        "| scenario | engine | writes acked | acked writes lost | applied twice | "
        "outcome unknown | write unavailability s | reads ok | read errors | "
        "new connections refused |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, engine, rows in results:
        print(
            f"| {name} | {engine} | {_med([r.acked for r in rows]):.0f} "
            f"| {_med([r.lost for r in rows]):.0f} | {_med([r.twice for r in rows]):.0f} "
            f"| {_med([r.unknown for r in rows]):.0f} | {_med([r.gap_s for r in rows]):.2f} "
            f"| {_med([r.reads_ok for r in rows]):.0f} "
            f"| {_med([r.read_errors for r in rows]):.0f} "
            f"| {_med([r.refused for r in rows]):.0f} |"
        )
    print()
    print(
        "| scenario | engine | reads on the instance | s to its first read "
        "| longest read s | attempts on the paused instance |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, engine, rows in results:
        print(
            f"| {name} | {engine} | {_shown([r.on_instance for r in rows], '.0f')} "
            f"| {_shown([r.first_read_s for r in rows], '.2f')} "
            f"| {_med([r.longest_read_s for r in rows]):.2f} "
            f"| {_shown([r.attempts for r in rows], '.0f')} |"
        )


if __name__ == "__main__":
    main()
