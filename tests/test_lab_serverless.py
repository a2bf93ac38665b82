"""Aurora Serverless v2 at 0 ACUs against the lab, both engines: a paused reader accepts TCP and
answers only once it has resumed, a delay after the first connection attempt; with
``resume_timeout`` the library makes that a bounded wait with one connection attempt per
instance (not a dead host, not a storm, not a failover), and names the budget running out."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import aurora_smartdriver as asd
import aurora_smartdriver.aio as aio
from aurora_smartdriver.aio.connection import PsycopgAsyncConnection
from aurora_smartdriver.events import Event, subscribe, unsubscribe
from aurora_smartdriver.lab import Lab
from tests import plain


def _identity_sql(lab: Lab) -> str:
    if lab.state().engine == "postgresql":
        return "SELECT aurora_db_instance_identifier()"
    return "SELECT aurora_lab.aurora_server_id()"


def _dsn(lab: Lab, extra: str) -> str:
    return lab.dsn + f"&cluster_id={uuid.uuid4().hex}&refresh_interval=0.5" + extra


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


@pytest.fixture
def events() -> Iterator[list[Event]]:
    heard: list[Event] = []
    subscribe(heard.append)
    yield heard
    unsubscribe(heard.append)


def _reads_at_once(cluster: asd.Cluster, sql: str, count: int) -> tuple[list[str], list[Exception]]:
    served: list[str] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def read() -> None:
        try:
            with cluster.reader() as conn:
                cur = conn.cursor()
                cur.execute(sql)
                where = str(cur.fetchone()[0])
        except Exception as exc:  # every error is a finding
            with lock:
                errors.append(exc)
            return
        with lock:
            served.append(where)

    threads = [threading.Thread(target=read) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return served, errors


def test_a_paused_reader_answers_only_after_it_resumed_and_stays_in_the_metadata(
    aurora_lab: Lab,
) -> None:
    node = aurora_lab.readers[0]
    aurora_lab.pause(node, resume_delay=3.0)  # psycopg waits 2 s at least
    assert aurora_lab.node(node).status == "paused"
    rows = aurora_lab.execute(aurora_lab.writer, _members_sql(aurora_lab))
    assert node.id in {str(r[0]) for r in rows}  # a member at 0 ACUs, not a lost instance
    with pytest.raises(Exception, match=r"(?i)time"):  # accepted, never answered in time
        plain.connect(aurora_lab, node.id, timeout=0.3)
    conn = plain.connect(aurora_lab, node.id, timeout=30)  # waits for the resume
    conn.close()
    report = aurora_lab.pause_report(node)
    assert report.knocked_at is not None and report.resumed_at is not None
    assert report.knocked_at < report.resumed_at
    assert aurora_lab.node(node).status == "running"


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_a_program_starting_on_a_paused_cluster_waits_for_its_writer_without_a_failover(
    engine: str, aurora_lab_factory: Callable[..., Lab], events: list[Event]
) -> None:
    lab = aurora_lab_factory(engine, replicas=1, name=f"pause{engine[:2]}")
    lab.execute(lab.writer, "CREATE TABLE IF NOT EXISTS paused_ledger (id VARCHAR(64) PRIMARY KEY)")
    if engine == "postgresql":
        lab.execute(lab.writer, f"ALTER TABLE paused_ledger OWNER TO {lab.state().user}")
    writer = lab.writer.id
    for node in [writer, *(n.id for n in lab.readers)]:  # the idle cluster paused as a whole
        lab.pause(node, resume_delay=2.0)
    cluster = asd.Cluster(_dsn(lab, "&resume_timeout=30&connect_timeout=1"))
    row = uuid.uuid4().hex
    try:
        with cluster.writer() as conn:
            conn.cursor().execute("INSERT INTO paused_ledger (id) VALUES (%s)", (row,))
            conn.commit()
    finally:
        cluster.close()
    assert lab.pause_report(writer).attempts == 1  # the monitor's knock; nobody else dialled
    assert [r[0] for r in lab.execute(lab.writer, "SELECT id FROM paused_ledger")] == [row]
    assert lab.writer.id == writer
    assert not [e for e in events if e.name in ("failover_started", "host_unresponsive")]


def test_reads_on_paused_readers_wait_for_the_resume_with_one_attempt_per_instance(
    aurora_lab: Lab, cluster_for: Callable[..., asd.Cluster], events: list[Event]
) -> None:
    cluster = cluster_for(
        _dsn(aurora_lab, "&resume_timeout=30&connect_timeout=1&reader_fallback=fail")
    )
    with cluster.writer() as conn:  # topology known; no reader connected yet
        conn.cursor().execute("SELECT 1")
    readers = [n.id for n in aurora_lab.readers]
    for node in readers:
        aurora_lab.pause(node, resume_delay=2.0)  # longer than connect_timeout
    served, errors = _reads_at_once(cluster, _identity_sql(aurora_lab), 12)
    assert errors == []
    assert set(served) <= set(readers) and len(served) == 12  # no read fell back to the writer
    for node in readers:
        assert aurora_lab.pause_report(node).attempts == 1  # one knock, nobody else dialled
    resumed = {e.fields["instance"] for e in events if e.name == "instance_resumed"}
    assert resumed == set(served)
    assert not [e for e in events if e.name in ("failover_started", "host_unresponsive")]


@pytest.mark.parametrize("how_many", ["one reader", "every reader"])
def test_while_a_reader_resumes_only_its_knock_waits_and_other_reads_go_elsewhere(
    aurora_lab: Lab, cluster_for: Callable[..., asd.Cluster], how_many: str
) -> None:
    # One paused: reads go to the other readers. All paused: to the writer meanwhile
    # (reader_fallback=writer, the default). Either way only the knocks wait.
    cluster = cluster_for(
        _dsn(aurora_lab, "&resume_timeout=30&connect_timeout=1&reader_strategy=round_robin")
    )
    with cluster.writer() as conn:
        conn.cursor().execute("SELECT 1")
    readers = [n.id for n in aurora_lab.readers]
    paused = readers[:1] if how_many == "one reader" else readers
    for node in paused:
        aurora_lab.pause(node, resume_delay=2.0)
    sql = _identity_sql(aurora_lab)
    reads: list[tuple[float, float, str]] = []  # (start, end, instance)
    errors: list[Exception] = []
    lock = threading.Lock()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            started = time.time()
            try:
                with cluster.reader() as conn:
                    cur = conn.cursor()
                    cur.execute(sql)
                    where = str(cur.fetchone()[0])
            except Exception as exc:  # every error is a finding
                with lock:
                    errors.append(exc)
                continue
            with lock:
                reads.append((started, time.time(), where))

    def served_after_resume(node: str) -> bool:
        resumed = aurora_lab.pause_report(node).resumed_at
        with lock:
            return resumed is not None and any(
                where == node and start > resumed for start, _, where in reads
            )

    threads = [threading.Thread(target=loop) for _ in range(6)]
    try:
        for thread in threads:
            # One at a time: a read that chose a reader in the instant before its knock began
            # waits for that knock too (docs/serverless-and-scaling.md); six started at once
            # on a loaded machine could all choose before any knock began, leaving none free
            # to show where reads go meanwhile.
            thread.start()
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while not all(served_after_resume(n) for n in paused) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert errors == []
    for node in paused:
        report = aurora_lab.pause_report(node)
        assert report.knocked_at is not None and report.resumed_at is not None
        assert report.attempts == 1
        waited = [r for r in reads if r[2] == node and r[0] < report.resumed_at]
        assert waited  # the knock (and reads that chose it in the instant before it started)
        # Once the knock was under way, every read went elsewhere.
        assert [r for r in waited if r[0] > report.knocked_at] == []
        assert any(r[2] != node and report.knocked_at < r[0] < report.resumed_at for r in reads)


def test_a_resume_slower_than_resume_timeout_raises_instance_resume_timeout(
    aurora_lab: Lab, cluster_for: Callable[..., asd.Cluster], events: list[Event]
) -> None:
    cluster = cluster_for(
        _dsn(aurora_lab, "&resume_timeout=1.5&connect_timeout=1&reader_fallback=fail")
    )
    with cluster.writer() as conn:
        conn.cursor().execute("SELECT 1")
    readers = [n.id for n in aurora_lab.readers]
    for node in readers:
        aurora_lab.pause(node, resume_delay=20.0)
    with (
        pytest.raises(asd.InstanceResumeTimeout, match=r"resume_timeout=1\.5s") as caught,
        cluster.reader() as conn,
    ):
        conn.cursor().execute(_identity_sql(aurora_lab))
    assert isinstance(caught.value, asd.NoHostAvailable)
    assert isinstance(caught.value, _operational_error(aurora_lab))
    assert caught.value.__cause__ is not None  # the driver's own error, kept
    timed_out = {e.fields["instance"] for e in events if e.name == "instance_resume_timeout"}
    assert timed_out == set(readers)  # each tried once, within its own budget
    for node in readers:
        assert aurora_lab.pause_report(node).attempts == 1


@pytest.mark.asyncio
async def test_async_reads_on_paused_readers_wait_for_the_resume_with_one_attempt_each(
    aurora_lab: Lab, events: list[Event]
) -> None:
    lab = aurora_lab
    cluster = aio.Cluster(_dsn(lab, "&resume_timeout=30&connect_timeout=1&reader_fallback=fail"))
    sql = _identity_sql(lab)

    async def read() -> str:
        async with cluster.reader() as conn:
            cur = conn.cursor() if isinstance(conn, PsycopgAsyncConnection) else await conn.cursor()
            await cur.execute(sql)
            row = await cur.fetchone()
            return str(row[0])

    try:
        async with cluster.writer() as conn:  # topology known; no reader connected yet
            cur = conn.cursor() if isinstance(conn, PsycopgAsyncConnection) else await conn.cursor()
            await cur.execute("SELECT 1")
        readers = [n.id for n in lab.readers]
        for node in readers:
            await lab.aio.pause(node, resume_delay=2.0)
        served = await asyncio.gather(*(read() for _ in range(12)))
    finally:
        await cluster.close()
    assert set(served) <= set(readers) and len(served) == 12
    for node in readers:
        assert lab.pause_report(node).attempts == 1
    assert {e.fields["instance"] for e in events if e.name == "instance_resumed"} == set(served)


def _operational_error(lab: Lab) -> type[Exception]:
    if lab.state().engine == "postgresql":
        import psycopg

        return psycopg.OperationalError
    import pymysql

    return pymysql.err.OperationalError


def _members_sql(lab: Lab) -> str:
    if lab.state().engine == "postgresql":
        return "SELECT server_id FROM aurora_replica_status()"
    return "SELECT server_id FROM aurora_lab.replica_host_status"
