"""Blue/Green deployments: the metadata's rows as a value, and what the library does about them.

RDS publishes a Blue/Green deployment's state on every instance of both environments
(`rds_tools.show_topology()` on RDS PostgreSQL, `get_blue_green_fast_switchover_metadata()` on
Aurora PostgreSQL, `mysql.rds_topology` on MySQL): one row per instance with its endpoint,
`role` (`BLUE_GREEN_DEPLOYMENT_SOURCE` = blue, `..._TARGET` = green), `status` and `version`.
At a switchover the green instances take the blue names and the blue ones get `-old1`, while DNS
catches up in its own time.

Everything here is pure: `parse_rows` turns rows into a `BlueGreenStatus`; `learn` keeps the
addresses of both environments in an `AddressBook` while the names still mean what they meant
before the switchover; `should_hold` says whether a new connection waits; `substitute` says
which addresses a name leads to now (the green counterpart of a blue node, never an old one).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "OLD_SUFFIX",
    "AddressBook",
    "BadMetadata",
    "BlueGreenStatus",
    "Member",
    "Pair",
    "Phase",
    "learn",
    "learn_late",
    "parse_rows",
    "refused",
    "should_hold",
    "substitute",
]

OLD_SUFFIX = "-old1"
_GREEN = re.compile(r"^(?P<blue>.+)-green-[a-z0-9]{6}$")


class BadMetadata(ValueError):
    """A Blue/Green metadata row the library cannot read (the message names the value)."""


class Phase(enum.IntEnum):
    """Where a deployment is, in order: a later phase never goes back within one switchover."""

    CREATED = 1  # AVAILABLE: green replicates from blue; nothing to do yet
    PREPARATION = 2  # SWITCHOVER_INITIATED: guardrails pass, the switchover is about to start
    IN_PROGRESS = 3  # SWITCHOVER_IN_PROGRESS: blue stops writes, connections dropped, renames
    POST = 4  # SWITCHOVER_IN_POST_PROCESSING: green serves under the blue names
    COMPLETED = 5  # SWITCHOVER_COMPLETED


STATUS_PHASES: Mapping[str, Phase] = {
    "AVAILABLE": Phase.CREATED,
    "SWITCHOVER_INITIATED": Phase.PREPARATION,
    "SWITCHOVER_IN_PROGRESS": Phase.IN_PROGRESS,
    "SWITCHOVER_IN_POST_PROCESSING": Phase.POST,
    "SWITCHOVER_COMPLETED": Phase.COMPLETED,
}
ROLES: Mapping[str, str] = {
    "BLUE_GREEN_DEPLOYMENT_SOURCE": "blue",
    "BLUE_GREEN_DEPLOYMENT_TARGET": "green",
}
VERSIONS = frozenset({"1.0"})


@dataclass(frozen=True, slots=True)
class Member:
    """One instance of the deployment as its row describes it."""

    name: str  # the instance's name: its endpoint's first label (the RDS instance identifier)
    host: str  # the endpoint
    port: int
    environment: str  # "blue" (source) | "green" (target)
    phase: Phase


@dataclass(frozen=True, slots=True)
class BlueGreenStatus:
    """The deployment as one instance's metadata shows it."""

    members: tuple[Member, ...]

    @property
    def phase(self) -> Phase:
        """The furthest phase any row shows: rows are updated one by one, and a deployment that
        says it is over somewhere is over (it must never look "in progress" for longer)."""
        return max(m.phase for m in self.members)

    def environment(self, which: str) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.environment == which)


