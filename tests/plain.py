"""Plain-driver helpers for tests: what an application using bare PyMySQL/psycopg sees."""

from __future__ import annotations

from typing import Any

import dns.resolver
import psycopg
import pymysql

from aurora_smartdriver.lab import Lab


def connect(lab: Lab, node: str, *, timeout: float = 2.0, **extra: Any) -> Any:
    """A bare driver connection to a node's address as the application user (autocommit)."""
    kwargs = lab.connect_kwargs(node)
    kwargs.update(extra)
    if lab.state().engine == "postgresql":
        return psycopg.connect(**kwargs, connect_timeout=max(2, int(timeout)), autocommit=True)
    return pymysql.connect(
        **kwargs,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
        autocommit=True,
    )


def connect_address(lab: Lab, address: str, *, timeout: float = 2.0) -> Any:
    """Like :func:`connect` but to any address on the lab's port (e.g. a stale DNS answer)."""
    state = lab.state()
    if state.engine == "postgresql":
        return psycopg.connect(
            host=address,
            port=state.port,
            user=state.user,
            password=state.password,
            dbname=state.database,
            connect_timeout=max(2, int(timeout)),
            autocommit=True,
        )
    return pymysql.connect(
        host=address,
        port=state.port,
        user=state.user,
        password=state.password,
        database=state.database,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
        autocommit=True,
    )


def query(conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    if isinstance(conn, psycopg.Connection):
        cur = conn.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []


def resolver(lab: Lab) -> dns.resolver.Resolver:
    """A dnspython resolver asking the lab's DNS server, with no cache."""
    address, port = lab.dns
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [address]
    res.port = port
    res.cache = None
    res.lifetime = 2.0
    return res


def resolve(lab: Lab, name: str) -> list[str]:
    return sorted(r.to_text() for r in resolver(lab).resolve(name, "A"))


def is_read_only_error(exc: BaseException) -> bool:
    """PostgreSQL 25006 (read_only_sql_transaction) or MySQL/MariaDB 1290 / 1836."""
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate == "25006"
    if isinstance(exc, pymysql.MySQLError) and exc.args:
        return exc.args[0] in (1290, 1836)
    return False


def error_code(exc: BaseException) -> object:
    if isinstance(exc, psycopg.Error):
        return exc.sqlstate
    if isinstance(exc, pymysql.MySQLError) and exc.args:
        return exc.args[0]
    return None


DRIVER_ERRORS = (psycopg.Error, pymysql.MySQLError, OSError)


def row_locked(lab: Lab, table: str, key: str) -> bool:
    """Whether another MariaDB session finds the row ``id = key`` of ``table`` on the writer
    locked (``SELECT ... FOR UPDATE NOWAIT``): a transaction still holds it."""
    other = pymysql.connect(**lab.connect_kwargs(lab.writer), autocommit=False)
    try:
        with other.cursor() as cur:
            try:
                cur.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE NOWAIT", (key,))
            except pymysql.err.OperationalError as exc:
                if exc.args[0] in (1205, 3572, 1020):
                    return True
                raise
        other.rollback()
        return False
    finally:
        other.close()
