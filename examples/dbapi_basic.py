"""Plain DB-API through a failover: python examples/dbapi_basic.py

`aurora_smartdriver.psycopg` is a PEP 249 module: code written for psycopg keeps working, and a
failover arrives as an exception that says what happened to the work in flight. Here the writer
is killed between two inserts; the second insert's exception tells the program to re-run it,
and the same connection, now on the new writer, does.
"""

from __future__ import annotations

import aurora_smartdriver as asd
from aurora_smartdriver import lab
from aurora_smartdriver import psycopg as db


def insert(conn: asd.Connection, value: int) -> None:
    cur = conn.cursor()
    cur.execute("INSERT INTO dbapi_example (n) VALUES (%s)", (value,))
    conn.commit()


def main() -> None:
    with lab.start("postgresql", replicas=1, dns_lag=30.0) as cluster:
        conn = db.connect(cluster.dsn, failure_detection_time="2s")
        print(f"connected to {conn.instance_id} (the writer)")
        cur = conn.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS dbapi_example (n integer PRIMARY KEY)")
        conn.commit()
        insert(conn, 1)

        report = cluster.failover()  # kill -9 the writer; DNS keeps the old answer for 30 s
        print(f"failover {report.old_writer} -> {report.new_writer} in {report.duration:.2f}s")
        try:
            insert(conn, 2)
        except asd.FailoverSucceeded as exc:
            # Nothing of this transaction reached the database: run it again.
            print(f"{type(exc).__name__}: rolled back={exc.transaction_rolled_back}, re-running")
            insert(conn, 2)
        except asd.TransactionOutcomeUnknown:
            print("COMMIT was cut: check whether row 2 is there before writing it again")
            raise

        cur = conn.cursor()
        cur.execute("SELECT n FROM dbapi_example ORDER BY n")
        rows = [n for (n,) in cur.fetchall()]
        print(f"now on {conn.instance_id}; rows: {rows}")
        assert conn.instance_id == report.new_writer
        assert rows == [1, 2]
        conn.close()


if __name__ == "__main__":
    main()
