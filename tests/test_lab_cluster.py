"""The lab starts real clusters that look like Aurora / RDS to a driver, for both engines."""

from __future__ import annotations

import os
import tempfile
import time
import uuid

import pytest

from aurora_smartdriver.lab import Lab, LabError
from aurora_smartdriver.lab._engine import node_dir
from tests import plain


def test_cluster_has_one_writer_and_running_replicas(aurora_lab: Lab) -> None:
    nodes = aurora_lab.nodes
    assert [n.role for n in nodes].count("writer") == 1
    assert len(aurora_lab.readers) == 2
    assert all(n.status == "running" for n in nodes)
    # Every node listens on its own loopback address, on one shared port.
    assert len({n.address for n in nodes}) == len(nodes)
    assert len({n.port for n in nodes}) == 1


def test_each_node_answers_in_its_role(aurora_lab: Lab) -> None:
    for node in aurora_lab.nodes:
        conn = plain.connect(aurora_lab, node.id)
        try:
            if aurora_lab.state().engine == "postgresql":
                [(in_recovery,)] = plain.query(conn, "SELECT pg_is_in_recovery()")
                assert in_recovery == (node.role == "reader")
            else:
                [(read_only,)] = plain.query(conn, "SELECT @@read_only")
                assert bool(read_only) == (node.role == "reader")
        finally:
            conn.close()


def test_a_committed_write_reaches_every_replica(aurora_lab: Lab) -> None:
    marker = uuid.uuid4().hex
    conn = plain.connect(aurora_lab, aurora_lab.writer.id)
    try:
        plain.query(conn, "CREATE TABLE IF NOT EXISTS lab_marks (id VARCHAR(64) PRIMARY KEY)")
        plain.query(conn, "INSERT INTO lab_marks VALUES (%s)", (marker,))
    finally:
        conn.close()
    aurora_lab.wait_replicated(10)
    for reader in aurora_lab.readers:
        conn = plain.connect(aurora_lab, reader.id)
        try:
            assert plain.query(conn, "SELECT id FROM lab_marks WHERE id = %s", (marker,)) == [
                (marker,)
            ]
        finally:
            conn.close()


def test_wait_replicated_returns_once_a_big_write_is_applied_not_only_received(
    aurora_lab: Lab,
) -> None:
    """A commit is acknowledged once a replica has the log (PostgreSQL: flushed), not once it
    has applied it: waiting for "replicated" must wait for the replay too."""
    engine = aurora_lab.state().engine
    fill = (
        "INSERT INTO lab_bulk SELECT g FROM generate_series(1, 300000) g"
        if engine == "postgresql"
        else "INSERT INTO lab_bulk SELECT seq FROM seq_1_to_300000"
    )
    conn = plain.connect(aurora_lab, aurora_lab.writer.id)
    try:
        plain.query(conn, "DROP TABLE IF EXISTS lab_bulk")
        plain.query(conn, "CREATE TABLE lab_bulk (n INT)")
        aurora_lab.wait_replicated(10)
        for turn in range(3):
            plain.query(conn, fill)
            aurora_lab.wait_replicated(30)
            for reader in aurora_lab.readers:
                got = aurora_lab.execute(reader, "SELECT count(*) FROM lab_bulk")
                assert int(str(got[0][0])) == 300000 * (turn + 1), (reader.id, turn)
    finally:
        plain.query(conn, "DROP TABLE IF EXISTS lab_bulk")
        conn.close()


def test_application_user_cannot_write_on_a_replica(aurora_lab: Lab) -> None:
    conn = plain.connect(aurora_lab, aurora_lab.readers[0].id)
    try:
        with pytest.raises(plain.DRIVER_ERRORS) as caught:
            plain.query(conn, "CREATE TABLE replica_write_attempt (x INT)")
        assert plain.is_read_only_error(caught.value), caught.value
    finally:
        conn.close()


def test_mariadb_application_user_lacks_read_only_bypass(aurora_lab_mariadb: Lab) -> None:
    conn = plain.connect(aurora_lab_mariadb, aurora_lab_mariadb.writer.id)
    try:
        grants = " ".join(str(row[0]) for row in plain.query(conn, "SHOW GRANTS"))
    finally:
        conn.close()
    assert "ALL PRIVILEGES" not in grants
    assert "READ_ONLY ADMIN" not in grants
    assert "SUPER" not in grants


