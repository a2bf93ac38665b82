"""The counting primitives and the metric catalogue, without a server (hypothesis)."""

from __future__ import annotations

import bisect
import json
import re
import threading
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from aurora_smartdriver import metrics
from aurora_smartdriver._instruments import (
    DEFAULT_BOUNDS,
    Histogram,
    HistogramSnapshot,
    Tally,
    bucket_index,
    empty_histogram,
)
from aurora_smartdriver.pool import PoolStats
from aurora_smartdriver.pool._set import combine

values = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)
bounds = st.lists(
    st.floats(min_value=1e-6, max_value=1e4, allow_nan=False), min_size=1, max_size=12, unique=True
).map(lambda xs: tuple(sorted(xs)))


@given(bounds, values)
def test_a_value_falls_in_the_first_bucket_whose_bound_holds_it(b: tuple[float, ...], v: float):
    i = bucket_index(b, v)
    assert 0 <= i <= len(b)
    if i < len(b):
        assert v <= b[i]
    if i > 0:
        assert v > b[i - 1]


def _snap(b: tuple[float, ...], observed: list[float]) -> HistogramSnapshot:
    h = Histogram(b)
    for v in observed:
        h.observe(v)
    return h.snapshot()


@given(bounds, st.lists(values, max_size=50))
def test_histogram_counts_sum_and_max_match_the_observations(b, observed):
    snap = _snap(b, observed)
    assert snap.count == len(observed)
    assert snap.max == (max(observed) if observed else 0.0)
    assert abs(snap.sum - sum(observed)) <= 1e-6 * max(1.0, sum(observed))
    cumulative = snap.cumulative()
    assert list(cumulative) == sorted(cumulative)
    assert cumulative[-1] == len(observed)
    for bound, below in zip(b, cumulative, strict=False):
        assert below == sum(1 for v in observed if v <= bound)


@given(bounds, st.lists(values, max_size=30), st.lists(values, max_size=30))
def test_merging_is_observing_both(b, first, second):
    merged = _snap(b, first).merged(_snap(b, second))
    both = _snap(b, first + second)
    assert merged.counts == both.counts and merged.max == both.max
    assert abs(merged.sum - both.sum) <= 1e-6 * max(1.0, both.sum)
    assert _snap(b, second).merged(_snap(b, first)).counts == merged.counts


@given(st.lists(values, max_size=30), st.integers(min_value=0, max_value=100))
def test_with_zeros_adds_observations_of_zero(observed, n):
    assert _snap(DEFAULT_BOUNDS, observed).with_zeros(n) == _snap(
        DEFAULT_BOUNDS, observed + [0.0] * n
    )


def test_negative_durations_count_as_zero() -> None:
    snap = _snap(DEFAULT_BOUNDS, [-1.0])
    assert snap.counts[0] == 1 and snap.sum == 0.0


