"""The dialect classes: SQLAlchemy's own psycopg and PyMySQL dialects over the library.

Each class subclasses SQLAlchemy's dialect for the wrapped driver, so SQL compilation, types,
reflection and everything else SQLAlchemy does with that driver stay as they are, and changes
only where the library must act:

- ``import_dbapi`` gives the library's DB-API module, ``create_connect_args`` turns the URL into
  the library's parameters (checked at ``create_engine``), and ``connect`` opens a library
  connection whose driver connection is borrowed from the library's per-host pools, so moving
  it between the writer and a reader costs a borrow, not a new connection;
- the execution option ``aurora_role`` (and ``postgresql_readonly``) is a connection
  characteristic that moves the connection, and every connection SQLAlchemy's pool takes back is
  moved back to the writer (a ``reset`` pool event), so no checkout silently reads from a replica;
- ``is_disconnect`` agrees with the library: after ``FailoverSucceeded`` or
  ``TransactionOutcomeUnknown`` the connection is already on the new writer and stays in the
  pool; after ``NoHostAvailable`` (and ``NoWriterAvailable``) it is on a dead node and goes;
- ``do_ping`` (``pool_pre_ping``) lets a connection that failed over count as alive.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ClassVar, cast

from sqlalchemy import event
from sqlalchemy.dialects.mysql.mariadb import MariaDBDialect
from sqlalchemy.dialects.mysql.pymysql import MySQLDialect_pymysql
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import URL, Engine
from sqlalchemy.engine.characteristics import ConnectionCharacteristic
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.engine.interfaces import ConnectArgsType, DBAPIConnection, IsolationLevel
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState, QueuePool

from aurora_smartdriver import _causal, _runtime, consistency, dsn
from aurora_smartdriver.cluster import _role
from aurora_smartdriver.connection import Connection, PsycopgConnection, PyMySQLConnection
from aurora_smartdriver.errors import (
    AuroraSmartDriverError,
    ConfigError,
    FailoverSucceeded,
    NoHostAvailable,
    TransactionOutcomeUnknown,
)
from aurora_smartdriver.sqlalchemy import _options

__all__ = [
    "AuroraMariaDBDialect_pymysql",
    "AuroraMySQLDialect_pymysql",
    "AuroraPGDialect_psycopg",
]

log = logging.getLogger("aurora_smartdriver.sqlalchemy")

Prepare = Callable[[Any], None]
"""Applies a dialect's driver-level set-up (adapters, notice handler) to a driver connection."""


# -- the library connections SQLAlchemy's pool holds ------------------------------------------


def _close_for_good(conn: Connection) -> None:
    """Close as SQLAlchemy means it: the driver connection is closed, not lent again.

    SQLAlchemy closes a connection to get rid of it (``dispose``, ``invalidate``,
    ``pool_recycle``, overflow), and a later engine must not find the session state (a
    ``search_path`` set in a ``connect`` event, say) of this one in the library's pool.
    """
    if not conn._closed:
        conn._lease.mark_broken()


class _PsycopgConnection(PsycopgConnection):
    """The library's psycopg connection, re-applying the dialect's set-up on every new node."""

    def _replay(self, raw: Any) -> None:
        super()._replay(raw)
        self.__dict__["_sa_prepare"](raw)

    def close(self) -> None:
        _close_for_good(self)
        super().close()


class _PyMySQLConnection(PyMySQLConnection):
    """The library's PyMySQL connection; also carries the isolation level SQLAlchemy set.

    SQLAlchemy sets a MySQL isolation level with ``SET SESSION TRANSACTION ISOLATION LEVEL``,
    which the library does not see; it is replayed on a new node and undone before a driver
    connection goes back to the library's pool.
    """

    def _replay(self, raw: Any) -> None:
        super()._replay(raw)
        self.__dict__["_sa_prepare"](raw)
        level = self.__dict__.get("_sa_isolation")
        if level is not None:
            _set_mysql_isolation(raw, level)

    def close(self) -> None:
        _close_for_good(self)
        super().close()

    def _restore_defaults(self, raw: Any, *, read_only: bool | None = None) -> None:
        super()._restore_defaults(raw, read_only=read_only)
        level = self.__dict__.get("_sa_isolation")
        default = self.__dict__.get("_sa_default_isolation")
        if level is not None and default is not None and level != default:
            _set_mysql_isolation(raw, default)


def _set_mysql_isolation(raw: Any, level: str) -> None:
    with raw.cursor() as cur:
        cur.execute(f"SET SESSION TRANSACTION ISOLATION LEVEL {level}")


