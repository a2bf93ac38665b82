"""Aurora MySQL: `replica_host_status` lists every instance; the writer's session is
`MASTER_SESSION_ID`.

The table is `information_schema.replica_host_status` on Aurora; the setting
`replica_status_schema` names another schema holding a table of the same columns (the lab's
MariaDB keeps one in `aurora_lab`, since nothing can be created in `information_schema`).
The answering instance's id is `@@aurora_server_id` with the default schema; with another
schema there is no such variable (MariaDB has none) and the id comes from the function
`<schema>.aurora_server_id()` instead, which the lab defines. Its role comes from the variable
named by `read_only_variable` (`innodb_read_only` on Aurora; the lab's MariaDB needs
`read_only`). Times are compared in the session's time zone, as `NOW()` and the table's
DATETIME column both are.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from aurora_smartdriver.discovery._base import Answer, DiscoveryError, SourceContext
from aurora_smartdriver.discovery._values import (
    BadValue,
    aurora_answer,
    flag,
    number,
    parse_rows,
    run,
    text,
)

__all__ = ["AuroraMySQL", "applies"]

NAME = "aurora-mysql"
_AURORA_SCHEMA = "information_schema"

_TOPOLOGY_SQL = """\
SELECT SERVER_ID,
       SESSION_ID = 'MASTER_SESSION_ID',
       CPU,
       REPLICA_LAG_IN_MILLISECONDS,
       UNIX_TIMESTAMP(LAST_UPDATE_TIMESTAMP),
       UNIX_TIMESTAMP(NOW(6)),
       {own_id},
       @@{read_only}
FROM `{schema}`.replica_host_status"""

_TABLE_EXISTS_SQL = """\
SELECT COUNT(*) FROM information_schema.tables
WHERE LOWER(table_schema) = LOWER(%(schema)s) AND LOWER(table_name) = 'replica_host_status'"""


class _Row(NamedTuple):
    server_id: str
    is_writer: bool
    cpu: float | None
    lag_ms: float | None
    last_update: float | None
    now: float
    own_id: str
    read_only: bool


class AuroraMySQL:
    """The `aurora-mysql` topology source."""

    name = NAME
    uses_connection = True

    def fetch(self, conn: Any, ctx: SourceContext) -> Answer:
        schema = ctx.settings.replica_status_schema
        sql = _TOPOLOGY_SQL.format(
            own_id=own_id_expression(schema),
            read_only=ctx.settings.read_only_variable,
            schema=schema,
        )
        hint = (
            f"does {schema}.replica_host_status exist with Aurora's columns? "
            "(setting replica_status_schema)"
        )
        result = run(ctx, conn, NAME, sql, hint=hint)
        parsed = parse_rows(NAME, result, len(_Row._fields), _parse)
        asked_is_reader = bool(parsed) and parsed[0].read_only
        return aurora_answer(ctx, NAME, parsed, asked_is_reader=asked_is_reader)


def own_id_expression(schema: str) -> str:
    """How the answering instance's id is read: the Aurora variable in Aurora's schema, the
    stand-in function `<schema>.aurora_server_id()` in any other."""
    if schema.lower() == _AURORA_SCHEMA:
        return "@@aurora_server_id"
    return f"`{schema}`.aurora_server_id()"


def applies(conn: Any, ctx: SourceContext) -> bool:
    """Whether the server is Aurora MySQL: it has the variable `aurora_version`, or the
    `replica_host_status` table of the configured schema exists. Raises only for a lost
    connection."""
    if run(ctx, conn, NAME, "SHOW VARIABLES LIKE 'aurora_version'").rows:
        return True
    params = {"schema": ctx.settings.replica_status_schema}
    try:
        [(count,)] = run(ctx, conn, NAME, _TABLE_EXISTS_SQL, params).rows
    except DiscoveryError:
        return False
    return bool(count)


def _parse(row: tuple[Any, ...]) -> _Row:
    server_id, is_writer, cpu, lag, last_update, now, own_id, read_only = row
    db_now = number(now, "NOW()")
    if db_now is None:
        raise BadValue("NOW() is NULL")
    return _Row(
        text(server_id, "SERVER_ID"),
        flag(is_writer, "is writer"),
        number(cpu, "CPU"),
        number(lag, "REPLICA_LAG_IN_MILLISECONDS"),
        number(last_update, "LAST_UPDATE_TIMESTAMP"),
        db_now,
        text(own_id, "the answering instance's id"),
        flag(read_only, "the read-only variable"),
    )
