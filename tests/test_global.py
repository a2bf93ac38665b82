"""Aurora Global Database against the lab: regions, home-region reads, switchover, failover."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import events
from aurora_smartdriver.lab import Lab
from tests import plain

HOME = "west"


def _wait(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def global_lab(aurora_lab_postgresql: Lab) -> Lab:
    """The session's PostgreSQL lab with a secondary region ``west`` of two nodes (restore
    removes it)."""
    aurora_lab_postgresql.add_region(HOME, replicas=1)
    return aurora_lab_postgresql


@pytest.fixture
def small_global_lab(aurora_lab: Lab) -> Lab:
    """Each engine's session lab with a one-node ``west``: enough to move the writer there."""
    aurora_lab.add_region(HOME, replicas=0)
    return aurora_lab


@pytest.fixture
def wide_global_lab(aurora_lab: Lab) -> Lab:
    """Each engine's session lab with a two-node ``west``: hold and release act on every node."""
    aurora_lab.add_region(HOME, replicas=1)
    return aurora_lab


@pytest.fixture
def moves() -> Iterator[list[dict[str, Any]]]:
    """The fields of every ``global_writer_moved`` event during the test."""
    seen: list[dict[str, Any]] = []

    def hook(event: events.Event) -> None:
        if event.name == "global_writer_moved":
            seen.append(dict(event.fields))

    events.subscribe(hook)
    yield seen
    events.unsubscribe(hook)


def _cluster(lab: Lab, **kwargs: Any) -> asd.Cluster:
    return asd.Cluster(lab.global_dsn(home_region=HOME), fast_refresh_interval="0.05s", **kwargs)


def _instance(conn: Any) -> str:
    """The id of the instance ``conn`` is on (the lab's MariaDB has a function for it)."""
    cur = conn.cursor()
    if hasattr(conn, "pgconn"):  # psycopg (the proxy passes its extras through)
        cur.execute("SELECT aurora_db_instance_identifier()")
    else:
        cur.execute("SELECT aurora_lab.aurora_server_id()")
    return str(cur.fetchone()[0])


def _global_status(lab: Lab) -> str:
    if lab.state().engine == "postgresql":
        return "SELECT count(*) FROM aurora_global_db_status()"
    return "SELECT count(*) FROM aurora_lab.aurora_global_db_status"


def test_global_metadata_lists_every_region_on_every_node(global_lab: Lab) -> None:
    regions = {n.id: n.region for n in global_lab.nodes}
    assert set(regions.values()) == {"lab", HOME}
    for node in global_lab.nodes:
        rows = global_lab.execute(
            node.id,
            "SELECT server_id, session_id, aws_region FROM aurora_global_db_instance_status()",
        )
        assert {str(r[0]): str(r[2]) for r in rows} == regions
        writers = [str(r[0]) for r in rows if r[1] == "MASTER_SESSION_ID"]
        assert writers == [global_lab.writer.id]
    status = global_lab.execute(
        global_lab.writer.id, "SELECT aws_region, rpo_lag_in_msec FROM aurora_global_db_status()"
    )
    assert {str(r[0]) for r in status} == {"lab", HOME}
    assert {str(r[0]): r[1] for r in status}["lab"] == -1  # the primary, as on Aurora

    # Reads stay in the home region; writes go to the primary region's writer.
    home = {n.id for n in global_lab.nodes if n.region == HOME}
    with _cluster(global_lab) as cluster:
        with cluster.writer() as conn:
            assert _instance(conn) == global_lab.writer.id
        topo = cluster.topology
        assert topo is not None and topo.writer_region == "lab"
        assert set(topo.regions) == {"lab", HOME}
        assert cluster.metrics().topology.region_rpo_lag_ms.keys() == {"lab", HOME}
        for _ in range(10):
            with cluster.reader() as conn:
                assert _instance(conn) in home

    # A home region with no reader: reads go to the writer (reader_fallback=writer) ...
    dsn = global_lab.global_dsn(home_region="nowhere")
    with asd.Cluster(dsn) as other, other.reader() as conn:
        assert _instance(conn) == global_lab.writer.id
    # ... or fail, never to another region's reader.
    with (
        asd.Cluster(dsn, reader_fallback="fail") as other,
        pytest.raises(asd.NoHostAvailable),
        other.reader(),
    ):
        pass


def test_switchover_is_followed_and_loses_nothing(
    small_global_lab: Lab, moves: list[dict[str, Any]]
) -> None:
    global_lab = small_global_lab
    with _cluster(global_lab) as cluster:
        with cluster.writer() as conn:
            conn.cursor().execute("CREATE TABLE IF NOT EXISTS global_t (id text)")
            conn.cursor().execute("INSERT INTO global_t VALUES ('before')")
            conn.commit()
        report = global_lab.global_switchover(HOME)
        assert report.new_region == HOME and report.lost_position == 0

        # A connection lent to the old writer finds it gone or read-only (FailoverSucceeded:
        # the transaction rolled back): run_transaction runs the work again on the new writer.
        def after(conn: Any) -> str:
            conn.cursor().execute("INSERT INTO global_t VALUES ('after')")
            return _instance(conn)

        assert cluster.run_transaction(after) == report.new_writer
        _wait("the region move event", lambda: bool(moves))
        assert moves[-1]["old_region"] == "lab" and moves[-1]["new_region"] == HOME
        rows = global_lab.execute(report.new_writer, "SELECT id FROM global_t ORDER BY id")
        assert sorted(str(r[0]) for r in rows) == ["after", "before"]
    global_lab.restore()  # back to one region, the writer at home again
    assert {n.region for n in global_lab.nodes} == {"lab"}
    assert global_lab.writer.region == "lab"
    assert global_lab.execute(global_lab.writer.id, _global_status(global_lab)) == [(0,)]
    rows = global_lab.execute(global_lab.writer.id, "SELECT id FROM global_t ORDER BY id")
    assert sorted(str(r[0]) for r in rows) == ["after", "before"]


