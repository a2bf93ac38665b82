"""Host pools against the lab's real servers: lending, recycling, reset, retire, storms."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aurora_smartdriver import dsn
from aurora_smartdriver.drivers import DriverAdapter, adapter_for
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.monitor import ClusterMonitor
from aurora_smartdriver.pool import (
    HostDown,
    HostPool,
    PoolClosed,
    Pooled,
    PoolSet,
    PoolTimeout,
    Target,
)
from aurora_smartdriver.settings import Settings

# -- helpers --------------------------------------------------------------------------------


class Opener:
    """Opens real connections to one lab node, counting attempts and how many run at once."""

    def __init__(
        self,
        lab: Lab,
        node: str,
        *,
        password: str | None = None,
        autocommit: bool = True,
    ) -> None:
        self.spec = (
            dsn.parse(lab.dsn) if password is None else dsn.parse(lab.dsn, password=password)
        )
        self.adapter = adapter_for(self.spec.engine)
        info = lab.node(node)
        self.target = Target(info.id, info.host, info.port)
        self.address = info.address
        self.autocommit = autocommit
        self.lock = threading.Lock()
        self.attempts = 0
        self.failures = 0
        self.active = 0
        self.max_active = 0

    def __call__(self, timeout: float) -> Any:
        with self.lock:
            self.attempts += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            return self.adapter.connect(
                self.spec,
                self.target.host,
                self.target.port,
                address=self.address,
                timeout=timeout,
                autocommit=self.autocommit,
            )
        except Exception:
            with self.lock:
                self.failures += 1
            raise
        finally:
            with self.lock:
                self.active -= 1


class Events:
    """A pool listener that records every event."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, fields: Any) -> None:
        with self.lock:
            self.seen.append((name, dict(fields)))

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [fields for event, fields in self.seen if event == name]

    def discards(self) -> list[str]:
        return [fields["why"] for fields in self.named("discard")]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class HoldingClock(FakeClock):
    """A fake clock that stops the thread `hold` names at its next reading, until `go` is set:
    a borrower woken from its wait reads the clock first, so it stops where the test can
    look at what the waking left behind. `held` is set once it stopped."""

    def __init__(self, now: float = 1000.0) -> None:
        super().__init__(now)
        self.hold: threading.Thread | None = None
        self.held = threading.Event()
        self.go = threading.Event()

    def __call__(self) -> float:
        if threading.current_thread() is self.hold and not self.go.is_set():
            self.held.set()
            self.go.wait(60)
        return self.now


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _select_one(adapter: DriverAdapter, raw: Any) -> Any:
    return adapter.query(raw, "SELECT 1").rows[0][0]


