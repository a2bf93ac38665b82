"""The sharing decisions (`aurora_smartdriver._sharing`), as pure functions over settings."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aurora_smartdriver import _sharing, dsn
from aurora_smartdriver.settings import Settings

_DSN = "postgresql://app:s3cret-pw@orders.cluster-abc.us-east-1.rds.amazonaws.com/app"


def _with(settings: Settings, name: str, value: Any) -> Settings:
    changes: dict[str, Any] = {name: value}
    return dataclasses.replace(settings, **changes)


def _settings(**changes: Any) -> Settings:
    return dataclasses.replace(Settings(), **changes)


@given(
    st.sampled_from(_sharing.CLUSTER_SETTINGS),
    st.sampled_from(["failover", "retry_reads", "role", "reader_fallback", "failover_timeout"]),
)
def test_only_cluster_wide_settings_conflict(cluster_wide: str, own: str) -> None:
    base = dsn.parse(_DSN).settings
    values: dict[str, Any] = {
        "failover": False,
        "retry_reads": True,
        "role": "reader",
        "reader_fallback": "fail",
        "failover_timeout": 3.0,
    }
    assert _sharing.conflicts(base, _with(base, own, values[own])) == ()
    other: dict[str, Any] = {
        "topology_source": "probe",
        "refresh_interval": 7.0,
        "fast_refresh_interval": 0.3,
        "staleness_window": 9.0,
        "instance_host_pattern": "?.other.us-east-1.rds.amazonaws.com",
        "replica_status_schema": "other",
        "read_only_variable": "read_only",
        "dns_server": (("127.0.0.53", 5353),),
        "dns_timeout": 3.0,
        "dns_ttl_cap": 2.0,
        "failure_detection_time": 4.0,
        "rds_proxy": "off",
        "rds_proxy_read_only_endpoint": "ro.endpoint.proxy-abc.us-east-1.rds.amazonaws.com",
    }
    changed = _with(base, cluster_wide, other[cluster_wide])
    found = _sharing.conflicts(base, changed)
    assert [c.name for c in found] == [cluster_wide]
    assert cluster_wide in str(found[0])


def test_fastest_response_conflicts_only_when_the_monitor_does_not_time() -> None:
    plain = _settings()
    timed = _settings(reader_strategy="fastest_response")
    assert [c.name for c in _sharing.conflicts(plain, timed)] == ["reader_strategy"]
    assert _sharing.conflicts(timed, plain) == ()
    assert _sharing.conflicts(timed, timed) == ()


@given(
    users=st.integers(min_value=0, max_value=5),
    answered=st.booleans(),
    conflicting=st.booleans(),
    failing=st.booleans(),
    other_login=st.booleans(),
)
def test_machinery_in_use_that_answered_is_always_reused(
    users: int, answered: bool, conflicting: bool, failing: bool, other_login: bool
) -> None:
    verdict = _sharing.reuse(
        users=users,
        answered=answered,
        conflicting=conflicting,
        failing=failing,
        other_login=other_login,
    )
    if users > 0 and answered:
        assert verdict == "reuse"  # never pulled from under its users
    if users == 0 and not answered:
        assert verdict == "replace"  # a failed first attempt does not linger
    if verdict == "restart":
        assert users > 0 and not answered and failing and (other_login or conflicting)


def test_idle_machinery_with_other_cluster_settings_is_replaced() -> None:
    assert _sharing.reuse(users=0, answered=True, conflicting=True) == "replace"
    assert _sharing.reuse(users=0, answered=True, conflicting=False) == "reuse"


@given(st.text(min_size=1, max_size=30).filter(lambda t: t.isprintable()))
def test_a_login_key_never_shows_the_password(password: str) -> None:
    spec = dsn.parse(_DSN, password=password)
    key = _sharing.login_key(spec)
    assert password not in key or len(password) <= 2  # a short password may occur by chance
    assert key == _sharing.login_key(dsn.parse(_DSN, password=password))


def test_logins_differ_by_user_password_database_and_provider() -> None:
    base = _sharing.login_key(dsn.parse(_DSN))
    assert _sharing.login_key(dsn.parse(_DSN, password="other")) != base
    assert _sharing.login_key(dsn.parse(_DSN, user="other")) != base
    assert _sharing.login_key(dsn.parse(_DSN, database="other")) != base
    assert _sharing.login_key(dsn.parse(_DSN), provider=object()) != base
    assert _sharing.login_key(dsn.parse(_DSN, credentials_refresh_interval="97s")) != base
    assert _sharing.login_key(dsn.parse(_DSN, failover="off")) == base


def test_pools_are_shared_only_by_equal_pool_settings() -> None:
    login = _sharing.login_key(dsn.parse(_DSN))
    base = dsn.parse(_DSN).settings
    key = _sharing.pool_key(login, base)
    assert _sharing.pool_key(login, dataclasses.replace(base, failover=False)) == key
    assert _sharing.pool_key(login, dataclasses.replace(base, role="reader")) == key
    for name, value in [
        ("pool_max_size", 99),
        ("session_init", ("SET x = 1",)),
        ("statement_timeout", 5.0),
        ("max_lifetime", 60.0),
    ]:
        assert _sharing.pool_key(login, _with(base, name, value)) != key