def test_failover_loses_what_the_region_lacked_and_says_so(
    small_global_lab: Lab, moves: list[dict[str, Any]]
) -> None:
    global_lab = small_global_lab
    with _cluster(global_lab) as cluster:
        with cluster.writer() as conn:
            conn.cursor().execute("CREATE TABLE IF NOT EXISTS global_t (id text)")
            conn.commit()
        global_lab.wait_replicated()
        time.sleep(0.5)
        global_lab.hold_region(HOME)
        with cluster.writer() as conn:
            conn.cursor().execute("INSERT INTO global_t VALUES ('unreplicated')")
            conn.commit()  # acknowledged: the primary region has it, west does not
        _wait(
            "the library to see west's RPO lag",
            lambda: (cluster.topology.regions.get(HOME) or 0) > 0,  # type: ignore[union-attr]
        )
        report = global_lab.global_failover(HOME)

        def check(conn: Any) -> tuple[str, int]:
            cur = conn.cursor()
            cur.execute("SELECT count(*) FROM global_t WHERE id = 'unreplicated'")
            return _instance(conn), cur.fetchone()[0]

        # The acknowledged write is gone from the new writer ...
        assert cluster.run_transaction(check) == (report.new_writer, 0)
        _wait("the region move event", lambda: bool(moves))
        told = moves[-1]  # ... and the application was told, with the lag known before
        assert told["new_region"] == HOME and told["writes_may_be_lost"] is True
        assert told["rpo_lag_ms_before"] > 0


def _receiver(conn: Any) -> str | None:
    """What the log receiver of the node ``conn`` is open on does right now: None when it has
    none (PostgreSQL: no WAL receiver process; MariaDB: IO thread stopped), else
    ``"<state> from <address>"``, the state ``streaming`` once it receives from there."""
    cur = conn.cursor()
    if hasattr(conn, "pgconn"):
        cur.execute("SELECT status, sender_host FROM pg_stat_wal_receiver")
        row = cur.fetchone()
        return f"{row[0]} from {row[1]}" if row else None
    cur.execute("SHOW SLAVE STATUS")
    row = cur.fetchone()  # Master_Host is column 1, Slave_IO_Running column 10
    if not row or row[10] == "No":
        return None
    return f"{'streaming' if row[10] == 'Yes' else str(row[10]).lower()} from {row[1]}"


def _counts(lab: Lab, nodes: list[str]) -> dict[str, int | None]:
    """The rows of ``global_hold`` on each node (None: no such table there yet)."""
    out: dict[str, int | None] = {}
    for node in nodes:
        try:
            out[node] = int(str(lab.execute(node, "SELECT count(*) FROM global_hold")[0][0]))
        except Exception:
            out[node] = None
    return out


def test_hold_and_release_take_effect_before_they_return(wide_global_lab: Lab) -> None:
    lab = wide_global_lab
    west = [n.id for n in lab.nodes if n.region == HOME]
    # Connections opened beforehand: an application writes, and looks, right after the call.
    writer = plain.connect(lab, lab.writer.id)
    nodes = {node: plain.connect(lab, node) for node in west}
    try:
        for sql in ["CREATE TABLE IF NOT EXISTS global_hold (id text)", "DELETE FROM global_hold"]:
            writer.cursor().execute(sql)
        _wait("west to replicate", lambda: _counts(lab, west) == dict.fromkeys(west, 0))
        for turn in range(8):  # a race while either returned early: run it a few times
            lab.hold_region(HOME)  # west receives nothing from now on ...
            receivers = {node: _receiver(conn) for node, conn in nodes.items()}
            writer.cursor().execute(f"INSERT INTO global_hold VALUES ('held {turn}')")
            assert receivers == dict.fromkeys(west), f"turn {turn}"
            time.sleep(0.3)  # plenty for a region still streaming to receive and apply it
            assert _counts(lab, west) == dict.fromkeys(west, turn), f"turn {turn}"

            lab.release_region(HOME)  # ... until it streams from the writer again
            receivers = {node: _receiver(conn) for node, conn in nodes.items()}
            streaming = f"streaming from {lab.writer.address}"
            assert receivers == dict.fromkeys(west, streaming), f"turn {turn}"
            caught_up = dict.fromkeys(west, turn + 1)
            _wait("west to catch up", lambda goal=caught_up: _counts(lab, west) == goal)
    finally:
        for conn in [writer, *nodes.values()]:
            conn.close()
