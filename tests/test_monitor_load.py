"""The monitor never makes an outage worse: forced refreshes are rate limited, it starts no
thread per query, and a failed refresh looks for the writer quickly. Against the lab."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from aurora_smartdriver import dsn
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.monitor import ClusterMonitor


def _monitor(lab: Lab, **overrides: Any) -> ClusterMonitor:
    overrides.setdefault("cluster_id", uuid.uuid4().hex)
    return ClusterMonitor(dsn.parse(lab.dsn, **overrides))


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_many_callers_forcing_refreshes_cause_at_most_one_per_fast_interval(
    aurora_lab: Lab,
) -> None:
    """Twenty failing borrowers asking for a refresh back to back: one query per interval."""
    monitor = _monitor(aurora_lab, refresh_interval="5s", fast_refresh_interval="0.5s")
    try:
        assert monitor.refresh_now() is not None
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                monitor.refresh_now(timeout=0)
                time.sleep(0.001)

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(20)]
        before = monitor.stats().refreshes
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(3.0)
        stop.set()
        for thread in threads:
            thread.join(5)
        seconds = time.monotonic() - started
        refreshes = monitor.stats().refreshes - before
        print(f"\n{refreshes} refreshes in {seconds:.1f}s with 20 callers forcing them")
        # One per 0.5 s, plus slack for the refresh under way and the start.
        assert refreshes <= seconds / 0.5 + 3
    finally:
        monitor.close()


def test_refreshes_start_no_thread_each(aurora_lab: Lab) -> None:
    """A deadline per query is one long-lived thread's job, not a threading.Timer each (ten
    thread starts a second in fast mode)."""
    monitor = _monitor(aurora_lab, refresh_interval="5s", fast_refresh_interval="0.05s")
    started_threads: list[str] = []

    def count(frame: Any, event: str, arg: Any) -> None:
        started_threads.append(threading.current_thread().name)
        return None

    try:
        assert monitor.refresh_now() is not None
        before = monitor.stats().refreshes
        threading.settrace(count)  # called once in every thread started from now on
        try:
            for _ in range(20):
                monitor.refresh_now()
        finally:
            threading.settrace(None)
        refreshes = monitor.stats().refreshes - before
        assert refreshes >= 20
        assert len(started_threads) <= 2, started_threads
    finally:
        monitor.close()


def test_failed_refresh_puts_the_monitor_in_fast_mode(aurora_lab: Lab) -> None:
    """With no traffic at all, the monitor's own node dying is reason enough to look for
    the writer quickly: the new writer shows up long before the next normal refresh."""
    writer = aurora_lab.writer
    monitor = ClusterMonitor(
        dsn.parse(
            aurora_lab.instance_dsn(writer),
            refresh_interval="2s",
            fast_refresh_interval="0.1s",
            cluster_id=uuid.uuid4().hex,
        )
    )
    try:
        assert monitor.refresh_now() is not None
        assert monitor._conn_host == writer.host  # the monitor asks the writer itself
        report = aurora_lab.failover()
        assert _wait(
            lambda: (
                monitor.topology is not None
                and monitor.topology.writer is not None
                and monitor.topology.writer.instance_id == report.new_writer
            ),
            15,
        ), monitor.stats()
        assert monitor.stats().fast_mode_entries >= 1
        assert _wait(lambda: not monitor.fast_mode, 10)
    finally:
        monitor.close()


def test_callers_of_a_cluster_that_is_down_do_not_make_the_monitor_hammer_it() -> None:
    """Nothing listens: each attempt is refused at once. Twenty callers asking for refreshes
    in a loop get attempts further and further apart (up to backoff_max), not thousands."""
    monitor = ClusterMonitor(
        dsn.parse(
            "postgresql://app:pw@127.0.0.1:1/app?fast_refresh_interval=0.1s&backoff_max=1s"
            f"&cluster_id={uuid.uuid4().hex}"
        )
    )
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            monitor.refresh_now(timeout=0)
            time.sleep(0.001)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(20)]
    try:
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(4.0)
        stop.set()
        for thread in threads:
            thread.join(5)
        seconds = time.monotonic() - started
        attempts = monitor.stats().connects
        print(f"\n{attempts} connection attempts in {seconds:.1f}s to a cluster that is down")
        # Gaps of 0.1, 0.2, 0.4, 0.8, then 1 s: about 8 in 4 s; generous bound.
        assert attempts <= 15
        assert monitor.topology is None
        assert "127.0.0.1:1" in (monitor.trouble() or "")
    finally:
        monitor.close()


def test_a_monitor_on_a_hung_node_gives_up_on_it_after_failure_detection_time(
    aurora_lab: Lab,
) -> None:
    """A topology query the node never answers is cut off after failure_detection_time (the
    silence that counts as dead), not after the longer connect_timeout."""
    writer = aurora_lab.writer
    monitor = ClusterMonitor(
        dsn.parse(
            aurora_lab.instance_dsn(writer),
            connect_timeout="8s",
            failure_detection_time="1s",
            refresh_interval="30s",
            cluster_id=uuid.uuid4().hex,
        )
    )
    try:
        assert monitor.refresh_now() is not None
        assert monitor._conn_host == writer.host
        errors = monitor.stats().errors
        aurora_lab.hang(writer.id)
        started = time.monotonic()
        monitor.refresh_now(timeout=0)
        assert _wait(lambda: monitor.stats().errors > errors, 20)
        took = time.monotonic() - started
        print(f"\nthe query on the hung node was given up after {took * 1000:.0f} ms")
        assert took < 5.0  # connect_timeout is 8 s
    finally:
        monitor.close()


def test_fast_mode_that_finds_no_writer_slows_down_after_failover_timeout(
    aurora_lab: Lab,
) -> None:
    """static's writer (the first host) is gone for good: the monitor keeps asking it, but
    after failover_timeout (nobody waits longer) at backoff_max, not ten times a second."""
    state = aurora_lab.state()
    scheme = "postgresql" if state.engine == "postgresql" else "mariadb"
    hosts = ["127.0.0.1:1"] + [f"{n.address}:{n.port}" for n in aurora_lab.readers]
    spec = dsn.parse(
        f"{scheme}://{state.user}:{state.password}@{','.join(hosts)}/{state.database}"
        f"?topology_source=static&fast_refresh_interval=0.1s&failover_timeout=1s"
        f"&backoff_max=1s&cluster_id={uuid.uuid4().hex}"
    )
    monitor = ClusterMonitor(spec)
    try:
        assert monitor.refresh_now() is not None
        assert monitor.wait_for_writer(timeout=1.5) is None  # enters fast mode, in vain
        time.sleep(0.5)  # past failover_timeout
        before = monitor.stats().connects
        time.sleep(3.0)
        attempts = monitor.stats().connects - before
        print(f"\n{attempts} role checks of the gone writer in 3 s")
        assert monitor.fast_mode
        assert attempts <= 6  # about one a second; ten a second before
    finally:
        monitor.close()


def test_the_first_topology_takes_one_refresh(aurora_lab: Lab) -> None:
    """A program's first connection waits for the refresh under way, not for another one
    (which the rate limit would start fast_refresh_interval later)."""
    monitor = _monitor(aurora_lab, refresh_interval="30s", fast_refresh_interval="1s")
    try:
        assert monitor.refresh_now() is not None  # the thread's first refresh is under way
        assert monitor.stats().refreshes == 1
    finally:
        monitor.close()
