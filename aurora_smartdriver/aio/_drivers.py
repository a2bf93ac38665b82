"""The async drivers as the library uses them: psycopg's AsyncConnection and aiomysql.

What a connection is opened with (identity, driver parameters, keepalives, TLS checked against
the instance's name while the socket goes to the address the library resolved) is the sync
adapters' (`aurora_smartdriver.drivers`); what an error means is their `error_kind` too, since
aiomysql raises PyMySQL's exception classes. Only the I/O is async here, each open bounded by
one deadline over TCP, TLS and the handshake (aiomysql's own timeout covers only TCP).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import weakref
from typing import TYPE_CHECKING, Any

from aurora_smartdriver.aio import _handshake
from aurora_smartdriver.drivers import DriverAdapter
from aurora_smartdriver.drivers._errors import ErrorKind
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.resolver import TcpKeepalive

if TYPE_CHECKING:
    from aurora_smartdriver.dsn import ConnectionSpec

__all__ = ["close", "error_kind", "errors", "open_connection", "ping", "run"]


def errors(adapter: DriverAdapter) -> tuple[type[BaseException], ...]:
    """What a failed driver call raises: the driver's errors, and socket errors that escape."""
    return (adapter.Error, OSError)


def error_kind(adapter: DriverAdapter, exc: BaseException) -> ErrorKind:
    """`adapter.error_kind`, plus aiomysql's word for a socket it already closed."""
    if adapter.engine == "mysql" and _not_connected(exc):
        return "disconnect"
    return adapter.error_kind(exc)


def not_sent(adapter: DriverAdapter, exc: BaseException) -> bool:
    """Whether the driver refused the call before sending anything (its socket was closed)."""
    if adapter.engine == "mysql":
        return _not_connected(exc)
    return False


def _not_connected(exc: BaseException) -> bool:
    """aiomysql's ``InterfaceError("(0, 'Not connected')")``, or PyMySQL's ``(0, '')``."""
    import pymysql

    if not isinstance(exc, pymysql.err.InterfaceError) or not exc.args:
        return False
    first = exc.args[0]
    return first == 0 or (isinstance(first, str) and first.startswith("(0,"))


async def open_connection(
    adapter: DriverAdapter,
    spec: ConnectionSpec,
    host: str,
    port: int,
    *,
    address: str | None,
    timeout: float,
    autocommit: bool,
    user: str | None,
    password: str | None,
) -> Any:
    """One async driver connection to ``host:port`` at ``address``, within ``timeout`` s."""
    async with asyncio.timeout(timeout):
        given: dict[str, Any] = {
            "host": host,
            "port": port,
            "address": address,
            "timeout": timeout,
            "autocommit": autocommit,
            "user": user,
            "password": password,
        }
        if adapter.engine == "postgresql":
            return await _open_psycopg(spec, **given)
        return await _open_aiomysql(adapter, spec, **given)


async def _open_psycopg(
    spec: ConnectionSpec,
    *,
    host: str,
    port: int,
    address: str | None,
    timeout: float,
    autocommit: bool,
    user: str | None,
    password: str | None,
) -> Any:
    import psycopg

    from aurora_smartdriver.drivers._psycopg import libpq_connect_timeout, libpq_keepalives

    params: dict[str, Any] = {
        **libpq_keepalives(spec.settings.failure_detection_time),
        "user": user,
        "password": password,
        "dbname": spec.database,
        **spec.driver_params,
        "host": host,
        "port": port,
        "hostaddr": address,
        "connect_timeout": libpq_connect_timeout(timeout),
    }
    params.pop("autocommit", None)
    # prepare_threshold=None is "never prepare" (PgBouncer), not "not given": kept as it is.
    own = {name: params.pop(name) for name in _PSYCOPG_OWN if name in params}
    given = {name: value for name, value in params.items() if value is not None}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout  # the lookup's time counts
    if address is None and _handshake.by_name(host):  # resolve=off: looked up here
        found = await _handshake.lookup(host, port)
        attempts = [psycopg.conninfo.make_conninfo("", **given, hostaddr=a) for a in found]
    else:
        attempts = [psycopg.conninfo.make_conninfo("", **given)]
    left = deadline - loop.time()
    return await _handshake.connect(attempts, timeout=left, autocommit=autocommit, **own)


_PSYCOPG_OWN = ("prepare_threshold", "context", "row_factory", "cursor_factory")
"""``psycopg.AsyncConnection.connect``'s keywords that are not libpq's connection parameters."""


