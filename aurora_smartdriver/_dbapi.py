"""Per-driver DB-API pieces: the driver module, and the library's errors as its subclasses."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.errors import AuroraSmartDriverError, ConfigError

_PUBLIC_NAME = {"postgresql": "psycopg", "mysql": "pymysql"}


@functools.cache
def driver_module(engine: str) -> ModuleType:
    """The wrapped driver's DB-API module (psycopg or pymysql), imported through its adapter."""
    root = adapter_for(engine).Error.__module__.split(".")[0]
    return importlib.import_module(root)


@functools.cache
def error_class(engine: str, cls: type[AuroraSmartDriverError]) -> type[Exception]:
    """``cls`` as a subclass of the driver's ``OperationalError`` too (one class per driver)."""
    base = driver_module(engine).OperationalError
    return type(
        cls.__name__,
        (cls, base),
        {"__module__": f"aurora_smartdriver.{_PUBLIC_NAME[engine]}", "__doc__": cls.__doc__},
    )


@functools.cache
def config_error_class(engine: str) -> type[ConfigError]:
    """``ConfigError`` as a subclass of the driver's ``ProgrammingError`` too: psycopg reports
    connection parameters it cannot accept as a ``ProgrammingError``."""
    base = driver_module(engine).ProgrammingError
    return type(
        "ConfigError",
        (ConfigError, base),
        {
            "__module__": f"aurora_smartdriver.{_PUBLIC_NAME[engine]}",
            "__doc__": ConfigError.__doc__,
        },
    )


def as_driver_config_error(error: ConfigError, engine: str) -> ConfigError:
    """``error`` as an instance of `config_error_class` (same message and attributes)."""
    cls = config_error_class(engine)
    if isinstance(error, cls):
        return error
    converted = cls.__new__(cls)
    converted.args = error.args
    converted.__dict__.update(error.__dict__)
    converted.__dict__.update(_info=None, _encoding="utf-8", _pgconn=None)  # psycopg's fields
    return converted


def keep_driver_details(
    error: BaseException, cause: BaseException | None, *, default_code: int | None = None
) -> BaseException:
    """``error`` (one of the library's) carrying what ``cause`` (the driver's) told code.

    PyMySQL code tests ``e.args[0] in (2006, 2013)``: the driver's error number stays first in
    ``args`` (``default_code`` when the cause has none, e.g. 2003 for "can't connect"), the
    library's message second. psycopg code reads ``e.sqlstate``, ``e.diag`` and ``e.pgconn``:
    they are the driver error's. Returns ``error``.
    """
    if cause is not None and isinstance(cause, AuroraSmartDriverError):
        cause = getattr(cause, "driver_error", None)
    if cause is None:
        if default_code is not None and type(error).__module__ == "aurora_smartdriver.pymysql":
            error.args = (default_code, str(error.args[0]) if error.args else "")
        return error
    code = cause.args[0] if cause.args else None
    pymysql_error = type(error).__module__ == "aurora_smartdriver.pymysql"
    if pymysql_error and not (isinstance(code, int) and not isinstance(code, bool)):
        code = default_code
    if isinstance(code, int) and not isinstance(code, bool):
        error.args = (code, str(error.args[0]) if error.args else "")
    if hasattr(cause, "_info"):  # psycopg: diagnostics, SQLSTATE and connection
        state = error.__dict__
        state["_info"] = cause.__dict__.get("_info")
        state["_pgconn"] = cause.__dict__.get("_pgconn")
        state["_encoding"] = cause.__dict__.get("_encoding", "utf-8")
        sqlstate = getattr(cause, "sqlstate", None)
        if sqlstate:
            state["sqlstate"] = sqlstate
    error.__dict__["driver_error"] = cause
    return error
