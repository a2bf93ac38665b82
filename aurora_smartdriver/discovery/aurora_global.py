"""Aurora Global Database: every region's instances from the global metadata.

`aurora_global_db_instance_status()` lists the instances of every region (the writer's session
is `MASTER_SESSION_ID`; the others' `visibility_lag_in_msec` is their lag) and
`aurora_global_db_status()` each region's `rpo_lag_in_msec` (-1 for the primary region); both
answer on any instance of any region. One query joins them with the answering instance's own
id and role. Instance ids become host names through the pattern of their region, from the
setting `global_instance_host_patterns` (an instance id alone does not say its region's domain).
Aurora MySQL has the same data as `information_schema` tables (`...IN_MILLISECONDS` columns
for the region lags), read from the schema of the setting `replica_status_schema`; the
answering instance's role there is the variable of the setting `read_only_variable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from aurora_smartdriver.discovery._base import Answer, SourceContext
from aurora_smartdriver.discovery._values import (
    BadValue,
    flag,
    number,
    parse_rows,
    reported_lag,
    run,
    text,
)
from aurora_smartdriver.discovery.aurora_mysql import own_id_expression
from aurora_smartdriver.endpoints import InstanceHostPattern
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.topology import Host, Role

__all__ = ["AuroraGlobal", "parse_patterns"]

NAME = "aurora-global"

_PG_SQL = """\
SELECT g.server_id,
       CASE WHEN g.session_id = 'MASTER_SESSION_ID' THEN true ELSE false END,
       g.aws_region,
       g.visibility_lag_in_msec,
       s.rpo_lag_in_msec,
       EXTRACT(EPOCH FROM s.last_lag_calculation_time),
       EXTRACT(EPOCH FROM statement_timestamp()),
       aurora_db_instance_identifier(),
       pg_is_in_recovery()
FROM aurora_global_db_instance_status() g
LEFT JOIN aurora_global_db_status() s ON s.aws_region = g.aws_region"""


# Aurora MySQL: the same data in `information_schema` tables (or the schema of the setting
# `replica_status_schema`, where the lab keeps tables of the same columns).
_MYSQL_SQL = """\
SELECT g.SERVER_ID,
       g.SESSION_ID = 'MASTER_SESSION_ID',
       g.AWS_REGION,
       g.VISIBILITY_LAG_IN_MSEC,
       s.RPO_LAG_IN_MILLISECONDS,
       UNIX_TIMESTAMP(s.LAST_LAG_CALCULATION_TIMESTAMP),
       UNIX_TIMESTAMP(NOW(6)),
       {own_id},
       @@{read_only}
FROM `{schema}`.aurora_global_db_instance_status g
LEFT JOIN `{schema}`.aurora_global_db_status s ON s.AWS_REGION = g.AWS_REGION"""


class _Row(NamedTuple):
    server_id: str
    is_writer: bool
    region: str
    lag_ms: float | None
    rpo_lag_ms: float | None
    rpo_at: float | None
    now: float
    own_id: str
    in_recovery: bool


def parse_patterns(value: str | None) -> dict[str, InstanceHostPattern]:
    """The setting `global_instance_host_patterns` as region -> pattern (empty when unset)."""
    out: dict[str, InstanceHostPattern] = {}
    for item in (value or "").split(","):
        if not item.strip():
            continue
        region, _, pattern = item.strip().partition(":")
        try:
            out[region] = InstanceHostPattern.parse(pattern)
        except ValueError as exc:
            raise ConfigError(
                str(exc), parameter="global_instance_host_patterns", value=value
            ) from None
    return out


def hosts_of(
    parsed: list[_Row], patterns: Mapping[str, InstanceHostPattern], default_port: int
) -> tuple[Host, ...]:
    """The `Host` rows of an answer: each instance through its region's pattern.

    The primary region's RPO lag is reported as -1 by Aurora: it is 0 here (commits happen
    there); a negative or NULL figure elsewhere is unknown (None).
    """
    out = []
    for row in parsed:
        pattern = patterns.get(row.region)
        if pattern is None:
            raise ConfigError(
                f"{NAME}: instance {row.server_id!r} is in region {row.region!r}, which "
                f"global_instance_host_patterns does not name (it names: "
                f"{', '.join(sorted(patterns)) or 'nothing'})",
                parameter="global_instance_host_patterns",
                suggestion=f"add {row.region}:?.<cluster hash>.{row.region}.rds.amazonaws.com",
            )
        rpo = row.rpo_lag_ms
        if rpo is not None and rpo < 0:
            rpo = 0.0 if rpo == -1 else None
        out.append(
            Host(
                instance_id=row.server_id,
                host=pattern.host_for(row.server_id),
                port=pattern.port if pattern.port is not None else default_port,
                role=Role.WRITER if row.is_writer else Role.READER,
                lag_ms=reported_lag(row.is_writer, row.lag_ms),
                region=row.region,
                rpo_lag_ms=0.0 if row.is_writer else rpo,
                # When the region's figures were computed: a lagging node answers with an
                # old view of them, which must not pass for the latest (`_globaldb`).
                last_update=row.rpo_at if row.rpo_at and not row.is_writer else None,
            )
        )
    return tuple(out)


class AuroraGlobal:
    """The `aurora-global` topology source."""

    name = NAME
    uses_connection = True

    def fetch(self, conn: Any, ctx: SourceContext) -> Answer:
        patterns = parse_patterns(ctx.settings.global_instance_host_patterns)
        if not patterns:
            raise ConfigError(
                f"topology source {NAME} needs each region's instance host pattern",
                parameter="global_instance_host_patterns",
                suggestion="e.g. global_instance_host_patterns=us-east-1:?.abc.us-east-1.rds."
                "amazonaws.com,eu-west-1:?.def.eu-west-1.rds.amazonaws.com",
            )
        sql = _PG_SQL
        if ctx.spec.engine == "mysql":
            schema = ctx.settings.replica_status_schema
            sql = _MYSQL_SQL.format(
                own_id=own_id_expression(schema),
                read_only=ctx.settings.read_only_variable,
                schema=schema,
            )
        parsed = parse_rows(NAME, run(ctx, conn, NAME, sql), len(_Row._fields), _parse)
        if not parsed:
            return Answer((), ctx.now())
        me = parsed[0]
        rows = hosts_of(parsed, patterns, ctx.port)
        role = Role.READER if me.in_recovery else Role.WRITER
        return Answer(rows, me.now, me.own_id, role)


def _parse(row: tuple[Any, ...]) -> _Row:
    server_id, is_writer, region, lag, rpo, rpo_at, now, own_id, in_recovery = row
    db_now = number(now, "statement_timestamp()")
    if db_now is None:
        raise BadValue("statement_timestamp() is NULL")
    return _Row(
        text(server_id, "server_id"),
        flag(is_writer, "is writer"),
        text(region, "aws_region"),
        number(lag, "visibility_lag_in_msec"),
        number(rpo, "rpo_lag_in_msec"),
        number(rpo_at, "last_lag_calculation_time"),
        db_now,
        text(own_id, "aurora_db_instance_identifier()"),
        flag(in_recovery, "pg_is_in_recovery()"),
    )
