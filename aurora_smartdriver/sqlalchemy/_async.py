"""The asyncio dialects: SQLAlchemy's async psycopg and aiomysql dialects over the library.

``create_async_engine("postgresql+aurora_psycopg_async://...")``,
``create_async_engine("mysql+aurora_aiomysql://...")`` (and ``mariadb+aurora_aiomysql``). As the
sync dialects (`_dialects`), each subclasses SQLAlchemy's own dialect for the driver and changes
only where the library must act: the connection SQLAlchemy's adapter wraps is the library's async
connection (`aio.connection`), borrowed from the library's per-host async pools; ``aurora_role``
moves it between the writer and a reader; SQLAlchemy's pool puts it back on the writer lazily;
``is_disconnect`` and ``do_ping`` agree with the library's exceptions.

The async DB-API shaped modules SQLAlchemy's adapters take are `AuroraPsycopgAsyncDBAPI` and
`AuroraAiomysqlDBAPI`: the driver's exceptions and type objects, and a ``connect`` that opens a
library connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, cast

from sqlalchemy import event
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.mysql.aiomysql import (
    AsyncAdapt_aiomysql_connection,
    AsyncAdapt_aiomysql_dbapi,
    MySQLDialect_aiomysql,
)
from sqlalchemy.dialects.mysql.mariadb import MariaDBDialect
from sqlalchemy.dialects.postgresql.psycopg import (
    AsyncAdapt_psycopg_connection,
    PGDialectAsync_psycopg,
    PsycopgAdaptDBAPI,
)
from sqlalchemy.engine import Engine
from sqlalchemy.engine.characteristics import ConnectionCharacteristic
from sqlalchemy.engine.interfaces import DBAPIConnection, IsolationLevel
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState
from sqlalchemy.util import immutabledict
from sqlalchemy.util.concurrency import await_, in_greenlet

from aurora_smartdriver import _causal as _sync_causal
from aurora_smartdriver import dsn
from aurora_smartdriver.aio import _causal as _aio_causal
from aurora_smartdriver.aio import _role
from aurora_smartdriver.aio._runtime import AsyncLease, AsyncRuntime
from aurora_smartdriver.aio.connection import (
    AiomysqlConnection,
    AsyncConnection,
    PsycopgAsyncConnection,
)
from aurora_smartdriver.errors import ConfigError, FailoverSucceeded, TransactionOutcomeUnknown
from aurora_smartdriver.sqlalchemy import _options
from aurora_smartdriver.sqlalchemy._dialects import (
    AuroraMySQLDialect_pymysql,
    AuroraPGDialect_psycopg,
    ReadYourWrites,
    _AuroraDialect,
)
from aurora_smartdriver.sqlalchemy._dialects import _back_to_writer as _sync_back_to_writer

__all__ = [
    "AuroraAiomysqlDBAPI",
    "AuroraMariaDBDialect_aiomysql",
    "AuroraMySQLDialect_aiomysql",
    "AuroraPGDialectAsync_psycopg",
    "AuroraPsycopgAsyncDBAPI",
]

Prepare = Callable[[Any], None]


# -- the library connections SQLAlchemy's adapters wrap ----------------------------------------


class _SAPsycopg(PsycopgAsyncConnection):
    """The library's psycopg connection, re-applying the dialect's set-up on every new node."""

    async def _replay(self, raw: Any) -> None:
        await super()._replay(raw)
        self.__dict__["_sa_prepare"](raw)

    async def close(self) -> None:
        # SQLAlchemy closes to get rid of a connection: not lent again with its session state.
        self.__dict__["_discard"] = True
        await super().close()


class _SAAiomysql(AiomysqlConnection):
    """The library's aiomysql connection; also replays the isolation level SQLAlchemy set
    (with SQL, which the library does not see) and undoes it before a pool takes it back."""

    async def _replay(self, raw: Any) -> None:
        await super()._replay(raw)
        self.__dict__["_sa_prepare"](raw)
        level = self.__dict__.get("_sa_isolation")
        if level is not None:
            await _set_mysql_isolation(raw, level)

    async def _restore_defaults(self, raw: Any, *, read_only: bool) -> None:
        await super()._restore_defaults(raw, read_only=read_only)
        level = self.__dict__.get("_sa_isolation")
        default = self.__dict__.get("_sa_default_isolation")
        if level is not None and default is not None and level != default:
            await _set_mysql_isolation(raw, default)

    def close(self) -> None:
        self.__dict__["_discard"] = True
        super().close()

    def _terminate(self) -> None:
        """Close now, without the loop (SQLAlchemy's clean-up of a connection it lost track
        of may run outside it): the driver connection is closed, never lent again."""
        d = self.__dict__
        if d["_closed"]:
            return
        d["_closed"] = True
        d["_discard"] = True
        lease: AsyncLease = self._lease
        raw = d["_raw"]
        d["_raw"] = None
        if raw is not None:
            try:
                raw.close()
            finally:
                # No running loop: the pool's bookkeeping is gone with it.
                with contextlib.suppress(RuntimeError):
                    lease.give_back(broken=True)
        for callback in self._closers:
            closing = callback()
            if closing is not None:
                _in_background(closing)


async def _set_mysql_isolation(raw: Any, level: str) -> None:
    async with raw.cursor() as cur:
        await cur.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {level}")


Closer = Callable[[], Coroutine[Any, Any, None] | None]
"""Run when a connection closes; what it returns (the pools' closing) is awaited."""


class _Runtimes:
    """The async runtimes of one engine: one per event loop, while connections use it.

    The library's async pools belong to a loop; SQLAlchemy's pool may be used from several
    (tests, ``asyncio.run`` more than once). The last connection closed on a loop closes its
    runtime's pools and gives the shared monitor back.
    """

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[AsyncRuntime, list[int]]
        ] = weakref.WeakKeyDictionary()

    def acquire(self, spec: dsn.ConnectionSpec) -> tuple[AsyncRuntime, Closer]:
        loop = asyncio.get_running_loop()
        found = self._by_loop.get(loop)
        if found is None or found[0].spec != spec:
            runtime = AsyncRuntime(spec, None)
            count = [0]
            if found is None:
                self._by_loop[loop] = (runtime, count)
        else:
            runtime, count = found
        count[0] += 1

        def release() -> Coroutine[Any, Any, None] | None:
            """The last connection on the loop: give the monitor back now and return the
            closing of the idle pooled connections, for the closing connection to await."""
            count[0] -= 1
            if count[0] > 0:
                return None
            if self._by_loop.get(loop, (None,))[0] is runtime:
                del self._by_loop[loop]
            runtime.release()  # the shared monitor now, whatever becomes of the closing
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return None  # no loop: its pools went with it
            return runtime.close()

        return runtime, release


