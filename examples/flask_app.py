"""A request handler pattern (Flask): python examples/flask_app.py

One `Cluster` per process, created with the app. Read-only handlers borrow a reader, writing
handlers run their transaction with `run_transaction`, which re-runs it after a failover. An
idempotency key sent by the client makes a re-run safe even when a failover cut the COMMIT. The
errors that remain map to HTTP: no writer within `failover_timeout` is a 503 with Retry-After.

The program starts a lab, drives the app with Flask's test client, kills the writer between two
requests and shows that no request failed.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

import aurora_smartdriver as asd
from aurora_smartdriver import lab


def create_app(dsn: str) -> Flask:
    cluster = asd.Cluster(dsn, max_replica_lag="5s", failover_timeout="20s")
    app = Flask(__name__)

    with cluster.writer() as conn:
        conn.cursor().execute(
            "CREATE TABLE IF NOT EXISTS orders (id VARCHAR(64) PRIMARY KEY, item VARCHAR(100))"
        )

    @app.get("/orders/<order_id>")
    def get_order(order_id: str) -> Any:
        with cluster.reader() as conn:  # a replica: may be up to max_replica_lag behind
            cur = conn.cursor()
            cur.execute("SELECT item FROM orders WHERE id = %s", (order_id,))
            row = cur.fetchone()
        if row is None:
            return {"error": "not found"}, 404
        return {"id": order_id, "item": row[0], "served_by": conn.instance_id}

    @app.post("/orders")
    def create_order() -> Any:
        key = request.headers.get("Idempotency-Key")
        if not key:
            return {"error": "send an Idempotency-Key header"}, 400
        item = str((request.get_json(silent=True) or {}).get("item", ""))

        def insert(conn: asd.Connection) -> None:
            cur = conn.cursor()
            # INSERT IGNORE: a re-run after an unknown COMMIT outcome finds its row and stops.
            cur.execute("INSERT IGNORE INTO orders VALUES (%s, %s)", (key, item))

        cluster.run_transaction(insert, idempotent=True)
        return {"id": key}, 201

    @app.errorhandler(asd.NoWriterAvailable)
    def no_writer(exc: asd.NoWriterAvailable) -> Any:
        return {"error": "the database is failing over, try again"}, 503, {"Retry-After": "5"}

    app.extensions["aurora_cluster"] = cluster
    return app


def main() -> None:
    with lab.start("mariadb", replicas=1, dns_lag=30.0) as cluster_lab:
        app = create_app(cluster_lab.dsn)
        client = app.test_client()
        statuses = []
        for n in range(20):
            if n == 10:
                report = cluster_lab.failover()
                print(f"failover {report.old_writer} -> {report.new_writer}")
            done = client.post(
                "/orders", json={"item": f"book {n}"}, headers={"Idempotency-Key": f"o{n}"}
            )
            statuses.append(done.status_code)
        cluster_lab.wait_replicated()
        got = client.get("/orders/o15").get_json()
        print(f"POST statuses: {sorted(set(statuses))}; GET /orders/o15 -> {got}")
        assert statuses == [201] * 20
        assert got["item"] == "book 15"
        app.extensions["aurora_cluster"].close()


if __name__ == "__main__":
    main()