def _open(
    spec: dsn.ConnectionSpec, proxy: type[Connection], prepare: Prepare, pool_size: int
) -> Connection:
    """A library connection on the writer (or the URL's role), pooled per host by the library."""
    runtime = _runtime.acquire(spec)
    try:
        role = _role(spec.settings.role, runtime)
        have = runtime.spec.settings.pool_max_size
        if pool_size > have:
            log.warning(
                "SQLAlchemy's pool may hold %d connections but the URL's pool_max_size lets the "
                "library's pool for each host open at most %d: borrowing will wait; give "
                "pool_max_size=%d in the URL, or leave it out (it then follows the engine)",
                pool_size,
                have,
                pool_size,
            )
        lease = runtime.lease(role, pooled=True)
    except BaseException:
        _runtime.release(runtime)
        raise
    conn = proxy(runtime, role, lease, autocommit=runtime.default_autocommit)
    conn.__dict__["_sa_prepare"] = prepare
    conn._on_close(lambda: _runtime.release(runtime))
    try:
        prepare(lease.raw)
    except BaseException:
        conn.close()
        raise
    return conn


# -- routing ------------------------------------------------------------------------------------


class AuroraRoleCharacteristic(ConnectionCharacteristic):
    """The ``aurora_role`` execution option: ``reader`` moves the connection to a reader.

    Transactional, like the isolation level: it may change only between transactions, since a
    move takes effect at a transaction boundary.
    """

    transactional: ClassVar[bool] = True

    def reset_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection) -> None:
        dbapi_conn.read_only = False

    def set_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection, value: Any) -> None:
        reader = _options.is_reader(value)
        if not reader and isinstance(dbapi_conn, Connection) and dbapi_conn._base_role != "writer":
            raise ConfigError(
                f"{_options.ROLE_OPTION}='writer' on an engine whose URL says "
                f"role={dbapi_conn._base_role}",
                parameter=_options.ROLE_OPTION,
                suggestion="leave role out of the URL and route with aurora_role",
            )
        dbapi_conn.read_only = reader

    def get_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection) -> Any:
        return "reader" if getattr(dbapi_conn, "read_only", False) else "writer"


class ReadYourWrites:
    """A read-your-writes session for SQLAlchemy: the value of the ``aurora_read_your_writes``
    execution option (see docs/consistency.md).

    Every connection that carries it reads, on a reader, only where the writes made through
    any of them before are visible (else on the writer). Keep one per user session or request;
    ``token`` carries its position to another request or process.
    """

    __slots__ = ("_lock", "_token", "_tracker")

    def __init__(self, token: str | None = None) -> None:
        """``token``: a position from another session or process (``ReadYourWrites.token``,
        ``Session.token``), checked against the cluster at the first use."""
        import threading

        self._token = token
        self._tracker: consistency.Tracker | None = None
        self._lock = threading.Lock()

    def _bind(self, cluster: str) -> consistency.Tracker:
        with self._lock:
            if self._tracker is None:
                self._tracker = consistency.Tracker(cluster, self._token)
            elif self._tracker.cluster != cluster:
                raise ConfigError(
                    f"{_options.RYW_OPTION} was made for another cluster",
                    parameter=_options.RYW_OPTION,
                    suggestion="use one ReadYourWrites per cluster",
                )
            return self._tracker

    @property
    def token(self) -> str:
        """The session's position as a token ("" before its first write)."""
        tracker = self._tracker
        return (self._token or "") if tracker is None else tracker.token

    def __repr__(self) -> str:
        return f"<ReadYourWrites {self._tracker!r}>"


class ReadYourWritesCharacteristic(ConnectionCharacteristic):
    """The ``aurora_read_your_writes`` execution option: a `ReadYourWrites` whose writes the
    connection's reads on a reader must see. Applied before ``aurora_role``; set between
    transactions (a connection already on a reader is re-routed at its next statement)."""

    transactional: ClassVar[bool] = True

    def reset_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection) -> None:
        if not isinstance(dbapi_conn, Connection):
            return
        tracker = dbapi_conn.__dict__.pop("_tracker", None)
        if tracker is None or not dbapi_conn._autocommit:
            return  # each commit read its position (Connection.commit)
        if dbapi_conn._closed or dbapi_conn._detached:
            tracker.mark_unsure()
        elif _causal.on_writer(dbapi_conn._runtime, dbapi_conn._lease):
            # Checked in on the writer after autocommit work: its position (one round trip).
            _causal.capture(dbapi_conn._runtime, dbapi_conn._raw, tracker)

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
        if isinstance(dbapi_conn, Connection):
            spec = dbapi_conn._runtime.spec
            dbapi_conn.__dict__["_tracker"] = value._bind(_causal.cluster_name(spec))
            if (
                not dbapi_conn._detached
                and not dbapi_conn._closed
                and not _causal.on_writer(dbapi_conn._runtime, dbapi_conn._lease)
            ):
                # Already on a reader, chosen without the session: choose again, with it.
                dbapi_conn._route_lazily(read_only=dbapi_conn._read_only)

    def get_characteristic(self, dialect: Any, dbapi_conn: DBAPIConnection) -> Any:
        return getattr(dbapi_conn, "__dict__", {}).get("_tracker")


