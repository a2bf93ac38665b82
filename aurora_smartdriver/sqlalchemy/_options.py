"""What the dialects decide without I/O: URLs in and out, connect arguments, the role option.

Pure functions over plain values, so they are tested exhaustively (tests/test_sqlalchemy.py)
and the dialect classes stay thin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from aurora_smartdriver import dsn
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.settings import DRIVER_PARAMETERS

__all__ = [
    "DRIVERNAMES",
    "ROLES",
    "ROLE_OPTION",
    "RYW_OPTION",
    "connect_kwargs",
    "engine_url_parts",
    "is_reader",
    "role_of",
]

ROLE_OPTION: Final = "aurora_role"
"""The execution option that routes a SQLAlchemy connection's work: writer (default) or reader."""

RYW_OPTION: Final = "aurora_read_your_writes"
"""The execution option that makes a connection's reads see a session's writes."""

ROLES: Final = ("writer", "reader")

DRIVERNAMES: Final[Mapping[str, str]] = {
    "postgresql": "postgresql+aurora_psycopg",
    "mysql": "mysql+aurora_pymysql",
    "mariadb": "mariadb+aurora_pymysql",
}
"""The SQLAlchemy drivername for each DSN scheme of the library."""

_FOUND_ROWS: Final = 2
"""PyMySQL's ``constants.CLIENT.FOUND_ROWS``: rowcount counts matched rows, as SQLAlchemy needs."""

QueryValue = str | Sequence[str]


def role_of(value: object) -> str:
    """The role an ``aurora_role`` value names; a `ConfigError` for anything else."""
    if isinstance(value, str) and value.strip().lower() in ROLES:
        return value.strip().lower()
    raise ConfigError(
        f"invalid value {value!r} for the execution option {ROLE_OPTION!r}",
        parameter=ROLE_OPTION,
        value=repr(value),
        suggestion="use 'writer' or 'reader'",
    )


def is_reader(value: object) -> bool:
    """Whether an ``aurora_role`` value asks for a reader."""
    return role_of(value) == "reader"


def connect_kwargs(
    engine: str,
    *,
    username: str | None,
    password: str | None,
    host: str | None,
    port: int | None,
    database: str | None,
    query: Mapping[str, QueryValue],
    client_encoding: str | None = None,
) -> dict[str, object]:
    """The keyword arguments for ``aurora_smartdriver.dsn.parse`` that a SQLAlchemy URL means.

    The URL's parts become the connection's identity; every query item is either a library
    parameter or a driver parameter the library passes on (its allow-list), and anything else is
    refused by the library with a `ConfigError` naming it. Several hosts go in repeated ``host``
    query items (``?host=a:5432&host=b:5432``), as SQLAlchemy writes them for psycopg. For MySQL,
    PyMySQL's FOUND_ROWS client flag is added, as SQLAlchemy's own PyMySQL dialect does, so that
    ``rowcount`` counts matched rows.
    """
    kwargs: dict[str, object] = {}
    for name, given in (("user", username), ("password", password), ("database", database)):
        if given:
            kwargs[name] = given
    hosts: list[str] = [] if host is None else [_host_port(host, port)]
    for name, value in query.items():
        if name == "host":
            if hosts:
                raise ConfigError(
                    "the URL names hosts both before the database name and in the query",
                    parameter="host",
                    suggestion="give several hosts as ?host=a:5432&host=b:5432 only",
                )
            items = [value] if isinstance(value, str) else list(value)
            hosts = [h for item in items for h in item.split(",")]
            continue
        single = value[0] if not isinstance(value, str) and len(value) == 1 else value
        if not isinstance(single, str):
            raise ConfigError(
                f"parameter {name!r} is given {len(single)} times in the URL's query",
                parameter=name,
                suggestion="give it once",
            )
        kwargs[name] = single
    if hosts:
        kwargs["host"] = hosts
        if port is not None and host is None:
            kwargs["port"] = port
    if engine == "mysql":
        kwargs["client_flag"] = _client_flag(kwargs.get("client_flag")) | _FOUND_ROWS
    elif client_encoding is not None and "client_encoding" not in kwargs:
        kwargs["client_encoding"] = client_encoding
    return kwargs


def _host_port(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _client_flag(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    raise ConfigError(
        f"invalid value {value!r} for parameter 'client_flag': expected a whole number",
        parameter="client_flag",
        value=str(value),
    )


def engine_url_parts(
    text: str,
) -> tuple[str, str | None, str | None, str | None, int | None, str | None, dict[str, list[str]]]:
    """A library DSN as the parts of the SQLAlchemy URL that means the same.

    Returns drivername, username, password, host, port, database and query. One host goes
    before the database name; several go in repeated ``host`` query items.
    """
    spec = dsn.parse(text)
    scheme = "mariadb" if spec.mariadb else spec.engine
    query: dict[str, list[str]] = {
        name: [value] for name, value in spec.settings.query_params(mask_secrets=False).items()
    }
    for name, value in spec.driver_params.items():
        query[name] = [DRIVER_PARAMETERS[spec.engine][name].render(value)]
    host: str | None = None
    port: int | None = None
    if len(spec.hosts) == 1:
        host, port = spec.hosts[0]
    else:
        query["host"] = [_host_port(h, p) for h, p in spec.hosts]
    return (
        DRIVERNAMES[scheme],
        spec.user,
        spec.password,
        host,
        port,
        spec.database,
        query,
    )
