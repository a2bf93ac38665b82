"""Specification of routing: which host serves a request, and why."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aurora_smartdriver.routing import (
    Decision,
    HostStats,
    NoHost,
    Request,
    choose,
    connections_in_use,
    request_from_settings,
)
from aurora_smartdriver.settings import ReaderStrategy, Settings
from aurora_smartdriver.topology import Host, Role, Topology

moderate = settings(max_examples=40, deadline=None)

STRATEGIES: tuple[ReaderStrategy, ...] = (
    "random",
    "round_robin",
    "least_connections",
    "least_lag",
    "fastest_response",
)
RANKED: tuple[ReaderStrategy, ...] = ("least_connections", "least_lag", "fastest_response")


def writer(instance_id: str = "w") -> Host:
    return Host(instance_id, f"{instance_id}.db.test", 5432, Role.WRITER)


def reader(instance_id: str, lag_ms: float | None = 0.0) -> Host:
    return Host(instance_id, f"{instance_id}.db.test", 5432, Role.READER, lag_ms=lag_ms)


def cluster(*readers: Host, with_writer: bool = True) -> Topology:
    return Topology(writer=writer() if with_writer else None, readers=readers)


def route(
    topology: Topology | None,
    request: Request,
    stats: HostStats | None = None,
    *,
    turn: int = 0,
    seed: int = 0,
) -> Decision | NoHost:
    return choose(topology, request, stats or HostStats(), turn=turn, rng=random.Random(seed))


def decided(
    topology: Topology | None,
    request: Request,
    stats: HostStats | None = None,
    *,
    turn: int = 0,
    seed: int = 0,
) -> Decision:
    result = route(topology, request, stats, turn=turn, seed=seed)
    assert isinstance(result, Decision), result
    return result


def refused(topology: Topology | None, request: Request, stats: HostStats | None = None) -> str:
    result = route(topology, request, stats)
    assert isinstance(result, NoHost), result
    return result.reason


def reason(topology: Topology | None, request: Request, stats: HostStats | None = None) -> str:
    return route(topology, request, stats).reason


def chosen_ids(topology: Topology, request: Request, stats: HostStats, turns: range) -> list[str]:
    return [decided(topology, request, stats, turn=t).host.instance_id for t in turns]


# --- the specification, restated independently ------------------------------------------------


def usable(host: Host, request: Request, stats: HostStats) -> bool:
    return host.instance_id not in stats.down and host.instance_id not in request.exclude


def qualifies(host: Host, request: Request, stats: HostStats) -> bool:
    """A reader that a reader request may use."""
    limit = request.max_replica_lag_ms
    within = limit is None or (host.lag_ms is not None and host.lag_ms <= limit)
    return usable(host, request, stats) and within


def qualifying_readers(topology: Topology, request: Request, stats: HostStats) -> list[Host]:
    return [r for r in topology.readers if qualifies(r, request, stats)]


def usable_writer(topology: Topology, request: Request, stats: HostStats) -> Host | None:
    w = topology.writer
    return w if w is not None and usable(w, request, stats) else None


def candidates(topology: Topology, request: Request, stats: HostStats) -> list[Host]:
    """The hosts a reader or "any" request picks among (no fallback), by instance id."""
    hosts = qualifying_readers(topology, request, stats)
    w = usable_writer(topology, request, stats)
    if request.role == "any" and w is not None:
        hosts.append(w)
    return sorted(hosts, key=lambda h: h.instance_id)


# --- strategies -------------------------------------------------------------------------------

# Figures come from small sets so that ties, and lags exactly at a limit, come up often.
IDS = ("a", "b", "c", "d", "e", "f", "g")
LAGS = (None, 0.0, 5.0, 100.0, 500.0, 2000.0)
LIMITS = (None, 0.0, 100.0, 250.0, 500.0)
IN_USE = (None, 0, 1, 2, 3)  # None: absent from HostStats.in_use
RESPONSE_MS = (None, 1.0, 2.5, 40.0)  # None: unmeasured

T = TypeVar("T")


def picks(draw: st.DrawFn, options: Sequence[T], n: int) -> list[T]:
    """`n` picks among `options`, drawn as one integer.

    Drawing is the slow part of these tests; one draw per figure would make a scenario cost
    dozens. The integer still shrinks towards all-first-options.
    """
    code = draw(st.integers(0, len(options) ** n - 1))
    chosen = []
    for _ in range(n):
        code, index = divmod(code, len(options))
        chosen.append(options[index])
    return chosen


def subset(draw: st.DrawFn, items: Sequence[str]) -> frozenset[str]:
    keep = picks(draw, (False, True), len(items))
    return frozenset(i for i, kept in zip(items, keep, strict=True) if kept)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Topology, Request, HostStats]:
    """A snapshot of 1-7 instances (0-7 readers, usually a writer), a request and figures.

    Down and excluded sets and the figures may name an instance the snapshot does not hold.
    """
    ids = IDS[: draw(st.integers(1, len(IDS)))]
    writer_at = draw(st.integers(0, len(ids)))  # len(ids): no writer
    readers = [i for at, i in enumerate(ids) if at != writer_at]
    topology = Topology(
        writer=writer(ids[writer_at]) if writer_at < len(ids) else None,
        readers=tuple(map(reader, readers, picks(draw, LAGS, len(readers)))),
    )
    known = (*ids, "gone")
    in_use = picks(draw, IN_USE, len(known))
    response_ms = picks(draw, RESPONSE_MS, len(known))
    stats = HostStats(
        in_use={i: n for i, n in zip(known, in_use, strict=True) if n is not None},
        response_ms={i: ms for i, ms in zip(known, response_ms, strict=True) if ms is not None},
        down=subset(draw, known),
    )
    request = Request(
        role=draw(st.sampled_from(["writer", "reader", "any"])),
        strategy=draw(st.sampled_from(STRATEGIES)),
        max_replica_lag_ms=draw(st.sampled_from(LIMITS)),
        fallback=draw(st.sampled_from(["writer", "fail"])),
        exclude=subset(draw, known),
    )
    return topology, request, stats


turns = st.integers(-1000, 10**9)
seeds = st.integers(0, 2**32)


def with_request(
    scenario: tuple[Topology, Request, HostStats], **changes: object
) -> tuple[Topology, Request, HostStats]:
    topology, request, stats = scenario
    return topology, dataclasses.replace(request, **changes), stats  # type: ignore[arg-type]


# --- properties -------------------------------------------------------------------------------


@moderate
@given(scenarios(), turns, seeds)
def test_writer_request_goes_to_the_writer_and_nowhere_else(
    scenario: tuple[Topology, Request, HostStats], turn: int, seed: int
) -> None:
    topology, request, stats = with_request(scenario, role="writer")
    result = route(topology, request, stats, turn=turn, seed=seed)
    if isinstance(result, Decision):
        assert result.host is topology.writer
        assert result.host.role is Role.WRITER
        assert not result.fell_back
    else:
        assert usable_writer(topology, request, stats) is None


@moderate
@given(scenarios(), turns, seeds)
def test_reader_request_never_goes_above_the_lag_limit_unless_flagged_fallback(
    scenario: tuple[Topology, Request, HostStats], turn: int, seed: int
) -> None:
    topology, request, stats = with_request(scenario, role="reader")
    result = route(topology, request, stats, turn=turn, seed=seed)
    if isinstance(result, Decision):
        if result.fell_back:
            assert result.host is topology.writer
        else:
            assert result.host in topology.readers
            assert qualifies(result.host, request, stats)


@moderate
@given(scenarios(), turns, seeds)
def test_no_request_gets_a_down_or_excluded_host(
    scenario: tuple[Topology, Request, HostStats], turn: int, seed: int
) -> None:
    topology, request, stats = scenario
    result = route(topology, request, stats, turn=turn, seed=seed)
    if isinstance(result, Decision):
        assert result.host.instance_id not in stats.down
        assert result.host.instance_id not in request.exclude


@moderate
@given(scenarios(), turns, seeds)
def test_any_request_gets_the_writer_or_a_qualifying_reader(
    scenario: tuple[Topology, Request, HostStats], turn: int, seed: int
) -> None:
    topology, request, stats = with_request(scenario, role="any")
    result = route(topology, request, stats, turn=turn, seed=seed)
    if isinstance(result, Decision):
        assert not result.fell_back
        assert result.host in candidates(topology, request, stats)


@moderate
@given(scenarios(), turns, seeds)
def test_fallback_happens_exactly_when_no_reader_qualifies_and_fallback_is_writer(
    scenario: tuple[Topology, Request, HostStats], turn: int, seed: int
) -> None:
    topology, request, stats = scenario
    result = route(topology, request, stats, turn=turn, seed=seed)
    expected = (
        request.role == "reader"
        and request.fallback == "writer"
        and not qualifying_readers(topology, request, stats)
        and usable_writer(topology, request, stats) is not None
    )
    assert (isinstance(result, Decision) and result.fell_back) == expected


@moderate
@given(scenarios(), turns, seeds)
def test_no_host_exactly_when_the_documented_conditions_hold(
    scenario: tuple[Topology, Request, HostStats], turn: int, seed: int
) -> None:
    topology, request, stats = scenario
    no_writer = usable_writer(topology, request, stats) is None
    no_reader = not qualifying_readers(topology, request, stats)
    expected = {
        "writer": no_writer,
        "reader": no_reader and (request.fallback == "fail" or no_writer),
        "any": no_reader and no_writer,
    }[request.role]
    result = route(topology, request, stats, turn=turn, seed=seed)
    assert isinstance(result, NoHost) == expected, result


@moderate
@given(scenarios(), turns)
def test_no_topology_means_no_host(
    scenario: tuple[Topology, Request, HostStats], turn: int
) -> None:
    _, request, stats = scenario
    assert refused(None, request, stats) == "no topology known yet"


@moderate
@given(scenarios(), turns, seeds)
def test_same_seed_and_turn_give_the_same_decision(
    scenario: tuple[Topology, Request, HostStats], turn: int, seed: int
) -> None:
    topology, request, stats = scenario
    first = route(topology, request, stats, turn=turn, seed=seed)
    assert route(topology, request, stats, turn=turn, seed=seed) == first


@moderate
@given(scenarios(), turns, seeds)
def test_only_the_random_strategy_draws_from_the_generator(
    scenario: tuple[Topology, Request, HostStats], turn: int, seed: int
) -> None:
    topology, request, stats = scenario
    rng = random.Random(seed)
    before = rng.getstate()
    choose(topology, request, stats, turn=turn, rng=rng)
    if request.strategy != "random":
        assert rng.getstate() == before


@moderate
@given(scenarios(), turns, st.integers(1, 3), st.sampled_from(["reader", "any"]))
def test_round_robin_gives_each_candidate_exactly_k_of_k_rounds(
    scenario: tuple[Topology, Request, HostStats], start: int, k: int, role: str
) -> None:
    topology, request, stats = with_request(scenario, role=role, strategy="round_robin")
    hosts = candidates(topology, request, stats)
    if not hosts:
        return
    counts = Counter(chosen_ids(topology, request, stats, range(start, start + k * len(hosts))))
    assert counts == {h.instance_id: k for h in hosts}


@moderate
@given(scenarios(), turns, st.sampled_from(["reader", "any"]))
def test_least_connections_picks_a_host_with_the_fewest_in_use(
    scenario: tuple[Topology, Request, HostStats], turn: int, role: str
) -> None:
    topology, request, stats = with_request(scenario, role=role, strategy="least_connections")
    hosts = candidates(topology, request, stats)
    if not hosts:
        return
    in_use = {h.instance_id: stats.in_use.get(h.instance_id, 0) for h in hosts}
    chosen = decided(topology, request, stats, turn=turn).host
    assert in_use[chosen.instance_id] == min(in_use.values())


@moderate
@given(scenarios(), turns, st.sampled_from(RANKED), st.sampled_from(["reader", "any"]))
def test_ranked_strategies_share_ties_in_turn(
    scenario: tuple[Topology, Request, HostStats],
    start: int,
    strategy: ReaderStrategy,
    role: str,
) -> None:
    """Over as many turns as there are tied best hosts, each of them is chosen once."""
    topology, request, stats = with_request(scenario, role=role, strategy=strategy)
    hosts = candidates(topology, request, stats)
    if not hosts:
        return
    first = decided(topology, request, stats, turn=start).host
    rank = ranking(strategy, stats)
    tied = {h.instance_id for h in hosts if rank(h) == rank(first)}
    chosen = chosen_ids(topology, request, stats, range(start, start + len(tied)))
    assert sorted(chosen) == sorted(tied)


def ranking(strategy: ReaderStrategy, stats: HostStats) -> Callable[[Host], float]:
    """The figure a ranked strategy minimises, as the module docstring states it."""
    if strategy == "least_connections":
        return lambda h: stats.in_use.get(h.instance_id, 0)
    if strategy == "fastest_response":
        return lambda h: stats.response_ms.get(h.instance_id, math.inf)
    return lag_rank


@moderate
@given(scenarios(), turns, st.sampled_from(["reader", "any"]))
def test_least_lag_picks_the_smallest_lag_with_unknown_last(
    scenario: tuple[Topology, Request, HostStats], turn: int, role: str
) -> None:
    topology, request, stats = with_request(scenario, role=role, strategy="least_lag")
    hosts = candidates(topology, request, stats)
    if not hosts:
        return
    chosen = decided(topology, request, stats, turn=turn).host
    lag = {h.instance_id: lag_rank(h) for h in hosts}
    assert lag[chosen.instance_id] == min(lag.values())


def lag_rank(h: Host) -> float:
    if h.role is Role.WRITER:
        return 0.0
    return math.inf if h.lag_ms is None else h.lag_ms


@moderate
@given(scenarios(), turns, st.sampled_from(["reader", "any"]))
def test_fastest_response_picks_the_fastest_measured_host(
    scenario: tuple[Topology, Request, HostStats], turn: int, role: str
) -> None:
    topology, request, stats = with_request(scenario, role=role, strategy="fastest_response")
    hosts = candidates(topology, request, stats)
    if not hosts:
        return
    chosen = decided(topology, request, stats, turn=turn).host
    measured = {
        h.instance_id: stats.response_ms[h.instance_id]
        for h in hosts
        if h.instance_id in stats.response_ms
    }
    if measured:
        assert measured.get(chosen.instance_id) == min(measured.values())
    else:
        assert chosen in hosts


@moderate
@given(scenarios(), turns, seeds, st.sampled_from(["reader", "any"]))
def test_random_picks_among_the_candidates(
    scenario: tuple[Topology, Request, HostStats], turn: int, seed: int, role: str
) -> None:
    topology, request, stats = with_request(scenario, role=role, strategy="random")
    hosts = candidates(topology, request, stats)
    if not hosts:
        return
    assert decided(topology, request, stats, turn=turn, seed=seed).host in hosts


# --- examples: qualification ------------------------------------------------------------------


def test_reader_of_unknown_lag_qualifies_without_a_limit() -> None:
    topology = cluster(reader("r1", lag_ms=None))
    assert decided(topology, Request(role="reader")).host.instance_id == "r1"


def test_reader_of_unknown_lag_does_not_qualify_under_any_limit() -> None:
    topology = cluster(reader("r1", lag_ms=None))
    request = Request(role="reader", max_replica_lag_ms=1e12)
    assert decided(topology, request).fell_back


def test_reader_exactly_at_the_lag_limit_qualifies() -> None:
    topology = cluster(reader("r1", lag_ms=500.0), reader("r2", lag_ms=500.1))
    request = Request(role="reader", strategy="round_robin", max_replica_lag_ms=500.0)
    assert set(chosen_ids(topology, request, HostStats(), range(4))) == {"r1"}


def test_writer_request_ignores_readers_and_strategy() -> None:
    topology = cluster(reader("a"), reader("b"))
    for strategy in STRATEGIES:
        request = Request(role="writer", strategy=strategy, max_replica_lag_ms=0.0)
        assert decided(topology, request).host.instance_id == "w"


def test_reads_continue_on_readers_while_no_writer_is_known() -> None:
    topology = cluster(reader("r1"), with_writer=False)
    assert decided(topology, Request(role="reader")).host.instance_id == "r1"
    assert refused(topology, Request(role="writer")) == "no writer known"


def test_excluding_adds_to_the_hosts_to_avoid() -> None:
    request = Request(role="reader", exclude=frozenset({"r1"})).excluding("r2", "r3")
    assert request.exclude == {"r1", "r2", "r3"}
    topology = cluster(reader("r1"), reader("r2"), reader("r3"), reader("r4"))
    assert decided(topology, request).host.instance_id == "r4"


# --- examples: strategies ---------------------------------------------------------------------


def test_round_robin_walks_readers_in_instance_id_order() -> None:
    topology = cluster(reader("c"), reader("a"), reader("b"))
    request = Request(role="reader", strategy="round_robin")
    assert chosen_ids(topology, request, HostStats(), range(6)) == ["a", "b", "c"] * 2


def test_round_robin_for_any_includes_the_writer_in_id_order() -> None:
    topology = Topology(writer("b"), (reader("a"), reader("c")))
    request = Request(role="any", strategy="round_robin")
    assert chosen_ids(topology, request, HostStats(), range(3)) == ["a", "b", "c"]


def test_least_connections_treats_unknown_hosts_as_idle() -> None:
    topology = cluster(reader("a"), reader("b"))
    stats = HostStats(in_use={"a": 1})
    request = Request(role="reader", strategy="least_connections")
    assert chosen_ids(topology, request, stats, range(3)) == ["b", "b", "b"]


def test_least_lag_ranks_unknown_lag_after_known() -> None:
    topology = cluster(reader("a", lag_ms=None), reader("b", lag_ms=900.0))
    request = Request(role="reader", strategy="least_lag")
    assert chosen_ids(topology, request, HostStats(), range(3)) == ["b", "b", "b"]


def test_least_lag_for_any_prefers_the_writer() -> None:
    topology = cluster(reader("a", lag_ms=1.0))
    request = Request(role="any", strategy="least_lag")
    assert decided(topology, request).host.instance_id == "w"


def test_fastest_response_uses_unmeasured_hosts_only_when_none_is_measured() -> None:
    topology = cluster(reader("a"), reader("b"), reader("c"))
    request = Request(role="reader", strategy="fastest_response")
    measured = HostStats(response_ms={"c": 80.0})
    assert chosen_ids(topology, request, measured, range(3)) == ["c", "c", "c"]
    unmeasured = HostStats()
    assert chosen_ids(topology, request, unmeasured, range(3)) == ["a", "b", "c"]


def test_random_reaches_every_reader() -> None:
    topology = cluster(reader("a"), reader("b"), reader("c"))
    request = Request(role="reader", strategy="random")
    seen = {decided(topology, request, seed=seed).host.instance_id for seed in range(100)}
    assert seen == {"a", "b", "c"}


# --- examples: reasons ------------------------------------------------------------------------

DOWN_W = HostStats(down=frozenset({"w"}))


@pytest.mark.parametrize(
    ("topology", "request_", "stats", "expected"),
    [
        (cluster(reader("r1")), Request(role="writer"), None, "writer request"),
        (
            cluster(reader("r1", 9.0), reader("r2", 3.0)),
            Request(role="reader", strategy="least_lag"),
            None,
            "reader r2 by least_lag",
        ),
        (
            cluster(reader("r1", 1.0)),
            Request(role="any", strategy="least_lag"),
            None,
            "writer w by least_lag",
        ),
        (
            cluster(reader("r1", 900.0), reader("r2", 600.0)),
            Request(role="reader", max_replica_lag_ms=500.0),
            None,
            "writer: no reader qualifies (all above max_replica_lag 500 ms)",
        ),
        (
            cluster(),
            Request(role="reader"),
            None,
            "writer: no reader qualifies (no readers known)",
        ),
        (
            cluster(reader("r1", 900.0)),
            Request(role="reader", max_replica_lag_ms=250.0),
            None,
            "writer: no reader qualifies (r1 above max_replica_lag 250 ms)",
        ),
        (
            cluster(reader("r1", None), reader("r2", None)),
            Request(role="reader", max_replica_lag_ms=0.0),
            None,
            "writer: no reader qualifies (all of unknown lag (max_replica_lag 0 ms))",
        ),
        (
            cluster(reader("r1"), reader("r2"), reader("r3", 900.0), reader("r4", None)),
            Request(role="reader", max_replica_lag_ms=500.0, exclude=frozenset({"r2"})),
            HostStats(down=frozenset({"r1"})),
            "writer: no reader qualifies (r1 down; r2 excluded; r3 above max_replica_lag"
            " 500 ms; r4 of unknown lag (max_replica_lag 500 ms))",
        ),
        (
            cluster(reader("r1"), reader("r2"), reader("r3")),
            Request(role="reader", exclude=frozenset({"r1", "r3"})),
            HostStats(down=frozenset({"r2"})),
            "writer: no reader qualifies (r2 down; r1, r3 excluded)",
        ),
    ],
)
def test_decision_reasons_say_why(
    topology: Topology, request_: Request, stats: HostStats | None, expected: str
) -> None:
    assert reason(topology, request_, stats) == expected


@pytest.mark.parametrize(
    ("topology", "request_", "stats", "expected"),
    [
        (None, Request(), None, "no topology known yet"),
        (cluster(reader("r1"), with_writer=False), Request(), None, "no writer known"),
        (cluster(), Request(), DOWN_W, "writer w is down"),
        (cluster(), Request(exclude=frozenset({"w"})), None, "writer w is excluded"),
        (
            cluster(reader("r1"), reader("r2")),
            Request(role="reader", fallback="fail"),
            HostStats(down=frozenset({"r1", "r2"})),
            "no reader qualifies (all down) and reader_fallback is fail",
        ),
        (
            cluster(reader("r1")),
            Request(role="reader", exclude=frozenset({"r1"})),
            DOWN_W,
            "no reader qualifies (r1 excluded) and writer w is down",
        ),
        (
            cluster(with_writer=False),
            Request(role="reader"),
            None,
            "no reader qualifies (no readers known) and no writer known",
        ),
        (
            cluster(reader("r1"), reader("r2")),
            Request(role="any", exclude=frozenset({"r1", "r2"})),
            DOWN_W,
            "no host qualifies: writer w is down and no reader qualifies (all excluded)",
        ),
    ],
)
def test_no_host_reasons_say_why(
    topology: Topology | None, request_: Request, stats: HostStats | None, expected: str
) -> None:
    assert refused(topology, request_, stats) == expected


def test_fallback_to_the_writer_is_flagged() -> None:
    topology = cluster(reader("r1", 900.0))
    result = decided(topology, Request(role="reader", max_replica_lag_ms=500.0))
    assert result.host.instance_id == "w"
    assert result.fell_back


# --- requests ---------------------------------------------------------------------------------


def test_request_from_settings_converts_the_lag_limit_to_milliseconds() -> None:
    request = request_from_settings(
        Settings.from_params(
            {
                "role": "reader",
                "reader_strategy": "least_lag",
                "max_replica_lag": "250ms",
                "reader_fallback": "fail",
            }
        )
    )
    assert request == Request(
        role="reader", strategy="least_lag", max_replica_lag_ms=250.0, fallback="fail"
    )


def test_request_from_default_settings_is_the_default_request() -> None:
    assert request_from_settings(Settings()) == Request()


def test_request_from_settings_role_overrides_the_settings_role() -> None:
    assert request_from_settings(Settings(role="writer"), role="reader").role == "reader"
    assert request_from_settings(Settings(role="any")).role == "any"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"role": "primary"}, "unknown role 'primary'"),
        ({"strategy": "weighted"}, "unknown strategy 'weighted'"),
        ({"fallback": "retry"}, "unknown fallback 'retry'"),
        ({"max_replica_lag_ms": -1.0}, "max_replica_lag_ms must be None or >= 0, not -1.0"),
        ({"max_replica_lag_ms": float("nan")}, "max_replica_lag_ms must be None or >= 0"),
    ],
)
def test_malformed_request_is_rejected(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Request(**changes)  # type: ignore[arg-type]


def test_request_exclude_accepts_any_set() -> None:
    request = Request(exclude={"a"})  # type: ignore[arg-type]
    assert request.exclude == frozenset({"a"})
    assert isinstance(request.exclude, frozenset)


# -- fairness over a mixed stream of requests -----------------------------------------------------

KINDS = ("writer", "reader", "any")


def per_kind_turns(kinds: Sequence[str]) -> list[int]:
    """The turn each request gets when every request kind counts its own turns (as the
    runtime does): the n-th request of a kind has turn n."""
    seen: Counter[str] = Counter()
    turns_given = []
    for kind in kinds:
        turns_given.append(seen[kind])
        seen[kind] += 1
    return turns_given


@moderate
@given(
    st.integers(min_value=2, max_value=5),
    st.integers(min_value=1, max_value=4),
    st.lists(st.sampled_from(["writer", "any"]), max_size=60),
    st.data(),
)
def test_round_robin_reads_are_fair_whatever_other_requests_interleave(
    readers_count: int, k: int, others: list[str], data: st.DataObject
) -> None:
    """k rounds of reader requests, with any writer/any requests between them: each reader
    serves exactly k of them (a counter shared across kinds fails this: when writer and
    reader requests alternate, every read gets an even turn and goes to one reader)."""
    topology = cluster(*(reader(f"r{i}") for i in range(readers_count)))
    reads = ["reader"] * (k * readers_count)
    positions = sorted(
        data.draw(st.lists(st.integers(0, len(reads)), min_size=len(others), max_size=len(others)))
    )
    stream: list[str] = []
    cursor = 0
    for position, other in zip(positions, others, strict=True):
        stream += [*reads[cursor:position], other]
        cursor = max(cursor, position)
    stream += reads[cursor:]
    requests = {kind: Request(role=kind, strategy="round_robin") for kind in KINDS}  # type: ignore[arg-type]
    served: Counter[str] = Counter()
    for kind, turn in zip(stream, per_kind_turns(stream), strict=True):
        decision = decided(topology, requests[kind], turn=turn)
        if kind == "reader":
            served[decision.host.instance_id] += 1
    assert served == {f"r{i}": k for i in range(readers_count)}


@moderate
@given(
    st.integers(min_value=2, max_value=5),
    st.lists(st.tuples(st.booleans(), st.integers(0, 1000)), max_size=80),
)
def test_least_connections_keeps_connections_in_use_balanced(
    readers_count: int, steps: list[tuple[bool, int]]
) -> None:
    """Borrow (True) or give back a connection (False, the n-th one held, if any): counting
    the connections in use, the readers' counts never differ by more than one after a
    borrow that found them balanced, and each borrow goes to a least-used reader."""
    topology = cluster(*(reader(f"r{i}") for i in range(readers_count)))
    request = Request(role="reader", strategy="least_connections")
    held: list[str] = []
    for turn, (borrow, which) in enumerate(steps):
        in_use = Counter(held)
        if borrow or not held:
            stats = HostStats(in_use=dict(in_use))
            chosen = decided(topology, request, stats, turn=turn).host.instance_id
            figures = [in_use.get(f"r{i}", 0) for i in range(readers_count)]
            assert in_use.get(chosen, 0) == min(figures)
            balanced = max(figures) - min(figures) <= 1
            held.append(chosen)
            after = Counter(held)
            if balanced:
                counts = [after.get(f"r{i}", 0) for i in range(readers_count)]
                assert max(counts) - min(counts) <= 1
        else:
            held.pop(which % len(held))


figures_by_id = st.dictionaries(
    st.sampled_from(["r0", "r1", "r2", "w"]), st.integers(min_value=0, max_value=50), max_size=4
)


@moderate
@given(figures_by_id, figures_by_id, figures_by_id)
def test_connections_in_use_adds_lent_and_own_open_connections(
    pooled: dict[str, int], opened: dict[str, int], closed: dict[str, int]
) -> None:
    counted = connections_in_use(pooled, opened, closed)
    for key in pooled.keys() | opened.keys() | closed.keys():
        expected = max(0, pooled.get(key, 0)) + max(0, opened.get(key, 0) - closed.get(key, 0))
        assert counted.get(key, 0) == expected
    assert all(value > 0 for value in counted.values())


def test_connections_in_use_counts_a_connect_that_is_still_open() -> None:
    assert connections_in_use({"r1": 1}, {"r1": 3, "r2": 2}, {"r1": 1, "r2": 2}) == {"r1": 3}
