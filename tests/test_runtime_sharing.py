"""Process-wide sharing: one monitor per cluster whatever the login; settings per connection.

Every test names its own ``cluster_id`` so that it shares nothing with other tests, and then
connects to that one cluster with different settings, as two parts of one application would.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest

import aurora_smartdriver as asd
from aurora_smartdriver.lab import Lab


def _query(conn: Any, sql: str) -> list[Any]:
    cur = conn.cursor()
    cur.execute(sql)
    return list(cur.fetchall()) if cur.description else []


def _postgresql(lab: Lab) -> bool:
    return lab.state().engine == "postgresql"


def _without(dsn_text: str, parameter: str) -> str:
    base, _, query = dsn_text.partition("?")
    kept = [p for p in query.split("&") if not p.startswith(f"{parameter}=")]
    return base + ("?" + "&".join(kept) if kept else "")


def _second_login(lab: Lab) -> tuple[str, str]:
    """A second user of the lab's database (created once), as a second application would use."""
    user, password = "asd_second", "second-pw-123"
    state = lab.state()
    if _postgresql(lab):
        exists = lab.execute(lab.writer, f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'")
        if not exists:
            lab.execute(lab.writer, f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        lab.execute(lab.writer, f"GRANT ALL ON DATABASE {state.database} TO {user}")
    else:
        lab.execute(
            lab.writer, f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{password}'"
        )
        lab.execute(lab.writer, f"GRANT ALL ON *.* TO '{user}'@'%'")
    time.sleep(0.5)  # let the replicas apply it
    return user, password


def test_failover_off_is_kept_after_another_connection_to_the_cluster(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    first = asd.connect(aurora_lab.dsn, cluster_id=cluster_id)
    second = asd.connect(aurora_lab.dsn, cluster_id=cluster_id, failover="off", retry_reads="on")
    try:
        assert first._runtime.spec.settings.failover is True
        assert second._runtime.spec.settings.failover is False
        assert second._runtime.spec.settings.retry_reads is True
        assert first._runtime.spec.settings.retry_reads is False
    finally:
        first.close()
        second.close()


def test_session_init_of_a_later_connection_is_applied(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    first = asd.connect(aurora_lab.dsn, cluster_id=cluster_id)
    if _postgresql(aurora_lab):
        init, check, want = (
            "SET application_name = 'second_app'",
            "SHOW application_name",
            "second_app",
        )
    else:
        init, check, want = "SET @asd_marker = 'second_app'", "SELECT @asd_marker", "second_app"
    second = asd.connect(aurora_lab.dsn, cluster_id=cluster_id, session_init=init)
    try:
        assert _query(second, check)[0][0] == want
        assert _query(first, check)[0][0] != want
    finally:
        first.close()
        second.close()


def test_statement_timeout_of_a_later_connection_is_applied(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    first = asd.connect(aurora_lab.dsn, cluster_id=cluster_id)
    second = asd.connect(aurora_lab.dsn, cluster_id=cluster_id, statement_timeout="7s")
    try:
        if _postgresql(aurora_lab):
            assert _query(second, "SHOW statement_timeout")[0][0] == "7s"
        else:
            assert float(_query(second, "SELECT @@max_statement_time")[0][0]) == 7.0
    finally:
        first.close()
        second.close()


def test_role_reader_of_a_later_connection_is_honoured(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    first = asd.connect(aurora_lab.dsn, cluster_id=cluster_id)
    second = asd.connect(aurora_lab.dsn, cluster_id=cluster_id, role="reader")
    try:
        assert first.instance_id == aurora_lab.writer.id
        assert second.instance_id in {r.id for r in aurora_lab.readers}
    finally:
        first.close()
        second.close()


def test_reader_fallback_of_a_later_cluster_is_honoured(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    # The first asks for readers lagging at most 0 s with fallback to the writer; the second
    # refuses the writer: its own choice must decide where its reads go.
    with (
        asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id, reader_fallback="writer") as first,
        asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id, reader_fallback="fail") as second,
    ):
        assert first._runtime.spec.settings.reader_fallback == "writer"
        assert second._runtime.spec.settings.reader_fallback == "fail"
        assert second._runtime._requests["reader"] != first._runtime._requests["reader"]


def test_pool_size_of_a_later_cluster_is_its_own(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    with (
        asd.Cluster(
            aurora_lab.dsn, cluster_id=cluster_id, pool_max_size=1, borrow_timeout="0.5s"
        ) as small,
        asd.Cluster(
            aurora_lab.dsn, cluster_id=cluster_id, pool_max_size=3, borrow_timeout="0.5s"
        ) as large,
    ):
        with large.writer() as a, large.writer() as b, large.writer() as c:
            assert {a.instance_id, b.instance_id, c.instance_id} == {aurora_lab.writer.id}
        with small.writer() as only:
            assert _query(only, "SELECT 1") == [(1,)]


def test_one_monitor_per_cluster_whatever_the_login(aurora_lab: Lab) -> None:
    user, password = _second_login(aurora_lab)
    cluster_id = uuid.uuid4().hex
    with (
        asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id) as first,
        asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id, user=user, password=password) as second,
    ):
        with first.writer() as a, second.writer() as b:
            assert _query(b, "SELECT current_user" if _postgresql(aurora_lab) else "SELECT USER()")[
                0
            ][0].startswith(user)
            assert a._raw is not b._raw
        assert first._runtime.monitor is second._runtime.monitor
        assert first._runtime.resolver is second._runtime.resolver
        assert first._runtime.watchdog is second._runtime.watchdog
        assert first._runtime.pools is not second._runtime.pools


def test_a_wrong_password_does_not_break_the_next_login(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    with pytest.raises(asd.AuthenticationFailed):
        asd.connect(aurora_lab.dsn, cluster_id=cluster_id, password="wrong-password")
    started = time.monotonic()
    conn = asd.connect(aurora_lab.dsn, cluster_id=cluster_id)
    try:
        assert _query(conn, "SELECT 1") == [(1,)]
        assert time.monotonic() - started < 5.0
    finally:
        conn.close()


def test_a_failed_first_attempt_does_not_fail_the_corrected_dsn(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    broken = _without(aurora_lab.dsn, "dns_server")
    with pytest.raises(Exception):  # whatever a DSN without its DNS server gives
        asd.connect(broken, cluster_id=cluster_id, connect_timeout="2s")
    conn = asd.connect(aurora_lab.dsn, cluster_id=cluster_id)
    try:
        assert _query(conn, "SELECT 1") == [(1,)]
    finally:
        conn.close()


def test_conflicting_cluster_settings_are_warned_about_once(
    aurora_lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    cluster_id = uuid.uuid4().hex
    caplog.set_level(logging.WARNING, logger="aurora_smartdriver")
    with asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id, refresh_interval="5s") as first:
        second = asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id, refresh_interval="9s")
        third = asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id, refresh_interval="9s")
        try:
            warned = [r for r in caplog.records if "refresh_interval" in r.getMessage()]
            assert len(warned) == 1
            text = warned[0].getMessage()
            assert "5" in text and "9" in text
            assert aurora_lab.state().password not in text
            assert first._runtime.monitor is second._runtime.monitor
        finally:
            second.close()
            third.close()


def test_connect_in_a_loop_keeps_one_monitor(aurora_lab: Lab) -> None:
    cluster_id = uuid.uuid4().hex
    monitors = set()
    for _ in range(3):
        conn = asd.connect(aurora_lab.dsn, cluster_id=cluster_id)
        monitors.add(id(conn._runtime.monitor))
        conn.close()
    assert len(monitors) == 1


def test_a_refused_login_in_use_does_not_refuse_the_next_login(aurora_lab: Lab) -> None:
    # The shared monitor logs in as its first user: while that user's password is wrong and
    # it never got an answer, a newcomer with a good login must not get the refusal.
    cluster_id = uuid.uuid4().hex
    wrong = asd.Cluster(aurora_lab.dsn, cluster_id=cluster_id, password="wrong-password")
    try:
        with pytest.raises(asd.AuthenticationFailed), wrong.writer():
            pass
        conn = asd.connect(aurora_lab.dsn, cluster_id=cluster_id)
        try:
            assert _query(conn, "SELECT 1") == [(1,)]
        finally:
            conn.close()
        with pytest.raises(asd.AuthenticationFailed), wrong.writer():
            pass  # still its own (wrong) login
    finally:
        wrong.close()
