"""Lifecycle of the shared machinery: closing stops everything it started, in bounded time.

Against the lab: a closed cluster answers at once, its watchdog ends, an unresolvable host is
one more unreachable host, and a failover never brings back the pool of a departed instance.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.pool import Target
from aurora_smartdriver.resolver import ResolveError


def _query(conn: Any, sql: str) -> list[Any]:
    cur = conn.cursor()
    cur.execute(sql)
    return list(cur.fetchall()) if cur.description else []


def _in_thread(fn: Any, timeout: float) -> BaseException | None:
    """Run ``fn`` on a thread; the exception it raised, or a failure when it did not end."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"still running after {timeout}s")
    return outcome[0]


def test_a_lease_after_the_cluster_closed_under_a_connection_fails_at_once(
    aurora_lab: Lab,
) -> None:
    cluster = asd.Cluster(aurora_lab.dsn, cluster_id=uuid.uuid4().hex)
    runtime = cluster._runtime
    with cluster.writer() as conn:
        assert _query(conn, "SELECT 1") == [(1,)]
        cluster.close()  # while conn is in use
        error = _in_thread(lambda: runtime.lease("reader", pooled=True), timeout=5.0)
    assert isinstance(error, runtime.module.OperationalError)
    assert "closed" in str(error)


def test_close_stops_the_watchdog_threads(aurora_lab: Lab) -> None:
    before = set(threading.enumerate())
    cluster = asd.Cluster(aurora_lab.dsn, cluster_id=uuid.uuid4().hex)
    with cluster.writer() as conn:
        assert _query(conn, "SELECT 1") == [(1,)]
        watchers = [
            t
            for t in threading.enumerate()
            if t not in before and t.name.startswith("aurora-smartdriver-watch")
        ]
        assert watchers, "a connection in use is watched"
    cluster.close()
    deadline = time.monotonic() + 3.0
    while any(t.is_alive() for t in watchers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.is_alive() for t in watchers)


def test_an_unresolvable_reader_is_skipped_for_the_next(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    readers = aurora_lab.readers
    assert len(readers) >= 2
    bad = readers[0]
    with asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id) as cluster:
        resolver = cluster._runtime.resolver
        real = resolver.resolve

        def resolve(host: str) -> Any:
            if host == bad.host:
                raise ResolveError(f"cannot resolve {host!r}: no such name (test)")
            return real(host)

        resolver.resolve = resolve  # type: ignore[method-assign]
        try:
            for _ in range(4):
                conn = asd.connect(aurora_lab.dsn, cluster_id=cluster_id, role="reader")
                try:
                    assert conn.instance_id != bad.id
                finally:
                    conn.close()
        finally:
            resolver.resolve = real  # type: ignore[method-assign]


def test_an_unresolvable_writer_is_the_drivers_error(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    writer = aurora_lab.writer
    with asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id) as cluster:
        resolver = cluster._runtime.resolver
        real = resolver.resolve

        def resolve(host: str) -> Any:
            if host == writer.host:
                raise ResolveError(f"cannot resolve {host!r}: no such name (test)")
            return real(host)

        resolver.resolve = resolve  # type: ignore[method-assign]
        try:
            with pytest.raises(cluster._runtime.module.OperationalError):
                asd.connect(aurora_lab.dsn, cluster_id=cluster_id, failover_timeout="1s")
        finally:
            resolver.resolve = real  # type: ignore[method-assign]


def test_a_failover_on_a_departed_instance_makes_no_pool_for_it(aurora_lab: Lab) -> None:
    with asd.Cluster(aurora_lab.dsn, cluster_id=uuid.uuid4().hex) as cluster:
        runtime = cluster._runtime
        with cluster.writer() as conn:
            assert _query(conn, "SELECT 1") == [(1,)]
        gone = Target("departed-instance-9", "departed-instance-9.invalid", 5432)
        lease = runtime.fail_over(
            "reader", gone, "disconnect", pooled=True, cause=OSError("connection lost")
        )
        try:
            assert "departed-instance-9" not in runtime.pools.stats()
        finally:
            lease.give_back()


EXIT_SCRIPT = """
import sys, time
import aurora_smartdriver as asd
cluster = asd.Cluster(sys.argv[1], cluster_id=sys.argv[2], connect_timeout="4s")
conns = [asd.connect(sys.argv[1], cluster_id=sys.argv[2], connect_timeout="4s")]
with cluster.writer() as conn:
    conn.cursor().execute("SELECT 1")
print("ready", flush=True)
sys.stdin.readline()  # the writer hangs now
print(time.monotonic(), flush=True)
"""


def test_exit_does_not_wait_on_a_hung_writer(aurora_lab: Lab) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", EXIT_SCRIPT, aurora_lab.dsn, uuid.uuid4().hex],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        aurora_lab.hang(aurora_lab.writer)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        said = proc.stdout.readline()
        proc.wait(timeout=60)
        ended = time.monotonic()
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        # Interpreter shutdown takes a fraction of a second; connect_timeout is 4 s.
        assert ended - float(said) < 3.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_registry_forgets_a_closed_cluster(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    cluster = asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id)
    key = cluster._runtime.key
    cluster.close()
    assert key not in _runtime._registry
