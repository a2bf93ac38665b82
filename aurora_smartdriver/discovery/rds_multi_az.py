"""RDS Multi-AZ DB clusters: the topology table lists every instance with its endpoint.

PostgreSQL: `rds_tools.show_topology('aurora_smartdriver-<version>')` gives `(id, endpoint,
port)`, ids being DBI resource ids (`db-...`); the writer's id is
`rds_tools.multi_az_db_cluster_source_dbi_resource_id()`, or the answering instance's own
`rds_tools.dbi_resource_id()` when that is empty and it is not in recovery.

MySQL: `mysql.rds_topology` gives `(id, endpoint, port)`, ids being server ids; the writer's is
the source server id in `SHOW REPLICA STATUS` (`Source_Server_Id` on MySQL,
`Master_Server_Id` on MariaDB, read by name), or the answering instance's `@@server_id` when it
is not a replica (MySQL 8.0.22 or later, or MariaDB 10.5 or later, for SHOW REPLICA STATUS).

Endpoints come from the table, so no instance host pattern is needed. A row's instance id is
its endpoint's first label (the RDS instance identifier, as the other sources report it), or
the table's id when the endpoint is an IP address. Lag is not reported: unknown.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

from aurora_smartdriver import __version__
from aurora_smartdriver.discovery._base import Answer, DiscoveryError, SourceContext
from aurora_smartdriver.discovery._values import BadValue, flag, parse_rows, run, text, whole
from aurora_smartdriver.topology import Host, Role

__all__ = ["RdsMultiAz", "applies"]

NAME = "rds-multi-az"
CLIENT_NAME = f"aurora_smartdriver-{__version__}"
"""What the PostgreSQL topology function is told the client is."""

_PG_TOPOLOGY_SQL = "SELECT id, endpoint, port FROM rds_tools.show_topology(%(client)s)"
_PG_WRITER_SQL = """\
SELECT (SELECT multi_az_db_cluster_source_dbi_resource_id
        FROM rds_tools.multi_az_db_cluster_source_dbi_resource_id()),
       (SELECT dbi_resource_id FROM rds_tools.dbi_resource_id()),
       pg_is_in_recovery()"""
_PG_DETECT_SQL = """\
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = 'rds_tools' AND p.proname = 'show_topology')"""

_MY_TOPOLOGY_SQL = "SELECT id, endpoint, port, @@server_id FROM mysql.rds_topology"
_MY_DETECT_SQL = """\
SELECT COUNT(*) FROM information_schema.tables
WHERE table_schema = 'mysql' AND table_name = 'rds_topology'"""
_SOURCE_ID_COLUMNS = ("Source_Server_Id", "Master_Server_Id")

T = TypeVar("T")


class _Member(NamedTuple):
    id: str
    endpoint: str
    port: int


class RdsMultiAz:
    """The `rds-multi-az` topology source, for both engines."""

    name = NAME
    uses_connection = True

    def fetch(self, conn: Any, ctx: SourceContext) -> Answer:
        if ctx.spec.engine == "postgresql":
            members, writer_id, own_id = _postgresql(conn, ctx)
        else:
            members, writer_id, own_id = _mysql(conn, ctx)
        ids = {m.id: _instance_id(m) for m in members}
        if members and writer_id not in ids:
            raise DiscoveryError(
                f"{NAME}: the writer's id {writer_id!r} is not among the topology's ids "
                f"{sorted(ids)}"
            )
        rows = tuple(
            Host(
                instance_id=ids[m.id],
                host=m.endpoint,
                port=m.port,
                role=Role.WRITER if m.id == writer_id else Role.READER,
            )
            for m in members
        )
        me = ids.get(own_id)
        role = Role.UNKNOWN if me is None else Role.WRITER if own_id == writer_id else Role.READER
        return Answer(rows, ctx.now(), me, role)


def applies(conn: Any, ctx: SourceContext) -> bool:
    """Whether the server has the RDS Multi-AZ topology function (PostgreSQL, looked up in
    pg_proc so nothing can fail) or table (MySQL). Raises only for a lost connection."""
    sql = _PG_DETECT_SQL if ctx.spec.engine == "postgresql" else _MY_DETECT_SQL
    try:
        [(found,)] = run(ctx, conn, NAME, sql).rows
    except DiscoveryError:
        return False
    return bool(found)


def _postgresql(conn: Any, ctx: SourceContext) -> tuple[list[_Member], str, str]:
    result = run(ctx, conn, NAME, _PG_TOPOLOGY_SQL, {"client": CLIENT_NAME})
    members = parse_rows(NAME, result, 3, _member)
    [(source_id, own_id, in_recovery)] = run(ctx, conn, NAME, _PG_WRITER_SQL).rows
    own = _checked(text, own_id, "rds_tools.dbi_resource_id()")
    if source_id:
        writer = _checked(text, source_id, "the source DBI resource id")
    elif not _checked(flag, in_recovery, "pg_is_in_recovery()"):
        writer = own
    else:
        raise DiscoveryError(
            f"{NAME}: no writer: the source DBI resource id is empty and {own} is in recovery"
        )
    return members, writer, own


def _mysql(conn: Any, ctx: SourceContext) -> tuple[list[_Member], str, str]:
    result = run(ctx, conn, NAME, _MY_TOPOLOGY_SQL)
    parsed = parse_rows(
        NAME, result, 4, lambda row: (_member(row[:3]), whole(row[3], "@@server_id"))
    )
    members = [member for member, _ in parsed]
    own = str(parsed[0][1]) if parsed else ""
    status = run(ctx, conn, NAME, "SHOW REPLICA STATUS").records()
    if not status:
        return members, own, own
    column = next((c for c in _SOURCE_ID_COLUMNS if c in status[0]), None)
    if column is None:
        raise DiscoveryError(
            f"{NAME}: SHOW REPLICA STATUS has none of the columns {list(_SOURCE_ID_COLUMNS)}"
        )
    return members, str(_checked(whole, status[0][column], column)), own


def _member(row: tuple[Any, ...]) -> _Member:
    member_id, endpoint, port = row
    if isinstance(member_id, int) and not isinstance(member_id, bool):
        member_id = str(member_id)  # MySQL's ids are server ids
    return _Member(text(member_id, "id"), text(endpoint, "endpoint"), whole(port, "port"))


def _instance_id(member: _Member) -> str:
    try:
        ipaddress.ip_address(member.endpoint)
    except ValueError:
        return member.endpoint.split(".", 1)[0]
    return member.id


def _checked(convert: Callable[[object, str], T], value: object, what: str) -> T:
    try:
        return convert(value, what)
    except BadValue as exc:
        raise DiscoveryError(f"{NAME}: {exc}") from None
