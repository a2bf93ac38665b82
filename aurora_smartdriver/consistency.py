"""Read-your-writes: commit positions, whether a replica has caught up, and portable tokens.

A *position* is how far a node's data has come, in the engine's own terms: a PostgreSQL WAL
LSN, a MariaDB GTID position (one sequence number per replication domain) or a MySQL GTID set.
A session remembers the position of its latest write; a replica may serve its reads once the
replica's position *covers* it. Everything here is a pure function over immutable values; the
queries that read and wait for positions are in `aurora_smartdriver._causal`.

A *token* carries a position between requests and processes (a cookie, a queue message): a
short opaque string naming the cluster it belongs to, so that one cluster's token is never
taken for another's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "LSN",
    "ConsistencyTokenError",
    "GTIDPosition",
    "GTIDSet",
    "Position",
    "Tracker",
    "covers",
    "decode_token",
    "encode_token",
    "merge",
    "parse",
]

Kind = Literal["postgresql", "mariadb", "mysql"]


class ConsistencyTokenError(ValueError):
    """A consistency token that cannot be used: malformed, or made for another cluster."""


@dataclass(frozen=True, slots=True)
class LSN:
    """A PostgreSQL write-ahead log position (``pg_current_wal_lsn()``), as one integer."""

    value: int

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class GTIDPosition:
    """A MariaDB GTID position: the highest sequence number per replication domain.

    Server ids are left out: within a domain sequence numbers grow across servers (and across
    a failover, with ``gtid_strict_mode``), which is what makes positions comparable.
    `text` is the form ``MASTER_GTID_WAIT()`` takes, with the server ids as they were seen.
    """

    seqs: tuple[tuple[int, int], ...]
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class GTIDSet:
    """A MySQL GTID set: per source UUID, the closed intervals of transactions it holds."""

    sets: tuple[tuple[str, tuple[tuple[int, int], ...]], ...]

    def __str__(self) -> str:
        return ",".join(
            uuid + "".join(f":{a}" if a == b else f":{a}-{b}" for a, b in spans)
            for uuid, spans in self.sets
        )


Position = LSN | GTIDPosition | GTIDSet

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_MARIADB_GTID = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MAX_TOKEN = 4096


def parse(kind: Kind, text: str) -> Position | None:
    """The position an engine printed, or None when it printed none (empty, NULL).

    Raises ValueError naming what is wrong when the text is not a position of that engine.
    """
    text = text.strip()
    if not text:
        return None
    if kind == "postgresql":
        match = _LSN.match(text)
        if match is None:
            raise ValueError(f"not a PostgreSQL LSN: {text!r}")
        return LSN((int(match.group(1), 16) << 32) | int(match.group(2), 16))
    if kind == "mariadb":
        return _mariadb(text)
    return _mysql(text)


def _mariadb(text: str) -> GTIDPosition:
    seqs: dict[int, int] = {}
    shown: dict[int, str] = {}
    for item in text.replace("\n", "").split(","):
        part = item.strip()
        match = _MARIADB_GTID.match(part)
        if match is None:
            raise ValueError(f"not a MariaDB GTID position: {text!r} (at {part!r})")
        domain, seq = int(match.group(1)), int(match.group(3))
        if seq >= seqs.get(domain, -1):
            seqs[domain], shown[domain] = seq, part
    ordered = sorted(seqs)
    return GTIDPosition(tuple((d, seqs[d]) for d in ordered), ",".join(shown[d] for d in ordered))


def _mysql(text: str) -> GTIDSet:
    spans: dict[str, list[tuple[int, int]]] = {}
    for part in text.replace("\n", "").split(","):
        fields = part.strip().lower().split(":")
        uuid, ranges = fields[0], fields[1:]
        if not _UUID.match(uuid) or not ranges:
            raise ValueError(f"not a MySQL GTID set: {text!r} (at {part.strip()!r})")
        for item in ranges:
            low, _, high = item.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                raise ValueError(f"not a MySQL GTID set: {text!r} (at {item!r})")
            a, b = int(low), int(high or low)
            if a < 1 or b < a:
                raise ValueError(f"not a MySQL GTID interval: {item!r} in {text!r}")
            spans.setdefault(uuid, []).append((a, b))
    return GTIDSet(tuple((uuid, _union(spans[uuid])) for uuid in sorted(spans)))


def _union(spans: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, merged closed intervals (adjacent ones joined: 1-3 and 4-5 are 1-5)."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return tuple(merged)


def covers(have: Position, want: Position) -> bool:
    """Whether a node at `have` has every transaction of `want` (False across engines)."""
    if isinstance(want, LSN):
        return isinstance(have, LSN) and have.value >= want.value
    if isinstance(want, GTIDPosition):
        if not isinstance(have, GTIDPosition):
            return False
        held = dict(have.seqs)
        return all(held.get(domain, -1) >= seq for domain, seq in want.seqs)
    if not isinstance(have, GTIDSet):
        return False
    held_sets = dict(have.sets)
    for uuid, spans in want.sets:
        mine = held_sets.get(uuid, ())
        for a, b in spans:
            if not any(x <= a and b <= y for x, y in mine):
                return False
    return True


def merge(a: Position | None, b: Position | None) -> Position | None:
    """The least position covering both (a session that wrote at `a`, then at `b`)."""
    if a is None or b is None:
        return a if b is None else b
    if isinstance(a, LSN) and isinstance(b, LSN):
        return a if a.value >= b.value else b
    if isinstance(a, GTIDPosition) and isinstance(b, GTIDPosition):
        parts = {d: s for d, s in a.seqs}
        texts = {d: t for (d, _), t in zip(a.seqs, a.text.split(","), strict=True)}
        for (d, s), t in zip(b.seqs, b.text.split(","), strict=True):
            if s > parts.get(d, -1):
                parts[d], texts[d] = s, t
        ordered = sorted(parts)
        return GTIDPosition(
            tuple((d, parts[d]) for d in ordered), ",".join(texts[d] for d in ordered)
        )
    if isinstance(a, GTIDSet) and isinstance(b, GTIDSet):
        joined: dict[str, list[tuple[int, int]]] = {}
        for uuid, spans in (*a.sets, *b.sets):
            joined.setdefault(uuid, []).extend(spans)
        return GTIDSet(tuple((uuid, _union(joined[uuid])) for uuid in sorted(joined)))
    raise ValueError(f"positions of different engines cannot be merged: {a!r}, {b!r}")


# -- tokens -------------------------------------------------------------------------------
_KINDS: dict[str, Kind] = {"p": "postgresql", "m": "mariadb", "y": "mysql"}
_LETTERS = {kind: letter for letter, kind in _KINDS.items()}


def _kind_of(position: Position) -> Kind:
    if isinstance(position, LSN):
        return "postgresql"
    return "mariadb" if isinstance(position, GTIDPosition) else "mysql"


def cluster_tag(cluster: str) -> str:
    """A short fingerprint of a cluster's identity, carried in its tokens."""
    return hashlib.sha256(cluster.encode()).hexdigest()[:10]


