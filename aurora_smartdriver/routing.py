"""Which host serves a request: pure functions over the topology snapshot and per-host figures.

`choose` takes a `Topology`, a `Request` (what the caller wants) and `HostStats` (what the pools
and the monitor measured) and returns a `Decision` naming the host and why, or `NoHost` saying why
none qualifies. Nothing here does I/O, reads a clock or keeps state between calls: the caller
passes the round-robin counter (`turn`) and the random generator, so every decision can be
replayed and tested as a value.

Rules, in short:

- A writer request goes to the topology's writer and nowhere else; when the writer is unknown,
  down or excluded the answer is `NoHost` (finding a new writer is the failover layer's job).
- A reader request goes to a reader that is not down, not excluded and within
  `max_replica_lag_ms`. A reader whose lag is unknown (None) qualifies only when no limit is set:
  a limit is a promise about staleness that an unknown figure cannot keep. When no reader
  qualifies, `fallback="writer"` sends the request to the writer (flagged `fell_back`) if it is
  usable, and `fallback="fail"` returns `NoHost`.
- With `home_region` (Aurora Global Database), only readers of that region qualify; the
  fallback above applies when none does, so a read never goes to another region's reader.
- An "any" request picks among the usable writer and the qualifying readers together, with the
  same strategy; the lag limit applies to the readers only (the writer does not lag), and
  `fallback` plays no part since the writer is already a candidate.

Strategies pick among the candidates ordered by instance id:

- ``random``: ``rng.choice``.
- ``round_robin``: the candidate at ``turn % len(candidates)``; over ``k * len(candidates)``
  consecutive turns each candidate is chosen exactly ``k`` times.
- ``least_connections``: fewest connections in use (an instance missing from
  `HostStats.in_use` has none).
- ``least_lag``: smallest lag; a reader of unknown lag ranks after every known one, and the
  writer (in an "any" request) counts as lag 0.
- ``fastest_response``: smallest measured response time; an instance without a measurement
  ranks after every measured one, so unmeasured instances are used only when none is measured.

The three "least"/"fastest" strategies break ties by the turn, round-robin among the tied
candidates, so equal hosts share the load instead of the first one taking it all.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import get_args

from aurora_smartdriver.settings import ReaderFallback, ReaderStrategy, Settings, TargetRole
from aurora_smartdriver.topology import Host, Role, Topology

__all__ = [
    "Decision",
    "HostStats",
    "NoHost",
    "Request",
    "choose",
    "connections_in_use",
    "request_from_settings",
]

_ROLES: tuple[str, ...] = get_args(TargetRole)
_STRATEGIES: tuple[str, ...] = get_args(ReaderStrategy)
_FALLBACKS: tuple[str, ...] = get_args(ReaderFallback)
_NO_FIGURES: Mapping[str, int] = MappingProxyType({})
"""The empty default for `HostStats`' figures (int values also fit `Mapping[str, float]`)."""


@dataclass(frozen=True, slots=True)
class Request:
    """What a caller asks of the router: a role, how to pick a reader, and hosts to avoid.

    Built once per cluster from the settings (`request_from_settings`); the failover layer
    derives narrower requests with `excluding` rather than mutating one.
    `max_replica_lag_ms=None` means no lag limit.
    """

    role: TargetRole = "writer"
    strategy: ReaderStrategy = "random"
    max_replica_lag_ms: float | None = None
    fallback: ReaderFallback = "writer"
    exclude: frozenset[str] = frozenset()
    home_region: str | None = None
    """Aurora Global Database: only readers of this region qualify (None: any region)."""

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {_ROLES}")
        if self.strategy not in _STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {_STRATEGIES}")
        if self.fallback not in _FALLBACKS:
            raise ValueError(f"unknown fallback {self.fallback!r}; expected one of {_FALLBACKS}")
        limit = self.max_replica_lag_ms
        if limit is not None and (isinstance(limit, bool) or not limit >= 0):
            raise ValueError(f"max_replica_lag_ms must be None or >= 0, not {limit!r}")
        if not isinstance(self.exclude, frozenset):
            object.__setattr__(self, "exclude", frozenset(self.exclude))

    def excluding(self, *instance_ids: str) -> Request:
        """This request with `instance_ids` added to the hosts to avoid."""
        return dataclasses.replace(self, exclude=self.exclude.union(instance_ids))