_closing: set[asyncio.Task[None]] = set()


def _in_background(closing: Coroutine[Any, Any, None]) -> None:
    """Run ``closing`` on the running loop, for a caller that cannot await it."""
    try:
        task = asyncio.get_running_loop().create_task(closing)
    except RuntimeError:
        closing.close()  # no loop: its pools went with it
        return
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _open(
    runtimes: _Runtimes, spec: dsn.ConnectionSpec, proxy: type[AsyncConnection], prepare: Prepare
) -> AsyncConnection:
    """A library connection on the writer (or the URL's role), pooled per host by the library."""
    runtime, release = runtimes.acquire(spec)
    try:
        role = _role(spec.settings.role, runtime)
        lease = await runtime.lease(role, pooled=True)
    except BaseException:
        closing = release()
        if closing is not None:
            await closing
        raise
    conn = proxy(runtime, role, lease, autocommit=runtime.default_autocommit)
    conn.__dict__["_sa_prepare"] = prepare
    conn._on_close(release)
    try:
        prepare(lease.raw)
    except BaseException:
        conn.__dict__["_discard"] = True
        await conn._release()
        raise
    return conn


# -- the async DB-API shaped modules ------------------------------------------------------------


class _AuroraAdapted:
    """What both of SQLAlchemy's adapted connections get: the library connection's routing."""

    _connection: Any

    @property
    def aurora(self) -> AsyncConnection:
        """The library's async connection under SQLAlchemy's adapter."""
        return cast(AsyncConnection, self._connection)


class _PsycopgAdapted(_AuroraAdapted, AsyncAdapt_psycopg_connection):
    __slots__ = ()


class _AiomysqlAdapted(_AuroraAdapted, AsyncAdapt_aiomysql_connection):
    __slots__ = ()

    def _terminate_force_close(self) -> None:
        self._connection._terminate()


class AuroraPsycopgAsyncDBAPI(PsycopgAdaptDBAPI):
    """psycopg's async DB-API as SQLAlchemy adapts it, whose ``connect`` opens a library
    connection (``connect(dsn, **parameters)``, as `aio.connect`)."""

    def __init__(self) -> None:
        import psycopg
        from psycopg.pq import ExecStatus

        from aurora_smartdriver import psycopg as library

        super().__init__(psycopg, ExecStatus)  # the driver's names: exceptions, adapters, ...
        for name in library.__all__:
            self.__dict__.setdefault(name, getattr(library, name))  # and the library's errors

    def connect(self, *arg: Any, **kw: Any) -> Any:
        from aurora_smartdriver import aio

        return await_(_PsycopgAdapted.create(self, aio.connect(*arg, **kw)))


