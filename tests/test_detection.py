"""Hung and partitioned nodes against the lab: what the watchdog and TCP may and may not cut.

The watchdog cuts the connections in use on an instance only when its probe, once connected,
stops answering. Everything else that can go wrong with the probe (it cannot be opened) is no
evidence against the connections already open. The library's own sockets carry TCP keepalives
and TCP_USER_TIMEOUT, so a partitioned node is left behind by the kernel even with no probe.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aurora_smartdriver as asd
from aurora_smartdriver import events
from aurora_smartdriver._runtime import Runtime
from aurora_smartdriver.dsn import parse
from aurora_smartdriver.lab import Lab, NodeInfo, partition_available
from aurora_smartdriver.lab._dns import ARecord, DNSServer, Zone
from aurora_smartdriver.lab._supervisor import zone_of
from aurora_smartdriver.pool import Target
from aurora_smartdriver.resolver import TcpKeepalive
from aurora_smartdriver.watchdog import HostWatch

_DETECTION = 0.6
"""The watchdog's window in these tests: a statement of several windows outlives any verdict."""


def _postgresql(lab: Lab) -> bool:
    return lab.state().engine == "postgresql"


def _sleep(lab: Lab, seconds: float) -> str:
    return f"SELECT pg_sleep({seconds})" if _postgresql(lab) else f"SELECT SLEEP({seconds})"


@contextlib.contextmanager
def _runtime(lab: Lab, **overrides: Any) -> Iterator[Runtime]:
    """The library's machinery for the lab's cluster, with a cluster of its own."""
    runtime = Runtime(parse(lab.dsn, cluster_id=uuid.uuid4().hex, **overrides))
    try:
        yield runtime
    finally:
        runtime.close()


def _target(lab: Lab, node: str, *, host: str | None = None) -> Target:
    info = lab.node(node)
    return Target(info.id, host or info.host, info.port)


def _statement_under_a_watch(
    runtime: Runtime, raw: Any, target: Target, opener: Callable[[float], Any], sql: str
) -> tuple[BaseException | None, HostWatch]:
    """Run ``sql`` on ``raw`` while a watch with ``opener`` as its probe watches it."""
    watch = HostWatch(
        target, opener, runtime.adapter, detection_time=_DETECTION, on_dead=lambda t, s, a: None
    )
    watch.add(raw)
    try:
        runtime.adapter.query(raw, sql)
    except Exception as exc:
        return exc, watch
    finally:
        watch.discard(raw)
    return None, watch


def _assert_nothing_cut(outcome: BaseException | None, watch: HostWatch) -> None:
    assert outcome is None, f"the statement in use was cut: {outcome!r}"
    assert watch.verdicts == 0
    assert watch.open_failures > 0  # the watch did try, and failed, to open its probe


def test_a_probe_whose_login_is_refused_cuts_no_connection_in_use(aurora_lab: Lab) -> None:
    node = aurora_lab.writer.id
    with _runtime(aurora_lab) as good, _runtime(aurora_lab, password="not-the-password") as bad:
        target = _target(aurora_lab, node)
        opener = bad._opener_for(target)
        with pytest.raises(asd.AuthenticationFailed):
            opener(5.0)
        raw = good.open(target)
        try:
            outcome, watch = _statement_under_a_watch(
                good, raw, target, opener, _sleep(aurora_lab, 5 * _DETECTION)
            )
        finally:
            good.adapter.close(raw)
    _assert_nothing_cut(outcome, watch)


def test_a_probe_whose_name_does_not_resolve_cuts_no_connection_in_use(aurora_lab: Lab) -> None:
    node = aurora_lab.writer.id
    with _runtime(aurora_lab) as runtime:
        target = _target(aurora_lab, node)
        # The instance endpoint stops resolving (NXDOMAIN from the lab's DNS) for the probe.
        unresolvable = _target(aurora_lab, node, host=f"gone-{uuid.uuid4().hex[:8]}.{target.host}")
        opener = runtime._opener_for(unresolvable)
        with pytest.raises(OSError):
            opener(5.0)
        raw = runtime.open(target)
        try:
            outcome, watch = _statement_under_a_watch(
                runtime, raw, unresolvable, opener, _sleep(aurora_lab, 5 * _DETECTION)
            )
        finally:
            runtime.adapter.close(raw)
    _assert_nothing_cut(outcome, watch)


def test_a_probe_whose_session_init_fails_cuts_no_connection_in_use(aurora_lab: Lab) -> None:
    node = aurora_lab.writer.id
    broken = "SELECT no_such_column FROM no_such_table_for_the_probe"
    with _runtime(aurora_lab) as good, _runtime(aurora_lab, session_init=broken) as bad:
        target = _target(aurora_lab, node)
        opener = bad._opener_for(target)
        with pytest.raises(bad.adapter.Error):
            opener(5.0)
        raw = good.open(target)
        try:
            outcome, watch = _statement_under_a_watch(
                good, raw, target, opener, _sleep(aurora_lab, 5 * _DETECTION)
            )
        finally:
            good.adapter.close(raw)
    _assert_nothing_cut(outcome, watch)