def parse_rows(rows: Iterable[Sequence[object]]) -> BlueGreenStatus | None:
    """The status from `(id, endpoint, port, role, status, version)` rows; None when no row
    belongs to a deployment (rows without a role are the Multi-AZ topology of the same table).

    Raises `BadMetadata` for a row of a deployment with an unknown role, status or version.
    """
    members: list[Member] = []
    for row in rows:
        if len(row) != 6:
            raise BadMetadata(f"a Blue/Green metadata row has {len(row)} columns, not 6: {row!r}")
        _id, endpoint, port, role, status, version = row
        if role is None and status is None:
            continue
        version_text = str(version)
        if version_text not in VERSIONS:
            raise BadMetadata(f"unknown Blue/Green metadata version {version!r}")
        environment = ROLES.get(str(role).upper())
        if environment is None:
            raise BadMetadata(f"unknown Blue/Green role {role!r}")
        phase = STATUS_PHASES.get(str(status).upper())
        if phase is None:
            raise BadMetadata(f"unknown Blue/Green status {status!r}")
        if not isinstance(endpoint, str) or not endpoint:
            raise BadMetadata(f"a Blue/Green row has no endpoint: {endpoint!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise BadMetadata(f"a Blue/Green row has a bad port: {port!r}")
        members.append(Member(label(endpoint), endpoint.lower(), port, environment, phase))
    if not members:
        return None
    return BlueGreenStatus(tuple(members))


def label(host: str) -> str:
    """A host name's first label, lower case (an IP address as it is): the instance name."""
    host = host.strip().rstrip(".").lower()
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.split(".", 1)[0]
    return host


@dataclass(frozen=True, slots=True)
class Pair:
    """A blue instance and the green one that takes its name at the switchover, with the
    addresses each had while the names still meant what they meant before."""

    blue: str
    green: str
    blue_addresses: tuple[str, ...] = ()
    green_addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AddressBook:
    """What the library learned about the deployment before the names moved."""

    pairs: tuple[Pair, ...] = ()

    @property
    def old_addresses(self) -> frozenset[str]:
        return frozenset(a for p in self.pairs for a in p.blue_addresses)

    def of(self, status: BlueGreenStatus) -> AddressBook:
        """This book, or an empty one when it belongs to another deployment: after a
        switchover the blue names lead to that deployment's green instances, so a later
        deployment (other green names) must learn its addresses afresh."""
        greens = {m.name for m in status.environment("green")}
        return self if all(p.green in greens for p in self.pairs) else AddressBook()


def learn(
    book: AddressBook, status: BlueGreenStatus, resolved: Mapping[str, tuple[str, ...]]
) -> AddressBook:
    """`book` with the pairs of `status` and the addresses `resolved` (instance name ->
    addresses) gave their names, learned only before the switchover starts: after it, a blue
    name leads to green and a green name may not exist any more.

    A green instance is paired with the blue one whose name it takes: RDS names it
    `<blue name>-green-<6 characters>`.
    """
    if status.phase >= Phase.IN_PROGRESS:
        return book
    book = book.of(status)
    known = {p.blue: p for p in book.pairs}
    blues = {m.name for m in status.environment("blue")}
    pairs = dict(known)
    for member in status.environment("green"):
        match = _GREEN.match(member.name)
        if match is None or match.group("blue") not in blues:
            continue
        blue, green = match.group("blue"), member.name
        old = known.get(blue)
        pairs[blue] = Pair(
            blue,
            green,
            resolved.get(blue) or (old.blue_addresses if old and old.green == green else ()),
            resolved.get(green) or (old.green_addresses if old and old.green == green else ()),
        )
    ordered = tuple(pairs[name] for name in sorted(pairs))
    return book if ordered == book.pairs else AddressBook(ordered)


def learn_late(
    book: AddressBook, status: BlueGreenStatus, resolved: Mapping[str, tuple[str, ...]]
) -> AddressBook:
    """`book` checked against the old blue instances once the names have moved: their `-old1`
    names (`resolved`: instance name -> addresses) always lead to them. A blue name the book
    has no pair for, or a pair that names other addresses (learned for an earlier
    deployment), becomes what the `-old1` name says, with no green address (see `refused`);
    pairs that agree are kept, green addresses and all. For a library that first read the
    deployment after its names moved, that is all it can learn."""
    if status.phase < Phase.IN_PROGRESS:
        return book
    pairs = {p.blue: p for p in book.pairs}
    changed = False
    for member in status.members:
        found = resolved.get(member.name)
        if not member.name.endswith(OLD_SUFFIX) or not found:
            continue
        blue = member.name[: -len(OLD_SUFFIX)]
        pair = pairs.get(blue)
        if pair is None or not set(found) <= set(pair.blue_addresses):
            pairs[blue] = Pair(blue, blue, found, ())
            changed = True
    return AddressBook(tuple(pairs[name] for name in sorted(pairs))) if changed else book


def refused(book: AddressBook, phase: Phase | None, addresses: tuple[str, ...]) -> bool:
    """Whether a name that leads (after `substitute`) only to `addresses` must not be used:
    from the switchover on, every one of them is an old blue instance's."""
    if phase is None or phase < Phase.IN_PROGRESS or not addresses:
        return False
    return set(addresses) <= book.old_addresses


def should_hold(phase: Phase | None, in_progress_for: float, budget: float) -> bool:
    """Whether a new connection waits: only while the switchover is in progress, and only for
    `budget` seconds counted from when it was first seen in progress (not per connection), so
    a status that never moves on cannot hold connections for ever."""
    return phase is Phase.IN_PROGRESS and in_progress_for < budget


def substitute(
    book: AddressBook, phase: Phase | None, host: str, addresses: tuple[str, ...]
) -> tuple[str, ...]:
    """The addresses a connection to `host` (which DNS resolved to `addresses`) goes to.

    Before the switchover starts, what DNS says. From then on, a blue name, its `-old1` name, or
    an address a blue instance had, leads to the green instance that takes that name, at the
    address it had: DNS may still name the old one for a while, and an old blue instance must
    never get the application's work after the switchover.
    """
    if phase is None or phase < Phase.IN_PROGRESS or not book.pairs:
        return addresses
    name = label(host)
    if name.endswith(OLD_SUFFIX):
        name = name[: -len(OLD_SUFFIX)]
    found = set(addresses)
    for pair in book.pairs:
        if pair.green_addresses and (name == pair.blue or found & set(pair.blue_addresses)):
            return pair.green_addresses
    return addresses