@pytest.fixture
def make_pool() -> Iterator[Callable[..., tuple[HostPool, Opener, Events]]]:
    """Build pools on lab nodes (closed after the test): ``make_pool(lab, node, **settings)``."""
    pools: list[HostPool] = []

    def make(
        lab: Lab,
        node: str,
        *,
        opener: Opener | None = None,
        reset: Callable[[Any], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        overtake: float | None = None,
        **settings: Any,
    ) -> tuple[HostPool, Opener, Events]:
        opener = opener or Opener(lab, node)
        events = Events()
        pool = HostPool(
            opener.target,
            opener,
            settings=Settings(**settings),
            adapter=opener.adapter,
            reset=reset,
            clock=clock,
            listener=events,
            rng=rng,
            overtake=overtake,
        )
        pools.append(pool)
        return pool, opener, events

    yield make
    for pool in pools:
        pool.close()


def _assert_books_balance(pool: HostPool) -> None:
    stats = pool.stats()
    assert stats.idle + stats.in_use == stats.opened - stats.closed
    assert stats.size == stats.idle + stats.in_use + stats.connecting


# -- driver adapter additions ---------------------------------------------------------------


def _backend_id(lab: Lab, raw: Any) -> int:
    return int(raw.info.backend_pid) if lab.state().engine == "postgresql" else int(raw.thread_id())


def _kill_backend(lab: Lab, node: str, raw: Any) -> None:
    ident = _backend_id(lab, raw)
    if lab.state().engine == "postgresql":
        lab.execute(node, f"SELECT pg_terminate_backend({ident})")
    else:
        lab.execute(node, f"KILL {ident}")


def test_ping_passes_on_a_live_connection_and_fails_once_the_server_killed_it(
    aurora_lab: Lab,
) -> None:
    reader = aurora_lab.readers[0].id
    opener = Opener(aurora_lab, reader)
    adapter = opener.adapter
    raw = opener(5.0)
    try:
        adapter.ping(raw, 2.0)
        assert not adapter.closed(raw)
        _kill_backend(aurora_lab, reader, raw)
        time.sleep(0.2)
        with pytest.raises(adapter.Error):
            adapter.ping(raw, 2.0)
    finally:
        adapter.close(raw)
    assert adapter.closed(raw)
    adapter.close(raw)  # closing twice never raises


def test_ping_does_not_open_a_transaction_on_a_connection_without_autocommit(
    aurora_lab: Lab,
) -> None:
    opener = Opener(aurora_lab, aurora_lab.writer.id, autocommit=False)
    adapter = opener.adapter
    raw = opener(5.0)
    try:
        assert not adapter.in_transaction(raw)
        adapter.ping(raw, 2.0)
        assert not adapter.in_transaction(raw)
        adapter.query(raw, "SELECT 1")
        assert adapter.in_transaction(raw) == (aurora_lab.state().engine == "postgresql")
        adapter.rollback(raw)
        assert not adapter.in_transaction(raw)
    finally:
        adapter.close(raw)


def test_ping_gives_up_at_its_timeout_on_a_hung_node(aurora_lab: Lab) -> None:
    reader = aurora_lab.readers[0].id
    opener = Opener(aurora_lab, reader)
    adapter = opener.adapter
    raw = opener(5.0)
    aurora_lab.hang(reader)
    try:
        with pytest.raises(adapter.Error) as caught:
            adapter.ping(raw, 0.5)
        assert adapter.error_kind(caught.value) == "disconnect"
    finally:
        aurora_lab.resume(reader)
        adapter.close(raw)


# -- lending --------------------------------------------------------------------------------


def test_released_connections_are_lent_again_last_in_first_out(
    aurora_lab: Lab, make_pool: Any
) -> None:
    pool, opener, events = make_pool(aurora_lab, aurora_lab.writer.id, pool_max_size=4)
    first, second = pool.borrow(), pool.borrow()
    assert first.raw is not second.raw
    pool.release(first)
    pool.release(second)
    again = pool.borrow()
    assert again.raw is second.raw  # the most recently returned one
    assert pool.borrow().raw is first.raw
    assert _select_one(opener.adapter, again.raw) == 1
    assert opener.attempts == 2
    assert len(events.named("connect")) == 2
    assert len(events.named("borrow")) == 4 and len(events.named("release")) == 2
    assert pool.stats().in_use == 2 and pool.in_use == 2


def test_a_full_pool_makes_borrowers_wait_then_raises_pool_timeout(
    aurora_lab: Lab, make_pool: Any
) -> None:
    pool, opener, _ = make_pool(aurora_lab, aurora_lab.writer.id, pool_max_size=2)
    held = [pool.borrow(), pool.borrow()]
    with pytest.raises(PoolTimeout, match="pool_max_size=2"):
        pool.borrow(timeout=0.2)
    stats = pool.stats()
    assert (stats.size, stats.in_use, stats.opened, opener.attempts) == (2, 2, 2, 2)
    assert stats.borrow_wait_total_s > 0
    for pooled in held:
        pool.release(pooled)


def test_a_waiting_borrower_gets_the_connection_given_back(aurora_lab: Lab, make_pool: Any) -> None:
    pool, opener, _ = make_pool(aurora_lab, aurora_lab.writer.id, pool_max_size=1)
    held = pool.borrow()
    got: list[Pooled] = []
    waiter = threading.Thread(target=lambda: got.append(pool.borrow(timeout=30)))
    waiter.start()
    assert _wait(lambda: pool.stats().waiting == 1)
    pool.release(held)
    waiter.join(30)
    assert got and got[0].raw is held.raw
    assert opener.attempts == 1
    pool.release(got[0])


def _waiting_borrower(pool: HostPool, got: list[Pooled], timeout: float = 30) -> threading.Thread:
    """A thread that borrows from ``pool`` into ``got``, started once it waits in the queue."""
    queued = pool.stats().waiting
    thread = threading.Thread(target=lambda: got.append(pool.borrow(timeout=timeout)))
    thread.start()
    assert _wait(lambda: pool.stats().waiting == queued + 1)
    return thread


def test_a_newcomer_may_take_a_returned_connection_ahead_of_a_borrower_waiting_less_than_overtake(
    aurora_lab: Lab, make_pool: Any
) -> None:
    clock = HoldingClock()
    pool, _, _ = make_pool(
        aurora_lab, aurora_lab.writer.id, pool_max_size=1, clock=clock, overtake=60.0
    )
    held = pool.borrow()
    got: list[Pooled] = []
    waiter = _waiting_borrower(pool, got)
    clock.hold = waiter
    pool.release(held)
    assert clock.held.wait(30)  # the waiting borrower was woken, and stopped before taking it
    again = pool.borrow(timeout=0)  # the running thread borrows again at once
    assert again.raw is held.raw
    assert pool.stats().waiting == 1
    clock.go.set()  # the woken borrower finds nothing and waits again
    pool.release(again)
    waiter.join(30)
    assert got and got[0].raw is held.raw
    pool.release(got[0])
    _assert_books_balance(pool)


def test_a_connection_returned_once_a_borrower_waited_overtake_is_handed_to_it(
    aurora_lab: Lab, make_pool: Any
) -> None:
    clock = HoldingClock()
    pool, _, _ = make_pool(
        aurora_lab, aurora_lab.writer.id, pool_max_size=1, clock=clock, overtake=1.0
    )
    held = pool.borrow()
    got: list[Pooled] = []
    waiter = _waiting_borrower(pool, got)
    clock.hold = waiter
    clock.now += 2.0
    pool.release(held)
    assert clock.held.wait(30)
    with pytest.raises(PoolTimeout):
        pool.borrow(timeout=0)  # handed over already, although its taker has not run yet
    clock.go.set()
    waiter.join(30)
    assert got and got[0].raw is held.raw
    pool.release(got[0])
    _assert_books_balance(pool)


def test_nobody_takes_an_idle_connection_ahead_of_a_borrower_that_waited_overtake(
    aurora_lab: Lab, make_pool: Any
) -> None:
    clock = HoldingClock()
    pool, _, _ = make_pool(
        aurora_lab, aurora_lab.writer.id, pool_max_size=1, clock=clock, overtake=1.0
    )
    held = pool.borrow()
    got: list[Pooled] = []
    waiter = _waiting_borrower(pool, got)
    clock.hold = waiter
    pool.release(held)  # waited less than overtake: made idle, the borrower woken
    assert clock.held.wait(30)
    clock.now += 2.0  # it has waited overtake by the time a newcomer comes
    with pytest.raises(PoolTimeout):
        pool.borrow(timeout=0)
    assert pool.stats().idle == 1
    clock.go.set()
    waiter.join(30)
    assert got and got[0].raw is held.raw
    pool.release(got[0])
    _assert_books_balance(pool)


def test_connections_returned_together_wake_as_many_waiting_borrowers(
    aurora_lab: Lab, make_pool: Any
) -> None:
    clock = HoldingClock()
    pool, _, _ = make_pool(
        aurora_lab, aurora_lab.writer.id, pool_max_size=2, clock=clock, overtake=60.0
    )
    held = [pool.borrow(), pool.borrow()]
    got: list[Pooled] = []
    # Each would get a connection at its deadline at the latest: far beyond the joins below.
    first, second = (_waiting_borrower(pool, got, timeout=600) for _ in range(2))
    clock.hold = first
    pool.release(held[0])  # wakes the longest waiting borrower
    assert clock.held.wait(30)
    pool.release(held[1])  # it is woken already and has not run: nobody else is woken
    clock.go.set()  # it takes one, and wakes the next for the other
    for thread in (first, second):
        thread.join(60)
    assert len(got) == 2 and {id(p.raw) for p in got} == {id(p.raw) for p in held}
    for pooled in got:
        pool.release(pooled)
    _assert_books_balance(pool)


def test_overtaking_is_off_with_overtake_zero(aurora_lab: Lab, make_pool: Any) -> None:
    clock = HoldingClock()
    pool, _, _ = make_pool(
        aurora_lab, aurora_lab.writer.id, pool_max_size=1, clock=clock, overtake=0.0
    )
    held = pool.borrow()
    got: list[Pooled] = []
    waiter = _waiting_borrower(pool, got)
    clock.hold = waiter
    pool.release(held)
    assert clock.held.wait(30)
    with pytest.raises(PoolTimeout):
        pool.borrow(timeout=0)  # first come, first served
    clock.go.set()
    waiter.join(30)
    assert got and got[0].raw is held.raw
    pool.release(got[0])


def test_releasing_twice_is_refused(aurora_lab: Lab, make_pool: Any) -> None:
    pool, _, _ = make_pool(aurora_lab, aurora_lab.writer.id)
    pooled = pool.borrow()
    pool.release(pooled)
    with pytest.raises(ValueError, match="released twice"):
        pool.release(pooled)
    _assert_books_balance(pool)


def test_min_size_is_kept_warm_and_the_maintenance_thread_stops_on_close(
    aurora_lab: Lab, make_pool: Any
) -> None:
    pool, opener, _ = make_pool(aurora_lab, aurora_lab.writer.id, pool_min_size=3, pool_max_size=5)
    assert _wait(lambda: pool.stats().idle == 3)
    pooled = pool.borrow()
    pooled.mark_broken()
    pool.release(pooled)
    assert _wait(lambda: pool.stats().idle == 3 and pool.stats().opened == 4)
    pool.retire()
    assert _wait(lambda: pool.stats().idle == 3 and pool.stats().opened == 7)
    _assert_books_balance(pool)
    thread = pool._thread  # this pool's own (other pools of the instance may be alive)
    assert thread is not None and thread.is_alive()
    assert thread.name == f"aurora-smartdriver-pool {opener.target.instance_id}"
    pool.close()
    assert _wait(lambda: not thread.is_alive())
    assert pool.stats().opened == pool.stats().closed


# -- recycling ------------------------------------------------------------------------------


def test_lifetimes_are_jittered_and_expired_connections_are_replaced(
    aurora_lab: Lab, make_pool: Any
) -> None:
    clock = FakeClock(1000.0)
    pool, _, events = make_pool(
        aurora_lab,
        aurora_lab.writer.id,
        clock=clock,
        pool_max_size=6,
        max_lifetime=100,
        max_lifetime_jitter=0.5,
        max_idle=1000,
        validate_after_idle=1000,
    )
    lent = [pool.borrow() for _ in range(6)]
    expiries = sorted(p.expires_at for p in lent)
    assert all(1050.0 <= e <= 1100.0 for e in expiries)
    assert len(set(expiries)) == 6  # opened together, expiring apart
    clock.now = (expiries[2] + expiries[3]) / 2
    for pooled in lent:
        pool.release(pooled)
    assert events.discards().count("expired") == 3
    assert pool.stats().idle == 3
    clock.now = 1100.0  # the rest have expired while idle: none of them is lent
    fresh = pool.borrow()
    assert fresh.created_at == 1100.0 and fresh.raw not in [p.raw for p in lent]
    assert events.discards().count("expired") == 6
    pool.release(fresh)
    _assert_books_balance(pool)


def test_idle_connections_are_validated_then_closed_after_max_idle(
    aurora_lab: Lab, make_pool: Any
) -> None:
    clock = FakeClock(1000.0)
    pool, opener, events = make_pool(
        aurora_lab,
        aurora_lab.writer.id,
        clock=clock,
        max_lifetime=1e6,
        max_idle=10,
        validate_after_idle=5,
    )
    old, recent = pool.borrow(), pool.borrow()
    pool.release(old)
    clock.now = 1004.0
    pool.release(recent)
    clock.now = 1011.0  # recent idle 7 s: validated and lent; old idle 11 s: closed
    assert pool.borrow().raw is recent.raw
    replacement = pool.borrow()
    assert replacement.raw is not old.raw
    assert events.discards() == ["idle"]
    assert opener.attempts == 3


def test_idle_connections_are_closed_in_the_background(aurora_lab: Lab, make_pool: Any) -> None:
    pool, _, events = make_pool(aurora_lab, aurora_lab.writer.id, max_idle=0.3)
    lent = [pool.borrow() for _ in range(3)]
    for pooled in lent:
        pool.release(pooled)
    assert _wait(lambda: pool.stats().idle == 0)
    # the books drop a connection before its socket is closed and its discard reported
    assert _wait(lambda: len(events.discards()) == 3)
    assert events.discards() == ["idle"] * 3
    _assert_books_balance(pool)


def test_a_stale_connection_to_a_restarted_reader_is_replaced_transparently(
    aurora_lab: Lab, make_pool: Any
) -> None:
    reader = aurora_lab.readers[0].id
    pool, opener, events = make_pool(aurora_lab, reader, validate_after_idle=0)
    stale = pool.borrow()
    pool.release(stale)
    aurora_lab.crash(reader)
    aurora_lab.restart(reader)
    pooled = pool.borrow()
    assert pooled.raw is not stale.raw
    assert _select_one(opener.adapter, pooled.raw) == 1
    assert events.discards() == ["broken"]
    assert opener.attempts == 2
    pool.release(pooled)


# -- giving back ----------------------------------------------------------------------------


def test_an_open_transaction_is_rolled_back_and_the_session_reset_on_release(
    aurora_lab: Lab, make_pool: Any
) -> None:
    writer = aurora_lab.writer.id
    resets: list[Any] = []
    opener = Opener(aurora_lab, writer, autocommit=False)
    pool, _, _ = make_pool(aurora_lab, writer, opener=opener, reset=resets.append)
    adapter = opener.adapter
    marker = uuid.uuid4().hex
    pooled = pool.borrow()
    adapter.query(pooled.raw, "CREATE TABLE IF NOT EXISTS pool_reset (marker VARCHAR(40))")
    pooled.raw.commit()
    adapter.query(pooled.raw, "INSERT INTO pool_reset VALUES (%(m)s)", {"m": marker})
    assert adapter.in_transaction(pooled.raw)
    pool.release(pooled)
    assert resets == [pooled.raw]
    again = pool.borrow()
    assert again.raw is pooled.raw and not adapter.in_transaction(again.raw)
    count = adapter.query(
        again.raw, "SELECT count(*) FROM pool_reset WHERE marker = %(m)s", {"m": marker}
    )
    assert count.rows[0][0] == 0
    pool.release(again)


def test_broken_connections_are_discarded_on_release(aurora_lab: Lab, make_pool: Any) -> None:
    pool, _, events = make_pool(aurora_lab, aurora_lab.writer.id)
    marked = pool.borrow()
    marked.mark_broken()
    pool.release(marked)
    closed_by_borrower = pool.borrow()
    assert closed_by_borrower.raw is not marked.raw
    closed_by_borrower.raw.close()  # the driver knows; the borrower forgot to say
    pool.release(closed_by_borrower)
    assert events.discards() == ["broken", "broken"]
    stats = pool.stats()
    assert (stats.idle, stats.in_use, stats.closed) == (0, 0, 2)


def test_retire_closes_idle_connections_at_once_and_lent_ones_on_release(
    aurora_lab: Lab, make_pool: Any
) -> None:
    pool, opener, events = make_pool(aurora_lab, aurora_lab.writer.id)
    lent, idle = pool.borrow(), pool.borrow()
    pool.release(idle)
    pool.retire()
    assert events.discards() == ["retired"]
    assert opener.adapter.closed(idle.raw) and not opener.adapter.closed(lent.raw)
    assert _select_one(opener.adapter, lent.raw) == 1  # still usable by its borrower
    pool.release(lent)
    assert events.discards() == ["retired", "retired"]
    fresh = pool.borrow()
    assert fresh.raw not in (lent.raw, idle.raw)
    pool.release(fresh)
    _assert_books_balance(pool)


def test_close_fails_waiting_and_later_borrowers_and_closes_lent_connections_on_release(
    aurora_lab: Lab, make_pool: Any
) -> None:
    pool, _, events = make_pool(aurora_lab, aurora_lab.writer.id, pool_max_size=1)
    lent = pool.borrow()
    outcome: list[BaseException] = []

    def wait_for_one() -> None:
        try:
            pool.borrow(timeout=30)
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    assert _wait(lambda: pool.stats().waiting == 1)
    pool.close()
    waiter.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], PoolClosed)
    with pytest.raises(PoolClosed):
        pool.borrow()
    pool.release(lent)
    assert events.discards() == ["closed"]
    assert pool.stats().opened == pool.stats().closed == 1