def encode_token(cluster: str, position: Position | None) -> str:
    """A short opaque string carrying `position` for `cluster` ("" when there is nothing to
    wait for: a session that has not written)."""
    if position is None:
        return ""
    body = f"1|{_LETTERS[_kind_of(position)]}|{cluster_tag(cluster)}|{position}"
    return base64.urlsafe_b64encode(f"{body}|{_check(body)}".encode()).decode().rstrip("=")


def _check(body: str) -> str:
    """A checksum, so that a token cut short or altered is refused, not read as another
    (earlier) position."""
    return hashlib.sha256(body.encode()).hexdigest()[:6]


def decode_token(cluster: str, token: str) -> Position | None:
    """The position a token from :func:`encode_token` carries, for `cluster`.

    "" means no position. Raises ConsistencyTokenError when the token is malformed or was
    made for another cluster (its position would mean nothing here).
    """
    if not isinstance(token, str):
        raise ConsistencyTokenError(f"a consistency token is a string, not {type(token).__name__}")
    if not token:
        return None
    if len(token) > _MAX_TOKEN:
        raise ConsistencyTokenError(f"consistency token too long ({len(token)} characters)")
    try:
        body = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ConsistencyTokenError("malformed consistency token (not base64)") from None
    body, _, check = body.rpartition("|")
    fields = body.split("|", 3)
    if len(fields) != 4 or fields[0] != "1" or fields[1] not in _KINDS:
        raise ConsistencyTokenError("malformed consistency token (unknown format)")
    if check != _check(body):
        raise ConsistencyTokenError("malformed consistency token (checksum does not match)")
    if fields[2] != cluster_tag(cluster):
        raise ConsistencyTokenError(
            f"consistency token was made for another cluster; it cannot be used with {cluster!r}"
        )
    try:
        position = parse(_KINDS[fields[1]], fields[3])
    except ValueError as exc:
        raise ConsistencyTokenError(f"malformed consistency token ({exc})") from None
    if position is None:
        raise ConsistencyTokenError("malformed consistency token (no position)")
    return position


