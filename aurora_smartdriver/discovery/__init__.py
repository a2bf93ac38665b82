"""Topology sources: how the library learns a cluster's members, roles and lag.

One module per kind of cluster, each turning one connection's answer into `topology.Host` rows
(an `Answer`); deciding whether the rows form a believable topology is `topology.accept`'s
job, not theirs. `source_for` gives the source the setting `topology_source` names; for
`auto`, `detect` looks at the first connection and picks one:

- PostgreSQL: Aurora (`rds.extensions` lists `aurora_stat_utils` and `aurora_replica_status()`
  answers) → aurora-postgresql; `rds_tools.show_topology` exists → rds-multi-az; else probe.
- MySQL: the variable `aurora_version` exists, or the `replica_host_status` table of the
  setting `replica_status_schema` does → aurora-mysql; `mysql.rds_topology` exists →
  rds-multi-az; else probe.

The checks only read catalogs and metadata, so none raises on a server that lacks what is
looked for.
"""

from __future__ import annotations

import logging
from typing import Any

from aurora_smartdriver.discovery import aurora_mysql, aurora_postgresql, rds_multi_az
from aurora_smartdriver.discovery._base import (
    Answer,
    Connector,
    DiscoveryError,
    Source,
    SourceContext,
    Unreachable,
    instance_pattern,
)
from aurora_smartdriver.discovery.aurora_global import AuroraGlobal
from aurora_smartdriver.discovery.aurora_mysql import AuroraMySQL
from aurora_smartdriver.discovery.aurora_postgresql import AuroraPostgreSQL
from aurora_smartdriver.discovery.probe import Probe, role_of
from aurora_smartdriver.discovery.rds_api import RdsApi
from aurora_smartdriver.discovery.rds_multi_az import RdsMultiAz
from aurora_smartdriver.discovery.static import Static
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.settings import Engine

__all__ = [
    "SOURCE_NAMES",
    "Answer",
    "Connector",
    "DiscoveryError",
    "Source",
    "SourceContext",
    "Unreachable",
    "detect",
    "instance_pattern",
    "role_of",
    "source_for",
]

_log = logging.getLogger("aurora_smartdriver.discovery")

_SOURCES: dict[str, type[Source]] = {
    AuroraPostgreSQL.name: AuroraPostgreSQL,
    AuroraMySQL.name: AuroraMySQL,
    RdsMultiAz.name: RdsMultiAz,
    Probe.name: Probe,
    RdsApi.name: RdsApi,
    Static.name: Static,
    AuroraGlobal.name: AuroraGlobal,
}
SOURCE_NAMES: tuple[str, ...] = tuple(_SOURCES)
"""Every source name `source_for` accepts (the setting's values but `auto`)."""

_ENGINE_ONLY = {
    AuroraPostgreSQL.name: "postgresql",
    AuroraMySQL.name: "mysql",
}


def source_for(name: str, engine: Engine | None = None) -> Source:
    """A new source of the kind `name` (a value of the setting `topology_source` but `auto`).

    With `engine`, a source of the other engine (aurora-mysql for PostgreSQL) is refused.
    """
    factory = _SOURCES.get(name)
    if factory is None:
        hint = "use detect() for auto" if name == "auto" else f"use one of {list(_SOURCES)}"
        raise ConfigError(
            f"unknown topology source {name!r}",
            parameter="topology_source",
            value=name,
            suggestion=hint,
        )
    wanted = _ENGINE_ONLY.get(name)
    if engine is not None and wanted is not None and wanted != engine:
        raise ConfigError(
            f"topology source {name} does not fit a {engine} cluster",
            parameter="topology_source",
            value=name,
            suggestion=f"use aurora-{engine} or auto",
        )
    return factory()


def detect(conn: Any, engine: Engine, ctx: SourceContext) -> Source:
    """The source that fits the cluster `conn` leads to (see the module's docstring).

    `conn` is a connection to any instance, made by `ctx.adapter`; only lost-connection
    errors escape. The choice is logged (logger `aurora_smartdriver.discovery`).
    """
    if engine != ctx.spec.engine:
        raise ValueError(f"detect() for {engine}, but the context is for {ctx.spec.engine}")
    aurora = aurora_postgresql if engine == "postgresql" else aurora_mysql
    if (
        aurora.applies(conn, ctx)
        and engine == "postgresql"
        and ctx.settings.global_instance_host_patterns
    ):
        chosen, why = source_for(AuroraGlobal.name), "Aurora metadata and global host patterns"
    elif aurora.applies(conn, ctx):
        chosen, why = source_for(aurora.NAME), "Aurora metadata found"
    elif rds_multi_az.applies(conn, ctx):
        chosen, why = source_for(rds_multi_az.NAME), "RDS Multi-AZ topology found"
    else:
        chosen, why = source_for(Probe.name), "no topology metadata: probing the DSN's hosts"
    _log.info("topology source for %s: %s (%s)", _cluster(ctx), chosen.name, why)
    return chosen


def _cluster(ctx: SourceContext) -> str:
    host, port = ctx.spec.hosts[0]
    return f"{host}:{port}"