@given(st.lists(values, max_size=20))
def test_histogram_json_is_cumulative_and_ends_with_inf(observed):
    doc = json.loads(json.dumps(_snap(DEFAULT_BOUNDS, observed).to_json()))
    buckets = list(doc["buckets"].items())
    assert buckets[-1] == ("+Inf", len(observed))
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    assert doc["count"] == len(observed)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 5)), max_size=40))
def test_tally_sums_what_every_thread_added(adds):
    tally: Tally[str] = Tally()
    chunks = [adds[i::4] for i in range(4)]

    def work(chunk: list[tuple[str, int]]) -> None:
        for key, n in chunk:
            tally.add(key, n)

    threads = [threading.Thread(target=work, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected: dict[str, int] = {}
    for key, n in adds:
        expected[key] = expected.get(key, 0) + n
    assert dict(tally.snapshot()) == expected
    assert dict(tally.snapshot()) == expected  # dead threads' counts were folded, not lost
    tally.add("a")
    assert tally.total() == sum(expected.values()) + 1


def test_tally_is_exact_under_contention() -> None:
    tally: Tally[str] = Tally()

    def work() -> None:
        for _ in range(20000):
            tally.add("x")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tally.snapshot()["x"] == 80000


def _stats(**kw: object) -> PoolStats:
    base: dict[str, object] = dict(
        size=0,
        idle=0,
        in_use=0,
        waiting=0,
        opened=0,
        closed=0,
        connecting=0,
        connect_failures=0,
        max_concurrent_connecting_seen=0,
        borrow_wait_total_s=0.0,
        down=False,
    )
    base.update(kw)
    return PoolStats(**base)  # type: ignore[arg-type]


counts = st.integers(min_value=0, max_value=1000)


@given(counts, counts, counts, counts, st.lists(values, max_size=10), st.lists(values, max_size=10))
def test_combining_pools_adds_their_counts(o1, o2, c1, c2, w1, w2):
    a = _stats(
        opened=o1,
        closed=c1,
        borrows=len(w1),
        borrow_waits=_snap(DEFAULT_BOUNDS, w1),
        borrow_failures={"timeout": 1},
    )
    b = _stats(
        opened=o2,
        closed=c2,
        borrows=len(w2),
        borrow_waits=_snap(DEFAULT_BOUNDS, w2),
        borrow_failures={"timeout": 2, "host_down": 1},
        down=True,
    )
    both = combine(a, b)
    assert (both.opened, both.closed, both.borrows) == (o1 + o2, c1 + c2, len(w1) + len(w2))
    assert both.borrow_waits.count == both.borrows
    assert dict(both.borrow_failures) == {"timeout": 3, "host_down": 1}
    assert both.down


def test_every_catalogued_metric_is_documented() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    for name, _kind, _unit, labels, _help in metrics.CATALOGUE:
        row = re.search(rf"^\| `{name}` \|.*$", doc, re.MULTILINE)
        assert row is not None, f"{name} is not in docs/operations.md's metric table"
        for label in labels:
            assert f"`{label}`" in row.group(0), f"{name}: label {label} undocumented"


def test_families_of_an_empty_snapshot_list_every_name_once() -> None:
    names = [f.name for f in metrics.families(metrics.MetricsSnapshot(0.0))]
    assert names == [name for name, *_ in metrics.CATALOGUE]
    assert len(set(names)) == len(names)


def test_a_snapshot_prints_and_serialises() -> None:
    m = metrics.ClusterMetrics(
        "c",
        "postgresql",
        0.0,
        hosts={"i1": metrics.HostMetrics("i1", connections_opened=2, routed={"writer": 3})},
    )
    snap = metrics.MetricsSnapshot(0.0, {"c": m})
    assert "i1" in str(snap)
    doc = json.loads(json.dumps(snap.to_json()))
    assert doc["clusters"]["c"]["hosts"]["i1"]["routed"] == {"writer": 3}
    fams = {f.name: f for f in metrics.families(snap)}
    assert fams["routing_decisions"].samples == (
        ((("cluster", "c"), ("role", "writer"), ("instance", "i1")), 3),
    )
    assert empty_histogram().count == 0


def test_bounds_are_sorted() -> None:
    assert list(DEFAULT_BOUNDS) == sorted(DEFAULT_BOUNDS)
    assert bisect.bisect_left(DEFAULT_BOUNDS, DEFAULT_BOUNDS[-1] * 2) == len(DEFAULT_BOUNDS)


def test_every_emitted_event_is_listed_and_documented() -> None:
    from aurora_smartdriver import events

    root = Path(__file__).parent.parent
    emitted: set[str] = set()
    for path in (root / "aurora_smartdriver").rglob("*.py"):
        emitted |= set(re.findall(r"\bevents\.emit\(\s*\"(\w+)\"", path.read_text()))
    assert emitted, "no events found: the pattern is stale"
    listed = set(re.findall(r"^- ``(\w+)``:", events.__doc__ or "", re.MULTILINE))
    assert emitted <= listed, f"not in events.py's list: {emitted - listed}"
    doc = (root / "docs" / "operations.md").read_text()
    for name in listed:
        assert f"| `{name}` |" in doc, f"event {name} is not in docs/operations.md"
