"""What a driver error means for the library, as tables: SQLSTATEs and MySQL error codes.

Pure data and lookups with no driver import, so the decision is testable without a server and
the same tables serve every caller (monitor, pool, failover). Each adapter pulls the code out
of its driver's exception and asks here.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

__all__ = [
    "MYSQL_CODES",
    "POSTGRESQL_AUTH_MESSAGES",
    "POSTGRESQL_SQLSTATES",
    "POSTGRESQL_SQLSTATE_CLASSES",
    "ErrorKind",
    "mysql_kind",
    "postgresql_kind",
]

ErrorKind = Literal["disconnect", "read_only", "auth", "other"]

_TLS_REFUSED = ("certificate verify failed", "CERTIFICATE_VERIFY_FAILED")


def tls_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the server's certificate failing verification: a configuration to
    fix (the CA, the name), not a node to wait for, so it is never taken for a lost one."""
    text = str(exc)
    return any(mark in text for mark in _TLS_REFUSED)


"""What an error means: the connection is gone, the instance is read-only (a demoted writer),
the credentials were refused, or anything else (the application's business)."""

POSTGRESQL_SQLSTATES: Mapping[str, ErrorKind] = MappingProxyType(
    {
        "57P01": "disconnect",  # admin_shutdown
        "57P02": "disconnect",  # crash_shutdown
        "57P03": "disconnect",  # cannot_connect_now (starting up, shutting down, promoting)
        "25006": "read_only",  # read_only_sql_transaction
        "28P01": "auth",  # invalid_password
        "28000": "auth",  # invalid_authorization_specification
    }
)
"""PostgreSQL SQLSTATEs with a meaning of their own."""

POSTGRESQL_SQLSTATE_CLASSES: Mapping[str, ErrorKind] = MappingProxyType(
    {"08": "disconnect"}  # connection_exception
)
"""PostgreSQL SQLSTATE classes (first two characters), consulted after the exact codes."""

POSTGRESQL_AUTH_MESSAGES: tuple[str, ...] = (
    "password authentication failed",
    "pam authentication failed",  # RDS IAM authentication
    "no pg_hba.conf entry",
)
"""Fragments of libpq connection-failure messages that mean the login was refused.

libpq reports a failed connection without a SQLSTATE, even when the server refused the login
with one (28P01), so a failed connect is told apart from a dead server by its message. These
are the server's English texts: with `lc_messages` set to another language a refused login is
seen as a disconnect.
"""

MYSQL_CODES: Mapping[int, ErrorKind] = MappingProxyType(
    {
        2002: "disconnect",  # CR_CONNECTION_ERROR
        2003: "disconnect",  # CR_CONN_HOST_ERROR (refused, unreachable, connect timeout)
        2006: "disconnect",  # CR_SERVER_GONE_ERROR
        2013: "disconnect",  # CR_SERVER_LOST (also a read timeout during the handshake)
        2055: "disconnect",  # CR_SERVER_LOST_EXTENDED
        1053: "disconnect",  # ER_SERVER_SHUTDOWN (shutdown in progress)
        1927: "disconnect",  # ER_CONNECTION_KILLED (MariaDB: KILL, or the server going away)
        4031: "disconnect",  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8: idle session closed)
        1290: "read_only",  # ER_OPTION_PREVENTS_STATEMENT (--read-only)
        1836: "read_only",  # ER_READ_ONLY_MODE
        1045: "auth",  # ER_ACCESS_DENIED_ERROR
    }
)
"""MySQL/MariaDB error codes (client and server) with a meaning of their own."""


def postgresql_kind(sqlstate: str | None, *, operational: bool, message: str = "") -> ErrorKind:
    """The kind of a PostgreSQL error from its SQLSTATE.

    `operational` says the driver raised an OperationalError; one without a SQLSTATE is a
    failure below SQL (refused, reset, timed out, server gone), hence a disconnect, unless
    `message` shows a refused login (see `POSTGRESQL_AUTH_MESSAGES`).
    """
    if sqlstate:
        kind = POSTGRESQL_SQLSTATES.get(sqlstate)
        if kind is None:
            kind = POSTGRESQL_SQLSTATE_CLASSES.get(sqlstate[:2], "other")
        return kind
    if not operational:
        return "other"
    lowered = message.lower()
    if any(fragment in lowered for fragment in POSTGRESQL_AUTH_MESSAGES):
        return "auth"
    return "disconnect"


def mysql_kind(code: object) -> ErrorKind:
    """The kind of a MySQL/MariaDB error from its numeric code (`exc.args[0]`)."""
    if isinstance(code, bool) or not isinstance(code, int):
        return "other"
    return MYSQL_CODES.get(code, "other")
