"""RDS Proxy without a database: which DSNs lead to a proxy, the topology a proxy presents,
what a proxy forbids, and that a proxy's view never shares a monitor with its cluster's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aurora_smartdriver import dsn
from aurora_smartdriver.discovery.rds_proxy import RdsProxy
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.monitor import cluster_key
from aurora_smartdriver.pool import Target
from aurora_smartdriver.rds_proxy import ProxyPlan, endpoint_id, plan, rows
from aurora_smartdriver.topology import Role, accept
from aurora_smartdriver.watchdog import Watchdog

PROXY = "orders-proxy.proxy-abc123.us-east-1.rds.amazonaws.com"
EXTRA = "reports.endpoint.proxy-abc123.us-east-1.rds.amazonaws.com"
CLUSTER = "orders.cluster-abc123.us-east-1.rds.amazonaws.com"


def _spec(host: str, **params: str) -> dsn.ConnectionSpec:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return dsn.parse(f"postgresql://app@{host}:5432/app" + (f"?{query}" if query else ""))


def test_a_proxy_name_is_a_read_write_proxy_endpoint() -> None:
    assert plan(_spec(PROXY)) == ProxyPlan(writer=(PROXY, 5432), reader=None)


def test_an_additional_proxy_endpoint_is_read_write_unless_said_read_only() -> None:
    assert plan(_spec(EXTRA)) == ProxyPlan(writer=(EXTRA, 5432), reader=None)
    assert plan(_spec(EXTRA, rds_proxy="read_only")) == ProxyPlan(writer=None, reader=(EXTRA, 5432))


def test_cluster_and_instance_names_are_no_proxy() -> None:
    assert plan(_spec(CLUSTER)) is None
    assert plan(_spec("orders-1.abc123.us-east-1.rds.amazonaws.com")) is None
    assert plan(_spec("db.example.com")) is None


def test_rds_proxy_off_treats_a_proxy_name_as_any_host() -> None:
    assert plan(_spec(PROXY, rds_proxy="off")) is None


def test_rds_proxy_read_write_names_any_host_a_proxy_endpoint() -> None:
    assert plan(_spec("db.example.com", rds_proxy="read_write")) == ProxyPlan(
        writer=("db.example.com", 5432), reader=None
    )


def test_the_read_only_endpoint_serves_readers() -> None:
    found = plan(_spec(PROXY, rds_proxy_read_only_endpoint=EXTRA))
    assert found == ProxyPlan(writer=(PROXY, 5432), reader=(EXTRA, 5432))


@pytest.mark.parametrize(
    ("host", "params", "parameter"),
    [
        (CLUSTER, {"rds_proxy_read_only_endpoint": EXTRA}, "rds_proxy_read_only_endpoint"),
        (
            PROXY,
            {"rds_proxy": "off", "rds_proxy_read_only_endpoint": EXTRA},
            "rds_proxy_read_only_endpoint",
        ),
        (
            EXTRA,
            {"rds_proxy": "read_only", "rds_proxy_read_only_endpoint": PROXY},
            "rds_proxy_read_only_endpoint",
        ),
        (PROXY, {"rds_proxy_read_only_endpoint": PROXY.upper()}, "rds_proxy_read_only_endpoint"),
        (PROXY, {"topology_source": "static"}, "topology_source"),
        (PROXY, {"custom_endpoint": "analytics"}, "custom_endpoint"),
    ],
)
def test_what_a_proxy_makes_meaningless_is_refused_naming_the_parameter(
    host: str, params: dict[str, str], parameter: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        plan(_spec(host, **params))
    assert caught.value.parameter == parameter


def test_a_proxy_dsn_names_one_host() -> None:
    spec = dsn.parse(f"postgresql://app@{PROXY}:5432,{EXTRA}:5432/app")
    with pytest.raises(ConfigError, match="one host"):
        plan(spec)


def test_endpoint_ids_are_the_endpoint_names() -> None:
    assert endpoint_id(PROXY) == "orders-proxy"
    assert endpoint_id(EXTRA) == "reports"
    assert endpoint_id("db.example.com") == "db"
    assert endpoint_id("10.0.0.5") == "10.0.0.5"


def test_the_topology_is_the_endpoints_in_fixed_roles_and_accepted() -> None:
    found = rows(ProxyPlan(writer=(PROXY, 5432), reader=(EXTRA, 5432)))
    assert [(h.instance_id, h.host, h.role) for h in found] == [
        ("orders-proxy", PROXY, Role.WRITER),
        ("reports", EXTRA, Role.READER),
    ]
    topo = accept(None, found, source="rds-proxy", now=0.0, staleness_window=30.0)
    assert not isinstance(topo, str) and getattr(topo, "writer", None) is not None


def test_a_read_only_endpoint_alone_is_a_topology_without_writer() -> None:
    found = rows(ProxyPlan(writer=None, reader=(EXTRA, 5432)))
    refused = accept(None, found, source="rds-proxy", now=0.0, staleness_window=30.0)
    assert type(refused).__name__ == "Rejected"  # the rule elsewhere: a cluster has a writer
    taken = accept(
        None, found, source="rds-proxy", now=0.0, staleness_window=30.0, writer_required=False
    )
    assert type(taken).__name__ == "Topology"
    assert taken.writer is None  # type: ignore[union-attr]
    assert [r.host for r in taken.readers] == [EXTRA]  # type: ignore[union-attr]


names = st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True)


@given(names, names, st.booleans())
def test_endpoints_get_distinct_ids_and_one_writer_at_most(
    writer_name: str, reader_name: str, proxy_default: bool
) -> None:
    writer = (
        f"{writer_name}.proxy-abc.us-east-1.rds.amazonaws.com"
        if proxy_default
        else f"{writer_name}.endpoint.proxy-abc.us-east-1.rds.amazonaws.com"
    )
    reader = f"{reader_name}.endpoint.proxy-abc.us-east-1.rds.amazonaws.com"
    if writer == reader:
        return
    found = rows(ProxyPlan(writer=(writer, 5432), reader=(reader, 5432)))
    assert len({h.instance_id for h in found}) == 2
    assert [h.role for h in found] == [Role.WRITER, Role.READER]
    topo = accept(None, found, source="rds-proxy", now=0.0, staleness_window=30.0)
    assert type(topo).__name__ == "Topology"


def test_the_source_answers_the_endpoints_without_a_connection() -> None:
    proxy = ProxyPlan(writer=(PROXY, 5432), reader=None)
    source = RdsProxy(proxy)
    assert not source.uses_connection

    class _Ctx:
        @staticmethod
        def now() -> float:
            return 1.0

    answer = source.fetch(None, _Ctx())  # type: ignore[arg-type]
    assert answer.rows == rows(proxy)


def test_a_proxy_never_shares_its_cluster_monitor() -> None:
    # A proxy's resource id may be its cluster's: its view (endpoints) is not the cluster's.
    proxy = _spec(PROXY)
    cluster = _spec(CLUSTER)
    assert cluster_key(proxy) != cluster_key(cluster)
    assert cluster_key(proxy) != cluster_key(_spec(PROXY, rds_proxy_read_only_endpoint=EXTRA))
    # One cluster_id for every pool of the cluster (as its help invites) keeps them apart too:
    # shared, the first caller's view decided whether the other's connections used the proxy.
    assert cluster_key(_spec(PROXY, cluster_id="orders")) != cluster_key(
        _spec(CLUSTER, cluster_id="orders")
    )
    assert cluster_key(_spec(PROXY, cluster_id="orders")) == cluster_key(
        _spec(PROXY, cluster_id="orders")
    )
    assert cluster_key(_spec(PROXY, cluster_id="a")) != cluster_key(_spec(PROXY, cluster_id="b"))


def test_a_disabled_watchdog_watches_nothing() -> None:
    opened: list[object] = []

    def opener_for(target: object, address: object) -> object:
        opened.append(target)
        return lambda timeout: None

    dog = Watchdog(opener_for, None, 1.0, lambda *a: None, enabled=False)  # type: ignore[arg-type]
    target = Target("orders-proxy", PROXY, 5432)
    dog.watch(target, object())
    assert not dog.probing("orders-proxy")
    assert opened == []
    dog.close()


hosts = st.sampled_from([PROXY, EXTRA, CLUSTER, "db.example.com", "10.0.0.5"])
extras = st.sampled_from([None, EXTRA, PROXY, "reports.proxy.test"])
modes = st.sampled_from(["auto", "off", "read_write", "read_only"])


@given(hosts, modes, extras)
def test_a_plan_is_one_the_settings_ask_for_or_a_config_error(
    host: str, mode: str, extra: str | None
) -> None:
    params = {"rds_proxy": mode}
    if extra is not None:
        params["rds_proxy_read_only_endpoint"] = extra
    try:
        found = plan(_spec(host, **params))
    except ConfigError as exc:
        assert exc.parameter in ("rds_proxy_read_only_endpoint", "rds_proxy")
        return
    proxied = mode in ("read_write", "read_only") or (mode == "auto" and "proxy-" in host)
    assert (found is not None) == proxied
    if found is None:
        return
    assert (found.writer is None) == (mode == "read_only")
    assert found.writer in (None, (host, 5432))
    assert found.reader == ((host, 5432) if mode == "read_only" else (extra and (extra, 5432)))
    topo = accept(
        None,
        rows(found),
        source="rds-proxy",
        now=0.0,
        staleness_window=30.0,
        writer_required=found.writer is not None,
    )
    assert type(topo).__name__ == "Topology"