def test_commits_are_acknowledged_by_a_replica(aurora_lab: Lab) -> None:
    writer = aurora_lab.writer.id
    if aurora_lab.state().engine == "postgresql":
        [(names,)] = aurora_lab.execute(writer, "SHOW synchronous_standby_names")
        assert names == "ANY 1 (*)"
        rows = aurora_lab.execute(writer, "SELECT sync_state FROM pg_stat_replication")
        assert {r[0] for r in rows} == {"quorum"}
        assert len(rows) == 2
    else:
        status = dict(aurora_lab.execute(writer, "SHOW STATUS LIKE 'Rpl_semi_sync_master_%'"))
        assert status["Rpl_semi_sync_master_status"] == "ON"
        assert int(str(status["Rpl_semi_sync_master_clients"])) == 2


def test_a_restarted_writer_has_its_commits_acknowledged_again(aurora_lab: Lab) -> None:
    # MariaDB's semi-synchronous switch is a SET GLOBAL: a restart dropped it, and every later
    # commit was acknowledged with no replica holding it (restore() restarts a crashed writer).
    writer = aurora_lab.writer.id
    aurora_lab.crash(writer)
    aurora_lab.restart(writer)
    state = aurora_lab.state()
    assert aurora_lab.engine.sync_active(state, state.node(writer))


def test_a_crashed_postgresql_node_restarts_when_its_old_pid_is_someone_elses_now(
    aurora_lab_postgresql: Lab,
) -> None:
    """A crashed server's lock files keep its pid; with pids handed out again quickly (a
    pid_max of 32768 and thousands of backends), that pid may belong to another live process
    by the restart (another node's backend, say). PostgreSQL then refuses to start ("lock file
    already exists"), as CI saw."""
    import subprocess

    lab = aurora_lab_postgresql
    reader = lab.readers[0]
    state = lab.state()
    run = node_dir(state, state.node(reader.id)) / "run"
    lab.crash(reader)
    # The process the old pid now belongs to, of the server's own user (PostgreSQL takes a
    # lock file naming another user's process for stale).
    other = subprocess.Popen(["sleep", "60"], user=state.server_user)
    try:
        data = str(lab.engine._data(state, state.node(reader.id)))  # type: ignore[attr-defined]
        (run / f".s.PGSQL.{state.port}.lock").write_text(f"{other.pid}\n{data}\n")
        lab.restart(reader)
        assert lab.execute(reader, "SELECT 1") == [(1,)]
    finally:
        other.kill()
        other.wait()
        lab.restore()


