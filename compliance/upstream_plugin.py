"""pytest plugin for the drivers' own test suites: bare, or with the library's modules in place.

Loaded by ``compliance/upstream.py`` into the upstream suite's pytest process (``-p
upstream_plugin``), configured by environment variables:

- ``AURORA_UPSTREAM_MODE``: ``bare`` (the driver alone) or ``wrapped``.
- ``AURORA_UPSTREAM_DSN``: the lab cluster's library DSN without user, password and database
  (``wrapped`` only).
- ``AURORA_UPSTREAM_SERVER``: ``address:port`` of the lab writer the suite is configured with.
- ``AURORA_UPSTREAM_PYMYSQL_TESTS``: a directory holding upstream's ``tests`` package, added to
  ``pymysql.__path__`` so that ``from pymysql.tests import base`` finds it next to the installed
  driver (PyMySQL's suite only).

What ``wrapped`` replaces, and nothing else, is what an application changes when it adopts the
library: the call that opens a connection. ``pymysql.connect``/``pymysql.Connect`` and
``psycopg.connect``/``psycopg.Connection.connect`` become the library's ``connect``, given the
test's own keyword arguments (user, password, database, driver options), where:

- a connection to the suite's server (or to no host, the driver's default) goes to the lab
  cluster: the server address is replaced by the cluster's DSN (its endpoint and library
  parameters), as an application's configuration would be;
- a connection to another loopback address or port (a test that expects a refusal, say) goes
  through the library to that host and port, with ``topology_source=static``;
- a connection to any other host stays bare: the harness never sends a packet or a DNS query off
  this machine (those tests mock the driver's network layer anyway).

The tests keep importing the driver for everything else (exceptions, types, constants, cursor
classes). Left bare, and so counted alike in both runs: connections made by instantiating a
driver class directly (``pymysql.connections.Connection(...)``, a subclass's ``connect``),
libpq-level ``pq.PGconn`` connections, and the connections the library itself opens (recognised
by their caller being ``aurora_smartdriver``).
"""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any

import pytest

MODE = os.environ.get("AURORA_UPSTREAM_MODE", "bare")
_ADDRESS_KEYS = ("host", "port", "hostaddr", "unix_socket")
_LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def _server() -> tuple[str, int]:
    address, _, port = os.environ.get("AURORA_UPSTREAM_SERVER", "").rpartition(":")
    return address, int(port or 0)


def _route(host: object, port: object, default_port: int) -> str:
    """Where a connection goes: "cluster", "direct" (through the library, to that loopback
    host) or "bare"."""
    if "," in str(host or "") + str(port or ""):
        return "bare"  # a host list: psycopg's multi-host tests, which mock the network
    if host in (None, "") and port in (None, "", default_port, str(default_port)):
        return "cluster"
    address, server_port = _server()
    given_port = int(str(port)) if port not in (None, "") else default_port
    if host in (None, "", address) and given_port == server_port:
        return "cluster"
    text = str(host or "localhost")
    if text in _LOOPBACK_NAMES:
        return "direct"
    try:
        return "direct" if ipaddress.ip_address(text).is_loopback else "bare"
    except ValueError:
        return "bare"


def _library_dsn() -> str:
    dsn = os.environ.get("AURORA_UPSTREAM_DSN")
    if not dsn:
        raise pytest.UsageError("AURORA_UPSTREAM_DSN is not set for the wrapped run")
    return dsn


def _wrap_pymysql(dsn: str) -> None:
    import pymysql

    from aurora_smartdriver import pymysql as asd_pymysql

    original = pymysql.connect

    def connect(*args: Any, **kwargs: Any) -> Any:
        if args:
            raise TypeError("connect() takes keyword arguments only")  # as PyMySQL's
        route = _route(kwargs.get("host"), kwargs.get("port"), 3306)
        if route == "bare":
            return original(**kwargs)
        host = kwargs.pop("host", None) or "localhost"
        port = kwargs.pop("port", None) or 3306
        if route == "direct":
            return asd_pymysql.connect(host=host, port=port, topology_source="static", **kwargs)
        return asd_pymysql.connect(dsn, **kwargs)

    pymysql.connect = pymysql.Connect = connect  # type: ignore[assignment]


def _wrap_psycopg(dsn: str) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from aurora_smartdriver import psycopg as asd_psycopg

    original = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]

    def connect(cls: type[Any], /, conninfo: str = "", **kwargs: Any) -> Any:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if cls is not psycopg.Connection or caller.startswith("aurora_smartdriver"):
            return original(cls, conninfo, **kwargs)
        params: dict[str, Any] = dict(conninfo_to_dict(conninfo))
        params.update(kwargs)
        route = _route(params.get("host") or params.get("hostaddr"), params.get("port"), 5432)
        if route == "bare":
            return original(cls, conninfo, **kwargs)
        host, port = params.get("host") or "localhost", params.get("port") or 5432
        for key in _ADDRESS_KEYS:
            params.pop(key, None)
        if route == "direct":
            return asd_psycopg.connect(host=host, port=port, topology_source="static", **params)
        return asd_psycopg.connect(dsn, **params)

    psycopg.Connection.connect = classmethod(connect)  # type: ignore[assignment, method-assign]
    psycopg.connect = psycopg.Connection.connect


def pytest_configure(config: pytest.Config) -> None:
    tests_dir = os.environ.get("AURORA_UPSTREAM_PYMYSQL_TESTS")
    if tests_dir:
        import pymysql

        pymysql.__path__.append(tests_dir)
    if MODE == "wrapped":
        dsn = _library_dsn()
        if tests_dir:
            _wrap_pymysql(dsn)
        else:
            _wrap_psycopg(dsn)
    elif MODE != "bare":
        raise pytest.UsageError(f"AURORA_UPSTREAM_MODE must be bare or wrapped, not {MODE!r}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"aurora_smartdriver upstream compliance: {MODE}"]
