"""Lab failovers: promotion, repointing, DNS that lags, and no acknowledged write lost."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest

from aurora_smartdriver.lab import Lab, LabError, partition_available
from aurora_smartdriver.lab._mariadb import MariaDB
from aurora_smartdriver.lab._workload import WriteLoad
from tests import plain


def test_failover_under_write_load_loses_no_acknowledged_write(aurora_lab: Lab) -> None:
    old = aurora_lab.writer.id
    with WriteLoad(aurora_lab, threads=4) as load:
        deadline = time.monotonic() + 10
        while len(load.result.acknowledged) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        report = aurora_lab.failover()
        deadline = time.monotonic() + 15
        while load.result.first_ack_after(report.completed_at) is None:
            assert time.monotonic() < deadline, "no write succeeded after the failover"
            time.sleep(0.05)
        time.sleep(0.3)
    acknowledged = len(load.result.acknowledged)
    lost = load.lost()
    print(
        f"\n{aurora_lab.state().engine}: {acknowledged} acknowledged writes, {len(lost)} lost, "
        f"{load.result.errors} client errors, failover {report.duration:.2f}s"
    )
    assert acknowledged > 200
    assert lost == []
    assert report.old_writer == old
    assert aurora_lab.writer.id == report.new_writer != old


def test_failover_promotes_the_chosen_replica_and_repoints_the_rest(aurora_lab: Lab) -> None:
    target = aurora_lab.readers[-1].id
    report = aurora_lab.failover(target)
    assert report.new_writer == target
    assert aurora_lab.writer.id == target
    # The remaining replica follows the new writer: a write there shows up on it.
    conn = plain.connect(aurora_lab, target)
    plain.query(conn, "CREATE TABLE IF NOT EXISTS after_failover (id INT PRIMARY KEY)")
    plain.query(conn, "INSERT INTO after_failover VALUES (%s)", (int(time.time() * 1000) % 10**9,))
    conn.close()
    aurora_lab.wait_replicated(15)


def test_two_failovers_in_a_row(aurora_lab: Lab) -> None:
    first = aurora_lab.failover()
    second = aurora_lab.failover()
    assert second.old_writer == first.new_writer
    assert aurora_lab.writer.id == second.new_writer
    conn = plain.connect(aurora_lab, second.new_writer)
    plain.query(conn, "CREATE TABLE IF NOT EXISTS twice (id INT)")
    conn.close()


def test_graceful_failover_stops_the_old_writer(aurora_lab: Lab) -> None:
    report = aurora_lab.failover(how="stop")
    assert aurora_lab.node(report.old_writer).status == "stopped"


def test_failover_without_a_running_replica_is_an_error(aurora_lab_factory: object) -> None:
    lab: Lab = aurora_lab_factory("postgresql", replicas=0)  # type: ignore[operator]
    with pytest.raises(LabError, match="no running replica"):
        lab.failover()
    assert lab.writer.role == "writer"


def test_cluster_endpoint_follows_the_writer_after_the_dns_lag(aurora_lab: Lab) -> None:
    state = aurora_lab.state()
    old = aurora_lab.writer
    assert plain.resolve(aurora_lab, state.cluster_endpoint) == [old.address]
    report = aurora_lab.failover(dns_lag=2.0)
    new = aurora_lab.node(report.new_writer)
    assert plain.resolve(aurora_lab, state.cluster_endpoint) == [old.address]  # stale
    while time.time() < report.dns_flip_at + 0.2:
        time.sleep(0.1)
    assert plain.resolve(aurora_lab, state.cluster_endpoint) == [new.address]
    answer = plain.resolver(aurora_lab).resolve(state.cluster_endpoint, "A")
    assert answer.rrset is not None and answer.rrset.ttl == state.dns.ttl
    assert str(answer.canonical_name).rstrip(".") == new.host


def test_stale_endpoint_reaches_the_rejoined_old_writer_which_refuses_writes(
    aurora_lab: Lab,
) -> None:
    state = aurora_lab.state()
    old = aurora_lab.writer
    report = aurora_lab.failover(dns_lag=30.0)
    aurora_lab.rejoin(report.old_writer)
    assert aurora_lab.node(old.id).role == "reader"
    [stale] = plain.resolve(aurora_lab, state.cluster_endpoint)
    assert stale == old.address  # DNS still says the old writer
    conn = plain.connect_address(aurora_lab, stale)  # ...which is up again, as a reader
    with pytest.raises(plain.DRIVER_ERRORS) as caught:
        plain.query(conn, "CREATE TABLE stale_write (x INT)")
    assert plain.is_read_only_error(caught.value)
    conn.close()


def test_reader_endpoint_and_metadata_follow_the_failover(aurora_lab: Lab) -> None:
    report = aurora_lab.failover()
    state = aurora_lab.state()
    readers = plain.resolve(aurora_lab, state.reader_endpoint)
    assert aurora_lab.node(report.new_writer).address not in readers
    if state.engine == "postgresql":
        sql = "SELECT server_id FROM aurora_replica_status() WHERE session_id = 'MASTER_SESSION_ID'"
    else:
        sql = (
            "SELECT SERVER_ID FROM aurora_lab.replica_host_status"
            " WHERE SESSION_ID = 'MASTER_SESSION_ID'"
        )
    assert aurora_lab.execute(report.new_writer, sql) == [(report.new_writer,)]


def _replica_status(lab: Lab, node: str) -> dict[str, Any]:
    engine = cast(MariaDB, lab.engine)
    state = lab.state()
    conn = engine._connect(state, state.node(node), 5.0)
    try:
        return engine._status(conn)
    finally:
        conn.close()


@pytest.mark.skipif(not partition_available(), reason="needs root and iptables")
def test_mariadb_promotion_does_not_wait_on_a_partitioned_writer(aurora_lab_mariadb: Lab) -> None:
    # A semi-sync replica's I/O thread, on its way out, connects to its master to kill the dump
    # thread there; a partitioned master never answers, and a plain STOP SLAVE waits for it.
    # The lab kills each I/O thread first and stops replication once the thread sits in that
    # connect, which STOP SLAVE's first interrupt then ends.
    lab = aurora_lab_mariadb
    engine = cast(MariaDB, lab.engine)
    engine.stops.clear()
    old = lab.writer
    replicas = [n.id for n in lab.readers]
    lab.partition(old.id)
    report = lab.failover()
    assert sorted(engine.stops) == sorted(replicas)  # the promoted one and the repointed ones
    for node in replicas:
        stop = engine.stops[node]
        assert stop.io_thread_killed and stop.master_unreachable, (node, stop)
    # What the lab promises still holds after the quick stop.
    assert lab.node(old.id).status == "crashed"
    assert report.started_at <= report.promoted_at <= report.writable_at <= report.completed_at
    new = lab.node(report.new_writer)
    lab.execute(new.id, "CREATE TABLE IF NOT EXISTS after_partition (id INT PRIMARY KEY)")
    lab.execute(new.id, f"INSERT INTO after_partition VALUES ({int(time.time() * 1000) % 10**9})")
    lab.wait_replicated(15)
    [(writer_gtids,)] = lab.execute(new.id, "SELECT @@gtid_binlog_pos")
    for node in replicas:
        if node == new.id:
            continue
        status = _replica_status(lab, node)
        assert (status["Master_Host"], status["Master_Port"]) == (new.address, new.port)
        assert (status["Slave_IO_Running"], status["Slave_SQL_Running"]) == ("Yes", "Yes")
        # The same GTID history as the writer: nothing applied twice, nothing errant.
        assert lab.execute(node, "SELECT @@gtid_binlog_pos, @@gtid_slave_pos") == [
            (writer_gtids, writer_gtids)
        ]
