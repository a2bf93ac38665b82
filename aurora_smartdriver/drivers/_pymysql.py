"""The PyMySQL adapter: a socket the library opened, a handshake deadline, shared TLS contexts.

PyMySQL's `connect_timeout` covers only the TCP connect; the server's greeting and the rest of
the handshake are read with `read_timeout`, which is None (wait for ever) unless the user set
one, so a hung server would hang `connect()` for ever (LAB-NOTES, Drivers). The adapter
therefore opens the socket itself (`resolver.open_socket`: TCP_NODELAY and keepalive set),
runs the handshake under read and write timeouts equal to the time left, and puts the user's
timeouts back afterwards.

PyMySQL 1.2 also builds a new TLS context for every connection (about 30 ms of a 35 ms
loopback connect, loading the CA store). The adapter builds each distinct context once per
process and hands it to every connection.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket as _socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pymysql
from pymysql import converters
from pymysql.connections import Connection
from pymysql.constants import CR
from pymysql.constants.SERVER_STATUS import SERVER_STATUS_IN_TRANS
from pymysql.cursors import Cursor

from aurora_smartdriver.drivers import QueryResult
from aurora_smartdriver.drivers._errors import ErrorKind, mysql_kind, tls_refused
from aurora_smartdriver.errors import AuthenticationFailed
from aurora_smartdriver.resolver import TcpKeepalive, open_socket

if TYPE_CHECKING:
    import socket

    from aurora_smartdriver.dsn import ConnectionSpec
    from aurora_smartdriver.settings import Engine

__all__ = ["PyMySQLAdapter"]

_TLS_REQUESTING = (
    "ssl",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
    "ssl_verify_cert",
    "ssl_verify_identity",
)
"""Driver parameters any of which, when true or set, make PyMySQL require TLS (``ssl`` is
PyMySQL's dict of TLS options, or an ``ssl.SSLContext``)."""
_TLS_PARAMETERS = (*_TLS_REQUESTING, "ssl_key_password")
_ENCODERS = {k: v for k, v in converters.conversions.items() if type(k) is not int}
_DECODERS = {k: v for k, v in converters.conversions.items() if type(k) is int}
"""PyMySQL's default converters, split as its `Connection` splits `conv`."""
_MIN_STEP = 0.001
"""Smallest handshake timeout given, when the TCP connect used up (nearly) all of the deadline."""


class PyMySQLAdapter:
    """PyMySQL as the library uses it (see `aurora_smartdriver.drivers.DriverAdapter`)."""

    def __init__(self) -> None:
        self._contexts: dict[tuple[tuple[str, object], ...], ssl.SSLContext] = {}
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        return "mysql"

    @property
    def Error(self) -> type[Exception]:
        return pymysql.MySQLError

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
    ) -> Connection[Cursor]:
        """Connect over a socket to `address` opened here; TLS (when used) checks `host`.

        The deadline is split as TCP connect, then each handshake step (greeting, TLS,
        authentication, SET NAMES, autocommit) waiting at most the time left after the TCP
        connect: a silent server (hung, blackholed) fails at the deadline; one that answers
        every step just in time could stretch it by a few times that. With `address` None
        PyMySQL resolves and connects itself, within `timeout`, and the handshake gets
        `timeout` on top.

        The socket carries TCP keepalives and TCP_USER_TIMEOUT for `failure_detection_time`
        (`resolver.TcpKeepalive`): PyMySQL has no parameters for them, and without them a
        statement on a node cut off waits for the system's timeouts (minutes to hours).
        """
        params: dict[str, Any] = {
            "user": spec.user,
            "password": spec.password,
            "database": spec.database,
            **spec.driver_params,
            **driver_overrides,
        }
        params.pop("autocommit", None)
        params.pop("defer_connect", None)  # the library connects now, to the node it chose
        read_timeout = params.pop("read_timeout", None)
        write_timeout = params.pop("write_timeout", None)
        tls, preferred = self._tls(params)
        given = {name: value for name, value in params.items() if value is not None}

        deadline = time.monotonic() + timeout
        keepalive = TcpKeepalive.for_window(spec.settings.failure_detection_time)
        sock = None if address is None else _open(host, address, port, timeout, keepalive)
        left = max(deadline - time.monotonic(), _MIN_STEP)
        try:
            conn: Connection[Cursor] = Connection(
                host=host,
                port=port,
                defer_connect=True,
                connect_timeout=timeout,
                read_timeout=left,
                write_timeout=left,
                autocommit=autocommit,
                **tls,
                **given,
            )
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        if preferred:
            _prefer_tls(conn)
        conn.connect(sock=sock)  # closes the socket itself when the handshake fails
        if address is not None:
            conn.host_info = f"socket {address}:{port}"
        else:
            opened: Any = conn  # PyMySQL opened this socket itself; the stubs omit `_sock`
            with contextlib.suppress(OSError):
                keepalive.apply(opened._sock)
        _set_timeouts(conn, read_timeout, write_timeout)
        return conn

    def _tls(self, params: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """PyMySQL's TLS arguments for `params` (TLS parameters are taken out of it), and
        whether to use PyMySQL's "preferred" mode (TLS if the server offers it, unverified).

        TLS not mentioned: preferred mode, as bare PyMySQL 1.2 does, with one shared context.
        `ssl_disabled`: no TLS. Any of `_TLS_REQUESTING`: TLS required, with a context built
        by PyMySQL from those parameters the first time and reused after (certificate files
        are read once per process: restart to pick up rotated files).
        """
        tls = {name: params.pop(name) for name in _TLS_PARAMETERS if name in params}
        if params.pop("ssl_disabled", False):
            return {"ssl_disabled": True}, False
        if not any(tls.get(name) for name in _TLS_REQUESTING):
            return {"ssl_disabled": True}, True
        given = tls.get("ssl")
        if isinstance(given, ssl.SSLContext) and not any(tls.get(n) for n in _TLS_REQUESTING[1:]):
            return {"ssl": given}, False  # the application's own context, used as PyMySQL does
        key = tuple(sorted((name, _key(value)) for name, value in tls.items()))
        with self._lock:
            context = self._contexts.get(key)
        if context is None:
            # PyMySQL builds the context in its constructor; nothing is connected here.
            built: Any = Connection(defer_connect=True, **tls)
            context = built.ctx
            with self._lock:
                context = self._contexts.setdefault(key, context)
        return {"ssl": context}, False

    def query(self, conn: Any, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
        """With PyMySQL's default cursor and converters, whatever `cursorclass` and `conv` the
        application gave its connections."""
        own = conn.encoders, conn.decoders
        conn.encoders, conn.decoders = _ENCODERS, _DECODERS
        try:
            with conn.cursor(Cursor) as cur:
                cur.execute(sql, params)
                if cur.description is None:
                    return QueryResult((), ())
                columns = tuple(str(column[0]) for column in cur.description)
                return QueryResult(columns, tuple(cur.fetchall()))
        finally:
            conn.encoders, conn.decoders = own

    def error_kind(self, exc: BaseException) -> ErrorKind:
        if isinstance(exc, AuthenticationFailed):
            return "auth"  # a refused login, reported by aurora_smartdriver.auth
        if isinstance(exc, pymysql.err.InterfaceError) and exc.args[:1] == (0,):
            return "disconnect"  # PyMySQL's word for a socket it closed after an earlier error
        if tls_refused(exc):
            return "other"  # the certificate failed verification: raised at once, not waited on
        if isinstance(exc, pymysql.MySQLError):
            return mysql_kind(exc.args[0] if exc.args else None)
        if isinstance(exc, OSError):
            return "disconnect"  # a socket error that escaped the driver, or a failed lookup
        return "other"

    def ping(self, conn: Any, timeout: float) -> None:
        """COM_PING under read and write timeouts of `timeout`, the user's put back after."""
        raw: Any = conn  # the type stubs do not declare these attributes
        if raw._sock is None:
            raise pymysql.OperationalError(CR.CR_SERVER_GONE_ERROR, "the connection is closed")
        read, write = raw._read_timeout, raw._write_timeout
        raw._read_timeout = raw._write_timeout = timeout
        try:
            conn.ping(reconnect=False)
        finally:
            _set_timeouts(conn, read, write)

    def closed(self, conn: Any) -> bool:
        return not conn.open

    def in_transaction(self, conn: Any) -> bool:
        """From the status flags of the server's last reply, or an unread unbuffered result
        (a statement whose rows are still coming)."""
        if conn.server_status is not None and conn.server_status & SERVER_STATUS_IN_TRANS:
            return True
        result = conn._result
        return result is not None and bool(result.unbuffered_active)

    def rollback(self, conn: Any) -> None:
        conn.rollback()

    def close(self, conn: Any) -> None:
        try:
            conn.close()
        except Exception:
            with contextlib.suppress(Exception):
                conn._force_close()

    def abort(self, conn: Any) -> None:
        """Shut the socket down through a duplicate of its descriptor.

        shutdown() acts on the socket itself, so the thread waiting in recv wakes with an end
        of stream (PyMySQL: 2013, lost connection). Going through a duplicate leaves PyMySQL's
        socket object alone: `SSLSocket.shutdown` also unwraps its TLS object under the thread
        reading it, which can then fail with a ValueError ("Read on closed or unwrapped SSL
        socket"), an error PyMySQL does not turn into a lost connection.
        """
        sock = getattr(conn, "_sock", None)
        if sock is None:
            return
        with contextlib.suppress(Exception):
            dup = _socket.socket(fileno=os.dup(sock.fileno()))
            try:
                dup.shutdown(_socket.SHUT_RDWR)
            finally:
                dup.close()


def _key(value: object) -> object:
    """A hashable stand-in for a TLS parameter's value (``ssl`` is a dict)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(name), repr(item)) for name, item in value.items()))
    return value


def _open(
    host: str, address: str, port: int, timeout: float, keepalive: TcpKeepalive
) -> socket.socket:
    """`open_socket`, its failures reported as PyMySQL reports a failed TCP connect (2003)."""
    try:
        return open_socket(address, port, timeout, keepalive=keepalive)
    except OSError as exc:
        raise pymysql.OperationalError(
            CR.CR_CONN_HOST_ERROR,
            f"Can't connect to MySQL server on {host!r} at {address}:{port} ({exc})",
        ) from exc


@functools.cache
def _preferred_context() -> ssl.SSLContext:
    """The context of PyMySQL's preferred mode: TLS when offered, certificate not checked.

    Not verifying, it needs no CA store, which is what made PyMySQL's own one slow to build.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _prefer_tls(conn: Connection[Cursor]) -> None:
    """Put a connection built with `ssl_disabled` into PyMySQL's preferred TLS mode.

    Sets the three attributes PyMySQL 1.2's constructor sets for that mode. PyMySQL before 1.2
    has no preferred mode (no `_ssl_required`) and connects without TLS unless told, so the
    connection is left as built there.
    """
    raw: Any = conn  # the type stubs do not declare these attributes
    if hasattr(raw, "_ssl_required"):
        raw.ssl = True
        raw._ssl_required = False
        raw.ctx = _preferred_context()


def _set_timeouts(conn: Connection[Cursor], read: float | None, write: float | None) -> None:
    """Give a connected connection the user's read and write timeouts (None: wait for ever).

    PyMySQL has no public setter; it keeps them in these attributes and applies them to the
    socket before its next read or write.
    """
    raw: Any = conn  # the type stubs do not declare these attributes
    raw._read_timeout = read
    raw._write_timeout = write
