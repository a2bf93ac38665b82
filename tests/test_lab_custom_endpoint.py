"""Custom endpoints against the lab, both engines: reads through a custom endpoint's DSN land
only on its members (each read asks the node who it is), follow a change of members, and
fail clearly when no member can serve; the lab's DNS and RDS API serve the endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import dns.resolver
import pytest

import aurora_smartdriver as asd
import aurora_smartdriver.aio as aio
from aurora_smartdriver import NoHostAvailable
from aurora_smartdriver.aio.connection import PsycopgAsyncConnection
from aurora_smartdriver.lab import Lab
from tests import plain


@pytest.fixture(autouse=True)
def _aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lab's RDS API takes any credentials; boto3 needs some to sign its requests with.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "lab")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "lab")


def _identity_sql(lab: Lab) -> str:
    if lab.state().engine == "postgresql":
        return "SELECT aurora_db_instance_identifier()"
    return "SELECT aurora_lab.aurora_server_id()"


def _dsn(lab: Lab, name: str) -> str:
    # A cluster of its own per test (its settings are its own), members re-read every 0.2 s.
    return (
        lab.custom_endpoint_dsn(name)
        + f"&cluster_id={uuid.uuid4().hex}&custom_endpoint_refresh_interval=0.2"
    )


def _reads(cluster: asd.Cluster, sql: str, count: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        with cluster.reader() as conn:
            cur = conn.cursor()
            cur.execute(sql)
            seen[str(cur.fetchone()[0])] += 1
    return seen


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)


@pytest.fixture
def cluster_for() -> Iterator[Callable[[str], asd.Cluster]]:
    made: list[asd.Cluster] = []

    def make(dsn: str, **kwargs: Any) -> asd.Cluster:
        cluster = asd.Cluster(dsn, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


def test_a_thousand_reads_through_a_custom_endpoint_land_only_on_its_members(
    aurora_lab: Lab, cluster_for: Callable[..., asd.Cluster]
) -> None:
    lab = aurora_lab
    first, second = (n.id for n in lab.readers[:2])
    host = lab.add_custom_endpoint("analytics", members=[first])
    assert plain.resolve(lab, host) == [lab.node(first).address]
    sql = _identity_sql(lab)
    cluster = cluster_for(_dsn(lab, "analytics"), pool_max_size=4)

    seen = _reads(cluster, sql, 1000)
    assert seen == Counter({first: 1000})

    lab.modify_custom_endpoint("analytics", members=[second])
    assert plain.resolve(lab, host) == [lab.node(second).address]
    _until(lambda: _reads(cluster, sql, 1) == Counter({second: 1}), "reads move to the new member")
    assert _reads(cluster, sql, 200) == Counter({second: 200})


def test_an_exclusion_list_endpoint_of_kind_any_reaches_the_writer_and_not_the_excluded(
    aurora_lab: Lab, cluster_for: Callable[..., asd.Cluster]
) -> None:
    lab = aurora_lab
    left_out = lab.readers[0].id
    lab.add_custom_endpoint("batch", kind="any", excluded=[left_out])
    expected = {n.id for n in lab.nodes} - {left_out}
    assert set(lab.custom_endpoint_members("batch")) == expected
    cluster = cluster_for(_dsn(lab, "batch"), role="any", reader_strategy="round_robin")
    seen: Counter[str] = Counter()
    sql = _identity_sql(lab)
    for _ in range(60):
        with cluster.connection() as conn:
            cur = conn.cursor()
            cur.execute(sql)
            seen[str(cur.fetchone()[0])] += 1
    assert set(seen) == expected  # the writer too: an ANY endpoint may lead to it


def test_a_reader_endpoint_with_no_reader_member_refuses_reads_and_names_the_endpoint(
    aurora_lab: Lab, cluster_for: Callable[..., asd.Cluster]
) -> None:
    lab = aurora_lab
    host = lab.add_custom_endpoint("writeronly", members=[lab.writer.id])  # READER: no writer
    assert lab.custom_endpoint_members("writeronly") == []
    with pytest.raises(dns.resolver.NoAnswer):  # no member up: the name has no address
        plain.resolve(lab, host)
    # The monitor learns the topology through the cluster the RDS API names.
    cluster = cluster_for(_dsn(lab, "writeronly"))
    with (
        pytest.raises(NoHostAvailable, match="no member of custom endpoint writeronly"),
        cluster.reader(),
    ):
        pass
    with cluster.writer() as conn:  # writes have one place to go, the custom endpoint or not
        cur = conn.cursor()
        cur.execute(_identity_sql(lab))
        assert str(cur.fetchone()[0]) == lab.writer.id
    widened = cluster_for(_dsn(lab, "writeronly"), custom_endpoint_fallback="cluster")
    with widened.reader() as conn:
        cur = conn.cursor()
        cur.execute(_identity_sql(lab))
        assert str(cur.fetchone()[0]) in {n.id for n in lab.readers}


def test_the_lab_rds_api_serves_custom_endpoints_until_restore(aurora_lab: Lab) -> None:
    lab = aurora_lab
    reader = lab.readers[0].id
    lab.add_custom_endpoint("reporting", members=[reader])
    client = boto3.client("rds", region_name="lab", endpoint_url=lab.rds_api_url)
    [endpoint] = client.describe_db_cluster_endpoints(DBClusterEndpointIdentifier="reporting")[
        "DBClusterEndpoints"
    ]
    assert endpoint["EndpointType"] == "CUSTOM"
    assert endpoint["CustomEndpointType"] == "READER"
    assert endpoint["StaticMembers"] == [reader]
    assert endpoint["Endpoint"] == lab.state().custom_endpoint("reporting")
    lab.restore()
    gone = client.describe_db_cluster_endpoints(DBClusterEndpointIdentifier="reporting")
    assert gone["DBClusterEndpoints"] == []
    with pytest.raises(dns.resolver.NXDOMAIN):
        plain.resolve(lab, endpoint["Endpoint"])


@pytest.mark.asyncio
async def test_async_reads_through_a_custom_endpoint_land_only_on_its_members(
    aurora_lab: Lab,
) -> None:
    lab = aurora_lab
    member = lab.readers[-1].id
    lab.add_custom_endpoint("asyncreads", members=[member])
    cluster = aio.Cluster(_dsn(lab, "asyncreads"))
    sql = _identity_sql(lab)
    seen: Counter[str] = Counter()
    try:
        for _ in range(200):
            async with cluster.reader() as conn:
                if isinstance(conn, PsycopgAsyncConnection):
                    cur = conn.cursor()
                else:
                    cur = await conn.cursor()
                await cur.execute(sql)
                row = await cur.fetchone()
                seen[str(row[0])] += 1
    finally:
        await cluster.close()
    assert seen == Counter({member: 200})


_LAB_CLI = (sys.executable, "-m", "aurora_smartdriver", "lab")


def _cli(lab: Lab, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [*_LAB_CLI, *args, "--state", str(lab.state_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_custom_endpoints_from_the_command_line(aurora_lab_postgresql: Lab) -> None:
    lab = aurora_lab_postgresql
    first = lab.readers[0].id
    doc = _cli(lab, "custom-endpoint", "add", "fromcli", "--members", first)
    [endpoint] = doc["custom_endpoints"]
    assert (endpoint["name"], endpoint["kind"], endpoint["members_now"]) == (
        "fromcli",
        "reader",
        [first],
    )
    assert plain.resolve(lab, endpoint["host"]) == [lab.node(first).address]
    doc = _cli(lab, "custom-endpoint", "modify", "fromcli", "--excluded", first, "--kind", "any")
    assert set(doc["custom_endpoints"][0]["members_now"]) == {n.id for n in lab.nodes} - {first}
    assert _cli(lab, "rds-api", "down")["down"] is True
    assert lab.state().rds_api_down
    _cli(lab, "rds-api", "up")
    assert _cli(lab, "custom-endpoint", "remove", "fromcli")["custom_endpoints"] == []
