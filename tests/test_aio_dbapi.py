"""``aurora_smartdriver.aio.psycopg`` and ``aurora_smartdriver.aio.aiomysql``: async DB-API
shaped modules (connect, paramstyle, the driver's exception classes), as the sync
``aurora_smartdriver.psycopg`` and ``.pymysql``."""

from __future__ import annotations

import importlib
import uuid
from typing import Any

import pytest

from aurora_smartdriver.lab import Lab

pytestmark = pytest.mark.asyncio


def _modules(lab: Lab) -> tuple[Any, Any, Any]:
    pg = lab.state().engine == "postgresql"
    ours = importlib.import_module(
        "aurora_smartdriver.aio.psycopg" if pg else "aurora_smartdriver.aio.aiomysql"
    )
    sync = importlib.import_module(
        "aurora_smartdriver.psycopg" if pg else "aurora_smartdriver.pymysql"
    )
    driver = importlib.import_module("psycopg" if pg else "pymysql")
    return ours, sync, driver


async def test_the_async_module_connects_and_names_the_drivers_errors(aurora_lab: Lab) -> None:
    ours, sync, driver = _modules(aurora_lab)
    assert ours.paramstyle == driver.paramstyle
    assert ours.apilevel == "2.0"
    assert ours.OperationalError is driver.OperationalError
    assert ours.FailoverSucceeded is sync.FailoverSucceeded
    assert issubclass(ours.TransactionOutcomeUnknown, driver.OperationalError)
    assert issubclass(ours.ConfigError, driver.ProgrammingError)
    conn = await ours.connect(aurora_lab.dsn, cluster_id=uuid.uuid4().hex)
    try:
        assert conn.instance_id == aurora_lab.writer.id
        with pytest.raises(ours.ProgrammingError):
            cur = conn.cursor() if hasattr(conn, "execute") else await conn.cursor()
            await cur.execute("SELECT * FROM no_such_table_here")
    finally:
        if hasattr(conn, "ensure_closed"):
            await conn.ensure_closed()
        else:
            await conn.close()
    with pytest.raises(ours.ConfigError):
        await ours.connect(aurora_lab.dsn, role="nowhere")
