"""Readers added and removed under load, against the lab, both engines: an added reader gets
reads once the topology lists it; a removed one is drained (it leaves the metadata first and
shuts down later, as on Aurora) without an error for any read, in flight or new."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import aurora_smartdriver as asd
from aurora_smartdriver.lab import Lab


def _identity_sql(lab: Lab, sleep: float = 0.0) -> str:
    if lab.state().engine == "postgresql":
        extra = f", pg_sleep({sleep})" if sleep else ""
        return f"SELECT aurora_db_instance_identifier(){extra}"
    extra = f", SLEEP({sleep})" if sleep else ""
    return f"SELECT aurora_lab.aurora_server_id(){extra}"


def _dsn(lab: Lab, extra: str = "") -> str:
    # A cluster of its own per test (its settings are its own), topology re-read every 0.2 s.
    return (
        lab.dsn
        + f"&cluster_id={uuid.uuid4().hex}&refresh_interval=0.2&reader_strategy=round_robin"
        + extra
    )


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)


def _read(cluster: asd.Cluster, sql: str) -> str:
    with cluster.reader() as conn:
        cur = conn.cursor()
        cur.execute(sql)
        return str(cur.fetchone()[0])


@pytest.fixture
def cluster_for() -> Iterator[Callable[..., asd.Cluster]]:
    made: list[asd.Cluster] = []

    def make(dsn: str, **kwargs: Any) -> asd.Cluster:
        cluster = asd.Cluster(dsn, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


class _Readers:
    """Threads reading through `cluster.reader()` until stopped, counting where each read
    landed and every error (none is expected)."""

    def __init__(self, cluster: asd.Cluster, sql: str, threads: int = 4) -> None:
        self.cluster = cluster
        self.sql = sql
        self.seen: Counter[str] = Counter()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                where = _read(self.cluster, self.sql)
            except Exception as exc:  # every error is a finding
                with self._lock:
                    self.errors.append(exc)
                continue
            with self._lock:
                self.seen[where] += 1

    def __enter__(self) -> _Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def total(self) -> int:
        with self._lock:
            return sum(self.seen.values())


def test_an_added_reader_receives_reads_once_the_topology_lists_it(
    aurora_lab: Lab, cluster_for: Callable[..., asd.Cluster]
) -> None:
    cluster = cluster_for(_dsn(aurora_lab))
    sql = _identity_sql(aurora_lab)
    _read(cluster, sql)  # topology known, pools warm
    with _Readers(cluster, sql) as readers:
        new = aurora_lab.add_replica()
        _until(
            lambda: (
                (t := cluster.topology) is not None and new.id in {h.instance_id for h in t.readers}
            ),
            f"the topology listing {new.id}",
        )
        _until(lambda: readers.seen[new.id] >= 20, f"reads on {new.id}")
    assert readers.errors == []


def test_a_removed_reader_is_drained_without_an_error_for_any_read(
    aurora_lab: Lab, cluster_for: Callable[..., asd.Cluster]
) -> None:
    cluster = cluster_for(_dsn(aurora_lab))
    sql = _identity_sql(aurora_lab, sleep=0.05)  # reads that are in flight for a while
    victim = aurora_lab.readers[0]
    _until(lambda: _read(cluster, sql) == victim.id, f"a read on {victim.id}")
    with _Readers(cluster, sql) as readers:
        _until(lambda: readers.seen[victim.id] >= 8, f"reads in flight on {victim.id}")
        aurora_lab.remove(victim)
        during = readers.seen[victim.id]
        done = readers.total()
        _until(lambda: readers.total() >= done + 40, "reads after the removal")
    assert readers.errors == []
    assert readers.seen[victim.id] == during  # none after the instance was gone
    assert victim.id not in {n.id for n in aurora_lab.nodes}