@contextlib.contextmanager
def _connections_filled(lab: Lab, runtime: Runtime, node: str) -> Iterator[None]:
    """No new connection of the application's user is accepted by ``node`` while inside.

    MariaDB: ``max_connections`` lowered to a few more than the connections open now (other
    tests' machinery lingers for a while with connections of its own: below that count the
    lab's administrator could not log in again to put it back) and the rest filled with held
    connections. PostgreSQL (``max_connections`` changes only with a restart): the user's
    connection limit is the limit reached, refused with the same SQLSTATE 53300.
    """
    state = lab.state()
    held: list[Any] = []
    target = _target(lab, node)
    if _postgresql(lab):
        lab.execute(node, f'ALTER ROLE "{state.user}" CONNECTION LIMIT 0')
    else:
        (limit,) = lab.execute(node, "SELECT @@max_connections")[0]
        (open_now,) = lab.execute(node, "SELECT COUNT(*) FROM information_schema.processlist")[0]
        lowered = int(str(open_now)) + 5
        assert lowered < int(str(limit)), (open_now, limit)
        lab.execute(node, f"SET GLOBAL max_connections = {lowered}")
    try:
        if not _postgresql(lab):
            for _ in range(lowered + 5):
                try:
                    held.append(runtime.open(target))
                except runtime.adapter.Error as exc:
                    assert exc.args[0] == 1040, exc  # Too many connections
                    break
            else:
                pytest.fail(f"max_connections={lowered} never refused a connection")
        yield
    finally:
        for raw in held:
            runtime.adapter.close(raw)
        if _postgresql(lab):
            lab.execute(node, f'ALTER ROLE "{state.user}" CONNECTION LIMIT -1')
        else:
            lab.execute(node, f"SET GLOBAL max_connections = {limit}")


def test_a_probe_refused_for_too_many_connections_cuts_no_connection_in_use(
    aurora_lab: Lab,
) -> None:
    node = aurora_lab.writer.id
    with _runtime(aurora_lab) as runtime:
        target = _target(aurora_lab, node)
        opener = runtime._opener_for(target)
        raw = runtime.open(target)
        try:
            with _connections_filled(aurora_lab, runtime, node):
                with pytest.raises(runtime.adapter.Error, match=r"(?i)too many"):
                    opener(5.0)
                outcome, watch = _statement_under_a_watch(
                    runtime, raw, target, opener, _sleep(aurora_lab, 5 * _DETECTION)
                )
        finally:
            runtime.adapter.close(raw)
    _assert_nothing_cut(outcome, watch)


def test_a_long_statement_on_a_healthy_writer_survives_the_default_detection(
    aurora_lab: Lab,
) -> None:
    seen: list[events.Event] = []
    events.subscribe(seen.append)
    autocommit: Any = "on" if _postgresql(aurora_lab) else True
    conn = asd.connect(aurora_lab.dsn, cluster_id=uuid.uuid4().hex, autocommit=autocommit)
    try:
        old = conn.instance_id
        cur = conn.cursor()
        cur.execute(_sleep(aurora_lab, 4))  # twice the default failure_detection_time
        assert len(cur.fetchall()) == 1
        assert conn.instance_id == old
    finally:
        conn.close()
        events.unsubscribe(seen.append)
    assert [e for e in seen if e.name in ("host_unresponsive", "failover_started")] == []


@given(st.floats(min_value=0.001, max_value=86_400.0))
def test_keepalive_timers_give_a_silent_peer_up_within_the_window(window: float) -> None:
    plan = TcpKeepalive.for_window(window)
    assert min(plan.idle, plan.interval, plan.count, plan.user_timeout_ms) >= 1
    assert plan.user_timeout_ms == max(1, round(window * 1000))
    given_up = plan.idle + plan.interval * plan.count  # without TCP_USER_TIMEOUT
    if window >= 2:  # the timers count whole seconds, at least one each
        assert given_up <= window
        assert given_up > window - plan.interval - 1
    else:
        assert given_up == 2


def _tcp_options(fd: int) -> dict[str, int]:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()


def _fd(lab: Lab, raw: Any) -> int:
    return int(raw.pgconn.socket) if _postgresql(lab) else int(raw._sock.fileno())


