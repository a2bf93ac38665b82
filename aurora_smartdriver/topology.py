"""The cluster's topology: which instance writes, which read, and how far behind they are.

Everything here is an immutable value or a pure function over such values. Discovery sources
turn what the database says into `Host` rows; `accept` decides whether those rows form a
believable topology and whether it differs from the one already held; `diff` says how.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Host",
    "Rejected",
    "Role",
    "Topology",
    "TopologyDiff",
    "accept",
    "build_topology",
    "diff",
]


class Role(enum.Enum):
    """What an instance does in the cluster, as the topology source reported it."""

    WRITER = "writer"
    READER = "reader"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Host:
    """One database instance: where it listens, its role and the figures the source reported.

    Equality and hashing use the identity fields only (`instance_id`, `host`, `port`), so a host
    stays the same dictionary key while its role or lag changes. Compare the other fields
    explicitly when they matter (as `diff` and `accept` do).

    `last_update` is the database's own wall-clock time (epoch seconds) of the row; `weight` and
    `response_time_ms` are filled in by the monitor for the fastest-response reader strategy.
    """

    instance_id: str
    host: str
    port: int
    role: Role = field(default=Role.UNKNOWN, compare=False)
    lag_ms: float | None = field(default=None, compare=False)
    last_update: float | None = field(default=None, compare=False)
    cpu: float | None = field(default=None, compare=False)
    weight: float | None = field(default=None, compare=False)
    response_time_ms: float | None = field(default=None, compare=False)
    region: str | None = field(default=None, compare=False)
    """The region of the instance's cluster (Aurora Global Database); None: not reported."""
    rpo_lag_ms: float | None = field(default=None, compare=False)
    """Its region's RPO lag (how recent a commit the region may lack); 0 for the primary."""

    @property
    def endpoint(self) -> tuple[str, int]:
        """The `(host, port)` pair a connection to this instance goes to."""
        return (self.host, self.port)


@dataclass(frozen=True, slots=True)
class Topology:
    """An immutable snapshot of a cluster: one writer (or none yet) and its readers.

    `readers` is sorted by instance id whatever order it was given in, so two snapshots of the
    same cluster compare and print alike. `version` grows by one with every accepted change;
    `source` names the discovery source that produced the snapshot; `taken_at` is wall-clock
    time (`time.time()`), for display only: nothing decides on it. Equality compares hosts as
    `Host` does, by identity; compare `version` to tell snapshots apart.
    """

    writer: Host | None
    readers: tuple[Host, ...] = ()
    version: int = 0
    source: str = ""
    taken_at: float = 0.0

    def __post_init__(self) -> None:
        readers = tuple(sorted(self.readers, key=_instance_id))
        object.__setattr__(self, "readers", readers)
        if self.writer is not None and self.writer.role is not Role.WRITER:
            raise ValueError(
                f"topology writer {self.writer.instance_id!r} has role {self.writer.role.value}"
            )
        for reader in readers:
            if reader.role is not Role.READER:
                raise ValueError(
                    f"topology reader {reader.instance_id!r} has role {reader.role.value}"
                )
        ids = [h.instance_id for h in self.hosts]
        if len(set(ids)) != len(ids):
            raise ValueError(f"topology lists an instance twice: {sorted(ids)}")

    @property
    def hosts(self) -> tuple[Host, ...]:
        """All instances, the writer first, then the readers by instance id."""
        if self.writer is None:
            return self.readers
        return (self.writer, *self.readers)

    @property
    def is_empty(self) -> bool:
        """True when the snapshot knows no instance at all."""
        return self.writer is None and not self.readers

    @property
    def regions(self) -> dict[str, float | None]:
        """Region -> its RPO lag in milliseconds, for a global database's snapshot (else empty).

        The writer's region has lag 0: it is where commits happen.
        """
        out: dict[str, float | None] = {}
        for h in self.hosts:
            if h.region is not None and (h.region not in out or out[h.region] is None):
                out[h.region] = h.rpo_lag_ms
        return out

    @property
    def writer_region(self) -> str | None:
        """The region of the writer (the primary region of a global database), or None."""
        return self.writer.region if self.writer is not None else None

    def host(self, instance_id: str) -> Host | None:
        """The instance with this id, or None."""
        for h in self.hosts:
            if h.instance_id == instance_id:
                return h
        return None

    def by_endpoint(self, host: str, port: int) -> Host | None:
        """The instance listening at `host:port` (host names compared case-insensitively)."""
        wanted = _normalise_name(host)
        for h in self.hosts:
            if h.port == port and _normalise_name(h.host) == wanted:
                return h
        return None


