"""Aurora Global Database decisions as values: region moves, RPO figures, home-region routing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aurora_smartdriver import routing
from aurora_smartdriver._globaldb import RegionWatch, latest_lags, region_move
from aurora_smartdriver.discovery.aurora_global import _Row, hosts_of, parse_patterns
from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.settings import Settings
from aurora_smartdriver.topology import Host, Role, Topology

REGIONS = ("us-east-1", "eu-west-1", "ap-south-1")
PATTERNS = parse_patterns(",".join(f"{r}:?.h{i}.{r}.test" for i, r in enumerate(REGIONS)))


def _host(
    i: int, region: str, role: Role, rpo: float | None = 0.0, at: float | None = None
) -> Host:
    return Host(
        f"db-{i}", f"db-{i}.{region}.test", 5432, role, 0.0, at, region=region, rpo_lag_ms=rpo
    )


@st.composite
def global_topologies(draw: st.DrawFn) -> Topology:
    """A writer in one region and readers spread over the regions, each with its RPO lag."""
    writer_region = draw(st.sampled_from(REGIONS))
    lags = {r: draw(st.none() | st.floats(0, 10_000)) for r in REGIONS}
    lags[writer_region] = 0.0
    count = draw(st.integers(0, 6))
    readers = [
        _host(i + 1, region, Role.READER, lags[region])
        for i, region in enumerate(
            draw(st.lists(st.sampled_from(REGIONS), min_size=count, max_size=count))
        )
    ]
    return Topology(_host(0, writer_region, Role.WRITER), tuple(readers))


@given(global_topologies(), st.sampled_from(REGIONS), st.integers(0, 1000))
def test_reads_never_leave_the_home_region(topo: Topology, home: str, turn: int) -> None:
    request = routing.Request(role="reader", home_region=home, fallback="fail")
    decision = routing.choose(topo, request, routing.HostStats(), turn=turn, rng=random.Random(1))
    home_readers = [r for r in topo.readers if r.region == home]
    if home_readers:
        assert isinstance(decision, routing.Decision)
        assert decision.host.region == home and decision.host.role is Role.READER
    else:
        assert isinstance(decision, routing.NoHost)
        assert "home_region" in decision.reason or "no readers" in decision.reason


@given(global_topologies(), st.sampled_from(REGIONS))
def test_without_a_home_reader_the_writer_serves_reads(topo: Topology, home: str) -> None:
    request = routing.Request(role="reader", home_region=home, fallback="writer")
    decision = routing.choose(topo, request, routing.HostStats(), turn=0, rng=random.Random(1))
    assert isinstance(decision, routing.Decision)
    if not any(r.region == home for r in topo.readers):
        assert decision.host == topo.writer and decision.fell_back


def test_home_region_comes_from_the_settings() -> None:
    settings = Settings.from_params({"home_region": "eu-west-1"})
    assert routing.request_from_settings(settings, "reader").home_region == "eu-west-1"


@given(global_topologies(), global_topologies())
def test_a_move_is_reported_exactly_when_the_writer_changes_region(
    old: Topology, new: Topology
) -> None:
    move = region_move(old, new)
    assert old.writer is not None and new.writer is not None
    if old.writer.region == new.writer.region:
        assert move is None
    else:
        assert move is not None
        assert (move.old_region, move.new_region) == (old.writer.region, new.writer.region)
        assert move.rpo_lag_ms_before == old.regions.get(new.writer.region)
        assert move.writes_may_be_lost == (
            move.rpo_lag_ms_before is None or move.rpo_lag_ms_before > 0
        )


def test_an_older_view_of_the_lag_does_not_replace_a_newer_one() -> None:
    fresh = Topology(
        _host(0, "us-east-1", Role.WRITER),
        (_host(1, "eu-west-1", Role.READER, rpo=1500.0, at=100.0),),
    )
    stale = Topology(
        _host(0, "us-east-1", Role.WRITER),
        (_host(1, "eu-west-1", Role.READER, rpo=0.0, at=90.0),),
    )
    lags = latest_lags(latest_lags({}, fresh), stale)
    assert lags["eu-west-1"] == (100.0, 1500.0)
    moved = Topology(_host(1, "eu-west-1", Role.WRITER), (_host(0, "us-east-1", Role.READER),))
    seen: list[dict[str, object]] = []
    watch = RegionWatch(lambda name, **fields: seen.append({"name": name, **fields}))
    for topo in (fresh, stale, moved):
        watch(None, topo)
    assert seen == [
        {
            "name": "global_writer_moved",
            "old": "db-0",
            "new": "db-1",
            "old_region": "us-east-1",
            "new_region": "eu-west-1",
            "rpo_lag_ms_before": 1500.0,
            "writes_may_be_lost": True,
        }
    ]


def _row(server: str, region: str, writer: bool, rpo: float | None) -> _Row:
    return _Row(server, writer, region, 5.0, rpo, 1000.0, 1000.0, "me", False)


@given(
    st.lists(
        st.tuples(st.sampled_from(REGIONS), st.none() | st.floats(-1, 1e6)), min_size=1, max_size=6
    )
)
def test_each_instance_takes_its_regions_pattern_and_lag(
    rows: list[tuple[str, float | None]],
) -> None:
    parsed = [_row(f"i{n}", region, n == 0, rpo) for n, (region, rpo) in enumerate(rows)]
    hosts = hosts_of(parsed, PATTERNS, 5432)
    for row, host in zip(parsed, hosts, strict=True):
        assert host.region == row.region
        assert host.host == f"{row.server_id}.h{REGIONS.index(row.region)}.{row.region}.test"
        if row.is_writer or row.rpo_lag_ms == -1:
            assert host.rpo_lag_ms == 0.0  # Aurora's -1: the primary region
        elif row.rpo_lag_ms is None or row.rpo_lag_ms < 0:
            assert host.rpo_lag_ms is None
        else:
            assert host.rpo_lag_ms == row.rpo_lag_ms


def test_a_region_without_a_pattern_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        hosts_of([_row("i0", "sa-east-1", True, -1.0)], PATTERNS, 5432)
    assert info.value.parameter == "global_instance_host_patterns"
    assert "sa-east-1" in str(info.value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("us-east-1?.a.test", "is not region:pattern"),
        ("us-east-1:a.test", "'?'"),
        ("us-east-1:?.a.test,us-east-1:?.b.test", "given twice"),
        ("US:?.a.test", "is not region:pattern"),
    ],
)
def test_malformed_patterns_are_refused_by_name(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_params({"global_instance_host_patterns": value})
    assert info.value.parameter == "global_instance_host_patterns"
    assert problem in str(info.value)
