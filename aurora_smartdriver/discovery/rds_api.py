"""RDS API: the cluster's members and writer from `describe_db_clusters`, through boto3.

A fallback for when no instance answers SQL (all unreachable, or credentials refused): the
control plane still knows the members (`DBClusterMembers`: `DBInstanceIdentifier`,
`IsClusterWriter`). Host names come from the instance host pattern, or, without one, from
`describe_db_instances` endpoints (instances still being created have none and are left out).
The region is the setting `region`, else the one in the DSN's RDS endpoint; the API's URL
is the region's unless `rds_endpoint_url` names another (a VPC endpoint, the lab's
stand-in); the DB cluster identifier is the setting `cluster_id`, else the name of the DSN's
cluster or reader endpoint. AWS credentials are boto3's usual chain. Needs boto3 (the `aws`
extra); lag is unknown. The connection given to `fetch` is not used and may be None.

The client waits at most `connect_timeout` to connect and to read, and tries each call at most
`MAX_ATTEMPTS` times (boto3's defaults, 60 s each and more retries, would stall the monitor
that everyone waits on in a failover). The members' roles are the control plane's word, not
the instances': the monitor confirms the writer by asking it (`role_of`).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from aurora_smartdriver.discovery._base import Answer, DiscoveryError, SourceContext, Unreachable
from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.endpoints import EndpointKind, parse_rds_host
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.topology import Host, Role

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient

__all__ = ["MAX_ATTEMPTS", "RdsApi", "client_config", "cluster_identifier", "region"]

NAME = "rds-api"
MAX_ATTEMPTS = 2
"""Attempts per RDS API call, the first one included (botocore's ``standard`` retry mode)."""
_CLUSTER_KINDS = (EndpointKind.RDS_CLUSTER, EndpointKind.RDS_READER)


class RdsApi:
    """The `rds-api` topology source; keeps one boto3 RDS client per region."""

    name = NAME
    uses_connection = False

    def __init__(self) -> None:
        self._clients: dict[tuple[str, str | None], RDSClient] = {}
        self._lock = threading.Lock()

    def fetch(self, conn: Any, ctx: SourceContext) -> Answer:
        where = region(ctx.spec)
        cluster = cluster_identifier(ctx.spec)
        client = self._client(where, ctx.settings.connect_timeout, ctx.settings.rds_endpoint_url)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            described = client.describe_db_clusters(DBClusterIdentifier=cluster)["DBClusters"]
            if not described:
                raise DiscoveryError(f"{NAME}: no DB cluster {cluster!r} in {where}")
            members = described[0].get("DBClusterMembers", [])
            endpoints = None if ctx.pattern is not None else _endpoints(client, cluster)
        except BotoCoreError as exc:  # no answer: unreachable, timed out, no credentials
            raise Unreachable(
                f"{NAME}: asking RDS in {where} about DB cluster {cluster!r} failed: {exc}"
            ) from exc
        except ClientError as exc:  # an answer, and a refusal (access, throttling, ...)
            raise DiscoveryError(
                f"{NAME}: asking RDS in {where} about DB cluster {cluster!r} failed: {exc}"
            ) from exc
        rows = []
        for member in members:
            instance_id = member.get("DBInstanceIdentifier")
            if not instance_id:
                raise DiscoveryError(f"{NAME}: a member of {cluster!r} has no instance identifier")
            if endpoints is None:
                host, port = ctx.endpoint_for(NAME, instance_id)
            elif instance_id in endpoints:
                host, port = endpoints[instance_id]
            else:
                continue  # no endpoint yet: being created
            role = Role.WRITER if member.get("IsClusterWriter") else Role.READER
            rows.append(Host(instance_id, host, port, role))
        return Answer(tuple(rows), ctx.now())

    def _client(self, where: str, timeout: float, url: str | None = None) -> RDSClient:
        with self._lock:
            client = self._clients.get((where, url))
        if client is not None:
            return client
        try:
            import boto3
        except ImportError as exc:
            raise DiscoveryError(
                f"{NAME} needs boto3, which cannot be imported ({exc}); install it with "
                "`pip install 'aurora-smartdriver[aws]'`"
            ) from exc
        # A session of its own: boto3's default session is not safe to share between threads.
        client = boto3.session.Session().client(
            "rds", region_name=where, endpoint_url=url, config=client_config(timeout)
        )
        with self._lock:
            return self._clients.setdefault((where, url), client)


def client_config(timeout: float) -> Any:
    """The botocore `Config` of the source's client: `timeout` seconds to connect and to read,
    at most `MAX_ATTEMPTS` attempts per call."""
    from botocore.config import Config

    return Config(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )


def region(spec: ConnectionSpec) -> str:
    """The AWS region to ask: the setting `region`, else the DSN's first host's."""
    if spec.settings.region is not None:
        return spec.settings.region
    parsed = parse_rds_host(spec.hosts[0][0])
    if parsed is None:
        raise ConfigError(
            f"topology source {NAME} needs an AWS region, and {spec.hosts[0][0]!r} is not an RDS "
            "endpoint to take it from",
            parameter="region",
            suggestion="set region, e.g. region=us-east-1",
        )
    return parsed.region


def cluster_identifier(spec: ConnectionSpec) -> str:
    """The DB cluster identifier to ask about: the setting `cluster_id`, else the name of the
    DSN's first host when it is a cluster or reader endpoint."""
    if spec.settings.cluster_id is not None:
        return spec.settings.cluster_id
    parsed = parse_rds_host(spec.hosts[0][0])
    if parsed is None or parsed.kind not in _CLUSTER_KINDS:
        raise ConfigError(
            f"topology source {NAME} needs the DB cluster identifier, and {spec.hosts[0][0]!r} "
            "is not a cluster or reader endpoint to take it from",
            parameter="cluster_id",
            suggestion="set cluster_id to the DB cluster identifier",
        )
    return parsed.name


def _endpoints(client: RDSClient, cluster: str) -> dict[str, tuple[str, int]]:
    """The endpoint of each instance of `cluster` that has one, by instance identifier."""
    found = {}
    pages = client.get_paginator("describe_db_instances").paginate(
        Filters=[{"Name": "db-cluster-id", "Values": [cluster]}]
    )
    for page in pages:
        for instance in page["DBInstances"]:
            endpoint = instance.get("Endpoint")
            if endpoint and "Address" in endpoint and "Port" in endpoint:
                found[instance["DBInstanceIdentifier"]] = (endpoint["Address"], endpoint["Port"])
    return found
