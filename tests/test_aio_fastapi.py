"""examples/fastapi_service.py through a writer failover: every request served, every order
stored once (httpx's ASGI transport; the app's own event loop keeps serving). On MariaDB here;
the example's own run (tests/test_examples.py) does the same on PostgreSQL."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from pathlib import Path
from types import ModuleType

import pytest

from aurora_smartdriver.lab import Lab

EXAMPLE = Path(__file__).parent.parent / "examples" / "fastapi_service.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_service", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.asyncio
async def test_every_order_is_served_and_stored_once_through_a_failover(
    aurora_lab_mariadb: Lab,
) -> None:
    aurora_lab = aurora_lab_mariadb
    service = _example()
    prefix = uuid.uuid4().hex[:8]
    dsn = f"{aurora_lab.dsn}{'&' if '?' in aurora_lab.dsn else '?'}cluster_id={uuid.uuid4().hex}"
    statuses = await service.drive(service.create_app(dsn), aurora_lab, orders=30, prefix=prefix)
    assert statuses == [201] * 30
    rows = await asyncio.to_thread(
        aurora_lab.execute,
        aurora_lab.writer.id,
        f"SELECT id, count(*) FROM orders WHERE id LIKE '{prefix}%' GROUP BY id",
    )
    assert sorted(str(row[0]) for row in rows) == sorted(f"{prefix}{n}" for n in range(30))
    assert {int(str(row[1])) for row in rows} == {1}
