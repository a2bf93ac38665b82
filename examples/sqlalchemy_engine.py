"""A SQLAlchemy engine over a lab cluster: python examples/sqlalchemy_engine.py

Writes go to the writer, `aurora_role="reader"` sends work to a replica, and after the writer
dies the pool's connections are already on the new writer: the statement that was cut off
raises FailoverSucceeded (inside SQLAlchemy's OperationalError), and running it again works.
"""

from __future__ import annotations

import time

import sqlalchemy.exc
from sqlalchemy import create_engine, text

import aurora_smartdriver as asd
from aurora_smartdriver import lab
from aurora_smartdriver.sqlalchemy import engine_url


def insert(engine: sqlalchemy.Engine, attempts: int = 3) -> str:
    """One insert in a transaction, run again after a failover; the instance that took it."""
    for _ in range(attempts):
        try:
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO example VALUES (:at)"), {"at": time.time()})
                return str(conn.execute(text("SELECT aurora_db_instance_identifier()")).scalar())
        except sqlalchemy.exc.OperationalError as exc:
            if not isinstance(exc.orig, asd.FailoverSucceeded):
                raise
            print(f"  failover: {exc.orig}")  # rolled back on the old writer: run it again
    raise RuntimeError("no luck")


def main() -> None:
    with lab.start("postgresql", replicas=1) as cluster:
        url = engine_url(cluster.dsn).update_query_dict({"failover_timeout": "20s"})
        engine = create_engine(url, pool_size=5, pool_pre_ping=True)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS example (at double precision)"))
        print("insert on", insert(engine))
        with engine.connect().execution_options(aurora_role="reader") as conn:
            replica = conn.execute(text("SELECT pg_is_in_recovery()")).scalar()
            print("read on a replica:", replica)
        with engine.connect() as conn:  # keep one connection busy across the failover
            conn.execute(text("SELECT 1"))
            report = cluster.failover()
            print(f"failover {report.old_writer} -> {report.new_writer}")
            try:
                conn.execute(text("SELECT 1"))
            except sqlalchemy.exc.OperationalError as exc:
                assert isinstance(exc.orig, asd.FailoverSucceeded)
                assert not exc.connection_invalidated  # the connection moved; it stays pooled
                conn.rollback()
            conn.execute(text("SELECT 1"))
            print("same connection, now on", conn.connection.dbapi_connection.instance_id)
        print("insert on", insert(engine))
        engine.dispose()


if __name__ == "__main__":
    main()
