"""Chaos rows for an Aurora Global Database: a planned switchover and a managed failover.

Starts one lab per engine, grows a secondary region ("west", two nodes) on it, and for each
scenario runs writer and reader threads through the library (``home_region=west``) while the
lab moves the writer to west. Prints one markdown row per scenario and engine; asserts nothing.

    .venv/bin/python bench/shape_global.py [--engines postgresql,mariadb] [--runs 1]

- global switchover: planned, so no acknowledged write may be lost.
- global failover: west's replication is held first (so its RPO lag grows and the library's
  topology shows it), then the primary region is lost and west promoted with what it has:
  the writes acknowledged after the hold are lost, counted from the ledger, and the line
  after the table says whether the application was told (the ``global_writer_moved`` event,
  with the RPO lag known before).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import aurora_smartdriver as asd
from aurora_smartdriver import events
from aurora_smartdriver.errors import TransactionOutcomeUnknown
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._engine import LabError

TABLE = "global_ledger"
HOME = "west"
COLUMNS = (
    "scenario",
    "engine",
    "writes acked",
    "acked writes lost",
    "applied twice",
    "outcome unknown",
    "write unavailability s",
    "reads ok",
    "read errors",
    "reads in home region",
    "new connections refused",
)


@dataclass
class Ledger:
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[str] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)
    unknown: int = 0
    write_errors: int = 0
    reads_ok: int = 0
    read_errors: int = 0
    reads_home: int = 0
    refused: int = 0
    refused_during: list[float] = field(default_factory=list)


class Load:
    """Writers (one INSERT of a unique id per transaction) and readers through `Cluster`."""

    def __init__(
        self, dsn: str, home_ids: set[str], who: str, writers: int = 3, readers: int = 3
    ) -> None:
        self.who = who
        self.cluster = asd.Cluster(
            dsn, cluster_id=uuid.uuid4().hex, fast_refresh_interval="0.05s", pool_max_size=8
        )
        self.home_ids = home_ids
        self.ledger = Ledger()
        self.stop = threading.Event()
        self.prefix = uuid.uuid4().hex[:10]
        self.threads = [
            threading.Thread(target=self._write, args=(i,), daemon=True) for i in range(writers)
        ] + [threading.Thread(target=self._read, daemon=True) for _ in range(readers)]

    def _write(self, client: int) -> None:
        for seq in itertools.count(1):
            if self.stop.is_set():
                return
            row = f"{self.prefix}-{client}-{seq}"
            try:
                ctx = self.cluster.writer()
                conn = ctx.__enter__()
            except Exception:
                with self.ledger.lock:
                    self.ledger.refused += 1
                    self.ledger.refused_during.append(time.time())
                self.stop.wait(0.02)
                continue
            try:
                conn.cursor().execute(f"INSERT INTO {TABLE} (id) VALUES (%s)", (row,))
                conn.commit()
                with self.ledger.lock:
                    self.ledger.acked.append(row)
                    self.ledger.acked_at.append(time.time())
            except TransactionOutcomeUnknown:
                with self.ledger.lock:
                    self.ledger.unknown += 1
            except Exception:
                with self.ledger.lock:
                    self.ledger.write_errors += 1
                self.stop.wait(0.01)
            finally:
                with contextlib.suppress(Exception):
                    ctx.__exit__(None, None, None)
            self.stop.wait(0.005)

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                ctx = self.cluster.reader()
                conn = ctx.__enter__()
            except Exception:
                with self.ledger.lock:
                    self.ledger.refused += 1
                self.stop.wait(0.02)
                continue
            try:
                cur = conn.cursor()
                cur.execute(self.who)
                (me,) = cur.fetchone()
                with self.ledger.lock:
                    self.ledger.reads_ok += 1
                    self.ledger.reads_home += me in self.home_ids
            except Exception:
                with self.ledger.lock:
                    self.ledger.read_errors += 1
                self.stop.wait(0.01)
            finally:
                with contextlib.suppress(Exception):
                    ctx.__exit__(None, None, None)
            self.stop.wait(0.005)

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
        self.cluster.close()


def write_gap(times: list[float], start: float, end: float) -> float:
    ordered = sorted(times)
    before = [t for t in ordered if t < start]
    marks = [before[-1] if before else start, *(t for t in ordered if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(marks))


def ledger_check(lab: Lab, acked: list[str]) -> tuple[int, int]:
    rows = lab.execute(lab.writer.id, f"SELECT id FROM {TABLE}")
    counts = Counter(str(r[0]) for r in rows)
    lost = sum(1 for row in acked if counts[row] == 0)
    twice = sum(1 for n in counts.values() if n > 1)
    return lost, twice


def wait_for(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise LabError(f"timed out waiting for {what}")
        time.sleep(0.05)


def scenario(lab: Lab, engine: str, kind: str, notes: list[str]) -> list[str]:
    lab.restore()
    lab.add_region(HOME, replicas=1)
    lab.execute(lab.writer.id, f"CREATE TABLE IF NOT EXISTS {TABLE} (id text)")
    lab.execute(lab.writer.id, f"TRUNCATE {TABLE}")
    if engine == "postgresql":  # MariaDB's application user has every table already
        lab.execute(lab.writer.id, f"GRANT ALL ON {TABLE} TO {lab.state().user}")
    lab.wait_replicated()
    home_ids = {n.id for n in lab.nodes if n.region == HOME}
    told: list[dict[str, Any]] = []

    def hook(event: events.Event) -> None:
        if event.name == "global_writer_moved":
            told.append(dict(event.fields))

    events.subscribe(hook)
    who = (
        "SELECT aurora_db_instance_identifier()"
        if engine == "postgresql"
        else "SELECT aurora_lab.aurora_server_id()"
    )
    load = Load(lab.global_dsn(home_region=HOME), home_ids, who).start()
    try:
        wait_for("first writes", lambda: len(load.ledger.acked) > 20)
        time.sleep(1.0)
        if kind == "failover":
            lab.hold_region(HOME)
            wait_for(
                "the library to see west's RPO lag",
                lambda: (load.cluster.topology.regions.get(HOME) or 0) > 0,
            )
            time.sleep(0.5)
        with load.ledger.lock:
            refused_before = load.ledger.refused
        start = time.time()
        if kind == "switchover":
            lab.global_switchover(HOME)
        else:
            lab.global_failover(HOME)
        acked_at_event = len(load.ledger.acked)
        wait_for("writes on the new writer", lambda: len(load.ledger.acked) > acked_at_event + 20)
        end = time.time() + 2.0
        time.sleep(2.0)
    finally:
        load.finish()
        events.unsubscribe(hook)
    led = load.ledger
    lost, twice = ledger_check(lab, led.acked)
    gap = write_gap(led.acked_at, start, end)
    refused = led.refused - refused_before
    if kind == "failover":
        if told:
            t = told[-1]
            notes.append(
                f"{engine} global failover: the application was told (global_writer_moved "
                f"{t['old_region']} -> {t['new_region']}, rpo_lag_ms_before="
                f"{t['rpo_lag_ms_before']}, writes_may_be_lost={t['writes_may_be_lost']}); "
                f"{lost} acknowledged writes are missing on the new writer"
            )
        else:
            notes.append(f"{engine} global failover: NO global_writer_moved event was received")
    return [
        f"global {kind}",
        engine,
        str(len(led.acked)),
        str(lost),
        str(twice),
        str(led.unknown),
        f"{gap:.2f}",
        str(led.reads_ok),
        str(led.read_errors),
        f"{led.reads_home}/{led.reads_ok}",
        str(refused),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    notes: list[str] = []
    for engine in args.engines.split(","):
        lab = Lab.start(engine, replicas=1, name="glob")
        try:
            for _ in range(args.runs):
                for kind in ("switchover", "failover"):
                    print("| " + " | ".join(scenario(lab, engine, kind, notes)) + " |", flush=True)
        finally:
            lab.down()
    for note in notes:
        print(f"\n- {note}")


if __name__ == "__main__":
    main()