@dataclass(frozen=True, slots=True)
class HostStats:
    """Per-instance figures the router weighs, keyed by instance id.

    `in_use`: connections currently borrowed from the instance's pool (least_connections).
    `response_ms`: the monitor's latest response time (fastest_response); an instance absent
    from it counts as unmeasured. `down`: instances known to be unreachable.

    The mappings are only read, during `choose`; build a new `HostStats` when figures change
    rather than mutating mappings that another thread may be routing with.

    `Host.response_time_ms` in the topology is not consulted: figures that move with every
    measurement belong here, not in the versioned snapshot, where `accept` would turn each new
    figure into a new topology version.
    """

    in_use: Mapping[str, int] = field(default_factory=lambda: _NO_FIGURES)
    response_ms: Mapping[str, float] = field(default_factory=lambda: _NO_FIGURES)
    down: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    """The host that serves a request, and why it was chosen.

    `fell_back` is True when a reader request went to the writer because no reader qualified;
    `reason` then says why none did.
    """

    host: Host
    reason: str
    fell_back: bool = False


@dataclass(frozen=True, slots=True)
class NoHost:
    """No host may serve the request; `reason` says which condition failed."""

    reason: str


_NO_TOPOLOGY = NoHost("no topology known yet")
_WRITER_REQUEST = "writer request"


def choose(
    topology: Topology | None,
    request: Request,
    stats: HostStats,
    *,
    turn: int,
    rng: random.Random,
) -> Decision | NoHost:
    """The host that serves `request` in `topology`, or `NoHost` with the reason.

    `turn` is a counter the caller increments per call (round robin and tie breaking use it);
    `rng` is consulted only by the random strategy. See the module docstring for the rules.
    """
    if topology is None:
        return _NO_TOPOLOGY
    role = request.role
    if role == "writer":
        writer = topology.writer
        if (
            writer is not None
            and writer.instance_id not in stats.down
            and writer.instance_id not in request.exclude
        ):
            return Decision(writer, _WRITER_REQUEST)
        return NoHost(_writer_problem(topology, request, stats))

    candidates = _qualifying_readers(topology, request, stats)
    if role == "any":
        writer = _usable_writer(topology, request, stats)
        if writer is not None:
            bisect.insort(candidates, writer, key=_instance_id)
        elif not candidates:
            return NoHost(
                f"no host qualifies: {_writer_problem(topology, request, stats)} and no reader "
                f"qualifies ({_why_no_reader(topology, request, stats)})"
            )
    elif not candidates:
        why = _why_no_reader(topology, request, stats)
        if request.fallback == "fail":
            return NoHost(f"no reader qualifies ({why}) and reader_fallback is fail")
        writer = _usable_writer(topology, request, stats)
        if writer is None:
            return NoHost(
                f"no reader qualifies ({why}) and {_writer_problem(topology, request, stats)}"
            )
        return Decision(writer, f"writer: no reader qualifies ({why})", fell_back=True)

    host = _pick(candidates, request.strategy, stats, turn, rng)
    kind = "writer" if host.role is Role.WRITER else "reader"
    return Decision(host, f"{kind} {host.instance_id} by {request.strategy}")


def connections_in_use(
    pooled: Mapping[str, int], opened: Mapping[str, int], closed: Mapping[str, int]
) -> Mapping[str, int]:
    """Connections in use per instance id, for `HostStats.in_use`: those lent by the pools
    (`pooled`) plus the connections of their own still open (`opened - closed`, counters over
    the process's life), never below zero; instances with none are left out.

    Counting only the pools' would make every `connect()` look idle to least_connections.
    """
    total: dict[str, int] = {}
    for key in pooled.keys() | opened.keys():
        count = max(0, pooled.get(key, 0)) + max(0, opened.get(key, 0) - closed.get(key, 0))
        if count > 0:
            total[key] = count
    return MappingProxyType(total)


def request_from_settings(settings: Settings, role: TargetRole | None = None) -> Request:
    """The routing request the settings describe; `role` overrides `settings.role`.

    `max_replica_lag` is in seconds in the settings and in milliseconds here, the unit the
    topology sources report lag in.
    """
    limit = settings.max_replica_lag
    return Request(
        role=settings.role if role is None else role,
        strategy=settings.reader_strategy,
        max_replica_lag_ms=None if limit is None else limit * 1000.0,
        fallback=settings.reader_fallback,
        home_region=settings.home_region,
    )