_AIOMYSQL_OWN = frozenset({"host", "port", "user", "password", "autocommit", "ssl", "loop"})
_DROPPED = ("defer_connect",)
"""PyMySQL parameters with no aiomysql counterpart that are accepted and left out: the library
connects at once. (``read_timeout`` and ``write_timeout``, which aiomysql does not take either,
the library applies itself: see `_Silence`.)"""


class _Silence:
    """PyMySQL's ``read_timeout`` and ``write_timeout`` for an aiomysql connection, which has
    neither: nothing arriving for ``read_timeout`` s while a read waits, or the server taking
    none of the bytes written for ``write_timeout`` s, end the connection as PyMySQL's socket
    timeouts do (each ``recv``/``send`` bounded: silence, not the length of a big result, is
    what times out): 2013 "Lost connection to MySQL server during query (timed out)", 2006
    "MySQL server has gone away (timed out)". One timer per connection, armed only while a
    read or a write waits; a read costs a few attribute stores, each arriving chunk a clock
    read."""

    __slots__ = (
        "accepted",
        "read_timeout",
        "reader",
        "reading_since",
        "received_at",
        "timed_out",
        "timer",
        "write_timeout",
        "writing_since",
        "written",
    )

    def __init__(self, read_timeout: float | None, write_timeout: float | None) -> None:
        self.read_timeout = read_timeout
        self.write_timeout = write_timeout
        self.reader: weakref.ref[Any] | None = None  # the stream whose arrivals are timed
        self.reading_since: float | None = None  # a read waits since (None: none waits)
        self.received_at = 0.0  # when bytes last arrived
        self.writing_since: float | None = None  # bytes unsent, and none taken, since
        self.written = 0  # bytes handed to the transport, in all
        self.accepted = 0  # of those, taken by the kernel as of `writing_since`
        self.timer: asyncio.TimerHandle | None = None
        self.timed_out: tuple[int, str] | None = None

    def watch_arrivals(self, reader: Any, loop: asyncio.AbstractEventLoop) -> None:
        """Note when bytes arrive on ``reader`` (its protocol calls ``feed_data``). Neither
        holds the other strongly: no reference cycle keeps a closed stream alive."""
        self.reader = weakref.ref(reader)
        stream = weakref.ref(reader)
        feed = type(reader).feed_data

        def feed_data(data: bytes) -> None:
            self.received_at = loop.time()
            target = stream()
            if target is not None:
                feed(target, data)

        reader.feed_data = feed_data

    def watching(self, reader: Any) -> bool:
        """Whether ``reader``'s arrivals are noted (a new stream after the TLS upgrade is not)."""
        return self.reader is not None and self.reader() is reader

    def wrote(self, conn: Any, count: int) -> None:
        """``count`` bytes were handed to the transport (aiomysql never waits for them)."""
        self.written += count
        unsent = conn._writer.transport.get_write_buffer_size()
        if not unsent:
            self.writing_since = None
        elif self.writing_since is None:  # the socket's buffers are full: time the wait
            self.writing_since = conn._loop.time()
            self.accepted = self.written - unsent
            self.arm(conn, self.write_timeout or 0.0)

    def arm(self, conn: Any, after: float) -> None:
        """Have `check` run within ``after`` s (sooner when already due sooner)."""
        loop = conn._loop
        timer = self.timer
        if timer is not None:
            if timer.when() <= loop.time() + after:
                return
            timer.cancel()  # a later deadline (an earlier wait's) would hold this one back
        self.timer = loop.call_later(after, self.check, conn)

    def check(self, conn: Any) -> None:
        """The timer: cut the connection when a wait has seen no progress for too long, else
        re-arm for the earliest wait still going on (none: disarmed until the next one)."""
        self.timer = None
        writer = conn._writer
        if writer is None:
            return
        now = conn._loop.time()
        left: list[float] = []
        if self.writing_since is not None and self.write_timeout is not None:
            unsent = writer.transport.get_write_buffer_size()
            accepted = self.written - unsent
            if not unsent:
                self.writing_since = None
            else:
                if accepted > self.accepted:  # the server took some: the wait starts again
                    self.writing_since, self.accepted = now, accepted
                if now - self.writing_since >= self.write_timeout:
                    self._cut(conn, 2006, "MySQL server has gone away (timed out)")
                    return
                left.append(self.writing_since + self.write_timeout - now)
        if self.reading_since is not None and self.read_timeout is not None:
            last = max(self.reading_since, self.received_at)
            if now - last >= self.read_timeout:
                self._cut(conn, 2013, "Lost connection to MySQL server during query (timed out)")
                return
            left.append(last + self.read_timeout - now)
        if left:
            self.timer = conn._loop.call_later(max(0.0, min(left)), self.check, conn)

    def _cut(self, conn: Any, code: int, message: str) -> None:
        self.timed_out = (code, message)
        conn._writer.transport.abort()  # the waiting read ends at once, as a lost connection

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@functools.cache
def _aiomysql_parameters() -> frozenset[str]:
    import aiomysql

    return frozenset(inspect.signature(aiomysql.Connection.__init__).parameters) - {"self"}


