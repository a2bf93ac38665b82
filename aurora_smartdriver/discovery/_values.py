"""Reading database answers into typed values, with clear errors for anything unexpected.

A source's rows come from tables and functions the library does not control (a stand-in
table, a schema setting pointing at the wrong table, a future server version), so each value
is checked for its type before it becomes part of a `Host`.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from aurora_smartdriver.discovery._base import Answer, DiscoveryError, SourceContext
from aurora_smartdriver.drivers import QueryResult
from aurora_smartdriver.topology import Host, Role

__all__ = [
    "BadValue",
    "flag",
    "instance_ids",
    "number",
    "parse_rows",
    "reported_lag",
    "run",
    "text",
    "whole",
]

T = TypeVar("T")


class BadValue(ValueError):
    """One value of an answer that is not what the source expects; says which and why."""


def text(value: object, what: str) -> str:
    """A non-empty string (bytes are decoded as UTF-8)."""
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            raise BadValue(f"{what} is not UTF-8 text: {raw[:40]!r}") from None
    if not isinstance(value, str) or not value.strip():
        raise BadValue(f"{what} must be non-empty text, got {_shown(value)}")
    return value


def number(value: object, what: str) -> float | None:
    """A finite number, or None for SQL NULL."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise BadValue(f"{what} must be a number, got {_shown(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise BadValue(f"{what} must be finite, got {_shown(value)}")
    return result


def whole(value: object, what: str) -> int:
    """A whole number (an integer, or a float or decimal with no fraction)."""
    result = number(value, what)
    if result is None or not result.is_integer():
        raise BadValue(f"{what} must be a whole number, got {_shown(value)}")
    return int(result)


def flag(value: object, what: str) -> bool:
    """A boolean, as PostgreSQL (bool) or MySQL (0/1, "ON"/"OFF") writes one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | Decimal) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.upper() in ("0", "1", "ON", "OFF"):
        return value.upper() in ("1", "ON")
    raise BadValue(f"{what} must be true or false, got {_shown(value)}")


def reported_lag(is_writer: bool, lag_ms: float | None) -> float | None:
    """The lag to report for an Aurora metadata row: none for the writer; a negative reader
    lag, which Aurora can show while a replica (re)starts, is unknown rather than a reason to
    reject the whole answer."""
    if is_writer:
        return 0.0
    return None if lag_ms is None or lag_ms < 0 else lag_ms


def parse_rows(
    source: str, result: QueryResult, width: int, parse: Callable[[tuple[Any, ...]], T]
) -> list[T]:
    """Each row of `result` through `parse`, after checking it has `width` columns."""
    parsed = []
    for index, row in enumerate(result.rows):
        if len(row) != width:
            raise DiscoveryError(
                f"{source}: row {index} has {len(row)} columns, expected {width} "
                f"(columns: {', '.join(result.columns)})"
            )
        try:
            parsed.append(parse(row))
        except BadValue as exc:
            raise DiscoveryError(f"{source}: row {index}: {exc}") from None
    return parsed


def run(
    ctx: SourceContext,
    conn: Any,
    source: str,
    sql: str,
    params: Mapping[str, Any] | None = None,
    *,
    hint: str = "",
) -> QueryResult:
    """Run one query of `source`; a driver error other than a lost connection is wrapped in a
    `DiscoveryError` saying what was asked (and `hint`, what may be set wrong)."""
    try:
        return ctx.adapter.query(conn, sql, params)
    except ctx.adapter.Error as exc:
        if ctx.adapter.error_kind(exc) != "other":
            raise
        first_line = sql.strip().splitlines()[0]
        raise DiscoveryError(
            f"{source}: the topology query failed: {exc} (query: {first_line}...)"
            + (f"; {hint}" if hint else "")
        ) from exc


def instance_ids(hosts: Sequence[tuple[str, int]]) -> list[str]:
    """Instance ids for the hosts of a DSN, for sources that know instances only by address.

    The id is the host name's first label, as for RDS instance endpoints (whose first label is
    the instance id, so the ids match what the metadata sources report); the whole host name
    when that label is shared with another host or the host is an IP address; and
    `host:port` (IPv6 in brackets) when the same host is listed with several ports. Distinct
    `(host, port)` pairs (host names compared case-insensitively) get distinct ids.
    """
    names = [host.rstrip(".").lower() for host, _ in hosts]
    labels = [None if _is_ip(name) else name.split(".", 1)[0] for name in names]
    label_count = _counts(label for label in labels if label is not None)
    ports_of: dict[str, set[int]] = {}
    for name, (_, port) in zip(names, hosts, strict=True):
        ports_of.setdefault(name, set()).add(port)
    ids = []
    for name, label, (_, port) in zip(names, labels, hosts, strict=True):
        if len(ports_of[name]) > 1:
            ids.append(f"[{name}]:{port}" if ":" in name else f"{name}:{port}")
        elif label is not None and label_count[label] == 1:
            ids.append(label)
        else:
            ids.append(name)
    return ids


def _counts(items: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def aurora_answer(
    ctx: SourceContext, source: str, parsed: Sequence[Any], *, asked_is_reader: bool
) -> Answer:
    """The `Answer` of an Aurora source from its parsed rows (one per instance).

    Each row has `server_id`, `is_writer`, `lag_ms`, `last_update`, `cpu`, and the answering
    instance's `now` and `own_id`; `asked_is_reader` is what that instance says of itself.
    """
    if not parsed:
        return Answer((), ctx.now())
    rows = []
    for row in parsed:
        host, port = ctx.endpoint_for(source, row.server_id)
        rows.append(
            Host(
                instance_id=row.server_id,
                host=host,
                port=port,
                role=Role.WRITER if row.is_writer else Role.READER,
                lag_ms=reported_lag(row.is_writer, row.lag_ms),
                last_update=row.last_update,
                cpu=row.cpu,
            )
        )
    me = parsed[0]
    return Answer(tuple(rows), me.now, me.own_id, Role.READER if asked_is_reader else Role.WRITER)
