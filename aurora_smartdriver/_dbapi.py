"""Per-driver DB-API pieces: the driver module, and the library's errors as its subclasses."""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.errors import AuroraSmartDriverError

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
