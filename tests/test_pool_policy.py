"""The pool's pure decisions: recycling, backoff, admission through the connect gate."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from aurora_smartdriver.pool import (
    BackoffPolicy,
    ConnState,
    HostDown,
    HostHealth,
    RecyclePolicy,
    admit,
    after_failure,
    due_at,
    expiry,
    recycle,
)
from aurora_smartdriver.pool._errors import describe_error
from aurora_smartdriver.pool._policy import HEALTHY
from aurora_smartdriver.settings import Settings

seconds = st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False)
instants = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
draws = st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False)


@st.composite
def policies(draw: st.DrawFn) -> RecyclePolicy:
    return RecyclePolicy(
        max_lifetime=draw(seconds),
        max_lifetime_jitter=draw(fractions),
        max_idle=draw(seconds),
        validate_after_idle=draw(st.floats(min_value=0.0, max_value=1e6, allow_nan=False)),
    )


@st.composite
def connections(draw: st.DrawFn, policy: RecyclePolicy) -> ConnState:
    created = draw(instants)
    last_used = created + draw(st.floats(min_value=0.0, max_value=1e6, allow_nan=False))
    return ConnState(created, expiry(created, policy, draw(draws)), last_used)


# -- recycling ------------------------------------------------------------------------------


@given(policy=policies(), created=instants, u=draws)
def test_each_lifetime_is_max_lifetime_shortened_by_at_most_the_jitter(
    policy: RecyclePolicy, created: float, u: float
) -> None:
    expires = expiry(created, policy, u)
    lifetime = policy.max_lifetime
    assert expires <= created + lifetime * (1 + 1e-12)
    assert expires >= created + lifetime * (1 - policy.max_lifetime_jitter) * (1 - 1e-12)


@given(created=instants, u=draws, v=draws)
def test_connections_opened_together_expire_apart(created: float, u: float, v: float) -> None:
    policy = RecyclePolicy(max_lifetime=3600.0, max_lifetime_jitter=0.1)
    assume(abs(u - v) > 1e-6)
    assert expiry(created, policy, u) != expiry(created, policy, v)


def test_without_jitter_every_connection_lives_exactly_max_lifetime() -> None:
    policy = RecyclePolicy(max_lifetime=60.0, max_lifetime_jitter=0.0)
    assert {expiry(10.0, policy, u) for u in (0.0, 0.3, 0.999)} == {70.0}


@given(data=st.data(), policy=policies())
def test_before_due_at_a_connection_is_always_kept(
    data: st.DataObject, policy: RecyclePolicy
) -> None:
    conn = data.draw(connections(policy))
    due = due_at(conn, policy)
    now = data.draw(st.floats(min_value=conn.created_at, max_value=due, allow_nan=False))
    assume(now < due)
    assert recycle(conn, now, policy) == "keep"


@given(data=st.data(), policy=policies())
def test_after_due_at_a_connection_is_never_lent_unchecked(
    data: st.DataObject, policy: RecyclePolicy
) -> None:
    conn = data.draw(connections(policy))
    due = due_at(conn, policy)
    now = data.draw(st.floats(min_value=due, max_value=due + 1e7, allow_nan=False))
    assume(now > due)
    assert recycle(conn, now, policy) != "keep"


@given(data=st.data(), policy=policies())
def test_recycle_verdicts_follow_lifetime_then_idleness_then_validation(
    data: st.DataObject, policy: RecyclePolicy
) -> None:
    conn = data.draw(connections(policy))
    now = data.draw(st.floats(min_value=conn.last_used, max_value=conn.last_used + 2e6))
    verdict = recycle(conn, now, policy)
    if now >= conn.expires_at:
        assert verdict == "expired"
    elif now > conn.last_used + policy.max_idle:
        assert verdict == "idle"
    elif now > conn.last_used + policy.validate_after_idle:
        assert verdict == "validate"
    else:
        assert verdict == "keep"


def test_a_connection_idle_past_validate_after_idle_is_validated() -> None:
    policy = RecyclePolicy(max_lifetime=100.0, max_idle=50.0, validate_after_idle=1.0)
    conn = ConnState(created_at=0.0, expires_at=100.0, last_used=10.0)
    assert recycle(conn, 10.5, policy) == "keep"
    assert recycle(conn, 11.5, policy) == "validate"
    assert recycle(conn, 60.5, policy) == "idle"
    assert recycle(conn, 100.0, policy) == "expired"


@given(data=st.data(), policy=policies())
def test_a_suspect_host_gets_every_connection_validated_that_is_not_closed(
    data: st.DataObject, policy: RecyclePolicy
) -> None:
    conn = data.draw(connections(policy))
    now = data.draw(st.floats(min_value=conn.created_at, max_value=conn.last_used + 2e6))
    plain = recycle(conn, now, policy)
    suspect = recycle(conn, now, policy, host_suspect=True)
    assert suspect == ("validate" if plain in ("keep", "validate") else plain)


def test_recycle_policy_reads_the_pool_settings() -> None:
    settings = Settings(
        max_lifetime=120, max_lifetime_jitter=0.2, max_idle=30, validate_after_idle=0.5
    )
    assert RecyclePolicy.from_settings(settings) == RecyclePolicy(120.0, 0.2, 30.0, 0.5)


# -- backoff --------------------------------------------------------------------------------

backoffs = st.builds(
    lambda initial, extra: BackoffPolicy(initial=initial, maximum=initial + extra),
    st.floats(min_value=0.001, max_value=10.0),
    st.floats(min_value=0.0, max_value=100.0),
)


@given(policy=backoffs, us=st.lists(draws, min_size=1, max_size=80))
def test_every_backoff_delay_lies_within_its_exponential_window(
    policy: BackoffPolicy, us: list[float]
) -> None:
    for n, delay in enumerate(policy.schedule(us), start=1):
        window = min(policy.maximum, policy.initial * 2.0 ** (n - 1))
        assert 0.0 <= delay <= window * (1 + 1e-12)


@given(policy=backoffs, n=st.integers(min_value=1, max_value=200))
def test_backoff_window_doubles_until_it_reaches_the_maximum(policy: BackoffPolicy, n: int) -> None:
    now, later = policy.ceiling(n), policy.ceiling(n + 1)
    assert later >= now
    assert later == pytest.approx(min(policy.maximum, 2 * now))


def test_backoff_schedule_is_a_value() -> None:
    policy = BackoffPolicy(initial=0.1, maximum=1.0)
    assert policy.schedule([0.5, 0.5, 0.5, 0.5, 0.5]) == pytest.approx((0.05, 0.1, 0.2, 0.4, 0.5))
    assert policy.schedule([0.5] * 3) == policy.schedule([0.5] * 3)
    assert policy == BackoffPolicy(initial=0.1, maximum=1.0)


# -- admission ------------------------------------------------------------------------------


@given(
    connecting=st.integers(0, 20),
    cap=st.integers(1, 10),
    failures=st.integers(0, 5),
    retry_at=instants,
    now=instants,
    probing=st.booleans(),
)
def test_admission_never_exceeds_the_gate_and_never_dials_a_host_in_backoff(
    connecting: int, cap: int, failures: int, retry_at: float, now: float, probing: bool
) -> None:
    health = HostHealth(failures, retry_at if failures else 0.0, "x" if failures else None)
    decision = admit(health, now, connecting=connecting, cap=cap, probing=probing)
    if decision in ("dial", "probe"):
        assert connecting < cap
    if health.down:
        assert decision != "dial"
        if decision == "probe":
            assert not probing and now >= retry_at
    else:
        assert decision in ("dial", "busy")


def test_a_failure_marks_the_host_down_for_a_jittered_backoff() -> None:
    policy = BackoffPolicy(initial=1.0, maximum=8.0)
    health = after_failure(
        HEALTHY, now=100.0, seen_failures=0, auth=False, error="refused", policy=policy, u=0.5
    )
    assert health == HostHealth(1, 100.5, "refused", False)
    assert admit(health, 100.4, connecting=0, cap=4, probing=False) == "down"
    assert admit(health, 100.5, connecting=0, cap=4, probing=False) == "probe"
    assert admit(health, 100.5, connecting=0, cap=4, probing=True) == "down"
    again = after_failure(
        health, now=101.0, seen_failures=1, auth=False, error="refused", policy=policy, u=0.5
    )
    assert again.failures == 2 and again.retry_at == pytest.approx(102.0)


def test_attempts_that_started_before_the_outage_was_known_do_not_deepen_the_backoff() -> None:
    policy = BackoffPolicy(initial=1.0, maximum=8.0)
    first = after_failure(
        HEALTHY, now=10.0, seen_failures=0, auth=False, error="a", policy=policy, u=0.9
    )
    second = after_failure(
        first, now=10.1, seen_failures=0, auth=False, error="b", policy=policy, u=0.1
    )
    assert (second.failures, second.retry_at, second.last_error) == (1, first.retry_at, "b")


@given(u=draws, failures=st.integers(0, 10))
def test_refused_credentials_back_off_for_the_longest_delay_at_once(
    u: float, failures: int
) -> None:
    policy = BackoffPolicy(initial=0.05, maximum=2.0)
    start = HostHealth(failures, 0.0, "x" if failures else None)
    health = after_failure(
        start, now=50.0, seen_failures=failures, auth=True, error="denied", policy=policy, u=u
    )
    assert health.auth and health.retry_at == 52.0 and health.failures == failures + 1


@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["start", "fail", "succeed", "tick"]), draws), max_size=200
    )
)
def test_a_down_host_sees_at_most_one_probe_per_backoff(
    steps: list[tuple[str, float]],
) -> None:
    """Drive the gate as pools do (admit, then report each attempt's outcome) and check that
    attempts never exceed the cap and that a host known down is only ever probed by one."""
    policy = BackoffPolicy(initial=0.05, maximum=2.0)
    cap = 4
    health = HEALTHY
    now = 0.0
    attempts: list[tuple[int, bool]] = []  # failures seen at start, probe
    probing = False
    for action, u in steps:
        if action == "tick":
            now += u
        elif action == "start":
            decision = admit(health, now, connecting=len(attempts), cap=cap, probing=probing)
            if decision in ("dial", "probe"):
                attempts.append((health.failures, decision == "probe"))
                probing = probing or decision == "probe"
        elif attempts:
            seen, probe = attempts.pop(int(u * len(attempts)))
            probing = probing and not probe
            if action == "fail":
                health = after_failure(
                    health, now=now, seen_failures=seen, auth=False, error="e", policy=policy, u=u
                )
            else:
                health = HEALTHY
        assert len(attempts) <= cap
        assert sum(probe for _, probe in attempts) <= 1
        assert probing == any(probe for _, probe in attempts)
        if health.down:
            assert health.retry_at - now <= policy.maximum + 1e-9


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "connection to host=db password=s3cret failed",
        "bad dsn postgresql://app:s3cret@db/app",
        "PWD = s3cret; more",
        "password='s3 cret' host=x",
    ],
)
def test_error_descriptions_mask_anything_like_a_password(text: str) -> None:
    described = describe_error(RuntimeError(text))
    assert "s3cret" not in described and "s3 cret" not in described
    assert described.startswith("RuntimeError: ")


def test_host_down_says_what_and_when() -> None:
    error = HostDown("db-2", retry_in=1.25, last_error="OperationalError: refused")
    assert "db-2 is unreachable" in str(error) and "1.25s" in str(error)
    assert (error.instance_id, error.retry_in, error.auth) == ("db-2", 1.25, False)
    denied = HostDown("db-2", retry_in=2.0, last_error="denied", auth=True)
    assert "refused the credentials" in str(denied)
    assert math.isclose(denied.retry_in, 2.0)


@given(st.text(alphabet=st.characters(whitelist_categories=("L", "N")), min_size=8, max_size=20))
def test_mask_secrets_hides_passwords_in_keyword_and_url_form(secret: str) -> None:
    from aurora_smartdriver.pool._errors import mask_secrets

    templates = (
        "connection to host=db password={} failed",
        "bad DSN postgresql://app:{}@db.example/app",
        "password = '{} x' rejected",
    )
    # A secret that is a word of the text around it ("rejected") is not the secret showing.
    assume(all(secret not in template.format("") for template in templates))
    for template in templates:
        assert secret not in mask_secrets(template.format(secret))
