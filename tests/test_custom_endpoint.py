"""Custom endpoints without a database: membership and routing as values, the RDS API reading.

The member decision is property-tested; the API reading is tested against botocore's own
model (Stubber validates every request and answer against the RDS service model), against
the lab's RDS API stand-in served in-process (real HTTP, real signing, real XML parsing), and
the stand-in's DescribeDBClusters against moto's. moto 5.2 does not implement
DescribeDBClusterEndpoints (NotImplementedError), hence the Stubber and the stand-in.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st
from moto import mock_aws

from aurora_smartdriver import dsn, events
from aurora_smartdriver._custom_watch import CustomEndpointWatch
from aurora_smartdriver.custom_endpoint import (
    CustomEndpoint,
    cluster_endpoint,
    eligible,
    endpoint_identifier,
    from_api,
    members,
    restrict,
    route,
)
from aurora_smartdriver.discovery import source_for
from aurora_smartdriver.discovery._base import SourceContext
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.events import Event, Events
from aurora_smartdriver.lab import _state as lab_state
from aurora_smartdriver.lab._rds_api import RdsApiServer
from aurora_smartdriver.routing import Decision, HostStats, NoHost, Request, choose
from aurora_smartdriver.topology import Host, Role, Topology

# -- values ---------------------------------------------------------------------------------------

_ids = st.lists(
    st.from_regex(r"db-[a-z0-9]{1,4}", fullmatch=True), min_size=1, max_size=6, unique=True
)


@st.composite
def _topologies(draw: st.DrawFn) -> Topology:
    ids = draw(_ids)
    writer_at = draw(st.none() | st.integers(0, len(ids) - 1))
    hosts = [
        Host(
            i,
            f"{i}.example",
            5432,
            Role.WRITER if n == writer_at else Role.READER,
            lag_ms=draw(st.none() | st.floats(0, 500)),
        )
        for n, i in enumerate(ids)
    ]
    writer = hosts[writer_at] if writer_at is not None else None
    return Topology(writer, tuple(h for h in hosts if h is not writer), version=1)


@st.composite
def _endpoints(draw: st.DrawFn, topology: Topology) -> CustomEndpoint:
    ids = [h.instance_id for h in topology.hosts] + ["db-gone"]
    listed = draw(st.lists(st.sampled_from(ids), unique=True))
    static = draw(st.booleans())
    return CustomEndpoint(
        identifier="analytics",
        cluster_id="orders",
        kind=draw(st.sampled_from(["READER", "ANY", "WRITER"])),
        static_members=frozenset(listed) if static else frozenset(),
        excluded_members=frozenset() if static else frozenset(listed),
    )


@st.composite
def _cases(draw: st.DrawFn) -> tuple[Topology, CustomEndpoint, Request, HostStats]:
    topology = draw(_topologies())
    endpoint = draw(_endpoints(topology))
    ids = [h.instance_id for h in topology.hosts]
    request = Request(
        role=draw(st.sampled_from(["reader", "any"])),
        strategy=draw(st.sampled_from(["random", "round_robin", "least_lag"])),
        max_replica_lag_ms=draw(st.none() | st.floats(0, 500)),
        fallback=draw(st.sampled_from(["writer", "fail"])),
        exclude=frozenset(draw(st.lists(st.sampled_from(ids), unique=True))),
    )
    stats = HostStats(down=frozenset(draw(st.lists(st.sampled_from(ids), unique=True))))
    return topology, endpoint, request, stats


@given(_cases())
def test_eligible_instances_are_members_of_the_topology_and_of_the_endpoint(
    case: tuple[Topology, CustomEndpoint, Request, HostStats],
) -> None:
    topology, endpoint, _, _ = case
    ids = {h.instance_id for h in topology.hosts}
    found = eligible(endpoint, topology)
    assert found <= ids
    if endpoint.static_members:
        assert found <= endpoint.static_members
    else:
        assert not found & endpoint.excluded_members
    writer = topology.writer.instance_id if topology.writer is not None else None
    if endpoint.kind == "READER":
        assert writer not in found
    if endpoint.kind == "WRITER":
        assert found <= {writer}
    if endpoint.kind == "ANY":
        assert found == members(endpoint, ids)


@given(_cases(), st.from_regex(r"db-new[0-9]", fullmatch=True))
def test_an_instance_added_later_joins_an_exclusion_list_endpoint_only(
    case: tuple[Topology, CustomEndpoint, Request, HostStats], new_id: str
) -> None:
    topology, endpoint, _, _ = case
    grown = Topology(
        topology.writer,
        (*topology.readers, Host(new_id, f"{new_id}.example", 5432, Role.READER)),
        version=2,
    )
    joined = new_id in eligible(endpoint, grown)
    assert joined == (endpoint.kind != "WRITER" and not endpoint.static_members)


@given(_cases(), st.integers(0, 100), st.integers(0, 2**32))
def test_routing_through_the_endpoint_never_leaves_its_members_unless_told(
    case: tuple[Topology, CustomEndpoint, Request, HostStats], turn: int, seed: int
) -> None:
    topology, endpoint, request, stats = case
    allowed = eligible(endpoint, topology)
    decision, widened = route(
        topology,
        request,
        stats,
        endpoint,
        identifier="analytics",
        problem=None,
        fallback="fail",
        turn=turn,
        rng=random.Random(seed),
    )
    assert not widened
    narrowed = choose(
        topology, restrict(request, endpoint, topology), stats, turn=turn, rng=random.Random(seed)
    )
    assert isinstance(decision, Decision) == isinstance(narrowed, Decision)
    if isinstance(decision, Decision):
        assert decision.host.instance_id in allowed
        assert decision.host.instance_id not in stats.down | request.exclude
    else:
        assert "custom endpoint analytics" in decision.reason


@given(_cases(), st.integers(0, 100), st.integers(0, 2**32))
def test_fallback_cluster_uses_other_instances_only_when_no_member_can_serve(
    case: tuple[Topology, CustomEndpoint, Request, HostStats], turn: int, seed: int
) -> None:
    topology, endpoint, request, stats = case
    decision, widened = route(
        topology,
        request,
        stats,
        endpoint,
        identifier="analytics",
        problem=None,
        fallback="cluster",
        turn=turn,
        rng=random.Random(seed),
    )
    inside = choose(
        topology, restrict(request, endpoint, topology), stats, turn=turn, rng=random.Random(0)
    )
    anywhere = choose(topology, request, stats, turn=turn, rng=random.Random(0))
    assert widened == (isinstance(inside, NoHost) and isinstance(anywhere, Decision))
    assert isinstance(decision, Decision) == isinstance(anywhere, Decision)
    if widened:
        assert isinstance(decision, Decision) and decision.fell_back
        assert "outside the endpoint" in decision.reason


@given(_topologies(), st.sampled_from(["fail", "cluster"]))
def test_unknown_members_fail_unless_the_cluster_may_serve(
    topology: Topology, fallback: Any
) -> None:
    request = Request(role="reader")
    decision, widened = route(
        topology,
        request,
        HostStats(),
        None,
        identifier="analytics",
        problem="the API is down",
        fallback=fallback,
        turn=0,
        rng=random.Random(0),
    )
    if fallback == "fail":
        assert isinstance(decision, NoHost)
        assert decision.reason == "custom endpoint analytics: the API is down"
    else:
        anywhere = choose(topology, request, HostStats(), turn=0, rng=random.Random(0))
        assert isinstance(decision, Decision) == isinstance(anywhere, Decision)
        assert widened == isinstance(anywhere, Decision)


def test_reader_endpoint_with_no_reader_member_names_the_endpoint_and_never_uses_the_writer() -> (
    None
):
    topology = Topology(
        Host("w", "w.example", 5432, Role.WRITER),
        (Host("r1", "r1.example", 5432, Role.READER), Host("r2", "r2.example", 5432, Role.READER)),
    )
    endpoint = CustomEndpoint("analytics", "orders", "READER", static_members=frozenset({"r2"}))
    decision, _ = route(
        topology,
        Request(role="reader", fallback="writer"),
        HostStats(down=frozenset({"r2"})),
        endpoint,
        identifier="analytics",
        problem=None,
        fallback="fail",
        turn=0,
        rng=random.Random(0),
    )
    assert isinstance(decision, NoHost)
    assert decision.reason.startswith(
        "no member of custom endpoint analytics (READER; static: r2) qualifies"
    )
    assert "custom_endpoint_fallback is fail" in decision.reason


def test_an_api_entry_becomes_a_value_and_a_bad_one_is_named() -> None:
    item = {
        "DBClusterEndpointIdentifier": "Analytics",
        "DBClusterIdentifier": "orders",
        "Endpoint": "analytics.cluster-custom-abc.us-east-1.rds.amazonaws.com",
        "Status": "available",
        "EndpointType": "CUSTOM",
        "CustomEndpointType": "ANY",
        "StaticMembers": [],
        "ExcludedMembers": ["Orders-3"],
    }
    endpoint = from_api(item)
    assert endpoint.identifier == "analytics"
    assert endpoint.kind == "ANY"
    assert endpoint.excluded_members == {"orders-3"}
    assert members(endpoint, ["orders-1", "orders-3", "orders-9"]) == {"orders-1", "orders-9"}
    with pytest.raises(ValueError, match="EndpointType 'READER', not CUSTOM"):
        from_api({**item, "EndpointType": "READER"})
    with pytest.raises(ValueError, match="CustomEndpointType 'BOTH'"):
        from_api({**item, "CustomEndpointType": "BOTH"})
    with pytest.raises(ValueError, match="no DBClusterEndpointIdentifier"):
        from_api({k: v for k, v in item.items() if k != "DBClusterEndpointIdentifier"})


def test_the_endpoint_comes_from_the_dsn_host_or_the_setting() -> None:
    host = "analytics.cluster-custom-abc123.us-east-1.rds.amazonaws.com"
    assert endpoint_identifier(dsn.parse(f"postgresql://app@{host}/app")) == "analytics"
    cluster = "orders.cluster-abc123.us-east-1.rds.amazonaws.com"
    assert endpoint_identifier(dsn.parse(f"postgresql://app@{cluster}/app")) is None
    given_one = dsn.parse(f"postgresql://app@{cluster}/app?custom_endpoint=batch")
    assert endpoint_identifier(given_one) == "batch"
    with pytest.raises(ConfigError, match="custom_endpoint"):
        dsn.parse(f"postgresql://app@{cluster}/app?custom_endpoint=Not_Valid")
    with pytest.raises(ConfigError, match="rds_endpoint_url"):
        dsn.parse(f"postgresql://app@{cluster}/app?rds_endpoint_url=ftp://x")


def test_the_cluster_endpoint_behind_a_custom_endpoint_is_named_from_the_api_answer() -> None:
    endpoint = CustomEndpoint("analytics", "orders", "READER", static_members=frozenset({"r1"}))
    host = "analytics.cluster-custom-abc123.eu-west-2.rds.amazonaws.com"
    assert cluster_endpoint(endpoint, host) == "orders.cluster-abc123.eu-west-2.rds.amazonaws.com"
    assert cluster_endpoint(endpoint, "orders.cluster-abc123.eu-west-2.rds.amazonaws.com") is None
    unnamed = CustomEndpoint("analytics", "", "READER")
    assert cluster_endpoint(unnamed, host) is None


# -- reading the API -------------------------------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def heard() -> Iterator[list[Event]]:
    found: list[Event] = []

    def hook(event: Event) -> None:
        if event.name.startswith("custom_endpoint"):
            found.append(event)

    events.subscribe(hook)
    yield found
    events.unsubscribe(hook)


def _watch(url: str | None = None, refresh: float = 30.0) -> CustomEndpointWatch:
    return CustomEndpointWatch(
        "analytics",
        region="us-east-1",
        endpoint_url=url,
        refresh_interval=refresh,
        timeout=2.0,
        events=Events("test"),
    )


_ANSWER = {
    "DBClusterEndpointIdentifier": "analytics",
    "DBClusterIdentifier": "orders",
    "DBClusterEndpointResourceIdentifier": "cluster-endpoint-abc",
    "Endpoint": "analytics.cluster-custom-abc.us-east-1.rds.amazonaws.com",
    "Status": "available",
    "EndpointType": "CUSTOM",
    "CustomEndpointType": "READER",
    "StaticMembers": ["orders-2", "orders-3"],
    "ExcludedMembers": [],
}


def test_the_watch_asks_for_its_endpoint_by_identifier(aws_env: None) -> None:
    client = boto3.client("rds", region_name="us-east-1")
    watch = _watch()
    watch._client = client  # type: ignore[assignment]
    with Stubber(client) as stub:
        stub.add_response(
            "describe_db_cluster_endpoints",
            {"DBClusterEndpoints": [_ANSWER]},
            {"DBClusterEndpointIdentifier": "analytics"},
        )
        stub.add_client_error(
            "describe_db_cluster_endpoints", "Throttling", "Rate exceeded", http_status_code=400
        )
        stub.add_response(
            "describe_db_cluster_endpoints",
            {"DBClusterEndpoints": []},
            {"DBClusterEndpointIdentifier": "analytics"},
        )
        first = watch.refresh_now()
        assert first is not None and first.static_members == {"orders-2", "orders-3"}
        assert watch.refresh_now() == first  # throttled: the members last read stay
        assert watch.problem is not None and "Throttling" in watch.problem
        assert watch.refresh_now() is None  # deleted: no members, and the reason says so
        assert watch.problem == "custom endpoint 'analytics' does not exist in region us-east-1"
        stub.assert_no_pending_responses()


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[tuple[str, dict[str, lab_state.LabState]]]:
    """The lab's RDS API stand-in serving a three-instance cluster `orders` from memory."""
    state = lab_state.LabState(
        engine="postgresql",
        name="orders",
        cluster_hash="abc123",
        dir=str(tmp_path),
        prefix="127.0.0",
        port=5432,
        user="app",
        password="pw",
        database="app",
        repl_password="pw",
        dns=lab_state.DNSState("127.0.0.1", 53, 5, 0.0, "orders-instance-1"),
    )
    for index, role in ((1, "writer"), (2, "reader"), (3, "reader")):
        state.nodes.append(
            lab_state.NodeState(
                id=f"orders-instance-{index}",
                index=index,
                address=f"127.0.0.{10 + index}",
                port=5432,
                role=role,
                status="running",
                datadir="",
                server_id=index,
                session_id=str(index),
            )
        )
    state.custom_endpoints.append(
        lab_state.CustomEndpointState("analytics", "reader", ["orders-instance-2"], [])
    )
    box = {"state": state}
    server = RdsApiServer("127.0.0.1", lambda: box["state"])
    server.start()
    host, port = server.address
    try:
        yield f"http://{host}:{port}", box
    finally:
        server.stop()


