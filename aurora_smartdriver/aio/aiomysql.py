"""An async DB-API shaped module over aiomysql: ``await connect(...)``, ``paramstyle``, the
exception classes and type objects of the sync ``aurora_smartdriver.pymysql`` (the driver's own,
with the library's errors as subclasses of its ``OperationalError``), for frameworks that take
a module (SQLAlchemy's asyncio dialects, DB-API style helpers)."""

from __future__ import annotations

from typing import Any

from aurora_smartdriver import errors as _errors
from aurora_smartdriver import pymysql as _sync
from aurora_smartdriver._dbapi import as_driver_config_error as _as_driver_config_error
from aurora_smartdriver._dbapi import config_error_class as _config_error_class
from aurora_smartdriver.aio import connect as _connect
from aurora_smartdriver.auth import CredentialsSource

# The sync module's names (exceptions, type objects, paramstyle...), its connect aside.
globals().update({name: getattr(_sync, name) for name in _sync.__all__ if name != "connect"})
_sync_names: list[str] = list(_sync.__all__)
_ENGINE: str = "mysql"

ConfigError: Any = _config_error_class(_ENGINE)
"""``aurora_smartdriver.ConfigError`` that is also the driver's ``ProgrammingError``."""


async def connect(
    dsn: str | None = None, /, *, credentials: CredentialsSource | None = None, **kwargs: Any
) -> Any:
    """``aurora_smartdriver.aio.connect``: a DSN, or the driver's keywords alone (host=...);
    a parameter the library cannot accept is this module's ``ConfigError``."""
    try:
        return await _connect(dsn or "mysql://", credentials=credentials, **kwargs)
    except _errors.ConfigError as exc:
        raise _as_driver_config_error(exc, _ENGINE).with_traceback(exc.__traceback__) from None


__all__ = sorted({*_sync_names, "ConfigError", "connect"})  # noqa: PLE0605