@functools.cache
def _named_connection_class() -> type[Any]:
    import aiomysql

    class NamedConnection(aiomysql.Connection):  # type: ignore[misc]
        """An aiomysql connection whose TCP goes to an address and whose TLS checks a name.

        aiomysql connects to, and verifies TLS against, the same ``host``; the library opens
        the socket to the address it resolved and then hands TLS the instance's name.
        """

        _tls_name: str | None = None
        _tls_required = False
        _silence: _Silence | None = None

        async def _request_authentication(self) -> None:
            # aiomysql upgrades to TLS only when the server offers it, and otherwise goes on
            # in plain text even when TLS was asked for: refused here, as PyMySQL does (2026).
            from pymysql.constants import CLIENT, CR

            if self._tls_required and not self.server_capabilities & CLIENT.SSL:
                import pymysql

                self.close()
                raise pymysql.err.OperationalError(
                    CR.CR_SSL_CONNECTION_ERROR,
                    "TLS is required (ssl parameters given) but the server does not offer it",
                )
            await super()._request_authentication()

        @property
        def _sock(self) -> Any:
            """The connection's socket where PyMySQL keeps it: the hung-host watchdog's cut
            (`PyMySQLAdapter.abort`, from its own thread) shuts it down through a duplicate,
            and the loop's read then ends as a lost connection (2013)."""
            writer = self._writer
            return None if writer is None else writer.get_extra_info("socket")

        async def _get_server_information(self) -> None:
            if self._tls_name is not None:
                self._host = self._tls_name  # the socket is open: from here on, the name
            await super()._get_server_information()

        def escape(self, obj: Any, mapping: Any = None) -> Any:
            # aiomysql escapes bytes with a PyMySQL helper that PyMySQL 1.1+ replaced by a
            # string ("DO NOT IMPORT THIS"): every bytes parameter failed with TypeError.
            # PyMySQL's own answer: a hex literal.
            if isinstance(obj, bytes | bytearray):
                return f"X'{obj.hex()}'"
            return super().escape(obj)

    return NamedConnection


@functools.cache
def _timed_connection_class() -> type[Any]:
    """`_named_connection_class` with `_Silence` on its reads and writes: only for
    connections with ``read_timeout`` or ``write_timeout`` (the others pay nothing)."""

    class TimedConnection(_named_connection_class()):  # type: ignore[misc]
        async def _read_bytes(self, num_bytes: int) -> bytes:
            silence = self._silence
            if silence is None:
                data: bytes = await super()._read_bytes(num_bytes)
                return data
            if silence.read_timeout is not None:
                if self._reader is not None and not silence.watching(self._reader):
                    silence.watch_arrivals(self._reader, self._loop)
                silence.reading_since = self._loop.time()
                silence.arm(self, silence.read_timeout)
            try:
                data = await super()._read_bytes(num_bytes)
            except Exception as exc:
                if silence.timed_out is None:
                    raise
                import pymysql

                # PyMySQL's error for a timed-out socket, in place of aiomysql's lost connection
                raise pymysql.err.OperationalError(*silence.timed_out) from exc
            finally:
                silence.reading_since = None
            return data

        def _write_bytes(self, data: bytes) -> None:
            silence = self._silence
            writer = self._writer
            if silence is None or silence.write_timeout is None or writer is None:
                return super()._write_bytes(data)  # type: ignore[no-any-return]
            super()._write_bytes(data)
            silence.wrote(self, len(data))
            return None

        def close(self) -> None:
            if self._silence is not None:
                self._silence.disarm()
            super().close()

    return TimedConnection