def _back_to_writer(
    dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, state: PoolResetState
) -> None:
    """Pool ``reset`` event: a connection SQLAlchemy's pool takes back asks for the writer.

    Lazily: its reader connection goes back to the library's pool now, and the writer is
    borrowed at its next statement. Moving it now would make every request that read from a
    replica wait for the writer at checkin, exactly while the writer is down.
    """
    if state.terminate_only or not isinstance(dbapi_connection, Connection):
        return
    if dbapi_connection._read_only and not dbapi_connection._closed:
        dbapi_connection._route_lazily(read_only=False)


# -- the shared part of the dialects ------------------------------------------------------------


class _AuroraDialect(DefaultDialect):
    """What the three dialects add to SQLAlchemy's own (mixed in before them)."""

    _aurora_scheme: ClassVar[str]
    _aurora_proxy: ClassVar[type[Connection]]
    _aurora_pool_size: int = 0

    def create_connect_args(self, url: URL) -> ConnectArgsType:
        """The library's parameters for ``url``, checked now (a `ConfigError` names a bad one)."""
        engine = "postgresql" if self._aurora_scheme == "postgresql" else "mysql"
        kwargs = _options.connect_kwargs(
            engine,
            username=url.username,
            password=url.password,
            host=url.host,
            port=url.port,
            database=url.database,
            query=url.query,
            client_encoding=getattr(self, "client_encoding", None),
        )
        scheme = f"{self._aurora_scheme}://"
        dsn.parse(scheme, **kwargs)  # raises ConfigError now rather than at the first checkout
        return [scheme], kwargs

    def connect(self, *cargs: Any, **cparams: Any) -> DBAPIConnection:
        spec = dsn.parse(cargs[0] if cargs else f"{self._aurora_scheme}://", **cparams)
        wanted = self._aurora_pool_size
        if "pool_max_size" not in cparams and wanted > spec.settings.pool_max_size:
            spec = spec.with_overrides(pool_max_size=wanted)
        return cast(DBAPIConnection, _open(spec, self._aurora_proxy, self._prepare, wanted))

    def _prepare(self, raw: Any) -> None:
        """Driver-level set-up for a driver connection this dialect uses (idempotent)."""

    def _set_connection_characteristics(self, connection: Any, characteristics: Any) -> None:
        # The read-your-writes session first: a move to a reader in the same call honours it.
        if _options.RYW_OPTION in characteristics and len(characteristics) > 1:
            first = {_options.RYW_OPTION: characteristics[_options.RYW_OPTION]}
            characteristics = {**first, **characteristics}
        super()._set_connection_characteristics(connection, characteristics)  # type: ignore[no-untyped-call]

    @classmethod
    def engine_created(cls, engine: Engine) -> None:
        super().engine_created(engine)
        event.listen(engine.pool, "reset", _back_to_writer)
        pool = engine.pool
        if isinstance(pool, QueuePool):
            overflow = max(0, int(getattr(pool, "_max_overflow", 0)))
            dialect = cast(_AuroraDialect, engine.dialect)
            dialect._aurora_pool_size = pool.size() + overflow

    def is_disconnect(self, e: Exception, connection: Any, cursor: Any) -> bool:
        """Whether SQLAlchemy must drop the connection: as the library's outcome says.

        ``FailoverSucceeded`` / ``TransactionOutcomeUnknown``: the connection already moved to
        the new writer and is healthy, not a disconnect. ``NoHostAvailable`` (and
        ``NoWriterAvailable``): still on the dead node, a disconnect. Driver errors (with
        ``failover=off``) and closed connections: as SQLAlchemy's own dialect decides.
        """
        if isinstance(e, FailoverSucceeded | TransactionOutcomeUnknown):
            return False
        if isinstance(e, NoHostAvailable):
            return True
        if isinstance(e, AuroraSmartDriverError):
            return bool(connection is not None and getattr(connection, "closed", False))
        return bool(super().is_disconnect(cast(Any, e), connection, cursor))

    def do_ping(self, dbapi_connection: DBAPIConnection) -> bool:
        """``pool_pre_ping``: alive, or failed over to a live node (then alive too)."""
        try:
            super().do_ping(dbapi_connection)
        except (FailoverSucceeded, TransactionOutcomeUnknown):
            pass
        except Exception as exc:
            if not isinstance(dbapi_connection, Connection) or isinstance(
                exc, AuroraSmartDriverError
            ):
                raise
            # A driver-level ping (PyMySQL's COM_PING) bypasses the library: let it see the error.
            try:
                dbapi_connection._recover(exc, "ping")
            except (FailoverSucceeded, TransactionOutcomeUnknown):
                return True
        return True