class AuroraAiomysqlDBAPI(AsyncAdapt_aiomysql_dbapi):
    """aiomysql's DB-API as SQLAlchemy adapts it, whose ``connect`` opens a library connection."""

    def __init__(self) -> None:
        import aiomysql

        from aurora_smartdriver import pymysql

        super().__init__(aiomysql, pymysql)

    def connect(self, *arg: Any, **kw: Any) -> Any:
        from aurora_smartdriver import aio

        return await_(_AiomysqlAdapted.create(self, aio.connect(*arg, **kw)))


# -- routing ------------------------------------------------------------------------------------


def _library(dbapi_conn: Any) -> AsyncConnection | None:
    inner = getattr(dbapi_conn, "_connection", None)
    return inner if isinstance(inner, AsyncConnection) else None


class AsyncAuroraRoleCharacteristic(ConnectionCharacteristic):
    """``aurora_role`` on an async engine: ``reader`` moves the connection to a reader."""

    transactional: ClassVar[bool] = True

    def reset_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection) -> None:
        conn = _library(dbapi_conn)
        if conn is not None and not conn._closed:
            await_(conn._set_read_only(False))

    def set_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection, value: Any) -> None:
        reader = _options.is_reader(value)
        conn = _library(dbapi_conn)
        if conn is None:
            return
        if not reader and conn._role != "writer":
            raise ConfigError(
                f"{_options.ROLE_OPTION}='writer' on an engine whose URL says role={conn._role}",
                parameter=_options.ROLE_OPTION,
                suggestion="leave role out of the URL and route with aurora_role",
            )
        await_(conn._set_read_only(reader))

    def get_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection) -> Any:
        conn = _library(dbapi_conn)
        return "reader" if conn is not None and conn._read_only else "writer"


class _ReadYourWrites(ConnectionCharacteristic):
    """``aurora_read_your_writes`` on the asyncio dialects: the sync dialects'
    characteristic (a `ReadYourWrites` whose writes the connection's reads on a reader must
    see) over the async proxy, its round trips run through the greenlet bridge."""

    transactional: ClassVar[bool] = True

    def reset_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection) -> None:
        conn = _library(dbapi_conn)
        if conn is None:
            return
        tracker = conn.__dict__.pop("_tracker", None)
        if tracker is None or not conn._autocommit:
            return  # each commit read its position (AsyncConnection.commit)
        if conn._closed or conn._raw is None:
            tracker.mark_unsure()
        elif _aio_causal.on_writer(conn._runtime, conn._lease):
            # Checked in on the writer after autocommit work: its position (one round trip).
            await_(_aio_causal.capture(conn._runtime, conn._raw, tracker))
            conn._settled(conn._raw)

    def set_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection, value: Any) -> None:
        if value is None:
            self.reset_characteristic(dialect, dbapi_conn)
            return
        if not isinstance(value, ReadYourWrites):
            raise ConfigError(
                f"{_options.RYW_OPTION} takes a ReadYourWrites, not {value!r}",
                parameter=_options.RYW_OPTION,
                value=repr(value),
                suggestion="aurora_smartdriver.sqlalchemy.ReadYourWrites(token=...)",
            )
        conn = _library(dbapi_conn)
        if conn is None:
            return
        conn.__dict__["_tracker"] = value._bind(_sync_causal.cluster_name(conn._runtime.spec))
        if (
            conn._raw is not None
            and not conn._closed
            and not _aio_causal.on_writer(conn._runtime, conn._lease)
        ):
            # Already on a reader, chosen without the session: choose again, with it.
            await_(conn._route_lazily(conn._read_only))

    def get_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection) -> Any:
        conn = _library(dbapi_conn)
        return None if conn is None else conn.__dict__.get("_tracker")


def _characteristics(base: Any) -> Any:
    return immutabledict(
        {
            **base,
            _options.ROLE_OPTION: AsyncAuroraRoleCharacteristic(),
            _options.RYW_OPTION: _ReadYourWrites(),
        }
    )


