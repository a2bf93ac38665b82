"""Aurora PostgreSQL: `aurora_replica_status()` lists every instance; the writer's session is
`MASTER_SESSION_ID`.

One query returns the rows, the database's clock and the answering instance's own id
(`aurora_db_instance_identifier()`) and role (`pg_is_in_recovery()`). Instance ids become
host names through the instance host pattern. The clock is `statement_timestamp()` rather than
`now()`, which stands still for as long as a transaction lasts, should the connection not be
in autocommit mode.
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

__all__ = ["AuroraPostgreSQL", "applies"]

NAME = "aurora-postgresql"

_TOPOLOGY_SQL = """\
SELECT server_id,
       CASE WHEN session_id = 'MASTER_SESSION_ID' THEN true ELSE false END,
       cpu,
       COALESCE(replica_lag_in_msec, 0),
       EXTRACT(EPOCH FROM last_update_timestamp),
       EXTRACT(EPOCH FROM statement_timestamp()),
       aurora_db_instance_identifier(),
       pg_is_in_recovery()
FROM aurora_replica_status()"""

_DETECT_SQL = """\
SELECT current_setting('rds.extensions', true),
       EXISTS (SELECT 1 FROM pg_catalog.pg_proc
               WHERE proname = 'aurora_replica_status'
                 AND pronamespace = 'pg_catalog'::regnamespace)"""


class _Row(NamedTuple):
    server_id: str
    is_writer: bool
    cpu: float | None
    lag_ms: float | None
    last_update: float | None
    now: float
    own_id: str
    in_recovery: bool


class AuroraPostgreSQL:
    """The `aurora-postgresql` topology source."""

    name = NAME
    uses_connection = True

    def fetch(self, conn: Any, ctx: SourceContext) -> Answer:
        parsed = parse_rows(NAME, run(ctx, conn, NAME, _TOPOLOGY_SQL), len(_Row._fields), _parse)
        asked_is_reader = bool(parsed) and parsed[0].in_recovery
        return aurora_answer(ctx, NAME, parsed, asked_is_reader=asked_is_reader)


def applies(conn: Any, ctx: SourceContext) -> bool:
    """Whether the server is Aurora PostgreSQL: `rds.extensions` lists `aurora_stat_utils`, and
    `aurora_replica_status()` exists and answers with rows. Raises only for a lost connection.
    """
    [(extensions, has_function)] = run(ctx, conn, NAME, _DETECT_SQL).rows
    listed = {item.strip() for item in str(extensions or "").split(",")}
    if "aurora_stat_utils" not in listed or not has_function:
        return False
    try:
        [(count,)] = run(ctx, conn, NAME, "SELECT count(*) FROM aurora_replica_status()").rows
    except DiscoveryError:
        return False  # the function exists but fails (a permission, a different signature)
    return bool(count)


def _parse(row: tuple[Any, ...]) -> _Row:
    server_id, is_writer, cpu, lag, last_update, now, own_id, in_recovery = row
    db_now = number(now, "statement_timestamp()")
    if db_now is None:
        raise BadValue("statement_timestamp() is NULL")
    return _Row(
        text(server_id, "server_id"),
        flag(is_writer, "is writer"),
        number(cpu, "cpu"),
        number(lag, "replica_lag_in_msec"),
        number(last_update, "last_update_timestamp"),
        db_now,
        text(own_id, "aurora_db_instance_identifier()"),
        flag(in_recovery, "pg_is_in_recovery()"),
    )
