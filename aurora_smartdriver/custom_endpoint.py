"""Aurora custom endpoints: which instances a custom endpoint leads to (pure functions).

A custom endpoint (`name.cluster-custom-<id>.<region>.rds.amazonaws.com`) is a named subset of
a cluster's instances. RDS describes it in `DescribeDBClusterEndpoints`: `CustomEndpointType`
(`READER`: replicas only, never the writer; `ANY`: replicas and the writer; `WRITER` is accepted
by the API too) and either `StaticMembers` (exactly those instances) or `ExcludedMembers`
(every instance of the cluster but those, including instances added later). RDS ignores
`ExcludedMembers` when `StaticMembers` is not empty.

`CustomEndpoint` is that answer as a value; `eligible` intersects it with the monitor's
topology (the instances that exist and their current roles); `restrict` turns it into a
routing `Request` that avoids every other instance. The I/O (reading the API on an interval)
lives in `aurora_smartdriver._custom_watch`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.endpoints import EndpointKind, parse_rds_host
from aurora_smartdriver.routing import Decision, HostStats, NoHost, Request, choose
from aurora_smartdriver.settings import CustomEndpointFallback
from aurora_smartdriver.topology import Topology

__all__ = [
    "CustomEndpoint",
    "CustomKind",
    "cluster_endpoint",
    "eligible",
    "endpoint_identifier",
    "from_api",
    "members",
    "restrict",
    "route",
]

CustomKind = Literal["READER", "ANY", "WRITER"]
_KINDS: tuple[str, ...] = get_args(CustomKind)


@dataclass(frozen=True, slots=True)
class CustomEndpoint:
    """One custom endpoint as RDS describes it (identifiers lowercase, as RDS stores them).

    `static_members` non-empty: exactly those instances. Otherwise every instance of the
    cluster not in `excluded_members`, whenever it was added.
    """

    identifier: str
    cluster_id: str
    kind: CustomKind
    static_members: frozenset[str] = frozenset()
    excluded_members: frozenset[str] = frozenset()
    host: str = ""
    status: str = "available"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(
                f"custom endpoint {self.identifier!r}: unknown CustomEndpointType "
                f"{self.kind!r}; expected one of {', '.join(_KINDS)}"
            )
        for name in ("static_members", "excluded_members"):
            value = getattr(self, name)
            if not isinstance(value, frozenset):
                object.__setattr__(self, name, frozenset(value))

    def describe(self) -> str:
        """A short account for errors and logs: `analytics (READER; static: r1, r2)`."""
        if self.static_members:
            shown = "static: " + ", ".join(sorted(self.static_members))
        elif self.excluded_members:
            shown = "all but " + ", ".join(sorted(self.excluded_members))
        else:
            shown = "all instances"
        return f"{self.identifier} ({self.kind}; {shown})"


def from_api(item: Mapping[str, Any]) -> CustomEndpoint:
    """A `CustomEndpoint` from one entry of `DescribeDBClusterEndpoints`' `DBClusterEndpoints`.

    Raises ValueError naming the field when the entry is not a custom endpoint's.
    """
    identifier = item.get("DBClusterEndpointIdentifier")
    if not isinstance(identifier, str) or not identifier:
        raise ValueError("an endpoint in the RDS answer has no DBClusterEndpointIdentifier")
    if item.get("EndpointType") != "CUSTOM":
        raise ValueError(
            f"endpoint {identifier!r} is of EndpointType {item.get('EndpointType')!r}, "
            "not CUSTOM: name a custom endpoint"
        )
    kind = item.get("CustomEndpointType")
    if kind not in _KINDS:
        raise ValueError(
            f"custom endpoint {identifier!r} has CustomEndpointType {kind!r}; "
            f"expected one of {', '.join(_KINDS)}"
        )
    return CustomEndpoint(
        identifier=identifier.lower(),
        cluster_id=str(item.get("DBClusterIdentifier") or "").lower(),
        kind=kind,
        static_members=frozenset(_ids(item, "StaticMembers")),
        excluded_members=frozenset(_ids(item, "ExcludedMembers")),
        host=str(item.get("Endpoint") or "").lower(),
        status=str(item.get("Status") or ""),
    )


def _ids(item: Mapping[str, Any], field: str) -> list[str]:
    value = item.get(field) or []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field} of custom endpoint {item.get('DBClusterEndpointIdentifier')!r}")
    return [v.lower() for v in value]


def members(endpoint: CustomEndpoint, instance_ids: Iterable[str]) -> frozenset[str]:
    """The instances of `instance_ids` (the cluster's, as the topology names them) that belong
    to `endpoint` by its member lists alone, whatever their role.

    Instance ids are compared case-insensitively (RDS stores them lowercase); the ids returned
    are spelled as given.
    """
    ids = list(instance_ids)
    if endpoint.static_members:
        return frozenset(i for i in ids if i.lower() in endpoint.static_members)
    return frozenset(i for i in ids if i.lower() not in endpoint.excluded_members)


def eligible(endpoint: CustomEndpoint, topology: Topology) -> frozenset[str]:
    """The instances of `topology` that a connection through `endpoint` may reach now:
    its members, less the writer for a READER endpoint, only the writer for a WRITER one."""
    found = members(endpoint, (h.instance_id for h in topology.hosts))
    writer = topology.writer
    if endpoint.kind == "READER" and writer is not None:
        return found - {writer.instance_id}
    if endpoint.kind == "WRITER":
        return found & ({writer.instance_id} if writer is not None else frozenset())
    return found


def restrict(request: Request, endpoint: CustomEndpoint, topology: Topology) -> Request:
    """`request` narrowed to `endpoint`: every instance of `topology` that is not eligible
    is excluded (so a reader fallback reaches the writer only when it is eligible)."""
    allowed = eligible(endpoint, topology)
    outside = [h.instance_id for h in topology.hosts if h.instance_id not in allowed]
    return request.excluding(*outside) if outside else request


def cluster_endpoint(endpoint: CustomEndpoint, custom_host: str) -> str | None:
    """The cluster (writer) endpoint of `endpoint`'s cluster, named like `custom_host` (an RDS
    custom endpoint name); None when `custom_host` is not one or the cluster is unnamed."""
    parsed = parse_rds_host(custom_host)
    if parsed is None or parsed.kind is not EndpointKind.RDS_CUSTOM or not endpoint.cluster_id:
        return None
    return f"{endpoint.cluster_id}.cluster-{parsed.resource_id}.{parsed.domain}"


def endpoint_identifier(spec: ConnectionSpec) -> str | None:
    """The custom endpoint a connection routes through: the setting `custom_endpoint`, else the
    name of the DSN's first host when it is a custom endpoint name, else None."""
    if spec.settings.custom_endpoint is not None:
        return spec.settings.custom_endpoint
    parsed = parse_rds_host(spec.hosts[0][0])
    if parsed is not None and parsed.kind is EndpointKind.RDS_CUSTOM:
        return parsed.name
    return None