def _back_to_writer(
    dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, state: PoolResetState
) -> None:
    """Pool ``reset`` event: a connection SQLAlchemy's pool takes back asks for the writer,
    lazily (see `_dialects._back_to_writer`)."""
    conn = _library(dbapi_connection)
    if state.terminate_only or conn is None or conn._closed or not conn._read_only:
        return
    if in_greenlet():
        await_(conn._route_lazily(False))
    else:  # garbage collection, outside the loop: not lent again
        conn.__dict__["_discard"] = True


# -- the dialects -------------------------------------------------------------------------------


class _AsyncAuroraDialect(_AuroraDialect):
    """What the async dialects change in the sync ones' shared part (mixed in before them)."""

    is_async = True
    _aurora_async_proxy: ClassVar[type[AsyncConnection]]
    _aurora_adapted: ClassVar[type[AsyncAdapt_dbapi_connection]]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._aurora_runtimes = _Runtimes()

    def connect(self, *cargs: Any, **cparams: Any) -> DBAPIConnection:
        spec = dsn.parse(cargs[0] if cargs else f"{self._aurora_scheme}://", **cparams)
        wanted = self._aurora_pool_size
        if "pool_max_size" not in cparams and wanted > spec.settings.pool_max_size:
            spec = spec.with_overrides(pool_max_size=wanted)
        opening = _open(self._aurora_runtimes, spec, self._aurora_async_proxy, self._prepare)
        return cast(
            DBAPIConnection, await_(self._aurora_adapted.create(self.loaded_dbapi, opening))
        )

    @classmethod
    def engine_created(cls, engine: Engine) -> None:
        super().engine_created(engine)
        event.remove(engine.pool, "reset", _sync_back_to_writer)
        event.listen(engine.pool, "reset", _back_to_writer)

    def do_ping(self, dbapi_connection: DBAPIConnection) -> bool:
        """``pool_pre_ping``: one statement through the library; a connection that failed
        over to a live node is alive."""
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        except (FailoverSucceeded, TransactionOutcomeUnknown):
            pass
        finally:
            cursor.close()
        return True


class AuroraPGDialectAsync_psycopg(
    _AsyncAuroraDialect, AuroraPGDialect_psycopg, PGDialectAsync_psycopg
):
    """``postgresql+aurora_psycopg_async://``: SQLAlchemy's async psycopg dialect over the
    library (`aurora_smartdriver.aio`)."""

    driver = "aurora_psycopg_async"
    supports_statement_cache = True
    connection_characteristics = _characteristics(PGDialectAsync_psycopg.connection_characteristics)
    _aurora_async_proxy = _SAPsycopg
    _aurora_adapted = _PsycopgAdapted

    @classmethod
    def import_dbapi(cls) -> Any:
        return AuroraPsycopgAsyncDBAPI()

    @classmethod
    def get_async_dialect_cls(cls, url: Any) -> Any:
        return cls

    def _type_info_fetch(self, connection: Any, name: str) -> Any:
        from psycopg.types import TypeInfo

        conn = connection.connection.driver_connection
        raw = conn._raw if isinstance(conn, AsyncConnection) else conn
        info = await_(TypeInfo.fetch(raw, name))
        if name == "hstore":
            self._hstore = info
        return info


class AuroraMySQLDialect_aiomysql(  # type: ignore[misc]
    _AsyncAuroraDialect, AuroraMySQLDialect_pymysql, MySQLDialect_aiomysql
):
    """``mysql+aurora_aiomysql://``: SQLAlchemy's aiomysql dialect over the library."""

    driver = "aurora_aiomysql"
    supports_statement_cache = True
    connection_characteristics = _characteristics(MySQLDialect_aiomysql.connection_characteristics)
    _aurora_async_proxy = _SAAiomysql
    _aurora_adapted = _AiomysqlAdapted

    @classmethod
    def import_dbapi(cls) -> Any:
        return AuroraAiomysqlDBAPI()

    def set_isolation_level(self, dbapi_connection: DBAPIConnection, level: IsolationLevel) -> None:
        MySQLDialect_aiomysql.set_isolation_level(self, dbapi_connection, level)
        conn = _library(dbapi_connection)
        if conn is not None:
            state = conn.__dict__
            state["_sa_isolation"] = None if level == "AUTOCOMMIT" else level
            state["_sa_default_isolation"] = getattr(self, "default_isolation_level", None)


class AuroraMariaDBDialect_aiomysql(MariaDBDialect, AuroraMySQLDialect_aiomysql):  # type: ignore[misc]
    """``mariadb+aurora_aiomysql://``: SQLAlchemy's MariaDB flavour of the aiomysql dialect."""

    supports_statement_cache = True
    _aurora_scheme = "mariadb"