def _qualifying_readers(topology: Topology, request: Request, stats: HostStats) -> list[Host]:
    """Readers not down, not excluded and within the lag limit, by instance id."""
    down = stats.down
    exclude = request.exclude
    limit = request.max_replica_lag_ms
    readers = _home_readers(topology, request)
    if limit is None:
        return [r for r in readers if r.instance_id not in down and r.instance_id not in exclude]
    return [
        r
        for r in readers
        if r.instance_id not in down
        and r.instance_id not in exclude
        and r.lag_ms is not None
        and r.lag_ms <= limit
    ]


def _home_readers(topology: Topology, request: Request) -> tuple[Host, ...]:
    """The readers a request may use: those of its home region when it names one."""
    home = request.home_region
    if home is None:
        return topology.readers
    return tuple(r for r in topology.readers if r.region == home)


def _pick(
    candidates: list[Host],
    strategy: ReaderStrategy,
    stats: HostStats,
    turn: int,
    rng: random.Random,
) -> Host:
    """One of `candidates` (non-empty, ordered by instance id) by `strategy`."""
    if len(candidates) == 1:
        return candidates[0]
    if strategy == "round_robin":
        return candidates[turn % len(candidates)]
    if strategy == "random":
        return rng.choice(candidates)
    figures: list[float]
    if strategy == "least_connections":
        in_use = stats.in_use
        figures = [in_use.get(h.instance_id, 0) for h in candidates]
    elif strategy == "least_lag":
        figures = [_lag_rank(h) for h in candidates]
    else:
        response_ms = stats.response_ms
        figures = [response_ms.get(h.instance_id, math.inf) for h in candidates]
    best = min(figures)
    tied = [h for h, figure in zip(candidates, figures, strict=True) if figure == best]
    return tied[turn % len(tied)]


def _lag_rank(h: Host) -> float:
    if h.role is Role.WRITER:
        return 0.0
    return math.inf if h.lag_ms is None else h.lag_ms


def _usable_writer(topology: Topology, request: Request, stats: HostStats) -> Host | None:
    """The writer when it is known, not down and not excluded; else None."""
    writer = topology.writer
    if writer is None or writer.instance_id in stats.down or writer.instance_id in request.exclude:
        return None
    return writer


def _writer_problem(topology: Topology, request: Request, stats: HostStats) -> str:
    """Why the writer cannot serve a request; only meaningful when `_usable_writer` is None."""
    writer = topology.writer
    if writer is None:
        return "no writer known"
    if writer.instance_id in stats.down:
        return f"writer {writer.instance_id} is down"
    return f"writer {writer.instance_id} is excluded"


def _why_no_reader(topology: Topology, request: Request, stats: HostStats) -> str:
    """Why none of the readers qualifies, grouped by cause: "all down", "r2 down; r3 excluded".

    Called only when no reader qualifies, so every reader has a cause.
    """
    readers = _home_readers(topology, request)
    if not readers:
        if topology.readers and request.home_region is not None:
            return f"no reader in home_region {request.home_region}"
        return "no readers known"
    limit = request.max_replica_lag_ms
    shown_limit = "" if limit is None else _ms(limit)
    groups: dict[str, list[str]] = {
        "down": [],
        "excluded": [],
        f"above max_replica_lag {shown_limit}": [],
        f"of unknown lag (max_replica_lag {shown_limit})": [],
    }
    down, excluded, above, unknown = groups.values()
    for r in readers:
        if r.instance_id in stats.down:
            down.append(r.instance_id)
        elif r.instance_id in request.exclude:
            excluded.append(r.instance_id)
        elif r.lag_ms is None:
            unknown.append(r.instance_id)
        else:
            above.append(r.instance_id)
    present = [(cause, ids) for cause, ids in groups.items() if ids]
    if len(present) == 1 and len(readers) > 1:
        return f"all {present[0][0]}"
    return "; ".join(f"{', '.join(ids)} {cause}" for cause, ids in present)


def _ms(value: float) -> str:
    return f"{value:.15g} ms"


def _instance_id(h: Host) -> str:
    return h.instance_id
