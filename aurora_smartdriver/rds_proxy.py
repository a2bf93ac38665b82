"""RDS Proxy: whether a DSN leads to an RDS Proxy, and the topology it presents (pure functions).

An RDS Proxy endpoint hides the cluster behind it: a read/write endpoint (the proxy's default
endpoint `name.proxy-<id>.<region>.rds.amazonaws.com`, or an additional one
`name.endpoint.proxy-<id>...` created READ_WRITE) leads to whichever instance is the writer, a
read-only endpoint to a reader, and across a failover the proxy keeps its address and queues
new requests until the new writer accepts them. So behind a proxy the library asks the
database nothing about its topology, connects to no instance by its own name, and keeps the
connection on the endpoint the user gave: the topology is the proxy's endpoints themselves
(`rows`), fixed in roles, and a failover is the proxy's business, which the library waits out
by asking the read/write endpoint whether it leads to a writer again.

`plan` reads the settings `rds_proxy` and `rds_proxy_read_only_endpoint` with the DSN's hosts
into a `ProxyPlan` (None: not behind a proxy), refusing what contradicts a proxy.
"""

from __future__ import annotations

from dataclasses import dataclass

from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.endpoints import EndpointKind, classify, parse_rds_host
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.topology import Host, Role

__all__ = ["ProxyPlan", "endpoint_id", "plan", "rows"]


@dataclass(frozen=True, slots=True)
class ProxyPlan:
    """The proxy endpoints a connection uses: `writer` serves writer connections (None when
    the DSN names a read-only endpoint), `reader` serves reader connections (None: readers
    use the writer endpoint, as RDS Proxy's default endpoint serves both)."""

    writer: tuple[str, int] | None
    reader: tuple[str, int] | None

    def __post_init__(self) -> None:
        if self.writer is None and self.reader is None:
            raise ValueError("a proxy plan needs at least one endpoint")

    def describe(self) -> str:
        """For errors and logs: `orders-proxy.proxy-abc... (read/write), ...`."""
        parts = []
        if self.writer is not None:
            parts.append(f"{self.writer[0]} (read/write)")
        if self.reader is not None:
            parts.append(f"{self.reader[0]} (read-only)")
        return ", ".join(parts)


def endpoint_id(host: str) -> str:
    """The id a proxy endpoint stands under in the topology, metrics and events: its name
    (`orders-proxy`, `reports` for `reports.endpoint.proxy-...`), else the first label (the
    whole address for an IP address)."""
    parsed = parse_rds_host(host)
    if parsed is not None and parsed.kind is EndpointKind.RDS_PROXY:
        return parsed.name.removesuffix(".endpoint")
    name = host.rstrip(".").lower()
    return name if classify(name) is EndpointKind.IP_ADDRESS else name.split(".", 1)[0]


def plan(spec: ConnectionSpec) -> ProxyPlan | None:
    """The proxy endpoints `spec` uses, or None when it does not go through an RDS Proxy.

    `rds_proxy=auto` takes the DSN's host for a read/write proxy endpoint when its name is an
    RDS Proxy name (a new additional endpoint is READ_WRITE unless created READ_ONLY; say
    `rds_proxy=read_only` for one that is). Raises `ConfigError` for settings a proxy makes
    meaningless or contradictory.
    """
    settings = spec.settings
    mode = settings.rds_proxy
    host, port = spec.hosts[0]
    extra = settings.rds_proxy_read_only_endpoint
    if mode == "off" or (mode == "auto" and classify(host) is not EndpointKind.RDS_PROXY):
        if extra is not None:
            raise ConfigError(
                f"rds_proxy_read_only_endpoint is only used behind an RDS Proxy, and {host} "
                + (
                    "is not treated as one (rds_proxy=off)" if mode == "off" else "is no proxy name"
                ),
                parameter="rds_proxy_read_only_endpoint",
                value=extra,
                suggestion="set rds_proxy=read_write if the DSN's host is a proxy endpoint, "
                "or remove rds_proxy_read_only_endpoint",
            )
        return None
    _check_fits(spec)
    if mode == "read_only":
        if extra is not None:
            raise ConfigError(
                f"rds_proxy=read_only already makes {host} the read-only endpoint",
                parameter="rds_proxy_read_only_endpoint",
                value=extra,
                suggestion="give the read/write endpoint as the DSN's host and this one as "
                "rds_proxy_read_only_endpoint, or remove it",
            )
        return ProxyPlan(writer=None, reader=(host, port))
    reader = None if extra is None else (extra, port)
    if reader is not None and reader[0].rstrip(".").lower() == host.rstrip(".").lower():
        raise ConfigError(
            f"rds_proxy_read_only_endpoint names the DSN's own host {host}",
            parameter="rds_proxy_read_only_endpoint",
            value=extra,
            suggestion="name the proxy's read-only endpoint, or remove the parameter",
        )
    return ProxyPlan(writer=(host, port), reader=reader)


def _check_fits(spec: ConnectionSpec) -> None:
    """Refuse what cannot work behind a proxy: several hosts, another topology source, a
    custom endpoint."""
    settings = spec.settings
    host = spec.hosts[0][0]
    if len(spec.hosts) > 1:
        raise ConfigError(
            f"behind an RDS Proxy the DSN names one host (the proxy endpoint {host}), "
            f"not {len(spec.hosts)}",
            parameter="rds_proxy",
            value=settings.rds_proxy,
            suggestion="give the read-only proxy endpoint as rds_proxy_read_only_endpoint",
        )
    if settings.topology_source != "auto":
        raise ConfigError(
            f"topology_source={settings.topology_source} cannot see through the RDS Proxy "
            f"{host}: the proxy hides the instances and fails over by itself",
            parameter="topology_source",
            value=settings.topology_source,
            suggestion="remove topology_source, or set rds_proxy=off to connect to "
            "the instances yourself",
        )
    if settings.custom_endpoint is not None:
        raise ConfigError(
            f"custom_endpoint {settings.custom_endpoint} cannot be used behind the RDS Proxy "
            f"{host}: the proxy chooses the instance",
            parameter="custom_endpoint",
            value=settings.custom_endpoint,
            suggestion="remove custom_endpoint",
        )


def rows(proxy: ProxyPlan) -> tuple[Host, ...]:
    """The topology a proxy presents: its read/write endpoint as the writer, its read-only
    endpoint as the one reader. Roles never change: the proxy moves, not its endpoints."""
    endpoints = [(e, r) for e, r in ((proxy.writer, Role.WRITER), (proxy.reader, Role.READER))]
    present = [(e, r) for e, r in endpoints if e is not None]
    ids = [endpoint_id(e[0]) for e, _ in present]
    if len(set(ids)) < len(ids):  # two endpoints of one name: tell them apart by host
        ids = [e[0].rstrip(".").lower() for e, _ in present]
    return tuple(
        Host(iid, host, port, role) for iid, ((host, port), role) in zip(ids, present, strict=True)
    )