def test_postgresql_exposes_aurora_metadata_on_every_node(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql
    writer = lab.writer.id
    for node in lab.nodes:
        conn = plain.connect(lab, node.id)
        try:
            rows = plain.query(
                conn,
                "SELECT server_id, session_id, replica_lag_in_msec, last_update_timestamp, cpu"
                " FROM aurora_replica_status()",
            )
            assert {r[0] for r in rows} == {n.id for n in lab.nodes}
            masters = [r[0] for r in rows if r[1] == "MASTER_SESSION_ID"]
            assert masters == [writer]
            assert plain.query(conn, "SELECT aurora_db_instance_identifier()") == [(node.id,)]
            [(extensions,)] = plain.query(conn, "SHOW rds.extensions")
            assert "aurora_stat_utils" in extensions
            topo = plain.query(conn, "SELECT id, endpoint, port FROM rds_tools.show_topology('t')")
            assert sorted(t[1] for t in topo) == sorted(n.host for n in lab.nodes)
            [(source,)] = plain.query(
                conn,
                "SELECT multi_az_db_cluster_source_dbi_resource_id"
                " FROM rds_tools.multi_az_db_cluster_source_dbi_resource_id()",
            )
            [(own,)] = plain.query(conn, "SELECT dbi_resource_id FROM rds_tools.dbi_resource_id()")
            assert own in {t[0] for t in topo}
            assert source == next(t[0] for t in topo if t[1] == lab.writer.host)
        finally:
            conn.close()


def test_postgresql_metadata_has_auroras_columns(aurora_lab_postgresql: Lab) -> None:
    conn = plain.connect(aurora_lab_postgresql, aurora_lab_postgresql.writer.id)
    try:
        cur = conn.execute("SELECT * FROM aurora_replica_status() LIMIT 0")
        columns = [d.name for d in cur.description]
    finally:
        conn.close()
    for column in (
        "server_id",
        "session_id",
        "durable_lsn",
        "highest_lsn_rcvd",
        "current_read_lsn",
        "cur_replay_latency_in_usec",
        "last_update_timestamp",
        "replica_lag_in_msec",
        "cpu",
    ):
        assert column in columns


def test_mariadb_exposes_aurora_and_multi_az_metadata(aurora_lab_mariadb: Lab) -> None:
    lab = aurora_lab_mariadb
    for node in lab.nodes:
        conn = plain.connect(lab, node.id)
        try:
            rows = plain.query(
                conn,
                "SELECT SERVER_ID, SESSION_ID, CPU, REPLICA_LAG_IN_MILLISECONDS,"
                " LAST_UPDATE_TIMESTAMP FROM aurora_lab.replica_host_status"
                " WHERE time_to_sec(timediff(now(), LAST_UPDATE_TIMESTAMP)) <= 300"
                " OR SESSION_ID = 'MASTER_SESSION_ID'",
            )
            assert {r[0] for r in rows} == {n.id for n in lab.nodes}
            assert [r[0] for r in rows if r[1] == "MASTER_SESSION_ID"] == [lab.writer.id]
            assert plain.query(conn, "SELECT aurora_lab.aurora_server_id()") == [(node.id,)]
            topo = plain.query(conn, "SELECT id, endpoint, port FROM mysql.rds_topology")
            assert sorted(t[1] for t in topo) == sorted(n.host for n in lab.nodes)
        finally:
            conn.close()


def _timestamps(lab: Lab) -> dict[str, object]:
    if lab.state().engine == "postgresql":
        sql = "SELECT server_id, last_update_timestamp FROM aurora_replica_status()"
    else:
        sql = "SELECT SERVER_ID, LAST_UPDATE_TIMESTAMP FROM aurora_lab.replica_host_status"
    return dict(lab.execute(lab.readers[0].id, sql))  # type: ignore[arg-type]


def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def test_metadata_stays_fresh_while_alive_and_goes_stale_when_dead(aurora_lab: Lab) -> None:
    victim = aurora_lab.readers[1].id
    before = _timestamps(aurora_lab)
    # The heartbeat refreshes every live node about once a second.
    assert _wait_for(lambda: all(_timestamps(aurora_lab)[n] != before[n] for n in before), 10)
    aurora_lab.crash(victim)
    time.sleep(1.5)  # let an in-flight heartbeat land
    dead = _timestamps(aurora_lab)[victim]
    alive = aurora_lab.writer.id
    at_crash = _timestamps(aurora_lab)[alive]
    assert _wait_for(lambda: _timestamps(aurora_lab)[alive] != at_crash, 10)
    time.sleep(1.5)
    assert _timestamps(aurora_lab)[victim] == dead


def test_restore_brings_a_broken_cluster_back(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0].id
    aurora_lab.crash(reader)
    assert aurora_lab.node(reader).status == "crashed"
    assert aurora_lab.restore() is True
    assert aurora_lab.node(reader).status == "running"
    assert aurora_lab.restore() is False  # nothing left to repair


def test_add_and_remove_a_replica(aurora_lab: Lab) -> None:
    writer = plain.connect(aurora_lab, aurora_lab.writer.id)
    try:
        plain.query(writer, "DROP TABLE IF EXISTS lab_added")
        plain.query(writer, "CREATE TABLE lab_added (n int PRIMARY KEY)")
        for n in range(1000):  # one transaction each: a backlog for a new replica to apply
            plain.query(writer, "INSERT INTO lab_added VALUES (%s)", (n,))
    finally:
        writer.close()
    added = aurora_lab.add_replica()
    assert added.role == "reader"
    assert added.address in plain.resolve(aurora_lab, aurora_lab.state().reader_endpoint)
    # In service means caught up (as on Aurora): what the writer committed before is there
    # the moment add_replica returns (the application's user too), not a moment later.
    conn = plain.connect(aurora_lab, added.id)
    try:
        assert plain.query(conn, "SELECT count(*) FROM lab_added") == [(1000,)]
    finally:
        conn.close()
    aurora_lab.remove(added.id)
    assert added.id not in {n.id for n in aurora_lab.nodes}
    assert added.address not in plain.resolve(aurora_lab, aurora_lab.state().reader_endpoint)


def test_two_labs_run_side_by_side_without_clashing(aurora_lab_factory: object) -> None:
    first: Lab = aurora_lab_factory("postgresql", replicas=0)  # type: ignore[operator]
    second: Lab = aurora_lab_factory("postgresql", replicas=0)  # type: ignore[operator]
    assert first.writer.address != second.writer.address
    assert first.dns != second.dns
    for lab in (first, second):
        conn = plain.connect(lab, lab.writer.id)
        conn.close()


def test_a_temporary_directory_too_deep_for_unix_sockets_is_refused_up_front(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deep = "/tmp/" + "d" * 80
    monkeypatch.setattr(tempfile, "tempdir", deep)
    with pytest.raises(LabError, match=r"too deep for the lab's Unix sockets.*TMPDIR"):
        Lab.start("postgresql", replicas=1)
    assert not os.path.exists(deep)  # nothing was created
