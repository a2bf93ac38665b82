"""Adapters for the wrapped drivers: the only modules that import psycopg or pymysql.

Each adapter knows how to open one raw driver connection to one instance at an address the
library resolved itself, with one deadline over TCP, TLS and the handshake; how to run a
query and get plain rows back; and what a driver error means (`ErrorKind`). Everything above
this layer talks to databases through an adapter, so installing only one of the two drivers
works: `adapter_for` imports a driver the first time its engine is asked for.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aurora_smartdriver.drivers._errors import ErrorKind
from aurora_smartdriver.errors import AuroraSmartDriverError, ConfigError

if TYPE_CHECKING:
    from aurora_smartdriver.dsn import ConnectionSpec
    from aurora_smartdriver.settings import Engine

__all__ = [
    "DriverAdapter",
    "DriverNotInstalled",
    "ErrorKind",
    "QueryResult",
    "adapter_for",
]


class DriverNotInstalled(AuroraSmartDriverError, ImportError):
    """The driver an engine needs is not installed."""


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What one statement returned: column names and rows as tuples (both empty for none)."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def records(self) -> list[dict[str, Any]]:
        """The rows as dictionaries keyed by column name, for results read by name."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class DriverAdapter(Protocol):
    """One driver as the library uses it; see `adapter_for`."""

    @property
    def engine(self) -> Engine:
        """The engine this adapter connects to: "postgresql" or "mysql"."""
        ...

    @property
    def Error(self) -> type[Exception]:
        """The driver's DB-API `Error` class, base of every error the driver raises."""
        ...

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
    ) -> Any:
        """Open one raw driver connection to the instance `host:port`, or raise the driver's error.

        `address` is the IP address the library resolved `host` to; the connection goes there
        while TLS still verifies the name `host`. None leaves resolution to the driver (the
        setting `resolve=off`). `timeout` (seconds) bounds TCP connect, TLS and the database
        handshake together. The identity (user, password, database) and driver parameters
        come from `spec`; `driver_overrides` are driver keyword arguments for this connection
        only (e.g. a fresh IAM token as `password`), over `spec.driver_params`. `autocommit`
        decides the connection's mode; the `autocommit` driver parameter is for the caller to
        read and pass here.
        """
        ...

    def query(self, conn: Any, sql: str, params: Mapping[str, Any] | None = None) -> QueryResult:
        """Run one statement on `conn` and fetch everything it returns.

        Placeholders are `%(name)s` for both drivers; without `params` the text is sent as is.
        On a connection not in autocommit mode the statement runs in (and may begin) a
        transaction, as the driver's own `execute` would.
        """
        ...

    def error_kind(self, exc: BaseException) -> ErrorKind:
        """What `exc` means for the library; "other" for anything not listed as special."""
        ...

    def ping(self, conn: Any, timeout: float) -> None:
        """Check that `conn` still answers within `timeout` seconds; the driver's error if not.

        One round trip that leaves the session and any transaction as they were (PostgreSQL:
        an empty query; MySQL: COM_PING). A connection that failed a ping is unusable: close it.
        """
        ...

    def closed(self, conn: Any) -> bool:
        """Whether the driver already knows `conn` is closed or broken (no I/O)."""
        ...

    def in_transaction(self, conn: Any) -> bool:
        """Whether `conn` is in a state that only a rollback clears: a transaction open (or
        failed), or a statement still under way, as the driver last heard (no I/O)."""
        ...

    def rollback(self, conn: Any) -> None:
        """Roll back `conn`'s transaction, or raise the driver's error (then close `conn`)."""
        ...

    def close(self, conn: Any) -> None:
        """Close `conn` without ever raising: closing a closed or broken connection is fine."""
        ...

    def abort(self, conn: Any) -> None:
        """Cut `conn`'s socket from any thread: a statement waiting on it fails at once.

        For a node that stopped answering (hung, cut off): the waiting statement sees a lost
        connection, as if the node had died. Never raises.
        """
        ...


def adapter_for(engine: str) -> DriverAdapter:
    """The adapter of `engine` ("postgresql" or "mysql"), importing its driver on first use.

    One adapter per engine per process: adapters hold what is worth sharing between
    connections (PyMySQL's TLS contexts).
    """
    if engine not in ("postgresql", "mysql"):
        raise ConfigError(
            f"unknown engine {engine!r}", value=str(engine), suggestion="use postgresql or mysql"
        )
    return _adapter(engine)


@functools.cache
def _adapter(engine: str) -> DriverAdapter:
    if engine == "postgresql":
        try:
            from aurora_smartdriver.drivers._psycopg import PsycopgAdapter
        except ImportError as exc:
            raise DriverNotInstalled(
                f"the postgresql engine needs psycopg 3, which cannot be imported ({exc}); "
                "install it with `pip install 'psycopg[binary]'`"
            ) from exc
        return PsycopgAdapter()
    try:
        from aurora_smartdriver.drivers._pymysql import PyMySQLAdapter
    except ImportError as exc:
        raise DriverNotInstalled(
            f"the mysql engine needs PyMySQL, which cannot be imported ({exc}); "
            "install it with `pip install PyMySQL`"
        ) from exc
    return PyMySQLAdapter()
