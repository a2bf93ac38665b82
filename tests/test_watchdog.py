"""HostWatch's bookkeeping of the connections in use on its instance."""

from __future__ import annotations

import gc
from typing import Any

from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.pool import Target
from aurora_smartdriver.watchdog import HostWatch


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
        on_dead=lambda target, silent: None,
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