def route(
    topology: Topology,
    request: Request,
    stats: HostStats,
    endpoint: CustomEndpoint | None,
    *,
    identifier: str,
    problem: str | None,
    fallback: CustomEndpointFallback,
    turn: int,
    rng: random.Random,
) -> tuple[Decision | NoHost, bool]:
    """The host that serves `request` through the custom endpoint, and whether the decision
    left the endpoint (`fallback="cluster"` and no member could serve it).

    `endpoint` None means its members are unknown (`problem` says why): with
    `fallback="fail"` that is `NoHost`, never a guess. A `NoHost` reason names the endpoint.
    """
    if endpoint is None:
        why = problem or "its members have not been read from the RDS API yet"
        if fallback == "cluster":
            widened = choose(topology, request, stats, turn=turn, rng=rng)
            if isinstance(widened, Decision):
                return _widened(widened, f"custom endpoint {identifier}: {why}"), True
            return widened, False
        return NoHost(f"custom endpoint {identifier}: {why}"), False
    decision = choose(topology, restrict(request, endpoint, topology), stats, turn=turn, rng=rng)
    if isinstance(decision, Decision):
        return decision, False
    reason = f"no member of custom endpoint {endpoint.describe()} qualifies: {decision.reason}"
    if fallback == "cluster":
        widened = choose(topology, request, stats, turn=turn, rng=rng)
        if isinstance(widened, Decision):
            return _widened(widened, reason), True
        return NoHost(f"{reason}; nor does any other instance: {widened.reason}"), False
    return NoHost(reason + " (custom_endpoint_fallback is fail)"), False


def _widened(decision: Decision, why: str) -> Decision:
    return Decision(decision.host, f"{decision.reason}, outside the endpoint: {why}", True)
