"""RDS Proxy against the lab, both engines: connections through a proxy endpoint stay on it
(the server sees the proxy as its client), the topology names the proxy's endpoints and no
instance, reader connections use the read-only endpoint, a read-only endpoint refuses writer
connections, and a writer failover behind the proxy keeps every promise of the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import psycopg
import pymysql
import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import ConfigError, FailoverSucceeded, _runtime, aio, dsn
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab import _state as st
from aurora_smartdriver.lab._ledger import Ledger
from aurora_smartdriver.lab._net import free_port
from aurora_smartdriver.lab._rds_proxy import RdsProxyFront
from tests import plain

_LAB_CLI = (sys.executable, "-m", "aurora_smartdriver", "lab")


def _client_address_sql(lab: Lab) -> str:
    """The address the server sees this session coming from."""
    if lab.state().engine == "postgresql":
        return "SELECT host(inet_client_addr())"
    return (
        "SELECT SUBSTRING_INDEX(host, ':', 1) FROM information_schema.processlist "
        "WHERE id = CONNECTION_ID()"
    )


def _reader_sql(lab: Lab) -> str:
    """True on a replica."""
    if lab.state().engine == "postgresql":
        return "SELECT pg_is_in_recovery()"
    return "SELECT @@read_only"


def _one(conn: object, sql: str) -> object:
    cur = conn.cursor()  # type: ignore[attr-defined]
    cur.execute(sql)
    value = cur.fetchone()[0]
    cur.close()
    return value


def _address(lab: Lab, name: str) -> str:
    return next(e.address for e in lab.state().proxy_endpoints if e.name == name)


def _own(dsn: str) -> str:
    return dsn + f"&cluster_id={uuid.uuid4().hex}&fast_refresh_interval=0.05s"


def test_connection_through_the_proxy_reaches_the_server_from_the_proxy(aurora_lab: Lab) -> None:
    dsn = _own(aurora_lab.rds_proxy_dsn())
    conn = asd.connect(dsn)
    try:
        assert _one(conn, _client_address_sql(aurora_lab)) == _address(aurora_lab, "default")
        assert not _one(conn, _reader_sql(aurora_lab))
    finally:
        conn.close()


def test_an_instance_host_pattern_does_not_lead_around_the_proxy(aurora_lab: Lab) -> None:
    pattern = aurora_lab.state().instance_host_pattern
    conn = asd.connect(_own(aurora_lab.rds_proxy_dsn()) + f"&instance_host_pattern={pattern}")
    try:
        assert _one(conn, _client_address_sql(aurora_lab)) == _address(aurora_lab, "default")
    finally:
        conn.close()


def test_topology_behind_the_proxy_names_its_endpoints_and_no_instance(aurora_lab: Lab) -> None:
    dsn = _own(aurora_lab.rds_proxy_dsn(read_only_endpoint="ro"))
    state = aurora_lab.state()
    with asd.Cluster(dsn) as cluster:
        with cluster.writer() as conn:
            _one(conn, "SELECT 1")
        topo = cluster.topology
        assert topo is not None
        assert topo.writer is not None
        assert topo.writer.host == state.proxy_endpoint("default")
        assert [r.host for r in topo.readers] == [state.proxy_endpoint("ro")]
        instances = {state.instance_endpoint(n.id) for n in state.nodes}
        assert not instances & {h.host for h in topo.hosts}
        # No topology query: outside a failover the monitor opens no connection at all.
        assert cluster.metrics().topology.connects == 0


def test_reader_connections_go_through_the_read_only_endpoint(aurora_lab: Lab) -> None:
    dsn = _own(aurora_lab.rds_proxy_dsn(read_only_endpoint="ro"))
    with asd.Cluster(dsn) as cluster:
        for _ in range(3):
            with cluster.reader() as conn:
                assert _one(conn, _client_address_sql(aurora_lab)) == _address(aurora_lab, "ro")
                assert _one(conn, _reader_sql(aurora_lab))
        with cluster.writer() as conn:
            assert _one(conn, _client_address_sql(aurora_lab)) == _address(aurora_lab, "default")


def test_connections_through_the_proxy_are_not_watched_by_probes(aurora_lab: Lab) -> None:
    """A probe would hear the proxy queue during a failover and cut what the proxy keeps."""
    runtime = _runtime.Runtime(
        dsn.parse(_own(aurora_lab.rds_proxy_dsn()) + "&failure_detection_time=0.3s")
    )
    try:
        lease = runtime.lease("writer", pooled=False)
        try:
            time.sleep(1.0)  # a watch would have opened its probe within 0.1 s
            assert not runtime.watchdog.probing(lease.target.instance_id)
            assert lease.target.host == aurora_lab.state().proxy_endpoint("default")
        finally:
            lease.give_back()
    finally:
        runtime.close()


def test_a_read_only_endpoint_refuses_writer_connections_and_serves_readers(
    aurora_lab: Lab,
) -> None:
    aurora_lab.add_rds_proxy_endpoint("reports", "read_only")
    dsn = _own(aurora_lab.rds_proxy_dsn("reports"))
    with pytest.raises(ConfigError, match="read-only RDS Proxy endpoint"):
        asd.connect(dsn)
    conn = asd.connect(dsn, role="reader")
    try:
        assert _one(conn, _client_address_sql(aurora_lab)) == _address(aurora_lab, "reports")
    finally:
        conn.close()


def test_an_endpoint_added_after_one_was_removed_gets_an_address_of_its_own(
    aurora_lab: Lab,
) -> None:
    # The removed endpoint's listener closes a moment later: on the same address, connections
    # to the new endpoint landed in the closing listener's queue and were reset.
    aurora_lab.add_rds_proxy_endpoint("first")
    first = _address(aurora_lab, "first")
    aurora_lab.remove_rds_proxy_endpoint("first")
    aurora_lab.add_rds_proxy_endpoint("second")
    assert _address(aurora_lab, "second") != first


def test_no_host_left_says_why_the_last_one_failed(aurora_lab: Lab) -> None:
    # "no reader qualifies (reports excluded)" alone hides why it was excluded.
    aurora_lab.add_rds_proxy_endpoint("gone", "read_only")
    dsn = _own(aurora_lab.rds_proxy_dsn("gone"))
    aurora_lab.remove_rds_proxy_endpoint("gone")  # its name no longer resolves
    with pytest.raises(asd.NoHostAvailable) as caught:
        asd.connect(dsn + "&connect_timeout=1", role="reader")
    assert "excluded" in str(caught.value)
    assert caught.value.__cause__ is not None
    assert "gone" in str(caught.value.__cause__)


@pytest.mark.asyncio
async def test_no_host_left_says_why_the_last_one_failed_async(aurora_lab: Lab) -> None:
    aurora_lab.add_rds_proxy_endpoint("gone", "read_only")
    dsn = _own(aurora_lab.rds_proxy_dsn("gone"))
    aurora_lab.remove_rds_proxy_endpoint("gone")
    with pytest.raises(asd.NoHostAvailable) as caught:
        await aio.connect(dsn + "&connect_timeout=1", role="reader")
    assert "excluded" in str(caught.value)
    assert caught.value.__cause__ is not None


def test_transaction_cut_by_a_failover_behind_the_proxy_is_rolled_back_and_reconnected(
    aurora_lab: Lab,
) -> None:
    dsn = _own(aurora_lab.rds_proxy_dsn())
    table = f"t_{uuid.uuid4().hex[:8]}"
    conn = asd.connect(dsn)
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table} (v INT)")
        conn.commit()
        cur.execute(f"INSERT INTO {table} VALUES (1)")
        old = aurora_lab.writer.id
        aurora_lab.failover()
        with pytest.raises(FailoverSucceeded) as caught:
            cur.execute(f"INSERT INTO {table} VALUES (2)")
        assert caught.value.transaction_rolled_back
        # The same proxy name, now leading to the new writer.
        assert _one(conn, _client_address_sql(aurora_lab)) == _address(aurora_lab, "default")
        assert not _one(conn, _reader_sql(aurora_lab))
        assert aurora_lab.writer.id != old
        assert _one(conn, f"SELECT COUNT(*) FROM {table}") == 0
    finally:
        conn.close()


def test_writer_failover_behind_the_proxy_loses_nothing_and_applies_nothing_twice(
    aurora_lab: Lab,
) -> None:
    dsn = aurora_lab.rds_proxy_dsn()
    ledger = Ledger(dsn, aurora_lab.state().engine, fast_refresh_interval="0.05s").start()
    try:
        time.sleep(1.0)
        aurora_lab.failover()
        time.sleep(2.0)
    finally:
        report = ledger.stop()
    print(report)
    assert report.ok, (report, report.lost[:5], report.twice[:5], report.phantom[:5])
    assert report.acknowledged > 50
    assert report.errors == 0, report.error_samples


@pytest.mark.asyncio
async def test_async_transaction_cut_by_a_failover_behind_the_proxy_reconnects_to_the_proxy(
    aurora_lab: Lab,
) -> None:
    import aurora_smartdriver.aio as aio

    dsn = _own(aurora_lab.rds_proxy_dsn())
    sql = _client_address_sql(aurora_lab)
    table = f"t_{uuid.uuid4().hex[:8]}"
    conn = await aio.connect(dsn)
    try:
        cur = await _maybe(conn.cursor())
        await cur.execute(f"CREATE TABLE {table} (v INT)")
        await conn.commit()
        await cur.execute(f"INSERT INTO {table} VALUES (1)")
        await aurora_lab.aio.failover()
        with pytest.raises(FailoverSucceeded) as caught:
            await cur.execute(f"INSERT INTO {table} VALUES (2)")
        assert caught.value.transaction_rolled_back
        cur = await _maybe(conn.cursor())
        await cur.execute(sql)
        assert (await cur.fetchone())[0] == _address(aurora_lab, "default")
    finally:
        await _maybe(conn.close())


async def _maybe(value: Any) -> Any:
    """`value`, awaited when it is awaitable (aiomysql's cursor(), psycopg's close())."""
    return await value if inspect.isawaitable(value) else value


def test_a_writer_demoted_in_place_behind_the_proxy_is_waited_out_on_the_same_endpoint(
    aurora_lab_mariadb: Lab,
) -> None:
    """A read-only refusal through the read/write endpoint (its writer made read-only for a
    moment, as a demotion in place would): the library waits until the same endpoint leads to
    a writer again, rather than for another instance name the proxy never shows."""
    lab = aurora_lab_mariadb
    dsn = _own(lab.rds_proxy_dsn()) + "&failover_timeout=20s"
    table = f"t_{uuid.uuid4().hex[:8]}"
    writer = lab.writer.id
    conn = asd.connect(dsn, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute(f"CREATE TABLE {table} (v INT)")
        lab.execute(writer, "SET GLOBAL read_only = 1")
        timer = threading.Timer(1.0, lab.execute, args=(writer, "SET GLOBAL read_only = 0"))
        timer.start()
        try:
            with pytest.raises(FailoverSucceeded):
                cur.execute(f"INSERT INTO {table} VALUES (1)")
        finally:
            timer.join()
        cur = conn.cursor()
        cur.execute(f"INSERT INTO {table} VALUES (2)")
        assert _one(conn, f"SELECT COUNT(*) FROM {table}") == 1
    finally:
        lab.execute(writer, "SET GLOBAL read_only = 0")
        conn.close()


# -- the lab's imitation itself --------------------------------------------------------------
def test_the_lab_proxy_holds_new_connections_until_a_new_writer_accepts_them(
    aurora_lab: Lab,
) -> None:
    lab = aurora_lab
    # Waits long enough on both sides for a failover on a loaded machine.
    lab.add_rds_proxy_endpoint("held", borrow_timeout=120)
    address = _address(lab, "held")
    old = lab.writer.id
    lab.crash(old)  # no writer until the failover below promotes one
    got: list[object] = []

    def connect() -> None:
        try:
            conn = plain.connect_address(lab, address, timeout=120)
            got.append(_one(conn, _reader_sql(lab)))
            conn.close()
        except Exception as exc:
            got.append(exc)

    thread = threading.Thread(target=connect)
    thread.start()
    time.sleep(1.0)
    assert got == []  # held, not refused
    lab.failover()
    thread.join(150)
    assert len(got) == 1 and not isinstance(got[0], Exception), got
    assert not got[0]  # on the new writer
    assert lab.writer.id != old


def _echo_server() -> socket.socket:
    """A stand-in node on 127.0.0.1: echoes what each connection sends, until it closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        with contextlib.suppress(OSError):  # the server closed: the test is over
            while True:
                threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server