class Tracker:
    """The position a session's reads must see: the latest of its writes, and of the
    tokens it was given. Thread-safe; positions only ever grow.

    *Unsure* marks a write whose position could not be read (its connection lost the writer
    before the position was read): the next read first asks the writer for its position,
    which covers every acknowledged write that survived. A mark is cleared only by a position
    read after it was made (`snapshot` before reading, `advance(..., settles=snapshot)`), so
    a read racing a new mark never clears it. *Blind* means the writer publishes no position
    (MySQL with GTIDs off, MariaDB without a binary log): the session reads on the writer.
    """

    __slots__ = ("_cleared", "_lock", "_marks", "_position", "blind", "cluster")

    def __init__(self, cluster: str, token: str | None = None) -> None:
        self.cluster = cluster
        self._lock = threading.Lock()
        self._position = decode_token(cluster, token) if token else None
        self._marks = 0
        self._cleared = 0
        self.blind = False

    @property
    def position(self) -> Position | None:
        """The position reads must cover, or None when nothing was written yet."""
        return self._position

    @property
    def unsure(self) -> bool:
        """Whether a write's position is still to be asked of the writer."""
        return self._marks != self._cleared

    def mark_unsure(self) -> None:
        """A write may have happened whose position was not read."""
        with self._lock:
            self._marks += 1

    def snapshot(self) -> int:
        """Take before reading a writer's position; give to `advance` as ``settles``."""
        return self._marks

    def advance(self, position: Position | None, *, settles: int | None = None) -> None:
        """Remember a write (or a token) at `position`. ``settles``: the `snapshot` taken
        before `position` was read on the writer; the marks made before it are cleared."""
        with self._lock:
            self._position = merge(self._position, position)
            if settles is not None and settles > self._cleared:
                self._cleared = settles

    def absorb(self, token: str) -> None:
        """Take in a token made elsewhere (another request, another process)."""
        self.advance(decode_token(self.cluster, token))

    def joined(self, other: Tracker) -> None:
        """Also honour what `other` knows (its position, its unsure and blind state)."""
        self.advance(other.position)
        if other.unsure:
            self.mark_unsure()
        self.blind = self.blind or other.blind

    @property
    def token(self) -> str:
        """This session's position as a token ("" before its first write)."""
        return encode_token(self.cluster, self._position)

    def __repr__(self) -> str:
        state = " unsure" if self.unsure else ""
        return f"<consistency.Tracker at {self._position or 'start'}{state}>"
