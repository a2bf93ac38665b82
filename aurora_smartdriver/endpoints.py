"""What kind of endpoint a host name is, and how instance ids become host names.

Amazon RDS names its endpoints by a fixed scheme, so the name alone says whether it leads to a
cluster's writer, its readers, a custom endpoint, a proxy or one instance, and gives the
cluster's resource id and region, from which any instance's name follows:

    orders.cluster-abc123.us-east-1.rds.amazonaws.com     cluster (writer)
    orders.cluster-ro-abc123.us-east-1.rds.amazonaws.com  reader
    orders-2.abc123.us-east-1.rds.amazonaws.com           instance "orders-2"

The lab uses the same shapes under `aurora.test` (`lab.cluster-c0ffee12ab34.lab.aurora.test`),
so the library treats it exactly as it treats RDS.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

__all__ = [
    "DOMAIN_SUFFIXES",
    "EndpointKind",
    "InstanceHostPattern",
    "RdsHost",
    "classify",
    "derive_pattern",
    "parse_rds_host",
]


class EndpointKind(enum.Enum):
    """The kinds of host name the library tells apart."""

    RDS_CLUSTER = "rds-cluster"
    RDS_READER = "rds-reader"
    RDS_CUSTOM = "rds-custom"
    RDS_PROXY = "rds-proxy"
    RDS_INSTANCE = "rds-instance"
    RDS_GLOBAL_WRITER = "rds-global-writer"
    IP_ADDRESS = "ip-address"
    OTHER = "other"


DOMAIN_SUFFIXES: tuple[str, ...] = (
    "{region}.rds.amazonaws.com",  # commercial regions and GovCloud (us-gov-west-1)
    "rds.{region}.amazonaws.com.cn",  # China (cn-north-1, cn-northwest-1)
    "{region}.rds.amazonaws.com.cn",  # China, older names
    "rds.{region}.amazonaws.com",
    "{region}.rds.c2s.ic.gov",  # ISO partition
    "rds.{region}.c2s.ic.gov",
    "{region}.rds.sc2s.sgov.gov",  # ISO-B partition
    "rds.{region}.sc2s.sgov.gov",
    "{region}.aurora.test",  # the lab
)
"""The domains that follow `<name>.<resource id>.` in an RDS-style endpoint.