# -- the cluster's pools --------------------------------------------------------------------


def test_pool_set_retires_the_pools_of_hosts_whose_role_changed_in_a_failover(
    aurora_lab: Lab,
) -> None:
    spec = dsn.parse(aurora_lab.dsn, refresh_interval="1s")
    adapter = adapter_for(spec.engine)
    events = Events()
    openers: dict[str, Opener] = {}

    def opener_for(target: Target) -> Opener:
        openers[target.instance_id] = Opener(aurora_lab, target.instance_id)
        return openers[target.instance_id]

    pools = PoolSet(opener_for, settings=spec.settings, adapter=adapter, listener=events)
    monitor = ClusterMonitor(spec)
    try:
        topology = monitor.refresh_now()
        assert topology is not None and topology.writer is not None
        monitor.add_listener(pools.on_topology)
        old_writer = pools.pool(Target.of(topology.writer))
        promoted = pools.pool(Target.of(topology.readers[0]))
        held = old_writer.borrow()
        old_writer.release(old_writer.borrow())
        promoted.release(promoted.borrow())
        assert old_writer.stats().idle == 1 and promoted.stats().idle == 1

        report = aurora_lab.failover(to=topology.readers[0].instance_id)
        assert monitor.wait_for_writer(15, not_id=report.old_writer) is not None
        assert _wait(lambda: old_writer.stats().idle == 0 and promoted.stats().idle == 0)

        def discarded() -> set[tuple[str, str]]:
            return {(f["instance_id"], f["why"]) for f in events.named("discard")}

        # A discard is told once the connection is closed, after it left the pool's books.
        old_gone = {(report.old_writer, "retired"), (report.old_writer, "closed")}
        assert _wait(
            lambda: (report.new_writer, "retired") in discarded() and bool(old_gone & discarded())
        )
        by_host = discarded()
        assert (report.new_writer, "retired") in by_host
        assert (report.old_writer, "retired") in by_host or (report.old_writer, "closed") in by_host
        held.mark_broken()  # its server is gone
        old_writer.release(held)
        assert old_writer.stats().in_use == 0 and old_writer.stats().idle == 0

        new_writer = aurora_lab.node(report.new_writer)
        writer_pool = pools.pool(Target(new_writer.id, new_writer.host, new_writer.port))
        assert writer_pool is promoted
        pooled = writer_pool.borrow()
        assert pooled.raw is not None and writer_pool.stats().opened == 2
        sql = "SELECT pg_is_in_recovery()" if spec.engine == "postgresql" else "SELECT @@read_only"
        assert not adapter.query(pooled.raw, sql).rows[0][0]
        writer_pool.release(pooled)
    finally:
        monitor.close()
        pools.close()


