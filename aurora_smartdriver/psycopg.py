"""A DB-API 2.0 module over psycopg 3, for frameworks that take a DB-API module.

``connect`` takes a DSN (or the driver's own keyword arguments) and returns the library's
connection, which behaves like the driver's. The exception hierarchy and type objects are the
driver's own, so existing ``except`` clauses keep working; the library's errors
(``NoHostAvailable``, ``FailoverSucceeded``, ``TransactionOutcomeUnknown``,
``NoWriterAvailable``) are subclasses of the driver's ``OperationalError``.
"""

from __future__ import annotations

from typing import Any

from aurora_smartdriver import errors as _errors
from aurora_smartdriver._dbapi import as_driver_config_error as _as_driver_config_error
from aurora_smartdriver._dbapi import config_error_class as _config_error_class
from aurora_smartdriver._dbapi import driver_module as _driver_module
from aurora_smartdriver._dbapi import error_class as _error_class
from aurora_smartdriver.cluster import connect as _connect
from aurora_smartdriver.connection import Connection
from aurora_smartdriver.pool import PoolClosed as _PoolClosed
from aurora_smartdriver.pool import PoolTimeout as _PoolTimeout

_ENGINE = "postgresql"
_driver = _driver_module(_ENGINE)

apilevel: str = _driver.apilevel
threadsafety: int = _driver.threadsafety
paramstyle: str = _driver.paramstyle

Warning: Any = _driver.Warning
Error: Any = _driver.Error
InterfaceError: Any = _driver.InterfaceError
DatabaseError: Any = _driver.DatabaseError
DataError: Any = _driver.DataError
OperationalError: Any = _driver.OperationalError
IntegrityError: Any = _driver.IntegrityError
InternalError: Any = _driver.InternalError
ProgrammingError: Any = _driver.ProgrammingError
NotSupportedError: Any = _driver.NotSupportedError

NoHostAvailable: Any = _error_class(_ENGINE, _errors.NoHostAvailable)
NoWriterAvailable: Any = _error_class(_ENGINE, _errors.NoWriterAvailable)
InstanceResumeTimeout: Any = _error_class(_ENGINE, _errors.InstanceResumeTimeout)
AuthenticationFailed: Any = _error_class(_ENGINE, _errors.AuthenticationFailed)
FailoverSucceeded: Any = _error_class(_ENGINE, _errors.FailoverSucceeded)
TransactionOutcomeUnknown: Any = _error_class(_ENGINE, _errors.TransactionOutcomeUnknown)
PoolTimeout: Any = _error_class(_ENGINE, _PoolTimeout)
PoolClosed: Any = _error_class(_ENGINE, _PoolClosed)

STRING: Any = _driver.STRING
BINARY: Any = _driver.BINARY
NUMBER: Any = _driver.NUMBER
DATETIME: Any = _driver.DATETIME
ROWID: Any = _driver.ROWID
Date: Any = _driver.Date
Time: Any = _driver.Time
Timestamp: Any = _driver.Timestamp
DateFromTicks: Any = _driver.DateFromTicks
TimeFromTicks: Any = _driver.TimeFromTicks
TimestampFromTicks: Any = _driver.TimestampFromTicks
Binary: Any = _driver.Binary


ConfigError: Any = _config_error_class(_ENGINE)
"""``aurora_smartdriver.ConfigError`` that is also psycopg's ``ProgrammingError``, as psycopg
reports connection parameters it cannot accept; ``connect`` raises it."""


def connect(dsn: str | None = None, /, **kwargs: Any) -> Connection:
    """A cluster-aware connection; ``dsn`` or the driver's keywords (host=, user=, ...).

    A parameter the library cannot accept is a `ConfigError` that is also psycopg's
    ``ProgrammingError`` (psycopg's own answer to an unknown connection option).
    """
    try:
        return _connect(dsn, _engine=_ENGINE, **kwargs)
    except _errors.ConfigError as exc:
        raise _as_driver_config_error(exc, _ENGINE).with_traceback(exc.__traceback__) from None


def __getattr__(name: str) -> Any:
    # The driver's own extras (``psycopg.adapters``, its version, ...) pass through, as
    # frameworks that take a DB-API module (SQLAlchemy's dialects) look for them there.
    return getattr(_driver, name)


__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "AuthenticationFailed",
    "Binary",
    "ConfigError",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "FailoverSucceeded",
    "InstanceResumeTimeout",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NoHostAvailable",
    "NoWriterAvailable",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "TransactionOutcomeUnknown",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
