"""The resume decisions (`_resume`) as pure functions, and the gate that makes one knock per
instance, with fake connection attempts (the lab tests in test_lab_serverless.py do it for real)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aurora_smartdriver as asd
from aurora_smartdriver._resume import (
    PAUSE_IDLE_MIN,
    Budget,
    ResumeGate,
    decide,
    is_warm,
    timed_out,
)

seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False)


@given(seconds, st.booleans(), st.booleans())
def test_decide_knocks_only_when_on_cold_and_nobody_knocks(
    resume_timeout: float, warm: bool, knocking: bool
) -> None:
    step = decide(resume_timeout, warm=warm, knocking=knocking)
    if resume_timeout == 0 or warm:
        assert step == "plain"
    else:
        assert step == ("wait" if knocking else "knock")


@given(seconds, st.one_of(st.none(), seconds), st.booleans())
def test_an_instance_is_warm_while_held_or_recently_connected(
    now: float, last: float | None, holds: bool
) -> None:
    warm = is_warm(now, last, holds_connections=holds)
    recent = last is not None and now - last < PAUSE_IDLE_MIN
    assert warm == (holds or recent)


@given(seconds, st.floats(min_value=0.001, max_value=1e6))
def test_a_failure_counts_as_a_timeout_only_near_the_budget(elapsed: float, budget: float) -> None:
    assert timed_out(elapsed, budget) == (elapsed >= budget * 0.95)
    assert timed_out(budget, budget)
    assert not timed_out(budget / 2, budget)


class _Resuming:
    """A fake instance that answers `delay` seconds after its first connection attempt."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.attempts: list[float] = []
        self.lock = threading.Lock()
        self.knocked = threading.Event()
        self.back = threading.Event()

    def attempt(self, seconds: float) -> str:
        with self.lock:
            self.attempts.append(seconds)
            first = len(self.attempts) == 1
        if first:
            self.knocked.set()
            if not self.back.wait(min(seconds, self.delay)):
                raise OSError("timed out")
            return "conn"
        if not self.back.is_set():
            raise OSError("timed out")  # anyone else dialling meanwhile would get this
        return "conn"


def _budget(resume: float, connect: float, heard: list[tuple[str, str, float]]) -> Budget:
    return Budget(
        resume,
        connect,
        make_error=asd.InstanceResumeTimeout,
        on_resumed=lambda i, w: heard.append(("resumed", i, w)),
        on_timeout=lambda i, w: heard.append(("timeout", i, w)),
    )


def _at_once(count: int, fn: Callable[[], str]) -> tuple[list[str], list[BaseException]]:
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            value = fn()
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(value)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results, errors


def test_one_knock_per_instance_and_the_others_wait_for_it() -> None:
    instance = _Resuming(delay=0.3)
    clock = [0.0]
    gate = ResumeGate(clock=lambda: clock[0])
    heard: list[tuple[str, str, float]] = []
    budget = _budget(10.0, 0.05, heard)

    def release_after_knock() -> None:
        instance.knocked.wait(10)
        clock[0] = 0.3  # the resume took 0.3 s on the gate's clock
        instance.back.set()

    threading.Thread(target=release_after_knock).start()
    results, errors = _at_once(8, lambda: gate.open("r1", instance.attempt, 0.05, budget))
    assert errors == [] and results == ["conn"] * 8
    assert instance.attempts[0] == 10.0  # the knock had the whole budget
    assert instance.attempts[1:] == [0.05] * 7  # the others dialled once it had answered
    assert heard == [("resumed", "r1", 0.3)]
    # Connected moments ago: the next attempt is a plain one, within connect_timeout.
    assert gate.open("r1", instance.attempt, 0.05, budget) == "conn"
    assert instance.attempts[-1] == 0.05


def test_a_knock_that_runs_out_of_budget_fails_everyone_who_waited_without_dialling() -> None:
    instance = _Resuming(delay=60.0)
    gate = ResumeGate()
    heard: list[tuple[str, str, float]] = []
    results, errors = _at_once(
        5, lambda: gate.open("r2", instance.attempt, 0.05, _budget(0.2, 0.05, heard))
    )
    assert results == [] and len(errors) == 5
    assert all(isinstance(e, asd.InstanceResumeTimeout) for e in errors)
    assert all("resume_timeout=0.2s" in str(e) for e in errors)
    assert len(instance.attempts) == 1  # nobody dialled after the knock
    assert [h[:2] for h in heard] == [("timeout", "r2")]


def test_a_refused_knock_is_the_drivers_error_and_the_next_attempt_knocks_again() -> None:
    gate = ResumeGate()
    heard: list[tuple[str, str, float]] = []
    budget = _budget(5.0, 1.0, heard)

    def refused(seconds: float) -> str:
        raise ConnectionRefusedError("refused")

    with pytest.raises(ConnectionRefusedError):
        gate.open("r3", refused, 1.0, budget)
    assert gate.open("r3", lambda s: f"conn within {s:g}", 1.0, budget) == "conn within 5"
    assert heard == []


def test_off_or_warm_never_waits_longer_than_connect_timeout() -> None:
    gate = ResumeGate()
    heard: list[tuple[str, str, float]] = []
    seen: list[float] = []

    def attempt(seconds: float) -> str:
        seen.append(seconds)
        return "conn"

    gate.open("r4", attempt, 2.0, _budget(0.0, 2.0, heard))
    gate.open("r5", attempt, 2.0, _budget(30.0, 2.0, heard), holds_connections=True)
    assert seen == [2.0, 2.0]


def test_resume_timeout_shorter_than_connect_timeout_is_refused_by_name() -> None:
    from aurora_smartdriver.settings import Settings

    with pytest.raises(asd.ConfigError, match="resume_timeout") as caught:
        Settings(resume_timeout=2.0, connect_timeout=5.0)
    assert caught.value.parameter == "resume_timeout"
    assert Settings(resume_timeout=0).resume_timeout == 0
    assert Settings(resume_timeout="30s").resume_timeout == 30.0