def test_the_watch_follows_the_stand_in_and_keeps_members_through_an_outage(
    aws_env: None,
    stand_in: tuple[str, dict[str, lab_state.LabState]],
    heard: list[Event],
) -> None:
    url, box = stand_in
    watch = _watch(url, refresh=0.05)
    watch._events = events.Events("orders")
    try:
        first = watch.wait_first(10.0)
        assert first is not None
        assert (first.kind, first.static_members) == ("READER", {"orders-instance-2"})
        box["state"].custom_endpoints[0].static = []
        box["state"].custom_endpoints[0].excluded = ["orders-instance-3"]
        _until(lambda: (c := watch.current()) is not None and bool(c.excluded_members))
        changed = watch.current()
        assert changed is not None and changed.excluded_members == {"orders-instance-3"}
        box["state"].rds_api_down = True
        _until(lambda: watch.failures > 0)
        assert watch.current() == changed
        box["state"].rds_api_down = False
        _until(lambda: watch.problem is None)
    finally:
        watch.close()
    names = [e.name for e in heard]
    assert names.count("custom_endpoint_unreachable") == 1
    assert "custom_endpoint_recovered" in names
    assert names.count("custom_endpoint_changed") == 2
    unreachable = next(e for e in heard if e.name == "custom_endpoint_unreachable")
    assert unreachable.fields["kept"] == "analytics (READER; all but orders-instance-3)"


