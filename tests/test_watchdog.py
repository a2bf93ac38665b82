"""HostWatch's bookkeeping of the connections in use on its instance; Watchdog's watches."""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import pytest

from aurora_smartdriver import watchdog as watchdog_module
from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.pool import Target
from aurora_smartdriver.watchdog import HostWatch, Watchdog


class _Raw:
    """Stands for a driver connection: the watch only keeps weak references to it."""


def _never_opens(timeout: float) -> Any:
    raise OSError("not opened in this test")


def _watch() -> HostWatch:
    # A detection time long enough that no verdict is reached while a test runs.
    return HostWatch(
        Target("i-1", "i-1.example.test", 5432),
        _never_opens,
        adapter_for("postgresql"),
        detection_time=600.0,
        on_dead=lambda target, silent, address: None,
    )


def test_a_connection_added_twice_is_in_use_until_discarded_once() -> None:
    watch, raw = _watch(), _Raw()
    watch.add(raw)
    watch.add(raw)
    assert watch._busy()
    watch.discard(raw)
    assert not watch._busy()


def test_discarding_an_unknown_connection_changes_nothing() -> None:
    watch, raw = _watch(), _Raw()
    watch.add(raw)
    watch.discard(_Raw())
    assert watch._busy()
    watch.discard(raw)
    watch.discard(raw)
    assert not watch._busy()


def test_a_connection_dropped_without_being_given_back_does_not_keep_the_watch_busy() -> None:
    watch = _watch()
    watch.add(_Raw())
    gc.collect()
    assert not watch._busy()


def test_connections_dropped_without_being_given_back_are_forgotten() -> None:
    """Their entries go (the watch's books do not grow with every connection ever dropped),
    and one in use with the same id as a dropped one's stays."""
    watch, kept = _watch(), _Raw()
    dropped = [_Raw() for _ in range(1000)]  # alive together: 1000 ids, 1000 entries
    for raw in dropped:
        watch.add(raw)
    watch.add(kept)
    assert len(watch._users) == 1001
    del dropped, raw
    gc.collect()
    assert watch._busy()
    assert list(watch._users) == [id(kept)]
    watch.discard(kept)
    assert not watch._busy()
    assert not watch._users


def test_connections_of_one_instance_at_two_addresses_are_watched_at_each() -> None:
    """A name that moved (a cluster endpoint after a failover) leaves connections of one
    instance on two nodes: each address gets a watch, whose probe goes to that address."""
    asked: list[tuple[str, str | None]] = []

    def opener_for(target: Target, address: str | None) -> Any:
        asked.append((target.instance_id, address))
        return _never_opens

    watchdog = Watchdog(
        opener_for, adapter_for("postgresql"), 600.0, lambda target, silent, address: None
    )
    target = Target("writer", "orders.cluster-x.example.test", 5432)
    before, after, by_name = _Raw(), _Raw(), _Raw()
    watchdog.opened(before, "10.0.0.1")
    watchdog.opened(after, "10.0.0.2")
    try:
        for raw in (before, after, by_name, before):
            watchdog.watch(target, raw)
        assert asked == [("writer", "10.0.0.1"), ("writer", "10.0.0.2"), ("writer", None)]
        for raw in (before, after, by_name):
            watchdog.unwatch(target, raw)
        assert not any(w._busy() for w in watchdog._watches.values())
    finally:
        watchdog.close()


class _BlockingAbort:
    """An adapter whose ``abort`` (a verdict's cut) waits until the test lets it go."""

    def __init__(self) -> None:
        self.cutting = threading.Event()
        self.go_on = threading.Event()
        self.cut: list[Any] = []

    def abort(self, raw: Any) -> None:
        self.cutting.set()
        self.go_on.wait(10)
        self.cut.append(raw)


def test_a_connection_given_back_during_a_cut_is_given_back_after_it() -> None:
    """`discard` takes no lock in the common case, yet returns only once a verdict that
    listed the connection has cut it: the connection is never lent again and then cut."""
    adapter = _BlockingAbort()
    watch = HostWatch(
        Target("i-1", "i-1.example.test", 5432),
        _never_opens,
        adapter,  # type: ignore[arg-type]
        detection_time=600.0,
        on_dead=lambda target, silent, address: None,
    )
    raw = _Raw()
    watch.add(raw)
    verdict = threading.Thread(target=watch._declare_dead, args=(3.0,))
    verdict.start()
    assert adapter.cutting.wait(10)
    given_back = threading.Thread(target=watch.discard, args=(raw,))
    given_back.start()
    given_back.join(0.3)
    assert given_back.is_alive(), "discard returned while the cut was still going on"
    adapter.go_on.set()
    given_back.join(10)
    verdict.join(10)
    assert adapter.cut == [raw]
    assert not watch._busy()
    watch.close()


def test_a_watch_that_ended_for_lack_of_use_starts_again_on_the_next_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watchdog_module, "_LINGER", 0.05)
    watch = HostWatch(
        Target("i-1", "i-1.example.test", 5432),
        _never_opens,
        adapter_for("postgresql"),
        detection_time=0.15,
        on_dead=lambda target, silent, address: None,
    )
    try:
        for _ in range(3):
            raw = _Raw()
            watch.add(raw)
            assert watch._thread is not None
            watch.discard(raw)
            deadline = time.monotonic() + 10
            while watch._thread is not None:
                assert time.monotonic() < deadline, "the idle watch's thread did not end"
                time.sleep(0.01)
    finally:
        watch.close()