def _echoes(port: int) -> None:
    """Two round trips through the proxy listening on 127.0.0.1:`port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        for word in (b"ping", b"pong"):
            conn.sendall(word)
            assert conn.recv(16) == word


async def _loop_leftovers() -> tuple[list[str], list[int]]:
    """The tasks (but this one) and the descriptors registered in the running event loop."""
    loop = asyncio.get_running_loop()
    tasks = [
        t.get_coro().__qualname__ for t in asyncio.all_tasks() if t is not asyncio.current_task()
    ]
    return sorted(tasks), sorted(loop._selector.get_map())  # type: ignore[attr-defined]


def test_the_lab_proxy_cutting_a_connection_leaves_nothing_waiting_on_its_sockets() -> None:
    """An endpoint removed under an open connection: the connection's pipes end with it.

    Its two pipes were left waiting to read on the sockets closed under them, their descriptors
    still registered in the proxy's event loop; the next sockets given those numbers were never
    watched. A client held through a failover (the test above) then stalled with its startup
    packet in the proxy until PostgreSQL's authentication_timeout closed the session: "server
    closed the connection unexpectedly". Run in this process against a stand-in node, so the
    proxy's loop can be looked into."""
    server = _echo_server()
    node = st.NodeState(
        id="n-1",
        index=1,
        address="127.0.0.1",
        port=server.getsockname()[1],
        role="writer",
        status="running",
        datadir="",
        server_id=1,
        session_id="s-1",
    )
    state = st.LabState(
        engine="postgresql",
        name="n",
        cluster_hash="h",
        dir="",
        prefix="127.0.0",
        port=free_port("127.0.0.1"),
        user="u",
        password="p",
        database="d",
        repl_password="r",
        dns=st.DNSState("127.0.0.1", 0, 1, 0.0, "n-1"),
        nodes=[node],
    )
    front = RdsProxyFront(lambda: state)
    try:
        idle = asyncio.run_coroutine_threadsafe(_loop_leftovers(), front._loop).result(5)
        state.proxy_endpoints = [st.ProxyEndpointState("cut", "read_write", "127.0.0.1")]
        front.sync()
        _echoes(state.port)  # the proxy works
        with socket.create_connection(("127.0.0.1", state.port), timeout=5) as conn:
            conn.sendall(b"ping")
            assert conn.recv(16) == b"ping"  # both pipes now wait to read
            state.proxy_endpoints = []
            front.sync()  # the endpoint goes: its connection is cut
            with contextlib.suppress(ConnectionResetError):
                assert conn.recv(16) == b""
        left = asyncio.run_coroutine_threadsafe(_loop_leftovers(), front._loop).result(5)
        assert left == idle, "tasks or registrations outlived the connection"
        state.proxy_endpoints = [st.ProxyEndpointState("next", "read_write", "127.0.0.1")]
        front.sync()
        _echoes(state.port)
    finally:
        front.stop()
        server.close()


def test_the_lab_proxy_gives_up_after_its_borrow_timeout(aurora_lab: Lab) -> None:
    lab = aurora_lab
    lab.add_rds_proxy_endpoint("short", borrow_timeout=0.5)
    lab.crash(lab.writer.id)
    with pytest.raises((psycopg.OperationalError, pymysql.err.OperationalError)) as caught:
        plain.connect_address(lab, _address(lab, "short"), timeout=120)
    # The proxy cut the connection; the driver did not give up waiting for it.
    assert "timeout" not in str(caught.value) and "timed out" not in str(caught.value)


def test_proxy_endpoints_from_the_command_line(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql

    def cli(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [*_LAB_CLI, "rds-proxy", *args, "--state", str(lab.state_path), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    doc = cli("add", "ro", "--role", "read_only")
    [endpoint] = doc["proxy_endpoints"]
    assert (endpoint["name"], endpoint["role"]) == ("ro", "read_only")
    assert endpoint["host"] == lab.state().proxy_endpoint("ro")
    assert "rds_proxy=read_only" in endpoint["dsn"]
    assert plain.resolve(lab, endpoint["host"]) == [endpoint["address"]]
    assert cli("remove", "ro")["proxy_endpoints"] == []
