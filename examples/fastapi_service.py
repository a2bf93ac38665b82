"""An async service (FastAPI) on `aurora_smartdriver.aio`: python examples/fastapi_service.py

One `aio.Cluster` per process, opened and closed with the app (its lifespan). Reads borrow a
reader; writes run in `run_transaction`, which re-runs the work after a failover. An idempotency
key sent by the client makes a re-run safe even when a failover cut the COMMIT (the insert
skips a row that is already there). No writer within `failover_timeout` is a 503 with
Retry-After. Nothing here blocks the event loop, failovers included.

The program starts a lab, sends 40 concurrent POSTs through httpx's ASGI transport while the
writer fails over, and shows that every request succeeded and every order is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse

from aurora_smartdriver import aio, lab


async def query(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """One statement on a library connection, psycopg's or aiomysql's API alike."""
    cur = conn.cursor()
    if asyncio.iscoroutine(cur) or hasattr(cur, "__await__"):
        cur = await cur  # aiomysql: cursor() is awaited
    await cur.execute(sql, params)
    return list(await cur.fetchall()) if cur.description else []


def create_app(dsn: str) -> FastAPI:
    cluster = aio.Cluster(dsn, max_replica_lag="5s", failover_timeout="20s")
    postgresql = cluster.spec.engine == "postgresql"
    insert_once = (
        "INSERT INTO orders VALUES (%s, %s) ON CONFLICT (id) DO NOTHING"
        if postgresql
        else "INSERT IGNORE INTO orders VALUES (%s, %s)"
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with cluster.writer() as conn:
            await query(
                conn,
                "CREATE TABLE IF NOT EXISTS orders (id VARCHAR(64) PRIMARY KEY, item VARCHAR(100))",
            )
        yield
        await cluster.close()

    app = FastAPI(lifespan=lifespan)
    app.state.cluster = cluster

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str) -> Any:
        async with cluster.reader() as conn:  # a replica: may be up to max_replica_lag behind
            rows = await query(conn, "SELECT item FROM orders WHERE id = %s", (order_id,))
            served_by = conn.instance_id
        if not rows:
            return JSONResponse({"error": "not found"}, status_code=404)
        return {"id": order_id, "item": rows[0][0], "served_by": served_by}

    @app.post("/orders", status_code=201)
    async def create_order(
        body: dict[str, Any], idempotency_key: str | None = Header(default=None)
    ) -> Any:
        if not idempotency_key:
            return JSONResponse({"error": "send an Idempotency-Key header"}, status_code=400)
        item = str(body.get("item", ""))

        async def insert(conn: Any) -> None:
            await query(conn, insert_once, (idempotency_key, item))

        await cluster.run_transaction(insert, idempotent=True)
        return {"id": idempotency_key}

    @app.exception_handler(aio.NoWriterAvailable)
    async def no_writer(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": "the database is failing over, try again"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    return app


async def drive(
    app: FastAPI, cluster_lab: lab.Lab, orders: int = 40, prefix: str = "o"
) -> list[int]:
    """POST ``orders`` orders (ids ``prefix0``, ...) concurrently while the writer fails over;
    their statuses."""
    import httpx

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://service"
        ) as client,
    ):

        async def post(n: int) -> int:
            await asyncio.sleep(n * 0.02)  # spread over the failover
            done = await client.post(
                "/orders", json={"item": f"book {n}"}, headers={"Idempotency-Key": f"{prefix}{n}"}
            )
            return done.status_code

        posts = [asyncio.create_task(post(n)) for n in range(orders)]
        await asyncio.sleep(0.2)
        report = await asyncio.to_thread(cluster_lab.failover)  # the loop keeps serving
        print(f"failover {report.old_writer} -> {report.new_writer}")
        statuses = list(await asyncio.gather(*posts))
        await asyncio.to_thread(cluster_lab.wait_replicated)
        got = (await client.get(f"/orders/{prefix}15")).json()
        print(f"GET /orders/{prefix}15 -> {got}")
        assert got["item"] == "book 15"
    return statuses


def main() -> None:
    with lab.start("postgresql", replicas=1, dns_lag=30.0) as cluster_lab:
        statuses = asyncio.run(drive(create_app(cluster_lab.dsn), cluster_lab))
        stored = cluster_lab.execute(cluster_lab.writer.id, "SELECT count(*) FROM orders")
        print(f"POST statuses: {sorted(set(statuses))}; orders stored: {stored[0][0]}")
        assert statuses == [201] * 40
        assert int(str(stored[0][0])) == 40


if __name__ == "__main__":
    main()
