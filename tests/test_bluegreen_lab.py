"""Blue/Green switchovers on the session labs: the lab's imitation, and what the library does."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import events
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._bluegreen import extra_nodes
from aurora_smartdriver.lab._ledger import Ledger
from aurora_smartdriver.lab._state import NodeState


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _metadata(lab: Lab, node: NodeState | None) -> list[tuple[object, ...]]:
    state = lab.state()
    sql = (
        "SELECT id, endpoint, port, role, status, version FROM rds_tools.show_topology('t')"
        if state.engine == "postgresql"
        else "SELECT id, endpoint, port, role, status, version FROM mysql.rds_topology"
    )
    assert node is not None
    return lab.engine.execute(state, node, sql)


def _app_sessions(lab: Lab, node: NodeState, user: str | None = None) -> list[tuple[object, ...]]:
    """The sessions of ``user`` (the lab's application user by default) on ``node``: who,
    since when, doing what."""
    state = lab.state()
    user = user or state.user
    sql = (
        "SELECT pid, application_name, client_addr, backend_start, state, query"
        f" FROM pg_stat_activity WHERE usename = '{user}'"
        if state.engine == "postgresql"
        else "SELECT id, host, db, command, time, state, info FROM information_schema.processlist"
        f" WHERE user = '{user}'"
    )
    return lab.engine.execute(state, node, sql)


def _own_login(lab: Lab) -> tuple[str, str]:
    """A login of the test's own (created before the deployment, so green has it too) and the
    lab's DSN with it: the sessions it finds are this test's, not those of another test's
    machinery still lingering in the process."""
    state = lab.state()
    user, password = f"bg_{uuid.uuid4().hex[:8]}", "bg-pw-123"
    if state.engine == "postgresql":
        lab.execute(
            lab.writer, f"CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE {state.user}"
        )
        # It acts as the application's role: tables it creates (the ledger's) are the
        # application's, usable by the tests that come after as the application's user.
        lab.execute(lab.writer, f"ALTER ROLE {user} SET role TO {state.user}")
    else:
        lab.execute(lab.writer, f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
        lab.execute(lab.writer, f"GRANT ALL ON *.* TO '{user}'@'%'")
        # as the lab's application user: no read_only bypass (ALL includes it)
        lab.execute(lab.writer, f"REVOKE READ_ONLY ADMIN, SUPER ON *.* FROM '{user}'@'%'")
    lab.wait_replicated()
    scheme, rest = lab.dsn.split("://", 1)
    return user, f"{scheme}://{user}:{password}@{rest.split('@', 1)[1]}"


@pytest.fixture
def phases() -> Iterator[list[events.Event]]:
    seen: list[events.Event] = []

    def hook(event: events.Event) -> None:
        if event.name.startswith("blue_green"):
            seen.append(event)

    events.subscribe(hook)
    yield seen
    events.unsubscribe(hook)


def test_the_metadata_walks_the_real_statuses_and_names_move(aurora_lab: Lab) -> None:
    writer_before = aurora_lab.state().writer
    assert writer_before is not None
    created = aurora_lab.blue_green_create()
    blue = list(created["blue"])  # the writer first, whichever node an earlier test promoted
    assert blue[0] == writer_before.id
    assert sorted(blue) == sorted(n.id for n in aurora_lab.nodes)
    state = aurora_lab.state()
    green = extra_nodes(state)
    assert [g.id for g in green] == created["green"]
    assert all(g.id.startswith(b + "-green-") for b, g in zip(blue, green, strict=True))
    for node in [*state.nodes, *green]:  # published on every node of both environments
        rows = _metadata(aurora_lab, node)
        roles = {str(r[1]).split(".")[0]: r[3] for r in rows}
        assert {str(r[4]) for r in rows} == {"AVAILABLE"}
        assert {str(r[5]) for r in rows} == {"1.0"}
        assert {k for k, v in roles.items() if v == "BLUE_GREEN_DEPLOYMENT_SOURCE"} == set(blue)
        assert {k for k, v in roles.items() if v == "BLUE_GREEN_DEPLOYMENT_TARGET"} == {
            g.id for g in green
        }
    old_writer = state.writer
    assert old_writer is not None
    report = aurora_lab.blue_green_switchover(in_progress_s=0.2)
    state = aurora_lab.state()
    assert [n.id for n in state.nodes] == blue  # the green nodes, under the blue names
    assert [n.address for n in state.nodes] == [g.address for g in green]
    old = extra_nodes(state)
    assert [n.id for n in old] == [b + "-old1" for b in blue]
    assert old[0].address == old_writer.address
    assert report.started_at <= report.in_progress_at <= report.promoted_at <= report.completed_at
    for node in [*state.nodes, *old]:  # both environments say it is over
        rows = _metadata(aurora_lab, node)
        assert {str(r[4]) for r in rows} == {"SWITCHOVER_COMPLETED"}
        names = {str(r[1]).split(".")[0] for r in rows}
        assert names == {*blue, *(b + "-old1" for b in blue)}
    # The new writer takes writes and its readers get them; restore() gives a plain cluster.
    aurora_lab.execute(aurora_lab.writer, "CREATE TABLE bg_probe (x INT)")
    aurora_lab.execute(aurora_lab.writer, "INSERT INTO bg_probe VALUES (7)")
    aurora_lab.wait_replicated()
    assert aurora_lab.execute(aurora_lab.readers[0], "SELECT x FROM bg_probe") == [(7,)]
    aurora_lab.execute(aurora_lab.writer, "DROP TABLE bg_probe")
    assert aurora_lab.restore()
    assert aurora_lab.state().blue_green is None
    assert {r[3] for r in _metadata(aurora_lab, aurora_lab.state().writer)} == {None}


def test_switchover_under_write_load_loses_nothing_and_never_uses_old_blue(
    aurora_lab: Lab, phases: list[events.Event]
) -> None:
    engine = aurora_lab.state().engine
    user, dsn = _own_login(aurora_lab)
    aurora_lab.blue_green_create()
    observer_id = f"bg-{uuid.uuid4().hex[:8]}"
    observer = asd.Cluster(dsn, cluster_id=observer_id)
    ledger = Ledger(
        dsn,
        engine,
        writers=(
            ("connect", "autocommit"),
            ("connect", "transaction"),
            ("cluster", "autocommit"),
            ("cluster", "transaction"),
        ),
    )
    try:
        observer.topology  # noqa: B018 - the first refresh reads the deployment too
        _until(lambda: observer.stats()["blue_green"].phase == "created", "the deployment")
        ledger.start()
        _until(lambda: ledger.acknowledged() >= 50, "writes before the switchover")
        green_writer = extra_nodes(aurora_lab.state())[0]
        # DNS keeps naming the old blue nodes for the rest of the test.
        report = aurora_lab.blue_green_switchover(in_progress_s=1.0, dns_lag=120.0)
        before = ledger.acknowledged()
        _until(lambda: ledger.acknowledged() >= before + 50, "writes after the switchover")
        result = ledger.stop()
        _until(lambda: observer.stats()["blue_green"].phase == "completed", "completion")
        assert time.time() < report.dns_flip_at  # DNS still leads to the old blue writer
        with observer.writer() as conn:  # ... and the library goes to green anyway
            server = _server(conn, engine)
        stats = observer.stats()["blue_green"]
    finally:
        ledger.stop()
        observer.close()
    print(f"\n{engine}: {result}; observer {stats}")
    assert result.ok, result
    assert result.acknowledged >= 100
    assert not result.lost and not result.twice
    assert stats.hold_timeouts == 0  # every hold ended with the switchover, none by the budget
    assert stats.substituted >= 1
    assert server == (
        green_writer.address if engine == "postgresql" else str(green_writer.server_id)
    )
    state = aurora_lab.state()
    for node in extra_nodes(state):  # nothing of the application reached an old blue node
        assert _app_sessions(aurora_lab, node, user) == [], node.id
    names = [(e.cluster, e.fields.get("new")) for e in phases if e.name == "blue_green_phase"]
    assert (observer_id, "completed") in names


def test_the_ledgers_audit_after_a_switchover_keeps_what_its_writers_learned(
    aurora_lab_mariadb: Lab,
) -> None:
    # Writers that are all Clusters: closing the last one closes the cluster's machinery at
    # once (no linger). The audit after a switchover with DNS still on old blue must still be
    # made with what the writers' monitor learned in time, not as a process that joins late
    # (which refuses old blue until DNS catches up: 120 s here).
    lab = aurora_lab_mariadb
    _, dsn = _own_login(lab)
    lab.blue_green_create()
    ledger = Ledger(dsn, "mariadb", writers=(("cluster", "autocommit"),)).start()
    _until(lambda: ledger.acknowledged() >= 20, "writes before the switchover")
    lab.blue_green_switchover(in_progress_s=0.5, dns_lag=120.0)
    before = ledger.acknowledged()
    _until(lambda: ledger.acknowledged() >= before + 20, "writes after the switchover")
    started = time.monotonic()
    result = ledger.stop()
    assert result.ok, result
    assert not result.lost and not result.twice
    assert time.monotonic() - started < 20  # not a late joiner's wait for DNS


def _server(conn: object, engine: str) -> str:
    cur = conn.cursor()  # type: ignore[attr-defined]
    cur.execute(
        "SELECT inet_server_addr()::text"
        if engine == "postgresql"
        else "SELECT @@port, @@server_id"
    )
    row = cur.fetchone()
    return str(row[0]).split("/")[0] if engine == "postgresql" else str(row[1])


def test_a_connection_asked_for_during_the_switchover_waits_and_lands_on_green(
    aurora_lab: Lab,
) -> None:
    engine = aurora_lab.state().engine
    aurora_lab.blue_green_create()
    green_writer = extra_nodes(aurora_lab.state())[0]
    dsn = aurora_lab.dsn
    observer = asd.Cluster(dsn, cluster_id=f"bg-{uuid.uuid4().hex[:8]}", failover_timeout=60)
    done: list[object] = []
    try:
        _until(lambda: observer.stats()["blue_green"].phase == "created", "the deployment")
        switch = threading.Thread(
            target=lambda: done.append(aurora_lab.blue_green_switchover(in_progress_s=4.0))
        )
        switch.start()
        _until(lambda: observer.stats()["blue_green"].phase == "in_progress", "in progress")
        with observer.writer() as conn:  # a new connection: held until the switchover ends
            server = _server(conn, engine)
            conn.cursor().execute("SELECT 1")
        switch.join(60)
        stats = observer.stats()["blue_green"]
    finally:
        observer.close()
    assert done, "the switchover did not finish"
    want = green_writer.address if engine == "postgresql" else str(green_writer.server_id)
    assert server == want
    assert stats.held >= 1
    assert stats.hold_timeouts == 0


def test_a_process_that_starts_after_the_switchover_never_uses_old_blue(
    aurora_lab: Lab,
) -> None:
    """The library first hears of the deployment when it is over, while DNS still names the
    old blue instances (a service started or scaled out in that window): it learned no green
    address, yet neither the monitor nor a connection may land on an instance replaced."""
    engine = aurora_lab.state().engine
    user, dsn = _own_login(aurora_lab)
    aurora_lab.blue_green_create()
    green = extra_nodes(aurora_lab.state())
    report = aurora_lab.blue_green_switchover(in_progress_s=0.2, dns_lag=4.0)
    old = extra_nodes(aurora_lab.state())
    seen = {n.address if engine == "postgresql" else str(n.server_id) for n in old}
    late = asd.Cluster(dsn, cluster_id=f"bg-{uuid.uuid4().hex[:8]}", failover_timeout=60)
    servers = []
    try:
        assert time.time() < report.dns_flip_at  # DNS still leads to the old blue nodes
        with late.writer() as conn:
            servers.append(_server(conn, engine))
        with late.reader() as conn:
            servers.append(_server(conn, engine))
    finally:
        late.close()
    want = green[0].address if engine == "postgresql" else str(green[0].server_id)
    assert servers[0] == want
    assert not set(servers) & seen, servers
    for node in old:  # the monitor and the watchdog's probes included
        assert _app_sessions(aurora_lab, node, user) == [], node.id


def test_a_switchover_stuck_in_progress_holds_connections_only_for_the_budget(
    aurora_lab: Lab,
) -> None:
    # The AWS wrappers' plugin stayed "in progress" after a switchover and blocked every new
    # connection (aws-advanced-jdbc-wrapper#1920): here the metadata says IN_PROGRESS for good.
    from aurora_smartdriver.lab import _bluegreen

    aurora_lab.blue_green_create()
    state = aurora_lab.state()
    assert state.writer is not None
    _bluegreen._set_status(aurora_lab, state, state.writer, "SWITCHOVER_IN_PROGRESS")
    observer = asd.Cluster(
        aurora_lab.dsn, cluster_id=f"bg-{uuid.uuid4().hex[:8]}", blue_green_hold_timeout=1
    )
    try:
        _until(lambda: observer.stats()["blue_green"].phase == "in_progress", "in progress")
        for _ in range(3):  # the first waits out the budget; the later ones do not wait at all
            conn = asd.connect(aurora_lab.dsn, cluster_id=observer.spec.settings.cluster_id)
            conn.cursor().execute("SELECT 1")
            conn.close()
        stats = observer.stats()["blue_green"]
    finally:
        observer.close()
    assert stats.phase == "in_progress"
    assert stats.held == 1
    assert stats.hold_timeouts == 1


@pytest.mark.asyncio
async def test_an_async_connection_asked_for_during_the_switchover_waits_and_lands_on_green(
    aurora_lab: Lab,
) -> None:
    import asyncio

    import aurora_smartdriver.aio as aio
    from aurora_smartdriver.aio.connection import PsycopgAsyncConnection

    engine = aurora_lab.state().engine
    await asyncio.to_thread(aurora_lab.blue_green_create)
    green_writer = extra_nodes(aurora_lab.state())[0]
    cluster_id = f"bg-{uuid.uuid4().hex[:8]}"
    observer = asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id, failover_timeout=60)
    try:
        await asyncio.to_thread(
            _until, lambda: observer.stats()["blue_green"].phase == "created", "the deployment"
        )
        switch = asyncio.create_task(
            asyncio.to_thread(aurora_lab.blue_green_switchover, in_progress_s=4.0)
        )
        await asyncio.to_thread(
            _until, lambda: observer.stats()["blue_green"].phase == "in_progress", "in progress"
        )
        conn = await aio.connect(aurora_lab.dsn, cluster_id=cluster_id, failover_timeout=60)
        pg = isinstance(conn, PsycopgAsyncConnection)
        try:
            cur = conn.cursor() if pg else await conn.cursor()
            await cur.execute(
                "SELECT inet_server_addr()::text" if pg else "SELECT @@port, @@server_id"
            )
            row = await cur.fetchone()
        finally:
            await (conn.close() if pg else conn.ensure_closed())
        await switch
        stats = observer.stats()["blue_green"]
    finally:
        observer.close()
    server = str(row[0]).split("/")[0] if engine == "postgresql" else str(row[1])
    assert server == (
        green_writer.address if engine == "postgresql" else str(green_writer.server_id)
    )
    assert stats.held >= 1
    assert stats.hold_timeouts == 0