@dataclass(frozen=True, slots=True)
class TopologyDiff:
    """What changed between two snapshots, by instance id.

    `readers_added` / `readers_removed` are plain set differences of the reader ids, so a reader
    promoted to writer is both "removed from readers" and listed in `roles_changed`. Hosts in the
    tuples are the new values (the old ones for `readers_removed`), sorted by instance id.
    """

    writer_changed: tuple[str | None, str | None] | None = None
    readers_added: tuple[Host, ...] = ()
    readers_removed: tuple[Host, ...] = ()
    roles_changed: tuple[Host, ...] = ()
    endpoints_changed: tuple[Host, ...] = ()
    lag_changed: tuple[Host, ...] = ()

    @property
    def is_structural(self) -> bool:
        """True when routing could change: writer, membership, roles or addresses differ.

        Lag alone is not structural: it moves on every refresh and only re-weights reads.
        """
        return bool(
            self.writer_changed
            or self.readers_added
            or self.readers_removed
            or self.roles_changed
            or self.endpoints_changed
        )

    @property
    def is_empty(self) -> bool:
        """True when nothing differs, lag included."""
        return not self.is_structural and not self.lag_changed


@dataclass(frozen=True, slots=True)
class Rejected:
    """A topology answer that was not believable, and why; the previous snapshot stays."""

    reason: str


def diff(old: Topology | None, new: Topology) -> TopologyDiff:
    """Compare two snapshots; `old=None` means nothing was known before."""
    old_hosts = {h.instance_id: h for h in old.hosts} if old is not None else {}
    new_hosts = {h.instance_id: h for h in new.hosts}
    old_writer = old.writer.instance_id if old is not None and old.writer is not None else None
    new_writer = new.writer.instance_id if new.writer is not None else None
    old_readers = {h.instance_id: h for h in old.readers} if old is not None else {}
    new_readers = {h.instance_id: h for h in new.readers}

    common = sorted(old_hosts.keys() & new_hosts.keys())
    return TopologyDiff(
        writer_changed=(old_writer, new_writer) if old_writer != new_writer else None,
        readers_added=tuple(new_readers[i] for i in sorted(new_readers.keys() - old_readers)),
        readers_removed=tuple(old_readers[i] for i in sorted(old_readers.keys() - new_readers)),
        roles_changed=tuple(new_hosts[i] for i in common if old_hosts[i].role != new_hosts[i].role),
        endpoints_changed=tuple(
            new_hosts[i] for i in common if old_hosts[i].endpoint != new_hosts[i].endpoint
        ),
        lag_changed=tuple(
            new_hosts[i]
            for i in common
            if old_hosts[i].role == new_hosts[i].role and old_hosts[i].lag_ms != new_hosts[i].lag_ms
        ),
    )


