"""The psycopg 3 adapter: connections by name and address, libpq's timeout, SQLSTATE kinds."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import selectors
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import pq
from psycopg.adapt import AdaptersMap
from psycopg.rows import tuple_row

from aurora_smartdriver.drivers import QueryResult
from aurora_smartdriver.drivers._errors import ErrorKind, postgresql_kind, tls_refused
from aurora_smartdriver.errors import AuthenticationFailed
from aurora_smartdriver.resolver import TcpKeepalive

if TYPE_CHECKING:
    from aurora_smartdriver.dsn import ConnectionSpec
    from aurora_smartdriver.settings import Engine

__all__ = ["PsycopgAdapter", "libpq_connect_timeout", "libpq_keepalives"]

_LIBPQ_MIN_TIMEOUT = 2


def libpq_connect_timeout(timeout: float) -> int:
    """libpq's `connect_timeout` for a deadline of `timeout` seconds.

    libpq counts whole seconds and treats anything under 2 as 2 (psycopg does the same and
    truncates fractions), so the deadline is rounded up to a whole second, at least 2: a
    connection never gets less time than asked, and up to a second and a half more.
    """
    return max(_LIBPQ_MIN_TIMEOUT, math.ceil(timeout))


def libpq_keepalives(window: float) -> dict[str, int]:
    """libpq's TCP keepalive and `tcp_user_timeout` parameters for a detection window.

    So that the kernel gives up a peer that went silent (a node cut off, a dead host that sent
    no reset) after about `window` seconds, as the watchdog would, on every connection: idle
    pooled ones, the monitor's and the probe's too. See `resolver.TcpKeepalive`.
    """
    plan = TcpKeepalive.for_window(window)
    return {
        "keepalives": 1,
        "keepalives_idle": plan.idle,
        "keepalives_interval": plan.interval,
        "keepalives_count": plan.count,
        "tcp_user_timeout": plan.user_timeout_ms,
    }


class PsycopgAdapter:
    """psycopg 3 as the library uses it (see `aurora_smartdriver.drivers.DriverAdapter`)."""

    @property
    def engine(self) -> Engine:
        return "postgresql"

    @property
    def Error(self) -> type[Exception]:
        return psycopg.Error

    def connect(
        self,
        spec: ConnectionSpec,
        host: str,
        port: int,
        *,
        address: str | None,
        timeout: float,
        autocommit: bool = True,
        **driver_overrides: Any,
    ) -> psycopg.Connection[Any]:
        """Connect with `host=<name> hostaddr=<address>`: libpq goes to the address and checks
        TLS (sslmode=verify-full) against the name. `timeout` becomes libpq's
        `connect_timeout` (see `libpq_connect_timeout`). psycopg's own keywords among the
        driver parameters (`row_factory`, `cursor_factory`, `context`, `prepare_threshold`)
        reach `psycopg.Connection.connect` as they are. TCP keepalives and `tcp_user_timeout`
        follow `failure_detection_time` (see `libpq_keepalives`) unless the driver parameters
        set them."""
        params: dict[str, Any] = {
            **libpq_keepalives(spec.settings.failure_detection_time),
            "user": spec.user,
            "password": spec.password,
            "dbname": spec.database,
            **spec.driver_params,
            **driver_overrides,
            "host": host,
            "port": port,
            "hostaddr": address,
            "connect_timeout": libpq_connect_timeout(timeout),
        }
        params.pop("autocommit", None)
        # None is "not given", except prepare_threshold=None: never prepare (PgBouncer).
        given = {
            name: value
            for name, value in params.items()
            if value is not None or name == "prepare_threshold"
        }
        return psycopg.Connection.connect(autocommit=autocommit, **given)

    def query(self, conn: Any, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
        """With a plain cursor and psycopg's default adapters, whatever `cursor_factory`,
        `row_factory` and `context` the application gave its connections."""
        own = conn._adapters
        conn._adapters = _default_adapters()  # a cursor copies its connection's adapters
        try:
            cur = psycopg.Cursor(conn, row_factory=tuple_row)
        finally:
            conn._adapters = own
        with cur:
            cur.execute(sql, params)
            if cur.description is None:
                return QueryResult((), ())
            columns = tuple(column.name for column in cur.description)
            return QueryResult(columns, tuple(cur.fetchall()))

    def error_kind(self, exc: BaseException) -> ErrorKind:
        if isinstance(exc, AuthenticationFailed):
            return "auth"  # a refused login, reported by aurora_smartdriver.auth
        if tls_refused(exc):
            return "other"  # the certificate failed verification: raised at once, not waited on
        if isinstance(exc, psycopg.Error):
            return postgresql_kind(
                exc.sqlstate,
                operational=isinstance(exc, psycopg.OperationalError),
                message=str(exc),
            )
        if isinstance(exc, OSError):
            return "disconnect"  # a socket error that escaped the driver, or a failed lookup
        return "other"

    def ping(self, conn: Any, timeout: float) -> None:
        """Send an empty query through libpq directly and wait for its answer until the deadline.

        Going below `Connection.execute` keeps the ping bounded (psycopg waits for ever) and
        keeps it from opening a transaction on a connection that is not in autocommit mode
        (psycopg would send BEGIN first). A ping that times out leaves the query unanswered,
        so the connection must be closed, as after any failed ping.
        """
        pgconn = conn.pgconn
        if pgconn.status != pq.ConnStatus.OK:
            raise psycopg.OperationalError("the connection is closed")
        if pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            raise psycopg.OperationalError("the connection is running a statement")
        deadline = time.monotonic() + timeout
        with conn.lock:
            pgconn.send_query(b"")
            while pgconn.flush():
                _wait_socket(pgconn.socket, selectors.EVENT_WRITE, deadline, timeout)
            pgconn.consume_input()
            while pgconn.is_busy():
                _wait_socket(pgconn.socket, selectors.EVENT_READ, deadline, timeout)
                pgconn.consume_input()
            error = None
            while (result := pgconn.get_result()) is not None:
                if result.status == pq.ExecStatus.FATAL_ERROR:
                    message = result.error_message or b"ping failed"
                    error = message.decode(errors="replace").strip()
        if error is not None:
            raise psycopg.OperationalError(error)

    def closed(self, conn: Any) -> bool:
        return bool(conn.closed)

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.pgconn.transaction_status != pq.TransactionStatus.IDLE)

    def rollback(self, conn: Any) -> None:
        conn.rollback()

    def close(self, conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def abort(self, conn: Any) -> None:
        # shutdown() acts on the socket itself, so doing it through a duplicate descriptor
        # wakes libpq's wait on the original one with an end of stream.
        with contextlib.suppress(Exception):
            dup = socket.socket(fileno=os.dup(conn.pgconn.socket))
            try:
                dup.shutdown(socket.SHUT_RDWR)
            finally:
                dup.close()


@functools.cache
def _default_adapters() -> AdaptersMap:
    """psycopg's global adapters, as a connection made without `context` starts with."""
    return AdaptersMap(psycopg.adapters)


def _wait_socket(fileno: int, events: int, deadline: float, timeout: float) -> None:
    """Wait until the socket `fileno` is ready for `events`, or raise at the deadline."""
    left = deadline - time.monotonic()
    if left > 0:
        with selectors.DefaultSelector() as selector:
            selector.register(fileno, events)
            if selector.select(left):
                return
    raise psycopg.OperationalError(f"no answer from the server within {timeout:g}s")
