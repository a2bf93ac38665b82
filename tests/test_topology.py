"""Specification of the topology model: snapshots, validation, versioning and diffs."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aurora_smartdriver.topology import (
    Host,
    Rejected,
    Role,
    Topology,
    TopologyDiff,
    accept,
    build_topology,
    diff,
)

NOW = 1_700_000_000.0
WINDOW = 30.0

moderate = settings(max_examples=80, deadline=None)


def host(
    instance_id: str,
    role: Role = Role.READER,
    *,
    lag_ms: float | None = None,
    last_update: float | None = NOW,
    port: int = 5432,
    name: str | None = None,
) -> Host:
    return Host(
        instance_id=instance_id,
        host=name if name is not None else f"{instance_id}.db.test",
        port=port,
        role=role,
        lag_ms=lag_ms,
        last_update=last_update,
    )


def build(rows: list[Host], *, now: float = NOW, window: float = WINDOW) -> Topology | Rejected:
    return build_topology(rows, source="test", now=now, staleness_window=window)


def built(rows: list[Host]) -> Topology:
    result = build(rows)
    assert isinstance(result, Topology), result
    return result


# --- strategies -------------------------------------------------------------------------------

instance_ids = st.text(alphabet="abcdef", min_size=1, max_size=3)
lags = st.none() | st.floats(min_value=0, max_value=10_000, allow_nan=False)


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    """Well-formed snapshots with a writer and zero or more readers."""
    ids = draw(st.lists(instance_ids, min_size=1, max_size=6, unique=True))
    writer_id = draw(st.sampled_from(ids))
    hosts = [
        host(i, Role.WRITER if i == writer_id else Role.READER, lag_ms=draw(lags)) for i in ids
    ]
    writer = next(h for h in hosts if h.role is Role.WRITER)
    readers = tuple(h for h in hosts if h.role is Role.READER)
    return Topology(writer=writer, readers=readers, version=draw(st.integers(1, 100)))


@st.composite
def answers(draw: st.DrawFn) -> list[Host]:
    """Well-formed source answers: unique ids, exactly one writer, any timestamps."""
    ids = draw(st.lists(instance_ids, min_size=1, max_size=6, unique=True))
    writer_id = draw(st.sampled_from(ids))
    last_updates = st.none() | st.floats(min_value=NOW - 3 * WINDOW, max_value=NOW + 5)
    rows = [
        host(
            i,
            Role.WRITER if i == writer_id else draw(st.sampled_from([Role.READER, Role.UNKNOWN])),
            lag_ms=draw(lags),
            last_update=draw(last_updates),
        )
        for i in ids
    ]
    return draw(st.permutations(rows))


garbage_rows = st.sampled_from(
    [
        host(""),
        host("   "),
        host("x", port=0),
        host("x", port=65536),
        host("x", port=-1),
        host("x", name=""),
        host("x", name="bad host"),
        host("x", lag_ms=math.nan),
        host("x", lag_ms=-1.0),
        host("x", last_update=math.inf),
        Host("x", "x.db.test", True, Role.READER),
    ]
)


# --- properties -------------------------------------------------------------------------------


@moderate
@given(topologies())
def test_diff_of_a_snapshot_with_itself_is_empty(t: Topology) -> None:
    d = diff(t, t)
    assert d.is_empty
    assert not d.is_structural
    assert d == TopologyDiff()


@moderate
@given(topologies(), topologies())
def test_diff_reports_exactly_the_set_differences(a: Topology, b: Topology) -> None:
    d = diff(a, b)
    a_readers = {h.instance_id for h in a.readers}
    b_readers = {h.instance_id for h in b.readers}
    assert {h.instance_id for h in d.readers_added} == b_readers - a_readers
    assert {h.instance_id for h in d.readers_removed} == a_readers - b_readers
    a_roles = {h.instance_id: h.role for h in a.hosts}
    b_roles = {h.instance_id: h.role for h in b.hosts}
    flipped = {i for i in a_roles.keys() & b_roles.keys() if a_roles[i] != b_roles[i]}
    assert {h.instance_id for h in d.roles_changed} == flipped
    assert a.writer is not None
    assert b.writer is not None
    if a.writer.instance_id == b.writer.instance_id:
        assert d.writer_changed is None
    else:
        assert d.writer_changed == (a.writer.instance_id, b.writer.instance_id)
    structural = bool(d.writer_changed or b_readers != a_readers or flipped)
    assert d.is_structural == structural


@moderate
@given(topologies())
def test_diff_from_nothing_adds_every_reader_and_names_the_writer(t: Topology) -> None:
    d = diff(None, t)
    assert t.writer is not None
    assert d.writer_changed == (None, t.writer.instance_id)
    assert d.readers_added == t.readers
    assert d.readers_removed == ()


@moderate
@given(topologies(), st.data())
def test_lag_only_change_is_not_structural(t: Topology, data: st.DataObject) -> None:
    new_lag = data.draw(st.floats(min_value=10_001, max_value=20_000))
    changed = tuple(dataclasses.replace(r, lag_ms=new_lag) for r in t.readers)
    t2 = dataclasses.replace(t, readers=changed)
    d = diff(t, t2)
    assert not d.is_structural
    assert {h.instance_id for h in d.lag_changed} == {h.instance_id for h in t.readers}
    assert d.is_empty == (not t.readers)


@moderate
@given(answers(), st.integers(min_value=0, max_value=5), garbage_rows)
def test_an_answer_with_a_garbage_row_is_rejected(
    rows: list[Host], position: int, garbage: Host
) -> None:
    rows.insert(min(position, len(rows)), garbage)
    result = build(rows)
    assert isinstance(result, Rejected)
    assert not isinstance(
        accept(None, rows, source="t", now=NOW, staleness_window=WINDOW), Topology
    )


@moderate
@given(answers(), st.data())
def test_an_answer_with_two_writers_is_rejected(rows: list[Host], data: st.DataObject) -> None:
    second = data.draw(instance_ids.filter(lambda i: i not in {r.instance_id for r in rows}))
    rows.append(host(second, Role.WRITER))
    result = build(rows)
    assert isinstance(result, Rejected)
    assert "2 writers" in result.reason


@moderate
@given(answers())
def test_an_answer_without_a_writer_is_rejected(rows: list[Host]) -> None:
    no_writer = [
        dataclasses.replace(r, role=Role.READER) if r.role is Role.WRITER else r for r in rows
    ]
    result = build(no_writer)
    assert isinstance(result, Rejected)
    assert "no writer" in result.reason


@moderate
@given(answers(), st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=1e6))
def test_the_writer_row_is_never_dropped_for_staleness(
    rows: list[Host], window: float, age: float
) -> None:
    rows = [
        dataclasses.replace(r, last_update=NOW - age) if r.role is Role.WRITER else r for r in rows
    ]
    writer_row = next(r for r in rows if r.role is Role.WRITER)
    result = build(rows, window=window)
    assert isinstance(result, Topology)
    assert result.writer is not None
    assert result.writer.instance_id == writer_row.instance_id


@moderate
@given(answers(), st.floats(min_value=0, max_value=100))
def test_readers_are_exactly_the_fresh_reader_rows(rows: list[Host], window: float) -> None:
    result = build(rows, window=window)
    assert isinstance(result, Topology)
    expected = {
        r.instance_id
        for r in rows
        if r.role is Role.READER and (r.last_update is None or NOW - r.last_update <= window)
    }
    assert {r.instance_id for r in result.readers} == expected


@moderate
@given(answers())
def test_readers_never_contain_the_writer(rows: list[Host]) -> None:
    result = build(rows)
    assert isinstance(result, Topology)
    assert result.writer is not None
    assert result.writer.role is Role.WRITER
    assert all(r.instance_id != result.writer.instance_id for r in result.readers)
    assert all(r.role is Role.READER for r in result.readers)
    assert [r.instance_id for r in result.readers] == sorted(r.instance_id for r in result.readers)


@moderate
@given(st.lists(answers(), min_size=1, max_size=8))
def test_versions_increase_by_one_on_change_and_stay_otherwise(
    answers_seq: list[list[Host]],
) -> None:
    current: Topology | None = None
    for rows in answers_seq:
        for _ in range(2):  # every answer twice: the repeat must change nothing
            result = accept(current, rows, source="t", now=NOW, staleness_window=WINDOW)
            assert isinstance(result, Topology)
            if current is None:
                assert result.version == 1
            elif diff(current, result).is_empty:
                assert result is current
            else:
                assert result.version == current.version + 1
            current = result


# --- examples ---------------------------------------------------------------------------------


def test_an_empty_answer_is_rejected() -> None:
    result = build([])
    assert isinstance(result, Rejected)
    assert "empty" in result.reason


def test_a_stale_reader_is_dropped_and_a_fresh_one_kept() -> None:
    t = built(
        [
            host("w", Role.WRITER, last_update=NOW - 3600),
            host("old", last_update=NOW - WINDOW - 0.001),
            host("edge", last_update=NOW - WINDOW),
            host("new", last_update=NOW - 1),
            host("unknown-age", last_update=None),
        ]
    )
    assert [r.instance_id for r in t.readers] == ["edge", "new", "unknown-age"]


def test_a_host_of_unknown_role_is_left_out() -> None:
    t = built([host("w", Role.WRITER), host("r"), host("u", Role.UNKNOWN)])
    assert t.host("u") is None
    assert [h.instance_id for h in t.hosts] == ["w", "r"]


def test_identical_duplicates_merge_keeping_the_latest_row() -> None:
    t = built(
        [
            host("w", Role.WRITER),
            host("r", last_update=NOW - 5, lag_ms=50.0),
            host("r", last_update=NOW - 1, lag_ms=10.0),
        ]
    )
    assert len(t.readers) == 1
    assert t.readers[0].lag_ms == 10.0


@pytest.mark.parametrize(
    "duplicate",
    [host("r", port=3306), host("r", name="elsewhere.db.test"), host("r", Role.WRITER)],
    ids=["port", "host", "role"],
)
def test_one_instance_reported_with_conflicting_data_is_rejected(duplicate: Host) -> None:
    result = build([host("w", Role.WRITER), host("r"), duplicate])
    assert isinstance(result, Rejected)
    assert "'r'" in result.reason


def test_two_instances_at_one_endpoint_are_rejected() -> None:
    result = build(
        [host("w", Role.WRITER), host("a", name="same.db.test"), host("b", name="SAME.db.test.")]
    )
    assert isinstance(result, Rejected)
    assert "share endpoint" in result.reason


def test_a_rejection_names_the_source_and_the_bad_row() -> None:
    result = build_topology(
        [host("w", Role.WRITER), host("r", port=70000)],
        source="aurora-mysql",
        now=NOW,
        staleness_window=WINDOW,
    )
    assert isinstance(result, Rejected)
    assert result.reason.startswith("aurora-mysql:")
    assert "70000" in result.reason


def test_a_change_of_last_update_alone_keeps_the_version() -> None:
    first = accept(
        None, [host("w", Role.WRITER), host("r")], source="t", now=NOW, staleness_window=WINDOW
    )
    assert isinstance(first, Topology)
    later = [host("w", Role.WRITER, last_update=NOW + 1), host("r", last_update=NOW + 1)]
    second = accept(first, later, source="t", now=NOW + 1, staleness_window=WINDOW)
    assert second is first


def test_a_lag_change_makes_a_new_version() -> None:
    first = accept(
        None,
        [host("w", Role.WRITER), host("r", lag_ms=1.0)],
        source="t",
        now=NOW,
        staleness_window=WINDOW,
    )
    assert isinstance(first, Topology)
    second = accept(
        first,
        [host("w", Role.WRITER), host("r", lag_ms=2.0)],
        source="t",
        now=NOW,
        staleness_window=WINDOW,
    )
    assert isinstance(second, Topology)
    assert second.version == first.version + 1
    assert second.readers[0].lag_ms == 2.0


def test_a_rejected_answer_leaves_nothing_to_apply() -> None:
    first = accept(None, [host("w", Role.WRITER)], source="t", now=NOW, staleness_window=WINDOW)
    assert isinstance(first, Topology)
    result = accept(
        first,
        [host("w", Role.WRITER), host("x", Role.WRITER)],
        source="t",
        now=NOW,
        staleness_window=WINDOW,
    )
    assert isinstance(result, Rejected)


def test_failover_diff_names_old_and_new_writer() -> None:
    before = built([host("a", Role.WRITER), host("b"), host("c")])
    after = built([host("b", Role.WRITER), host("a"), host("c")])
    d = diff(before, after)
    assert d.writer_changed == ("a", "b")
    assert [h.instance_id for h in d.readers_added] == ["a"]
    assert [h.instance_id for h in d.readers_removed] == ["b"]
    assert sorted(h.instance_id for h in d.roles_changed) == ["a", "b"]
    assert d.is_structural


def test_a_moved_instance_is_a_structural_change() -> None:
    before = built([host("a", Role.WRITER), host("b")])
    after = built([host("a", Role.WRITER), host("b", port=6432)])
    d = diff(before, after)
    assert [h.endpoint for h in d.endpoints_changed] == [("b.db.test", 6432)]
    assert d.is_structural


def test_hosts_lists_the_writer_first_then_readers_by_id() -> None:
    t = Topology(
        writer=host("m", Role.WRITER),
        readers=(host("z"), host("a"), host("k")),
        version=1,
        source="t",
        taken_at=NOW,
    )
    assert [h.instance_id for h in t.hosts] == ["m", "a", "k", "z"]


def test_lookup_by_id_and_by_endpoint() -> None:
    t = built([host("w", Role.WRITER, name="W.Example.test"), host("r", port=3306)])
    assert t.host("r") == host("r", port=3306)
    assert t.host("nope") is None
    w = t.by_endpoint("w.example.test.", 5432)
    assert w is not None
    assert w.instance_id == "w"
    assert t.by_endpoint("w.example.test", 3306) is None


def test_an_empty_topology_is_empty() -> None:
    assert Topology(writer=None).is_empty
    assert not built([host("w", Role.WRITER)]).is_empty
    assert not Topology(writer=None, readers=(host("r"),)).is_empty


def test_host_equality_ignores_role_and_figures() -> None:
    a = host("a", Role.READER, lag_ms=1.0)
    b = host("a", Role.WRITER, lag_ms=99.0, last_update=None)
    assert a == b
    assert hash(a) == hash(b)
    assert a != host("a", port=1)
    assert a.endpoint == ("a.db.test", 5432)


@pytest.mark.parametrize(
    ("writer", "readers"),
    [
        (host("w", Role.READER), ()),
        (host("w", Role.WRITER), (host("r", Role.UNKNOWN),)),
        (host("w", Role.WRITER), (host("w", Role.READER, port=1),)),
        (None, (host("r"), host("r", port=1))),
    ],
    ids=["writer-not-writer", "reader-unknown", "writer-among-readers", "duplicate-readers"],
)
def test_an_inconsistent_topology_cannot_be_built(
    writer: Host | None, readers: tuple[Host, ...]
) -> None:
    with pytest.raises(ValueError, match="topology"):
        Topology(writer=writer, readers=readers)
