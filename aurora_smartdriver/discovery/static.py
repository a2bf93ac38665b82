"""Static: the DSN's hosts are the cluster, the first one the writer, the others readers.

For clusters whose membership never changes and whose roles are fixed by the operator (or
which the library must not query). There is no setting to name another writer: the DSN's host
order says it, as the setting `topology_source` documents. Nothing is asked of the database;
lag is unknown and rows never go stale.
"""

from __future__ import annotations

from typing import Any

from aurora_smartdriver.discovery._base import Answer, SourceContext
from aurora_smartdriver.discovery._values import instance_ids
from aurora_smartdriver.topology import Host, Role

__all__ = ["Static"]

NAME = "static"


class Static:
    """The `static` topology source. The connection given to `fetch` is not used."""

    name = NAME
    uses_connection = False

    def fetch(self, conn: Any, ctx: SourceContext) -> Answer:
        hosts = ctx.spec.hosts
        rows = tuple(
            Host(instance_id, host, port, Role.WRITER if index == 0 else Role.READER)
            for index, ((host, port), instance_id) in enumerate(
                zip(hosts, instance_ids(hosts), strict=True)
            )
        )
        return Answer(rows, ctx.now())
