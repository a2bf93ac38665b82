"""Custom endpoints under events: the chaos rows of issue #16's "Custom endpoints" part.

    .venv/bin/python bench/shape_custom.py [--engines postgresql,mariadb] [--runs 1]

One lab per engine. For each scenario an application works through ONE `Cluster` built on a
custom endpoint's DSN (members read from the lab's RDS API stand-in every 0.5 s): writer
threads insert unique rows (`Cluster.writer()`: writes go to the writer), reader threads read
each node's identity (`Cluster.reader()`), and a ledger (`aurora_smartdriver.lab._ledger`)
writes through the same DSN and audits what the library said. Then the event:

- membership change: the endpoint's only member is replaced by another reader;
- member crash: one of the endpoint's two members is killed (-9);
- RDS API outage: the stand-in drops every request for 5 s, and the members change during it;
- writer failover: the writer of an ANY endpoint (every instance but one reader) is killed.

Printed, per scenario and engine (medians over the runs): the table issue #16 asks for, then
the custom endpoint's own figures: reads that landed on an instance that was a member neither
before nor after the event (must be 0), and seconds from a change of members to the first
read on the new member (the library reads the members every 0.5 s here; during the outage it
keeps the members it last read until the API answers again). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aurora_smartdriver as asd
from aurora_smartdriver._demo import lost_writes, write_gap
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._ledger import Ledger
from aurora_smartdriver.lab._workload import TABLE

os.environ.setdefault("AWS_ACCESS_KEY_ID", "lab")  # the stand-in takes any credentials
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "lab")

SETTINGS = {"custom_endpoint_refresh_interval": "0.5s", "fast_refresh_interval": "0.05s"}
SETTLE_S = 2.0


@dataclass
class _Seen:
    acked: list[str] = field(default_factory=list)
    write_ok_at: list[float] = field(default_factory=list)
    reads: list[tuple[float, str]] = field(default_factory=list)  # (time, instance id)
    read_errors: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)  # borrowing a connection raised
    lock: threading.Lock = field(default_factory=threading.Lock)


class CustomLoad:
    """Writers and identity readers through one `Cluster` on a custom endpoint DSN."""

    def __init__(self, lab: Lab, dsn: str, writers: int = 3, readers: int = 3) -> None:
        state = lab.state()
        self.sql = (
            "SELECT aurora_db_instance_identifier()"
            if state.engine == "postgresql"
            else "SELECT aurora_lab.aurora_server_id()"
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
            who = None
            try:  # giving the connection back commits, which may raise too
                with contextlib.ExitStack() as stack:
                    conn = self._lend("reader", stack)
                    if conn is not None:
                        cur = conn.cursor()
                        cur.execute(self.sql)
                        who = str(cur.fetchone()[0])
            except Exception:
                who = None
            with self.seen.lock:
                if who is not None:
                    self.seen.reads.append((time.time(), who))
                else:
                    self.seen.read_errors.append(time.time())
            if who is None:
                self.stop.wait(0.01)
            self.stop.wait(0.003)

    def start(self) -> CustomLoad:
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
    outside: int
    follow_s: float | None


@dataclass
class Scenario:
    name: str
    setup: Callable[[Lab], str]  # creates the endpoint, returns its name
    event: Callable[[Lab, str], tuple[float | None, str | None]]
    """Does the event; returns when members changed and the new member to wait for."""


def _one_member(lab: Lab) -> str:
    lab.add_custom_endpoint("shape", members=[lab.readers[0].id])
    return "shape"


def _two_members(lab: Lab) -> str:
    lab.add_custom_endpoint("shape", members=[r.id for r in lab.readers[:2]])
    return "shape"


def _any_but_one(lab: Lab) -> str:
    lab.add_custom_endpoint("shape", kind="any", excluded=[lab.readers[-1].id])
    return "shape"


def _change(lab: Lab, name: str) -> tuple[float | None, str | None]:
    new = lab.readers[1].id
    lab.modify_custom_endpoint(name, members=[new])
    return time.time(), new


def _crash_member(lab: Lab, name: str) -> tuple[float | None, str | None]:
    lab.crash(lab.readers[0].id)
    time.sleep(3.0)
    return None, None


def _api_outage(lab: Lab, name: str) -> tuple[float | None, str | None]:
    lab.rds_api_outage(True)
    time.sleep(1.0)
    new = lab.readers[1].id
    lab.modify_custom_endpoint(name, members=[new])
    changed = time.time()
    time.sleep(4.0)
    lab.rds_api_outage(False)
    return changed, new


def _writer_failover(lab: Lab, name: str) -> tuple[float | None, str | None]:
    lab.failover()
    return None, None


SCENARIOS = {
    "custom: membership change": Scenario("custom: membership change", _one_member, _change),
    "custom: member crash": Scenario("custom: member crash", _two_members, _crash_member),
    "custom: RDS API outage + change": Scenario(
        "custom: RDS API outage + change", _one_member, _api_outage
    ),
    "custom: writer failover (ANY)": Scenario(
        "custom: writer failover (ANY)", _any_but_one, _writer_failover
    ),
}


def run_once(lab: Lab, scenario: Scenario) -> Row:
    name = scenario.setup(lab)
    dsn = lab.custom_endpoint_dsn(name)
    before = set(lab.custom_endpoint_members(name))
    load = CustomLoad(lab, dsn).start()
    ledger = Ledger(
        dsn,
        lab.state().engine,
        writers=(("cluster", "autocommit"), ("cluster", "transaction")),
        **SETTINGS,
    ).start()
    time.sleep(1.5)
    start = time.time()
    changed, new = scenario.event(lab, name)
    after = set(lab.custom_endpoint_members(name))
    end = time.time() + SETTLE_S
    time.sleep(SETTLE_S)
    load.finish()
    audit = ledger.stop()
    seen = load.seen
    during = [(t, who) for t, who in seen.reads if start <= t <= end]
    outside = sum(1 for _, who in during if who not in before | after)
    follow = None
    if changed is not None and new is not None:
        follow = min(
            (t - changed for t, who in seen.reads if t >= changed and who == new), default=None
        )
    return Row(
        acked=len([t for t in seen.write_ok_at if start <= t <= end]),
        lost=lost_writes(lab, seen.acked) + len(audit.lost),
        twice=len(audit.twice),
        unknown=audit.unknown,
        gap_s=write_gap(seen.write_ok_at, start, end),
        reads_ok=len(during),
        read_errors=sum(1 for t in seen.read_errors if start <= t <= end),
        refused=sum(1 for t in seen.refused if start <= t <= end),
        outside=outside,
        follow_s=follow,
    )


def _med(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results: list[tuple[str, str, list[Row]]] = []
    for engine in args.engines.split(","):
        lab = Lab.start(engine, replicas=3, name=f"shape{engine[:2]}")
        try:
            for name in args.scenarios.split(","):
                rows = []
                for _ in range(args.runs):
                    rows.append(run_once(lab, SCENARIOS[name]))
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
        "| scenario | engine | reads outside the members "
        "| s from the change to a read on the new member |"
    )
    print("| --- | --- | --- | --- |")
    for name, engine, rows in results:
        follows = [r.follow_s for r in rows if r.follow_s is not None]
        shown = f"{_med(follows):.2f}" if follows else "-"
        print(f"| {name} | {engine} | {_med([r.outside for r in rows]):.0f} | {shown} |")


if __name__ == "__main__":
    main()
