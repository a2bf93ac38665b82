"""Positions and tokens (aurora_smartdriver.consistency): parsing, "covers" against an oracle
of plain sets, merging, and tokens that survive the trip and refuse what is not theirs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aurora_smartdriver import consistency as c

UUIDS = [
    "3e11fa47-71ca-11e1-9e33-c80aa9429562",
    "8c7e2d26-6c1f-11ef-a0b1-0242ac120002",
    "00000000-0000-0000-0000-000000000001",
]

lsns = st.integers(min_value=0, max_value=2**64 - 1).map(c.LSN)


@st.composite
def mariadb_positions(draw: st.DrawFn) -> c.GTIDPosition:
    domains = draw(st.dictionaries(st.integers(0, 3), st.integers(0, 50), min_size=1))
    parts = [f"{d}-{draw(st.integers(1, 3))}-{s}" for d, s in domains.items()]
    position = c.parse("mariadb", ",".join(parts))
    assert isinstance(position, c.GTIDPosition)
    return position


@st.composite
def mysql_sets(draw: st.DrawFn) -> c.GTIDSet:
    chosen = draw(st.lists(st.sampled_from(UUIDS), min_size=1, max_size=3, unique=True))
    parts = []
    for uuid in chosen:
        numbers = draw(st.lists(st.integers(1, 30), min_size=1, max_size=8))
        parts.append(uuid + "".join(f":{n}" for n in numbers))
    position = c.parse("mysql", ",".join(parts))
    assert isinstance(position, c.GTIDSet)
    return position


def _members(s: c.GTIDSet) -> set[tuple[str, int]]:
    return {(u, n) for u, spans in s.sets for a, b in spans for n in range(a, b + 1)}


def test_parse_reads_what_each_engine_prints() -> None:
    assert c.parse("postgresql", "16/B374D848") == c.LSN((0x16 << 32) | 0xB374D848)
    assert str(c.parse("postgresql", "0/3000060")) == "0/3000060"
    maria = c.parse("mariadb", "0-1-100,1-2-5")
    assert isinstance(maria, c.GTIDPosition) and maria.seqs == ((0, 100), (1, 5))
    mysql = c.parse("mysql", f"{UUIDS[0]}:1-5:7,{UUIDS[1]}:3")
    assert isinstance(mysql, c.GTIDSet)
    assert str(mysql) == f"{UUIDS[0]}:1-5:7,{UUIDS[1]}:3"
    assert c.parse("mariadb", "") is None and c.parse("postgresql", "  ") is None


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("postgresql", "16-B3"),
        ("postgresql", "G/0"),
        ("mariadb", "0-1"),
        ("mariadb", "0-1-x"),
        ("mysql", "not-a-uuid:1-3"),
        ("mysql", f"{UUIDS[0]}:5-3"),
        ("mysql", f"{UUIDS[0]}"),
    ],
)
def test_parse_names_what_is_wrong(kind: c.Kind, text: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        c.parse(kind, text)


@given(lsns, lsns)
def test_an_lsn_covers_exactly_the_lsns_at_or_before_it(a: c.LSN, b: c.LSN) -> None:
    assert c.covers(a, b) is (a.value >= b.value)
    assert c.parse("postgresql", str(a)) == a


@given(mariadb_positions(), mariadb_positions())
def test_a_mariadb_position_covers_when_every_domain_is_as_far(
    have: c.GTIDPosition, want: c.GTIDPosition
) -> None:
    held = dict(have.seqs)
    assert c.covers(have, want) is all(held.get(d, -1) >= s for d, s in want.seqs)
    assert c.parse("mariadb", str(have)) == have


@given(mysql_sets(), mysql_sets())
def test_a_mysql_set_covers_exactly_its_subsets(have: c.GTIDSet, want: c.GTIDSet) -> None:
    assert c.covers(have, want) is _members(want).issubset(_members(have))
    assert c.parse("mysql", str(have)) == have


@given(
    st.one_of(
        st.tuples(lsns, lsns),
        st.tuples(mariadb_positions(), mariadb_positions()),
        st.tuples(mysql_sets(), mysql_sets()),
    )
)
def test_merge_is_the_least_position_covering_both(pair: tuple[c.Position, c.Position]) -> None:
    a, b = pair
    both = c.merge(a, b)
    assert both is not None
    assert c.covers(both, a) and c.covers(both, b)
    assert c.covers(both, both) and c.covers(a, a)
    if c.covers(a, b):
        assert c.covers(a, both)  # nothing beyond what was needed
    if isinstance(both, c.GTIDSet):
        assert isinstance(a, c.GTIDSet) and isinstance(b, c.GTIDSet)
        assert _members(both) == _members(a) | _members(b)
    assert c.merge(None, a) == a and c.merge(a, None) == a


def test_positions_of_different_engines_never_cover_each_other() -> None:
    lsn = c.LSN(10)
    maria = c.parse("mariadb", "0-1-5")
    assert maria is not None
    assert not c.covers(lsn, maria) and not c.covers(maria, lsn)
    with pytest.raises(ValueError, match="different engines"):
        c.merge(lsn, maria)


@given(st.one_of(lsns, mariadb_positions(), mysql_sets()), st.text(min_size=1, max_size=40))
def test_a_token_brings_its_position_back_on_its_own_cluster_only(
    position: c.Position, cluster: str
) -> None:
    token = c.encode_token(cluster, position)
    assert token.isascii() and "=" not in token
    if not isinstance(position, c.GTIDSet):  # a MySQL set grows with its source servers
        assert len(token) < 100
    assert c.decode_token(cluster, token) == position
    with pytest.raises(c.ConsistencyTokenError, match="another cluster"):
        c.decode_token(cluster + "x", token)


@given(st.one_of(lsns, mariadb_positions()), st.data())
def test_an_altered_token_is_refused_not_read_as_another_position(
    position: c.Position, data: st.DataObject
) -> None:
    token = c.encode_token("cluster", position)
    cut = data.draw(st.integers(1, len(token) - 1))
    with pytest.raises(c.ConsistencyTokenError, match="malformed"):
        c.decode_token("cluster", token[:cut])


@pytest.mark.parametrize("token", ["%%%", "bm90IGEgdG9rZW4", "x" * 5000])
def test_garbage_tokens_are_refused_with_a_reason(token: str) -> None:
    with pytest.raises(c.ConsistencyTokenError):
        c.decode_token("cluster", token)


def test_a_tracker_only_moves_forward_and_remembers_tokens() -> None:
    tracker = c.Tracker("cluster")
    assert tracker.position is None and tracker.token == ""
    tracker.advance(c.LSN(100))
    tracker.advance(c.LSN(50))
    assert tracker.position == c.LSN(100)
    tracker.absorb(c.encode_token("cluster", c.LSN(300)))
    assert tracker.position == c.LSN(300)
    assert c.Tracker("cluster", tracker.token).position == c.LSN(300)
    snap = tracker.snapshot()
    tracker.mark_unsure()
    tracker.absorb(c.encode_token("cluster", c.LSN(1)))
    assert tracker.unsure, "a token says nothing of this session's own writes"
    tracker.advance(c.LSN(301), settles=snap)
    assert tracker.unsure, "a position read before the mark cannot settle it"
    tracker.advance(c.LSN(302), settles=tracker.snapshot())
    assert not tracker.unsure and tracker.position == c.LSN(302)


def test_a_mark_made_while_a_position_is_read_survives_that_read() -> None:
    """Thread B reads the writer's position; meanwhile thread A's capture fails and marks the
    tracker; B's (older) position must not clear A's mark."""
    tracker = c.Tracker("cluster")
    before_b_reads = tracker.snapshot()
    tracker.mark_unsure()  # A, during B's read
    tracker.advance(c.LSN(10), settles=before_b_reads)
    assert tracker.unsure
    other = c.Tracker("cluster")
    other.joined(tracker)
    assert other.unsure and other.position == c.LSN(10)


def test_asyncio_sessions_are_per_task_and_bad_tokens_are_refused() -> None:
    import asyncio

    from aurora_smartdriver import aio

    async def main() -> None:
        cluster = aio.Cluster("postgresql://app@127.0.0.1:9/app?consistency=session")
        try:
            with pytest.raises(c.ConsistencyTokenError, match="malformed"):
                cluster.session(token="not a token")
            mine = cluster._task_tracker()
            assert mine is not None and cluster._task_tracker() is mine

            async def child() -> object:
                return cluster._task_tracker()

            assert await asyncio.create_task(child()) is mine  # started after: shared

            async def fresh() -> object:
                return cluster._task_tracker()

            other = await asyncio.get_running_loop().run_in_executor(
                None, lambda: asyncio.run(fresh())
            )
            assert other is not None and other is not mine  # another task tree: its own
        finally:
            await cluster.close()

    asyncio.run(main())