def build_topology(
    rows: Sequence[Host],
    *,
    source: str,
    now: float,
    staleness_window: float,
    version: int = 1,
    writer_required: bool = True,
) -> Topology | Rejected:
    """Turn one answer from a topology source into a snapshot, or say why it is not believable.

    Rows whose `last_update` is more than `staleness_window` seconds before `now` (both epoch
    seconds; best take `now` from the database in the same query, so that clock skew between
    client and server is not mistaken for staleness) are dropped, except the writer's: Aurora
    may stop refreshing the writer's row, and a cluster without its writer is worse than one
    with an old timestamp. Rows with no
    `last_update` are kept. Rows of role UNKNOWN are left out, since nothing can be routed to them.

    Rejected: an empty answer; a malformed row (empty id or host, port outside 1-65535,
    non-finite or negative figures); one instance id reported with different endpoints or roles
    (identical duplicates merge, keeping the latest `last_update`); two instances at one endpoint;
    no writer (unless not `writer_required`: an RDS Proxy's read-only endpoint alone); several
    writers.
    """
    if not rows:
        return Rejected(f"{source}: empty topology answer")
    for index, row in enumerate(rows):
        problem = _row_problem(row)
        if problem is not None:
            return Rejected(f"{source}: row {index} ({row.instance_id!r}): {problem}")

    merged: dict[str, Host] = {}
    for row in rows:
        seen = merged.get(row.instance_id)
        if seen is None:
            merged[row.instance_id] = row
        elif seen.endpoint != row.endpoint or seen.role != row.role:
            return Rejected(
                f"{source}: instance {row.instance_id!r} reported twice with conflicting data: "
                f"{_describe(seen)} and {_describe(row)}"
            )
        elif _newer(row, seen):
            merged[row.instance_id] = row

    at_endpoint: dict[tuple[str, int], str] = {}
    for h in merged.values():
        key = (_normalise_name(h.host), h.port)
        other = at_endpoint.setdefault(key, h.instance_id)
        if other != h.instance_id:
            return Rejected(
                f"{source}: instances {other!r} and {h.instance_id!r} share endpoint "
                f"{h.host}:{h.port}"
            )

    writers = sorted(i for i, h in merged.items() if h.role is Role.WRITER)
    if not writers and writer_required:
        return Rejected(f"{source}: no writer among {sorted(merged)}")
    if len(writers) > 1:
        return Rejected(f"{source}: {len(writers)} writers reported: {writers}")

    readers = tuple(
        h
        for h in merged.values()
        if h.role is Role.READER and not _is_stale(h, now, staleness_window)
    )
    return Topology(
        writer=merged[writers[0]] if writers else None,
        readers=readers,
        version=version,
        source=source,
        taken_at=now,
    )


def accept(
    previous: Topology | None,
    rows: Sequence[Host],
    *,
    source: str,
    now: float,
    staleness_window: float,
    writer_required: bool = True,
) -> Topology | Rejected:
    """Build a snapshot from `rows` and return it if it differs from `previous`.

    A new snapshot gets `previous.version + 1` (1 for the first). When nothing differs, the
    `previous` object itself is returned, same version. "Differs" covers membership, roles,
    endpoints, lag and the other reported figures, but not `last_update` alone (Aurora refreshes
    it on every poll, so it would make every refresh a change) nor `source`/`taken_at`.
    """
    version = previous.version + 1 if previous is not None else 1
    candidate = build_topology(
        rows,
        source=source,
        now=now,
        staleness_window=staleness_window,
        version=version,
        writer_required=writer_required,
    )
    if isinstance(candidate, Rejected):
        return candidate
    if previous is not None and _content(previous) == _content(candidate):
        return previous
    return candidate


def _instance_id(h: Host) -> str:
    return h.instance_id


def _normalise_name(name: str) -> str:
    return name.rstrip(".").lower()


def _row_problem(row: Host) -> str | None:
    if not isinstance(row.instance_id, str) or not row.instance_id.strip():
        return "empty instance id"
    if not isinstance(row.host, str) or not row.host.strip() or any(c.isspace() for c in row.host):
        return f"bad host {row.host!r}"
    if isinstance(row.port, bool) or not isinstance(row.port, int) or not 0 < row.port < 65536:
        return f"bad port {row.port!r}"
    if not isinstance(row.role, Role):
        return f"bad role {row.role!r}"
    figures = {
        "lag_ms": row.lag_ms,
        "last_update": row.last_update,
        "cpu": row.cpu,
        "weight": row.weight,
        "response_time_ms": row.response_time_ms,
        "rpo_lag_ms": row.rpo_lag_ms,
    }
    for name, value in figures.items():
        if value is not None and (isinstance(value, bool) or not math.isfinite(value)):
            return f"bad {name} {value!r}"
    if row.lag_ms is not None and row.lag_ms < 0:
        return f"negative lag_ms {row.lag_ms!r}"
    return None


def _describe(h: Host) -> str:
    return f"{h.host}:{h.port} {h.role.value}"


def _newer(a: Host, b: Host) -> bool:
    if a.last_update is None:
        return False
    return b.last_update is None or a.last_update > b.last_update


def _is_stale(h: Host, now: float, window: float) -> bool:
    return h.last_update is not None and now - h.last_update > window


def _content(t: Topology) -> tuple[tuple[object, ...], ...]:
    return tuple(
        (
            h.instance_id,
            h.host,
            h.port,
            h.role,
            h.lag_ms,
            h.cpu,
            h.weight,
            h.response_time_ms,
            h.region,
            h.rpo_lag_ms,
        )
        for h in t.hosts
    )