def test_an_unreachable_api_before_any_reading_gives_no_members_fast(aws_env: None) -> None:
    with socket_closed() as url:
        watch = _watch(url)
        try:
            assert watch.wait_first(10.0) is None
            assert watch.problem is not None and "failed" in watch.problem
            started = time.monotonic()
            assert watch.wait_first(10.0) is None  # known to fail: no second wait
            assert time.monotonic() - started < 5.0
        finally:
            watch.close()


class socket_closed:
    """A loopback URL where nothing listens (connections are refused)."""

    def __enter__(self) -> str:
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        return None


def test_the_stand_in_describes_the_cluster_as_moto_does(
    aws_env: None, stand_in: tuple[str, dict[str, lab_state.LabState]]
) -> None:
    """The rds-api topology source reads the same members and writer from moto and from
    the stand-in (through rds_endpoint_url)."""
    url, _ = stand_in
    pattern = "?.abc123.lab.aurora.test"
    through_stand_in = dsn.parse(
        f"postgresql://app@orders.cluster-abc123.lab.aurora.test/app?topology_source=rds-api"
        f"&rds_endpoint_url={url}&instance_host_pattern={pattern}"
    )
    rows = source_for("rds-api").fetch(None, SourceContext.for_spec(through_stand_in)).rows
    got = {(h.instance_id, h.role) for h in rows}
    with mock_aws():
        client = boto3.client("rds", region_name="us-east-1")
        client.create_db_cluster(
            DBClusterIdentifier="orders",
            Engine="aurora-postgresql",
            MasterUsername="admin",
            MasterUserPassword="not-a-secret-123",
        )
        for index in (1, 2, 3):
            client.create_db_instance(
                DBInstanceIdentifier=f"orders-instance-{index}",
                DBClusterIdentifier="orders",
                Engine="aurora-postgresql",
                DBInstanceClass="db.r6g.large",
            )
        through_moto = dsn.parse(
            "postgresql://app@orders.cluster-abc123.us-east-1.rds.amazonaws.com/app"
            f"?topology_source=rds-api&instance_host_pattern={pattern}"
        )
        moto_rows = source_for("rds-api").fetch(None, SourceContext.for_spec(through_moto)).rows
    assert got == {(h.instance_id, h.role) for h in moto_rows}
    assert got == {
        ("orders-instance-1", Role.WRITER),
        ("orders-instance-2", Role.READER),
        ("orders-instance-3", Role.READER),
    }


def _until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        threading.Event().wait(0.02)