def test_library_sockets_carry_keepalives_and_a_user_timeout(aurora_lab: Lab) -> None:
    with _runtime(aurora_lab, failure_detection_time="3s") as runtime:
        raw = runtime.open(_target(aurora_lab, aurora_lab.writer.id))
        try:
            options = _tcp_options(_fd(aurora_lab, raw))
        finally:
            runtime.adapter.close(raw)
    assert options["keepalive"] == 1
    assert options["user_timeout_ms"] == 3000
    # Probes start within the window and a dead peer is given up after it.
    assert options["idle"] + options["interval"] * options["count"] <= 3 + 1
    assert options["idle"] < 3


def test_keepalive_parameters_the_user_gave_are_kept(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql
    with _runtime(lab, keepalives_idle=7, tcp_user_timeout=9000) as runtime:
        raw = runtime.open(_target(lab, lab.writer.id))
        try:
            options = _tcp_options(_fd(lab, raw))
        finally:
            runtime.adapter.close(raw)
    assert options["idle"] == 7
    assert options["user_timeout_ms"] == 9000


@pytest.mark.skipif(not partition_available(), reason="needs root and iptables")
def test_a_statement_on_a_partitioned_node_fails_without_any_probe(aurora_lab: Lab) -> None:
    """TCP alone (keepalives, TCP_USER_TIMEOUT) leaves a cut-off node behind: no watchdog here."""
    node = aurora_lab.readers[0].id
    with _runtime(aurora_lab) as runtime:
        raw = runtime.open(_target(aurora_lab, node))
        outcome: list[BaseException | None] = []
        started = threading.Event()

        def wait_on_the_node() -> None:
            started.set()
            try:
                runtime.adapter.query(raw, _sleep(aurora_lab, 30))
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=wait_on_the_node, daemon=True)
        worker.start()
        started.wait(5)
        runtime.adapter.query(runtime.open(_target(aurora_lab, node)), "SELECT 1")  # a round trip
        aurora_lab.partition(node)
        # Two default detection windows pass in about 4 s; the statement itself lasts 30 s.
        worker.join(20)
        alive = worker.is_alive()
        aurora_lab.heal(node)
        runtime.adapter.close(raw)
    assert not alive, "the statement on the partitioned node was never cut"
    assert len(outcome) == 1
    assert isinstance(outcome[0], runtime.adapter.Error)
    assert runtime.adapter.error_kind(outcome[0]) == "disconnect"


@contextlib.contextmanager
def _moving_name(
    lab: Lab, first: NodeInfo
) -> Iterator[tuple[str, str, Callable[[NodeInfo], None]]]:
    """A DNS server of the test's own: the lab's names and one more, which leads to ``first``
    until moved (TTL 0), as a cluster endpoint follows the writer. Yields the server (as the
    ``dns_server`` setting), the name and the function that moves it to another node."""
    name = f"moving-{uuid.uuid4().hex[:8]}.{lab.state().origin}"
    leads_to = [first.address]

    def zone() -> Zone:
        base = zone_of(lab.state(), time.time())
        return Zone(base.origin, {**base.records, name + ".": ARecord((leads_to[0],), 0)})

    def move(node: NodeInfo) -> None:
        leads_to[0] = node.address

    with DNSServer("127.0.0.1", 0, zone) as server:
        address, port = server.address
        yield f"{address}:{port}", name, move


@pytest.mark.skipif(not partition_available(), reason="needs root and iptables")
def test_a_node_is_watched_where_its_connections_went_not_where_its_name_leads_now(
    aurora_lab: Lab,
) -> None:
    """A connection opened through a name that has moved to another node since (a cluster
    endpoint, a static writer, after a failover) is watched on the node it went to: when that
    node falls silent, the verdict comes although the name now answers from a healthy node."""
    old, new = aurora_lab.readers[0], aurora_lab.readers[1]
    with (
        _moving_name(aurora_lab, old) as (dns_server, name, move),
        _runtime(
            aurora_lab,
            dns_server=dns_server,
            dns_ttl_cap="0s",
            failure_detection_time=f"{_DETECTION}s",
        ) as runtime,
    ):
        target = Target(old.id, name, old.port)
        raw = runtime.open(target)  # through the name, to the old node
        move(new)
        runtime.watchdog.watch(target, raw)
        try:
            deadline = time.monotonic() + 30
            while not runtime.watchdog.probing(old.id) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert runtime.watchdog.probing(old.id)
            aurora_lab.partition(old.id)
            deadline = time.monotonic() + 30 * _DETECTION
            while runtime.watchdog.verdicts() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            verdicts = runtime.watchdog.verdicts()
            with pytest.raises(runtime.adapter.Error) as cut:
                runtime.adapter.query(raw, "SELECT 1")
        finally:
            runtime.watchdog.unwatch(target, raw)
            runtime.adapter.close(raw)
            aurora_lab.heal(old.id)
    assert verdicts == 1, "the silent node's connection was never judged"
    assert runtime.adapter.error_kind(cut.value) == "disconnect"
