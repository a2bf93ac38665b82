"""RDS Proxy: the proxy's endpoints are the topology; nothing is asked of the database.

Behind an RDS Proxy the instances are hidden and the proxy fails over by itself, so the rows
are its endpoints with fixed roles (`aurora_smartdriver.rds_proxy.rows`): the read/write
endpoint as the writer, the read-only endpoint as a reader. The monitor still confirms, in
fast mode, that the read/write endpoint leads to a writer again, by asking a node its role
through it (`discovery.role_of`): that is how a failover behind the proxy is waited out.
"""

from __future__ import annotations

from typing import Any

from aurora_smartdriver.discovery._base import Answer, SourceContext
from aurora_smartdriver.rds_proxy import ProxyPlan, rows

__all__ = ["RdsProxy"]

NAME = "rds-proxy"


class RdsProxy:
    """The `rds-proxy` topology source, chosen by the monitor when the DSN leads to a proxy
    (the setting `rds_proxy`), never by `topology_source`. The connection is not used."""

    name = NAME
    uses_connection = False

    def __init__(self, proxy: ProxyPlan) -> None:
        self._rows = rows(proxy)

    def fetch(self, conn: Any, ctx: SourceContext) -> Answer:
        return Answer(self._rows, ctx.now())