`{region}` marks where the region stands (`global` for a global database's writer endpoint,
`lab` in the lab). Add a form here to have its names classified like RDS names.
"""

_PREFIX_KINDS = {
    "cluster-": EndpointKind.RDS_CLUSTER,
    "cluster-ro-": EndpointKind.RDS_READER,
    "cluster-custom-": EndpointKind.RDS_CUSTOM,
    "proxy-": EndpointKind.RDS_PROXY,
    "global-": EndpointKind.RDS_GLOBAL_WRITER,
    "": EndpointKind.RDS_INSTANCE,
}
_DERIVABLE = frozenset(
    {
        EndpointKind.RDS_CLUSTER,
        EndpointKind.RDS_READER,
        EndpointKind.RDS_CUSTOM,
        EndpointKind.RDS_INSTANCE,
    }
)
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_REGION = r"(?P<region>[a-z0-9]+(?:-[a-z0-9]+)*)"


def _compile(suffix: str) -> re.Pattern[str]:
    domain = re.escape(suffix).replace(re.escape("{region}"), _REGION)
    return re.compile(
        # A proxy's additional endpoints have one more label: `<name>.endpoint.proxy-<id>...`.
        rf"(?P<name>{_LABEL}(?:\.endpoint)?)\."
        r"(?P<prefix>cluster-ro-|cluster-custom-|cluster-|proxy-|global-)?"
        rf"(?P<id>[a-z0-9]+)\.(?P<domain>{domain})"
    )


_PATTERNS = tuple(_compile(s) for s in DOMAIN_SUFFIXES)


@dataclass(frozen=True, slots=True)
class RdsHost:
    """The parts of an RDS-style endpoint name (lowercase, without a trailing dot).

    For `orders.cluster-ro-abc123.us-east-1.rds.amazonaws.com`: name `orders`, kind
    RDS_READER, resource id `abc123`, region `us-east-1`, domain
    `us-east-1.rds.amazonaws.com`.
    """

    name: str
    kind: EndpointKind
    resource_id: str
    region: str
    domain: str


def parse_rds_host(host: str) -> RdsHost | None:
    """Split an RDS-style endpoint name into its parts, or None if it is not one."""
    normalised = _normalise(host)
    for pattern in _PATTERNS:
        m = pattern.fullmatch(normalised)
        if m is None:
            continue
        kind = _PREFIX_KINDS[m["prefix"] or ""]
        if m["name"].endswith(".endpoint") and kind is not EndpointKind.RDS_PROXY:
            return None
        return RdsHost(
            name=m["name"], kind=kind, resource_id=m["id"], region=m["region"], domain=m["domain"]
        )
    return None


def classify(host: str) -> EndpointKind:
    """Say what kind of endpoint `host` is (case-insensitive, trailing dot allowed)."""
    if _is_ip(host):
        return EndpointKind.IP_ADDRESS
    parsed = parse_rds_host(host)
    return parsed.kind if parsed is not None else EndpointKind.OTHER


@dataclass(frozen=True, slots=True)
class InstanceHostPattern:
    """How an instance id becomes a host name: `template` with its one `?` replaced by the id.

    Build one with `parse("?.abc123.us-east-1.rds.amazonaws.com:5432")` or from its fields.
    `port` is None when the pattern does not name one (the cluster's port applies).
    """

    template: str
    port: int | None = None

    def __post_init__(self) -> None:
        template = _normalise(self.template)
        object.__setattr__(self, "template", template)
        shown = f"instance host pattern {self.template!r}"
        if template.count("?") != 1:
            raise ValueError(
                f"{shown} must contain exactly one '?' standing for the instance id, "
                "like '?.abc123.us-east-1.rds.amazonaws.com'"
            )
        if not all(re.fullmatch(r"[a-z0-9_?-]{1,63}", label) for label in template.split(".")):
            raise ValueError(
                f"{shown} is not a host name: use letters, digits, '-' and '.' around the '?'"
            )
        kind = classify(template.replace("?", "instance"))
        if kind not in (EndpointKind.RDS_INSTANCE, EndpointKind.OTHER):
            raise ValueError(
                f"{shown} makes {kind.value} endpoint names, not instance names; an RDS "
                "instance pattern has the form '?.<resource id>.<region>.rds.amazonaws.com'"
            )
        if self.port is not None and (
            isinstance(self.port, bool)
            or not isinstance(self.port, int)
            or not 0 < self.port < 65536
        ):
            raise ValueError(f"{shown}: port must be 1-65535, got {self.port!r}")

    @classmethod
    def parse(cls, text: str) -> InstanceHostPattern:
        """Read `template[:port]`; raise ValueError saying what is wrong."""
        template, sep, port_text = text.strip().rpartition(":")
        if not sep:
            return cls(text.strip())
        if not port_text.isdigit() or not port_text.isascii():
            raise ValueError(
                f"instance host pattern {text!r}: port must be a number, got {port_text!r}"
            )
        return cls(template, int(port_text))

    def host_for(self, instance_id: str) -> str:
        """The host name of the instance `instance_id`."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", instance_id):
            raise ValueError(
                f"instance id {instance_id!r} cannot stand in a host name: "
                "use letters, digits, '-' and '_'"
            )
        host = self.template.replace("?", instance_id)
        if any(len(label) > 63 for label in host.split(".")):
            raise ValueError(f"instance id {instance_id!r} makes a DNS label over 63 characters")
        return host

    def __str__(self) -> str:
        return self.template if self.port is None else f"{self.template}:{self.port}"


def derive_pattern(cluster_host: str) -> InstanceHostPattern | None:
    """The instance host pattern implied by an RDS cluster, reader, custom or instance name.

    None for names that imply none: IP addresses, proxies (their instances are hidden), global
    writer endpoints (they span regions) and names that are not RDS-style.
    """
    parsed = parse_rds_host(cluster_host)
    if parsed is None or parsed.kind not in _DERIVABLE:
        return None
    return InstanceHostPattern(f"?.{parsed.resource_id}.{parsed.domain}")


def _normalise(host: str) -> str:
    host = host.strip().lower()
    return host[:-1] if host.endswith(".") else host


def _is_ip(host: str) -> bool:
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
