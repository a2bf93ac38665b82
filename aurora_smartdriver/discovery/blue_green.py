"""Reading a Blue/Green deployment's metadata through the monitor's connection.

PostgreSQL: Aurora's `pg_catalog.get_blue_green_fast_switchover_metadata(client)`, else RDS's
`rds_tools.show_topology(client)` when it has the `role`/`status`/`version` columns. MySQL:
`mysql.rds_topology` when it has those columns. Each is looked up in the catalog first, so a
server without them answers None and nothing fails; the deployment may be created at any time,
so the lookup is made on every refresh (a catalog read, no table scan).
"""

from __future__ import annotations

from typing import Any

from aurora_smartdriver._bluegreen import BadMetadata, BlueGreenStatus, parse_rows
from aurora_smartdriver.discovery._base import DiscoveryError, SourceContext
from aurora_smartdriver.discovery._values import run
from aurora_smartdriver.discovery.rds_multi_az import CLIENT_NAME

__all__ = ["fetch"]

NAME = "blue-green"

_PG_FIND = """\
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = 'pg_catalog'
                 AND p.proname = 'get_blue_green_fast_switchover_metadata'),
       EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
               WHERE n.nspname = 'rds_tools' AND p.proname = 'show_topology'
                 AND 'status' = ANY (p.proargnames))"""
_PG_AURORA = (
    "SELECT id, endpoint, port, role, status, version"
    " FROM pg_catalog.get_blue_green_fast_switchover_metadata(%(client)s)"
)
_PG_RDS = (
    "SELECT id, endpoint, port, role, status, version FROM rds_tools.show_topology(%(client)s)"
)
_MY_FIND = """\
SELECT COUNT(*) FROM information_schema.columns
WHERE table_schema = 'mysql' AND table_name = 'rds_topology'
  AND column_name IN ('role', 'status', 'version')"""
_MY = "SELECT id, endpoint, port, role, status, version FROM mysql.rds_topology"


def fetch(conn: Any, ctx: SourceContext) -> BlueGreenStatus | None:
    """The deployment as the instance behind `conn` shows it; None when it shows none.

    Raises `DiscoveryError` for metadata it cannot read, and the driver's errors for a lost
    connection.
    """
    if ctx.spec.engine == "postgresql":
        [(aurora, rds)] = run(ctx, conn, NAME, _PG_FIND).rows
        if not (aurora or rds):
            return None
        sql = _PG_AURORA if aurora else _PG_RDS
        rows = run(ctx, conn, NAME, sql, {"client": CLIENT_NAME}).rows
    else:
        [(found,)] = run(ctx, conn, NAME, _MY_FIND).rows
        if int(found) < 3:
            return None
        rows = run(ctx, conn, NAME, _MY).rows
    try:
        return parse_rows(rows)
    except BadMetadata as exc:
        raise DiscoveryError(f"{NAME}: {exc}") from None