def test_pool_set_drops_pools_of_departed_hosts_and_reports_down_ones(aurora_lab: Lab) -> None:
    spec = dsn.parse(aurora_lab.dsn, refresh_interval="1s")
    adapter = adapter_for(spec.engine)
    pools = PoolSet(
        lambda target: Opener(aurora_lab, target.instance_id),
        settings=spec.settings,
        adapter=adapter,
    )
    monitor = ClusterMonitor(spec)
    try:
        topology = monitor.refresh_now()
        assert topology is not None
        monitor.add_listener(pools.on_topology)
        leaving = topology.readers[-1]
        pool = pools.pool(Target.of(leaving))
        pool.release(pool.borrow())
        assert pools.in_use() == {leaving.instance_id: 0} and pools.down() == frozenset()
        aurora_lab.remove(leaving.instance_id)
        assert _wait(lambda: pool.closed)
        assert leaving.instance_id not in pools.stats()
        with pytest.raises(PoolClosed):
            pool.borrow()
    finally:
        monitor.close()
        pools.close()
    with pytest.raises(PoolClosed):
        pools.pool(Target.of(topology.readers[0]))


# -- host down, backoff, storms -------------------------------------------------------------


def test_a_crashed_host_is_short_circuited_during_its_backoff_and_used_again_after_restart(
    aurora_lab: Lab, make_pool: Any
) -> None:
    reader = aurora_lab.readers[0].id
    pool, opener, events = make_pool(
        aurora_lab, reader, rng=lambda: 0.999, backoff_initial=5.0, backoff_max=10.0
    )
    aurora_lab.crash(reader)
    with pytest.raises(HostDown) as first:
        pool.borrow(wait_if_down=False)
    assert opener.attempts == 1 and pool.down
    assert first.value.last_error and 0.0 < first.value.retry_in <= 5.0
    with pytest.raises(HostDown) as second:
        pool.borrow(wait_if_down=False)  # in backoff: not dialled
    assert opener.attempts == 1 and second.value.retry_in <= first.value.retry_in
    assert reader in {f["instance_id"] for f in events.named("host_down")}

    aurora_lab.restart(reader)
    results: list[Any] = []

    def borrow_and_query() -> None:
        pooled = pool.borrow(timeout=60)
        results.append(_select_one(opener.adapter, pooled.raw))
        pool.release(pooled)

    borrowers = [threading.Thread(target=borrow_and_query) for _ in range(5)]
    for thread in borrowers:
        thread.start()
    for thread in borrowers:
        thread.join(60)
    assert results == [1] * 5
    assert not pool.down and len(events.named("host_up")) == 1
    assert opener.failures == 1  # the one probe after the backoff succeeded