def _characteristics(base: Mapping[str, ConnectionCharacteristic]) -> Any:
    from sqlalchemy.util import immutabledict

    return immutabledict(
        {
            **base,
            _options.ROLE_OPTION: AuroraRoleCharacteristic(),
            _options.RYW_OPTION: ReadYourWritesCharacteristic(),
        }
    )


# -- PostgreSQL ---------------------------------------------------------------------------------


class AuroraPGDialect_psycopg(_AuroraDialect, PGDialect_psycopg):
    """``postgresql+aurora_psycopg://``: SQLAlchemy's psycopg dialect over the library."""

    driver = "aurora_psycopg"
    supports_statement_cache = True
    connection_characteristics = _characteristics(PGDialect_psycopg.connection_characteristics)
    _aurora_scheme = "postgresql"
    _aurora_proxy = _PsycopgConnection

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call]
        self._prepared: weakref.WeakSet[Any] = weakref.WeakSet()
        self._hstore: Any = None

    @classmethod
    def import_dbapi(cls) -> ModuleType:
        from aurora_smartdriver import psycopg

        return psycopg

    @classmethod
    def get_async_dialect_cls(cls, url: URL) -> type[DefaultDialect]:
        """``create_async_engine("postgresql+aurora_psycopg://...")``: the asyncio dialect
        over the library (SQLAlchemy's own would bypass it)."""
        from aurora_smartdriver.sqlalchemy._async import AuroraPGDialectAsync_psycopg

        return AuroraPGDialectAsync_psycopg

    def on_connect(self) -> Callable[[Any], None] | None:
        # SQLAlchemy's adds a notice handler, which _prepare does for every driver connection.
        if self.isolation_level is None:
            return None
        level = cast(IsolationLevel, self.isolation_level)

        def set_level(conn: Any) -> None:
            self.set_isolation_level(conn, level)  # type: ignore[no-untyped-call]

        return set_level

    def _type_info_fetch(self, connection: Any, name: str) -> Any:
        from psycopg.types import TypeInfo

        conn = connection.connection.driver_connection
        info = TypeInfo.fetch(conn._raw if isinstance(conn, Connection) else conn, name)
        if name == "hstore":
            self._hstore = info
        return info

    def _prepare(self, raw: Any) -> None:
        if raw in self._prepared:
            return
        from sqlalchemy.dialects.postgresql.psycopg import _log_notices

        raw.add_notice_handler(_log_notices)
        if self._json_deserializer:
            from psycopg.types.json import set_json_loads

            set_json_loads(cast(Any, self._json_deserializer), raw)
        if self._json_serializer:
            from psycopg.types.json import set_json_dumps

            set_json_dumps(self._json_serializer, raw)
        if self._native_inet_types is False:
            from psycopg.types.string import TextLoader

            raw.adapters.register_loader("inet", TextLoader)
            raw.adapters.register_loader("cidr", TextLoader)
        if self._hstore is not None and self._has_native_hstore:
            from psycopg.types.hstore import register_hstore

            register_hstore(self._hstore, raw)
        self._prepared.add(raw)


# -- MySQL and MariaDB --------------------------------------------------------------------------


class AuroraMySQLDialect_pymysql(_AuroraDialect, MySQLDialect_pymysql):  # type: ignore[misc]
    """``mysql+aurora_pymysql://``: SQLAlchemy's PyMySQL dialect over the library."""

    driver = "aurora_pymysql"
    supports_statement_cache = True
    connection_characteristics = _characteristics(MySQLDialect_pymysql.connection_characteristics)
    _aurora_scheme = "mysql"
    _aurora_proxy = _PyMySQLConnection

    @classmethod
    def import_dbapi(cls) -> ModuleType:
        from aurora_smartdriver import pymysql

        return pymysql

    def _found_rows_client_flag(self) -> int | None:
        from pymysql.constants import CLIENT

        return int(CLIENT.FOUND_ROWS)

    def set_isolation_level(self, dbapi_connection: DBAPIConnection, level: IsolationLevel) -> None:
        super().set_isolation_level(dbapi_connection, level)
        if isinstance(dbapi_connection, _PyMySQLConnection):
            state = dbapi_connection.__dict__
            state["_sa_isolation"] = None if level == "AUTOCOMMIT" else level
            state["_sa_default_isolation"] = getattr(self, "default_isolation_level", None)


class AuroraMariaDBDialect_pymysql(MariaDBDialect, AuroraMySQLDialect_pymysql):  # type: ignore[misc]
    """``mariadb+aurora_pymysql://``: SQLAlchemy's MariaDB flavour of the PyMySQL dialect."""

    supports_statement_cache = True
    _aurora_scheme = "mariadb"
