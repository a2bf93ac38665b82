"""The async proxies' facts (aurora_smartdriver.aio._facts) agree with the sync proxy's, over
every driver state: one decision, whichever front the application uses."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pymysql
from hypothesis import given
from hypothesis import strategies as st

from aurora_smartdriver.aio import _drivers, _facts
from aurora_smartdriver.connection import PsycopgConnection, PyMySQLConnection
from aurora_smartdriver.drivers import adapter_for


@given(
    before=st.sampled_from([None, 0, 1, 2, 3, 4]),
    autocommit=st.booleans(),
    pipeline=st.booleans(),
)
def test_psycopg_facts_agree_with_the_sync_proxy(
    before: int | None, autocommit: bool, pipeline: bool
) -> None:
    raw = SimpleNamespace(autocommit=autocommit, _pipeline=object() if pipeline else None)
    sync = PsycopgConnection._facts(object.__new__(PsycopgConnection), Exception(), before, raw)
    assert _facts.psycopg(before, autocommit=autocommit, pipeline=pipeline) == sync


_RESULTS = [None, SimpleNamespace(field_count=0), SimpleNamespace(field_count=2)]
_ERRORS = [
    pymysql.err.InterfaceError(0, ""),
    pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query"),
]


@given(
    status=st.integers(min_value=0, max_value=3),
    before=st.sampled_from(_RESULTS),
    settled=st.sampled_from(_RESULTS),
    error=st.sampled_from(_ERRORS),
)
def test_mysql_facts_agree_with_the_sync_proxy(
    status: int, before: Any, settled: Any, error: BaseException
) -> None:
    conn = object.__new__(PyMySQLConnection)
    conn.__dict__.update(_runtime=SimpleNamespace(module=pymysql), _settled_result=settled)
    raw = SimpleNamespace(server_status=status)
    sync = PyMySQLConnection._facts(conn, error, before, raw)
    rows = before is not None and bool(before.field_count) and before is not settled
    sent = not _drivers.not_sent(adapter_for("mysql"), error)
    assert _facts.mysql(status, rows_since_boundary=rows, sent=sent) == sync


def test_aiomysqls_not_connected_error_is_a_call_never_sent() -> None:
    adapter = adapter_for("mysql")
    error = pymysql.err.InterfaceError("(0, 'Not connected')")  # as aiomysql raises it
    assert _drivers.not_sent(adapter, error)
    assert _drivers.error_kind(adapter, error) == "disconnect"