def test_idle_connections_are_checked_before_lending_while_their_host_is_down(
    aurora_lab: Lab, make_pool: Any
) -> None:
    reader = aurora_lab.readers[0].id
    pool, opener, events = make_pool(
        aurora_lab, reader, pool_min_size=2, pool_max_size=3, backoff_initial=30, backoff_max=60
    )
    assert _wait(lambda: pool.stats().idle == 2)
    aurora_lab.crash(reader)
    lent = pool.borrow()  # not due for a check: lent as is, and found dead by its borrower
    lent.mark_broken()
    pool.release(lent)
    assert _wait(lambda: pool.down)  # the warm-up thread's attempt to replace it failed
    with pytest.raises(HostDown):
        pool.borrow(wait_if_down=False)  # the idle one was pinged, not lent
    assert events.discards() == ["broken", "broken"]
    assert pool.stats().idle == 0 and opener.failures == 1


def test_wrong_credentials_do_not_cause_a_connection_storm(aurora_lab: Lab, make_pool: Any) -> None:
    writer = aurora_lab.writer.id
    password = aurora_lab.state().password
    opener = Opener(aurora_lab, writer, password="not-" + password)
    pool, _, _ = make_pool(aurora_lab, writer, opener=opener, backoff_max=2.0)
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = time.monotonic() + 2.0

    def hammer(wait: bool) -> None:
        while time.monotonic() < stop:
            try:
                pool.release(pool.borrow(timeout=0.5, wait_if_down=wait))
            except Exception as exc:
                with lock:
                    errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(i % 2 == 0,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    print(f"\n{len(errors)} failed borrows in 2 s, {opener.attempts} connection attempts")
    assert opener.attempts <= Settings().max_concurrent_connects + 2
    refused = [e for e in errors if isinstance(e, opener.adapter.Error)]
    short_circuited = [e for e in errors if isinstance(e, HostDown)]
    assert refused and all(opener.adapter.error_kind(e) == "auth" for e in refused)
    assert short_circuited and all(e.auth for e in short_circuited)
    assert not any(password in str(e) for e in errors)


@pytest.mark.parametrize("seed", [7, 2024])
def test_many_threads_never_share_a_connection_or_leak_one(
    aurora_lab: Lab, make_pool: Any, seed: int
) -> None:
    max_size = 8
    pool, opener, _ = make_pool(aurora_lab, aurora_lab.writer.id, pool_max_size=max_size)
    holders: dict[int, int] = {}
    holders_lock = threading.Lock()
    violations: list[str] = []
    timeouts = [0]
    done = threading.Event()

    def check() -> None:
        while not done.is_set():
            s = pool.stats()
            if s.size > max_size or s.in_use > max_size:
                violations.append(f"over the maximum: {s}")
            if s.idle + s.in_use != s.opened - s.closed:
                violations.append(f"books do not balance: {s}")
            time.sleep(0.001)

    def work(rng: random.Random) -> None:
        for _ in range(40):
            try:
                pooled = pool.borrow(timeout=0.002 if rng.random() < 0.05 else 60)
            except PoolTimeout:
                with holders_lock:
                    timeouts[0] += 1
                continue
            key = id(pooled.raw)
            with holders_lock:
                if key in holders:
                    violations.append(f"{pooled!r} lent twice")
                holders[key] = threading.get_ident()
            if rng.random() < 0.3:
                _select_one(opener.adapter, pooled.raw)
            time.sleep(rng.random() * 0.003)
            if rng.random() < 0.05:
                pooled.mark_broken()
            if rng.random() < 0.005:
                pool.retire()
            with holders_lock:
                del holders[key]
            pool.release(pooled)

    master = random.Random(seed)
    checker = threading.Thread(target=check)
    workers = [
        threading.Thread(target=work, args=(random.Random(master.random()),)) for _ in range(64)
    ]
    checker.start()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(120)
    done.set()
    checker.join(10)
    assert violations == []
    stats = pool.stats()
    print(f"\n{stats.opened} opened, {stats.closed} closed, {timeouts[0]} timeouts")
    assert stats.in_use == 0 and stats.waiting == 0 and stats.connecting == 0
    assert stats.idle + stats.closed == stats.opened  # no leak
    assert stats.size == stats.idle <= max_size
    assert opener.attempts == stats.opened


def test_a_storm_of_threads_losing_their_writer_stays_within_the_gate(
    aurora_lab: Lab, make_pool: Any
) -> None:
    writer = aurora_lab.writer.id
    max_size, cap = 8, 4
    pool, opener, events = make_pool(
        aurora_lab,
        writer,
        pool_max_size=max_size,
        max_concurrent_connects=cap,
        backoff_max=1.0,
        connect_timeout=2.0,
    )
    adapter = opener.adapter
    lock = threading.Lock()
    served = [0]
    errors = [0]
    restarted = threading.Event()
    stop = threading.Event()
    recovered: set[int] = set()

    def work(index: int) -> None:
        rng = random.Random(index)
        while not stop.is_set():
            try:
                pooled = pool.borrow(timeout=60)
            except (HostDown, PoolTimeout, PoolClosed):
                continue
            try:
                _select_one(adapter, pooled.raw)
                time.sleep(rng.random() * 0.005)
                with lock:
                    served[0] += 1
                    if restarted.is_set():
                        recovered.add(index)
            except adapter.Error:
                pooled.mark_broken()
                with lock:
                    errors[0] += 1
            finally:
                pool.release(pooled)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(300)]
    for thread in threads:
        thread.start()
    assert _wait(lambda: served[0] >= 600, 60)
    opened_before = pool.stats().opened
    aurora_lab.crash(writer)
    assert _wait(lambda: pool.down, 30)
    time.sleep(1.0)  # everyone sees the host down; backoff and probes run
    aurora_lab.restart(writer)
    restarted.set()
    assert _wait(lambda: len(recovered) == len(threads), 120)
    stop.set()
    for thread in threads:
        thread.join(60)
    stats = pool.stats()
    opened_after = stats.opened - opened_before
    print(
        f"\n300 threads: most concurrent connection attempts {opener.max_active} "
        f"(cap {cap}), connections opened after the crash {opened_after} "
        f"(pool_max_size {max_size}), attempts that failed {opener.failures}, "
        f"statement errors {errors[0]}"
    )
    assert opener.max_active <= cap
    assert stats.max_concurrent_connecting_seen <= cap
    assert opened_after <= 2 * max_size
    assert stats.in_use == 0 and stats.idle + stats.closed == stats.opened
    assert not pool.down and events.named("host_up")
