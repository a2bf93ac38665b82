"""Each lab fault, as a plain PyMySQL / psycopg client sees it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from aurora_smartdriver import lab as lab_module
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._mariadb import _connects_to
from tests import plain


def test_crashed_node_refuses_new_connections(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0]
    aurora_lab.crash(reader.id)
    assert aurora_lab.node(reader.id).status == "crashed"
    with pytest.raises(plain.DRIVER_ERRORS) as caught:
        plain.connect(aurora_lab, reader.id)
    assert "refused" in str(caught.value).lower() or plain.error_code(caught.value) == 2003


def test_open_connection_to_a_crashed_node_breaks_on_next_statement(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0]
    conn = plain.connect(aurora_lab, reader.id)
    aurora_lab.crash(reader.id)
    with pytest.raises(plain.DRIVER_ERRORS) as caught:
        plain.query(conn, "SELECT 1")
    if aurora_lab.state().engine == "mariadb":
        assert plain.error_code(caught.value) in (2006, 2013)
    conn.close()


def test_hung_node_accepts_tcp_but_a_connect_times_out(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0]
    aurora_lab.hang(reader.id)
    # The kernel still completes the TCP handshake of a stopped server.
    with socket.create_connection((reader.address, reader.port), timeout=2):
        pass
    with pytest.raises(plain.DRIVER_ERRORS) as caught:
        plain.connect(aurora_lab, reader.id, timeout=1.0)
    text = str(caught.value).lower()
    assert "timeout" in text or "timed out" in text or plain.error_code(caught.value) == 2013


def test_hang_stops_backends_forked_while_it_is_stopping_the_node(aurora_lab: Lab) -> None:
    """Connections arriving during hang() must not leave a process of the node running."""
    from aurora_smartdriver.lab import _procs

    reader = aurora_lab.readers[0]
    stop = threading.Event()

    def connect_in_a_loop() -> None:
        while not stop.is_set():
            # Once the node is stopped every connect times out.
            with contextlib.suppress(Exception):
                plain.connect(aurora_lab, reader.id, timeout=1.0).close()

    clients = [threading.Thread(target=connect_in_a_loop) for _ in range(4)]
    for client in clients:
        client.start()
    time.sleep(0.3)
    try:
        aurora_lab.hang(reader.id)
        pid = aurora_lab.node(reader.id).pid or 0
        running = [m for m in _procs.tree(pid) if _procs.state(m) not in ("T", "t", "Z", "X", None)]
        assert running == [], f"processes of the hung node still running: {running}"
    finally:
        stop.set()
        for client in clients:
            client.join(10)
        aurora_lab.resume(reader.id)


def test_statement_on_a_hung_node_waits_until_resume(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0]
    conn = plain.connect(aurora_lab, reader.id, timeout=30.0)
    aurora_lab.hang(reader.id)
    done = threading.Event()
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(plain.query(conn, "SELECT 1"))
        except Exception as exc:
            outcome.append(exc)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert not done.wait(1.5), "a statement on a hung node must not complete"
    aurora_lab.resume(reader.id)
    assert done.wait(20)
    assert outcome == [[(1,)]]
    conn.close()


def test_read_timeout_cuts_a_statement_on_a_hung_mariadb_node(aurora_lab_mariadb: Lab) -> None:
    reader = aurora_lab_mariadb.readers[0]
    conn = plain.connect(aurora_lab_mariadb, reader.id, timeout=1.0)
    aurora_lab_mariadb.hang(reader.id)
    with pytest.raises(plain.DRIVER_ERRORS) as caught:
        plain.query(conn, "SELECT 1")
    assert plain.error_code(caught.value) == 2013


@pytest.mark.skipif(not lab_module.partition_available(), reason="needs root and iptables")
def test_partitioned_node_times_out_and_heals(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0]
    aurora_lab.partition(reader.id)
    assert aurora_lab.node(reader.id).partitioned
    with pytest.raises(OSError):
        socket.create_connection((reader.address, reader.port), timeout=1)
    aurora_lab.heal(reader.id)
    conn = plain.connect(aurora_lab, reader.id)
    assert plain.query(conn, "SELECT 1") == [(1,)]
    conn.close()


@pytest.mark.skipif(not lab_module.partition_available(), reason="needs root and iptables")
def test_mariadb_replica_leaving_a_partitioned_writer_waits_on_a_connect_to_it(
    aurora_lab_mariadb: Lab,
) -> None:
    # Why the lab's promotion kills the I/O thread first: a semi-sync replica's I/O thread, on
    # its way out, connects to its master to kill the dump thread there, and a partitioned
    # master leaves that connect unanswered (up to rpl_semi_sync_slave_kill_conn_timeout, 5 s).
    lab = aurora_lab_mariadb
    writer, reader = lab.writer, lab.readers[0]
    lab.partition(writer.id)
    find = "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_IO'"
    [(io_thread,)] = lab.execute(reader.id, find)
    lab.execute(reader.id, f"KILL {io_thread}")
    try:
        deadline = time.monotonic() + 2
        while not _connects_to(reader.pid, writer.address, writer.port):
            assert time.monotonic() < deadline, (
                "the killed I/O thread did not connect to its master"
            )
            time.sleep(0.01)
        still = f"SELECT COMMAND FROM information_schema.PROCESSLIST WHERE ID = {io_thread}"
        assert lab.execute(reader.id, still) == [("Killed",)]  # left its read, not yet gone
    finally:
        lab.heal(writer.id)
        lab.execute(reader.id, "STOP SLAVE")
        lab.execute(reader.id, "START SLAVE")


def test_partition_rules_are_removed_on_tear_down(aurora_lab_factory: object) -> None:
    if not lab_module.partition_available():
        pytest.skip("needs root and iptables")
    from aurora_smartdriver.lab._firewall import leftover_rules

    lab: Lab = aurora_lab_factory("postgresql", replicas=0)  # type: ignore[operator]
    prefix = lab.state().prefix
    lab.partition(lab.writer.id)
    assert leftover_rules(prefix)
    lab.down()
    assert leftover_rules(prefix) == []


def test_proxy_adds_latency_blackholes_and_resets(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0]
    proxy = aurora_lab.proxy(reader.id)
    address, _port = proxy.address
    conn = plain.connect_address(aurora_lab, address, timeout=1.0)
    assert plain.query(conn, "SELECT 1") == [(1,)]
    proxy.set_latency(0.2)
    started = time.monotonic()
    plain.query(conn, "SELECT 1")
    assert time.monotonic() - started >= 0.2
    proxy.set_latency(0.0)
    proxy.reset()
    with pytest.raises(plain.DRIVER_ERRORS):
        plain.query(conn, "SELECT 1")
    conn.close()
    proxy.restore()
    proxy.blackhole()
    with pytest.raises(plain.DRIVER_ERRORS):
        plain.connect_address(aurora_lab, address, timeout=1.0)
    proxy.restore()
    conn = plain.connect_address(aurora_lab, address, timeout=1.0)
    assert plain.query(conn, "SELECT 1") == [(1,)]
    conn.close()


def test_restart_brings_a_crashed_replica_back_in_its_role(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0]
    aurora_lab.crash(reader.id)
    aurora_lab.restart(reader.id)
    assert aurora_lab.node(reader.id).status == "running"
    conn = plain.connect(aurora_lab, reader.id)
    with pytest.raises(plain.DRIVER_ERRORS) as caught:
        plain.query(conn, "CREATE TABLE after_restart (x INT)")
    assert plain.is_read_only_error(caught.value)
    conn.close()
