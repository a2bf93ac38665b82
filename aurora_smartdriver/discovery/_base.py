"""What every topology source shares: its protocol, its context and its answer."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aurora_smartdriver.drivers import DriverAdapter, adapter_for
from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.endpoints import InstanceHostPattern, derive_pattern
from aurora_smartdriver.errors import AuroraSmartDriverError, ConfigError
from aurora_smartdriver.settings import Settings
from aurora_smartdriver.topology import Host, Role

__all__ = [
    "Answer",
    "Connector",
    "DiscoveryError",
    "Source",
    "SourceContext",
    "Unreachable",
    "instance_pattern",
]

Connector = Callable[[str, int, float], Any]
"""`connect(host, port, timeout)`: a new driver connection to one instance, within `timeout`."""


class DiscoveryError(AuroraSmartDriverError):
    """A topology source got an answer it cannot understand, or cannot work with this cluster.

    Driver errors that mean the connection is gone are not wrapped: they reach the caller as
    the driver raised them, so it can tell a dead instance from a wrong answer.
    """


class Unreachable(DiscoveryError):
    """No instance a source asks answered it (each one's failure is in the message).

    Not a wrong answer, so the monitor counts it as an error and not as a rejected answer.
    """


@dataclass(frozen=True, slots=True)
class Answer:
    """What one topology source said, through one connection.

    `rows` go to `topology.accept` with `now`, the clock their `last_update` is on: the
    database's own clock, read in the same query, for the sources whose rows carry database
    timestamps, so that clock skew between client and server is not taken for staleness (the
    context's clock otherwise). `instance_id` and `role` describe the instance that answered,
    as it describes itself, when the source learns it (None and UNKNOWN otherwise).
    `self_reported` is True when every row's role is what that instance said of itself
    (probe asks each host; a reader that did not answer a hurried probe keeps its last row),
    so the writer row needs no further check.
    """

    rows: tuple[Host, ...]
    now: float
    instance_id: str | None = None
    role: Role = Role.UNKNOWN
    self_reported: bool = False

    @property
    def confirmed_writer(self) -> str | None:
        """The instance id of the writer this answer has from the writer's own word, or None.

        A writer is confirmed by what a node says of itself, never by metadata alone: the
        instance that answered said it is the writer, or (self-reported rows) exactly one
        instance said so of itself.
        """
        if self.role is Role.WRITER and self.instance_id is not None:
            return self.instance_id
        if self.self_reported:
            writers = [h.instance_id for h in self.rows if h.role is Role.WRITER]
            if len(writers) == 1:
                return writers[0]
        return None


class Source(Protocol):
    """A way of learning a cluster's topology; one module of this package per kind."""

    @property
    def name(self) -> str:
        """The source's name as the setting `topology_source` spells it."""
        ...

    @property
    def uses_connection(self) -> bool:
        """Whether `fetch` asks through the connection it is given (and its answer says which
        instance answered). False for the sources that ask elsewhere or nothing (probe,
        static, rds-api): the monitor then keeps no connection of its own for them, and
        confirms their writer by asking it for its role (`role_of`) unless the answer's rows
        are self-reported."""
        ...

    def fetch(self, conn: Any, ctx: SourceContext) -> Answer:
        """Ask the cluster through `conn` (a connection made by `ctx.adapter`) for its members.

        Raises `DiscoveryError` for an answer it cannot read, `ConfigError` when a setting it
        needs is missing, and the driver's own errors when the connection fails.
        """
        ...


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a source needs besides the connection: the DSN, its settings and how to connect.

    `pattern` turns instance ids into host names (see `instance_pattern`); `connect` opens a
    connection to one instance, for the sources that ask every host themselves (probe); `now`
    is the clock for rows that carry no database time. Build one with `for_spec`.
    """

    spec: ConnectionSpec
    adapter: DriverAdapter
    pattern: InstanceHostPattern | None = None
    connect: Connector | None = None
    now: Callable[[], float] = field(default=time.time, repr=False)

    @classmethod
    def for_spec(
        cls,
        spec: ConnectionSpec,
        *,
        connect: Connector | None = None,
        now: Callable[[], float] = time.time,
        adapter: DriverAdapter | None = None,
    ) -> SourceContext:
        """The context for `spec`: its engine's adapter and its instance host pattern."""
        return cls(
            spec=spec,
            adapter=adapter if adapter is not None else adapter_for(spec.engine),
            pattern=instance_pattern(spec),
            connect=connect,
            now=now,
        )

    @property
    def settings(self) -> Settings:
        """The library's settings for this cluster (`spec.settings`)."""
        return self.spec.settings

    @property
    def port(self) -> int:
        """The port instances listen on unless the pattern names one: the DSN's first host's."""
        return self.spec.hosts[0][1]

    def endpoint_for(self, source: str, instance_id: str) -> tuple[str, int]:
        """The `(host, port)` of the instance `instance_id`, through the instance host pattern.

        `source` names the asking source in errors.
        """
        if self.pattern is None:
            raise ConfigError(
                f"topology source {source} reports instance ids, and no instance host pattern "
                f"turns them into host names: {self.spec.hosts[0][0]!r} is not an RDS endpoint "
                "to derive one from",
                parameter="instance_host_pattern",
                suggestion="set instance_host_pattern, e.g. "
                "instance_host_pattern=?.abc123.us-east-1.rds.amazonaws.com",
            )
        try:
            host = self.pattern.host_for(instance_id)
        except ValueError as exc:
            raise DiscoveryError(f"{source}: {exc}") from None
        return host, self.pattern.port if self.pattern.port is not None else self.port


def instance_pattern(spec: ConnectionSpec) -> InstanceHostPattern | None:
    """The pattern from the setting `instance_host_pattern`, else derived from the first host.

    None when neither gives one (an IP address or a name that is not an RDS endpoint).
    """
    text = spec.settings.instance_host_pattern
    if text is None:
        return derive_pattern(spec.hosts[0][0])
    try:
        return InstanceHostPattern.parse(text)
    except ValueError as exc:
        raise ConfigError(str(exc), parameter="instance_host_pattern", value=text) from None