async def _open_aiomysql(
    adapter: DriverAdapter,
    spec: ConnectionSpec,
    *,
    host: str,
    port: int,
    address: str | None,
    timeout: float,
    autocommit: bool,
    user: str | None,
    password: str | None,
) -> Any:
    params: dict[str, Any] = {"database": spec.database, **spec.driver_params}
    params.pop("autocommit", None)
    for name in _DROPPED:
        params.pop(name, None)
    read_timeout, write_timeout = (
        params.pop("read_timeout", None),
        params.pop("write_timeout", None),
    )
    tls, preferred = adapter._tls(params)  # type: ignore[attr-defined]
    database = params.pop("database", None)
    if "db" not in params and database is not None:
        params["db"] = database
    accepted = _aiomysql_parameters()
    for name, value in params.items():
        if name not in accepted or name in _AIOMYSQL_OWN:
            raise ConfigError(
                f"the driver parameter {name!r} has no aiomysql counterpart",
                parameter=name,
                value=str(value),
                suggestion="leave it out for aurora_smartdriver.aio, or use the sync library",
            )
    # PyMySQL's modes: required (a context; refused without TLS), preferred (no TLS parameter:
    # TLS when the server offers it, unverified, as PyMySQL 1.2), or none (ssl_disabled).
    context = tls.get("ssl")
    if preferred:
        from aurora_smartdriver.drivers._pymysql import _preferred_context

        context = _preferred_context()
    given = {name: value for name, value in params.items() if value is not None}
    timed = read_timeout is not None or write_timeout is not None
    conn = (_timed_connection_class() if timed else _named_connection_class())(
        host=address or host,
        port=port,
        user=user,
        password=password or "",
        autocommit=autocommit,
        connect_timeout=timeout,
        ssl=context,
        **given,
    )
    conn._tls_name = host if address is not None else None
    conn._tls_required = context is not None and not preferred
    if timed:
        conn._silence = _Silence(read_timeout, write_timeout)
    try:
        await conn._connect()
    except BaseException:
        conn.close()
        raise
    sock = conn._writer.get_extra_info("socket") if conn._writer is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            TcpKeepalive.for_window(spec.settings.failure_detection_time).apply(sock)
    conn.host_info = f"socket {address or host}:{port}"
    return conn


async def run(adapter: DriverAdapter, raw: Any, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on ``raw`` with a plain cursor; its rows (none for a command)."""
    if adapter.engine == "postgresql":
        cur = raw.cursor()
        async with cur:
            await cur.execute(sql)
            return list(await cur.fetchall()) if cur.description is not None else []
    async with raw.cursor() as cur:
        await cur.execute(sql)
        return list(await cur.fetchall()) if cur.description is not None else []


async def ping(adapter: DriverAdapter, raw: Any, timeout: float) -> None:
    """One round trip that leaves the session and its transaction as they were."""
    async with asyncio.timeout(timeout):
        if adapter.engine == "postgresql":
            if raw.closed or raw.pgconn.transaction_status != 0:
                raise adapter.Error("the connection is not idle")
            autocommit = raw.autocommit
            if not autocommit:
                await raw.set_autocommit(True)
            await raw.execute("")
            if not autocommit:
                await raw.set_autocommit(False)
        else:
            await raw.ping(reconnect=False)


async def close(adapter: DriverAdapter, raw: Any) -> None:
    """Close ``raw`` without raising (a broken connection too)."""
    with contextlib.suppress(Exception):
        if adapter.engine == "postgresql":
            await raw.close()
        else:
            raw.close()


def closed(adapter: DriverAdapter, raw: Any) -> bool:
    """Whether the driver knows ``raw`` is closed (no I/O)."""
    if adapter.engine == "postgresql":
        return bool(raw.closed)
    return bool(raw.closed)


def in_transaction(adapter: DriverAdapter, raw: Any) -> bool:
    """Whether a transaction may be open on ``raw``, as the driver last heard (no I/O)."""
    if adapter.engine == "postgresql":
        return bool(raw.pgconn.transaction_status != 0)
    result = getattr(raw, "_result", None)
    return bool(raw.get_transaction_status()) or (
        result is not None and bool(getattr(result, "unbuffered_active", False))
    )


def close_now(raw: Any) -> None:
    """Close an aiomysql connection at once (its ``close`` needs no round trip)."""
    with contextlib.suppress(Exception):
        raw.close()
