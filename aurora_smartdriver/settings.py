"""Every parameter the library accepts, declared once with its default, unit and description.

`Settings` is the typed, immutable object holding the library's own parameters; each field's
metadata carries its section, unit, one-line description, whether it is secret and how a value is
parsed from a DSN string or a Python value. `DRIVER_PARAMETERS` lists, per engine, the driver
parameters that pass through to psycopg/libpq or PyMySQL. The DSN parser, the error messages and
the parameter reference (docs/parameters.md) are all derived from these two, so a parameter
cannot be documented, parsed and defaulted in three different ways.

Regenerate the reference with ``python -m aurora_smartdriver.settings > docs/parameters.md``.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import Any, Literal, Protocol, cast, get_args

from aurora_smartdriver.errors import ConfigError

__all__ = [
    "DRIVER_PARAMETERS",
    "PARAMETERS",
    "AuthMethod",
    "Consistency",
    "CustomEndpointFallback",
    "Engine",
    "Parameter",
    "RdsProxyMode",
    "ReadOnlyVariable",
    "ReaderFallback",
    "ReaderStrategy",
    "Settings",
    "TargetRole",
    "TopologySource",
    "parameter_reference_markdown",
]

Engine = Literal["postgresql", "mysql"]
TopologySource = Literal[
    "auto",
    "aurora-postgresql",
    "aurora-mysql",
    "rds-multi-az",
    "probe",
    "rds-api",
    "static",
    "aurora-global",
]
TargetRole = Literal["writer", "reader", "any"]
ReaderStrategy = Literal[
    "random", "round_robin", "least_connections", "least_lag", "fastest_response"
]
ReaderFallback = Literal["writer", "fail"]
Consistency = Literal["eventual", "session"]
AuthMethod = Literal["password", "iam", "secrets"]
ReadOnlyVariable = Literal["innodb_read_only", "read_only"]
CustomEndpointFallback = Literal["fail", "cluster"]
RdsProxyMode = Literal["auto", "off", "read_write", "read_only"]

_MASK = "***"
_SHOWN_MAX = 80


# -- value kinds: how one parameter's value is parsed from text or Python and written back ------


class _Invalid(Exception):
    """A value that does not fit its parameter; `expected` says what would fit."""

    def __init__(self, expected: str, suggestion: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.suggestion = suggestion


class _Kind(Protocol):
    """How values of one type are parsed (from DSN text or a Python value) and rendered."""

    @property
    def expected(self) -> str:
        """What a valid value looks like, completing "expected ..." in an error message."""
        ...

    @property
    def unit(self) -> str:
        """The unit of the value, as shown in the parameter reference ("" for none)."""
        ...

    def parse(self, value: object) -> object:
        """The typed value for `value`; raises `_Invalid` when it does not fit."""
        ...

    def render(self, value: object) -> str:
        """The typed `value` as written in a DSN, so that `parse(render(v)) == v`."""
        ...


_TRUE = frozenset({"on", "true", "1", "yes"})
_FALSE = frozenset({"off", "false", "0", "no"})


@dataclass(frozen=True, slots=True)
class _Flag:
    expected: str = "on or off (also true/false, yes/no, 1/0)"
    unit: str = ""

    def parse(self, value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        raise _Invalid(self.expected)

    def render(self, value: object) -> str:
        return "on" if value else "off"


@dataclass(frozen=True, slots=True)
class _Count:
    minimum: int = 0
    unit: str = ""

    @property
    def expected(self) -> str:
        return f"a whole number of at least {self.minimum}"

    def parse(self, value: object) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
            number = int(value)
        if number is None or number < self.minimum:
            raise _Invalid(self.expected)
        return number

    def render(self, value: object) -> str:
        return str(value)


_DURATION_RE = re.compile(r"\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(ms|s|m|h)?\s*")
_DURATION_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class _Seconds:
    positive: bool = True
    optional: bool = False
    unit: str = "s"

    @property
    def expected(self) -> str:
        bound = "greater than 0" if self.positive else "of 0 or more"
        unset = ", or none" if self.optional else ""
        return f"a duration {bound} such as 250ms, 5s, 2m or a number of seconds{unset}"

    def parse(self, value: object) -> float | None:
        seconds: float | None = None
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            if self.optional:
                return None
        elif isinstance(value, timedelta):
            seconds = value.total_seconds()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
            seconds = float(match[1]) * _DURATION_UNITS[match[2]]
        if seconds is None or not math.isfinite(seconds) or seconds < 0:
            raise _Invalid(self.expected)
        if self.positive and seconds == 0:
            raise _Invalid(self.expected)
        return seconds

    def render(self, value: object) -> str:
        if value is None:
            return ""
        text = repr(float(cast(float, value)))
        return f"{text.removesuffix('.0')}s"


@dataclass(frozen=True, slots=True)
class _Fraction:
    expected: str = "a fraction from 0 to 1, such as 0.1 or 10%"
    unit: str = "fraction"

    def parse(self, value: object) -> float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            text = value.strip()
            scale = 1.0
            if text.endswith("%"):
                text, scale = text[:-1], 0.01
            if re.fullmatch(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", text):
                number = float(text) * scale
        if number is None or not 0.0 <= number <= 1.0:
            raise _Invalid(self.expected)
        return number

    def render(self, value: object) -> str:
        return repr(float(cast(float, value)))


@dataclass(frozen=True, slots=True)
class _Choice:
    choices: tuple[str, ...]
    unit: str = ""

    @property
    def expected(self) -> str:
        return "one of " + ", ".join(self.choices)

    def parse(self, value: object) -> str:
        if isinstance(value, str):
            word = value.strip().lower()
            if word in self.choices:
                return word
            close = difflib.get_close_matches(word, self.choices, n=1, cutoff=0.6)
            raise _Invalid(self.expected, f"did you mean {close[0]!r}?" if close else None)
        raise _Invalid(self.expected)

    def render(self, value: object) -> str:
        return str(value)


@dataclass(frozen=True, slots=True)
class _Text:
    """Free text, optionally restricted by a pattern; empty text means unset when optional."""

    optional: bool = False
    pattern: str | None = None
    what: str = "text"
    numbers: bool = False
    """Accept int and float values too, as their decimal text (libpq takes every value as text)."""
    unit: str = ""

    @property
    def expected(self) -> str:
        return f"{self.what}, or nothing to leave it unset" if self.optional else self.what

    def parse(self, value: object) -> str | None:
        if value is None or value == "":
            if self.optional:
                return None
            if value is None:
                raise _Invalid(self.expected)
        if self.numbers and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise _Invalid(self.expected)
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise _Invalid(self.expected)
        return value

    def render(self, value: object) -> str:
        return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class _HostPattern:
    """A host name with one `?` standing for an instance id, optionally followed by `:port`."""

    expected: str = (
        "a host name containing exactly one '?' for the instance id, optionally followed by "
        ":port (e.g. ?.abc123.us-east-1.rds.amazonaws.com), or nothing to derive it"
    )
    unit: str = ""

    def parse(self, value: object) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise _Invalid(self.expected)
        if value.count("?") != 1:
            raise _Invalid(self.expected, f"it contains {value.count('?')} '?'")
        host, port = _split_port(value.replace("?", "x"))
        if not _is_hostname(host) or (port is not None and _port_number(port) is None):
            raise _Invalid(self.expected)
        return value

    def render(self, value: object) -> str:
        return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class _RegionPatterns:
    """`region:pattern` pairs separated by commas: a global database's instance host patterns."""

    expected: str = (
        "region:pattern pairs separated by commas, each pattern a host name with one '?' for "
        "the instance id, optionally followed by :port (e.g. us-east-1:?.abc.us-east-1.rds."
        "amazonaws.com,eu-west-1:?.def.eu-west-1.rds.amazonaws.com), or nothing"
    )
    unit: str = ""

    def parse(self, value: object) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise _Invalid(self.expected)
        seen: set[str] = set()
        for item in value.split(","):
            region, sep, pattern = item.strip().partition(":")
            if not sep or not re.fullmatch(r"[a-z][a-z0-9-]*", region):
                raise _Invalid(self.expected, f"{item.strip()!r} is not region:pattern")
            if region in seen:
                raise _Invalid(self.expected, f"region {region!r} is given twice")
            seen.add(region)
            _HostPattern().parse(pattern)
        return value

    def render(self, value: object) -> str:
        return "" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class _Statements:
    """SQL statements, separated by `;` in a DSN; a Python sequence gives them one by one."""

    expected: str = "SQL statements separated by ';' (a statement cannot itself contain ';')"
    unit: str = ""

    def parse(self, value: object) -> tuple[str, ...]:
        if isinstance(value, str):
            items: Sequence[object] = value.split(";")
        elif isinstance(value, Sequence):
            items = value
            if any(isinstance(item, str) and ";" in item for item in items):
                raise _Invalid(self.expected)
        else:
            raise _Invalid(self.expected)
        if not all(isinstance(item, str) for item in items):
            raise _Invalid(self.expected)
        return tuple(text for item in items if (text := cast(str, item).strip()))

    def render(self, value: object) -> str:
        return ";".join(cast(tuple[str, ...], value))


@dataclass(frozen=True, slots=True)
class _Nameservers:
    """Nameserver addresses as `ip[:port]` (IPv6 as `[ip]:port`), comma separated in a DSN."""

    expected: str = "nameserver addresses as ip[:port], comma separated (IPv6 as [ip]:port)"
    unit: str = ""

    def parse(self, value: object) -> tuple[tuple[str, int], ...]:
        if isinstance(value, str):
            items: Sequence[object] = [item for item in value.split(",") if item.strip()]
        elif isinstance(value, Sequence):
            items = value
        else:
            raise _Invalid(self.expected)
        return tuple(self._one(item) for item in items)

    def _one(self, item: object) -> tuple[str, int]:
        if isinstance(item, tuple) and len(item) == 2:
            address, port = item
            if isinstance(address, str) and isinstance(port, int) and not isinstance(port, bool):
                return self._checked(address, str(port))
            raise _Invalid(self.expected)
        if not isinstance(item, str):
            raise _Invalid(self.expected)
        text = item.strip()
        if _is_ip(text):
            return self._checked(text, "53")
        host, port = _split_port(text)
        return self._checked(host, port if port is not None else "53")

    def _checked(self, address: str, port: str) -> tuple[str, int]:
        number = _port_number(port)
        if not _is_ip(address) or number is None:
            raise _Invalid(self.expected)
        return str(ipaddress.ip_address(address)), number

    def render(self, value: object) -> str:
        servers = cast(tuple[tuple[str, int], ...], value)
        return ",".join(f"[{a}]:{p}" if ":" in a else f"{a}:{p}" for a, p in servers)


@dataclass(frozen=True, slots=True)
class _Threshold:
    """A count, or none to turn the feature off (psycopg's ``prepare_threshold=None``)."""

    expected: str = "a whole number of at least 0, or none to turn it off"
    unit: str = ""

    def parse(self, value: object) -> int | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        try:
            return _Count(0).parse(value)
        except _Invalid:
            raise _Invalid(self.expected) from None

    def render(self, value: object) -> str:
        return "none" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class _Off:
    """A switch the driver accepts only when off (PyMySQL's `compress` raises otherwise)."""

    why: str
    unit: str = ""

    @property
    def expected(self) -> str:
        return f"off ({self.why})"

    def parse(self, value: object) -> bool:
        try:
            on = _Flag().parse(value)
        except _Invalid:
            raise _Invalid(self.expected) from None
        if on:
            raise _Invalid(self.expected)
        return on

    def render(self, value: object) -> str:
        return "off"


def _is_class(value: object) -> bool:
    return isinstance(value, type)


def _is_mapping(value: object) -> bool:
    return isinstance(value, Mapping)


def _is_tls_options(value: object) -> bool:
    return isinstance(value, Mapping | ssl.SSLContext)


def _is_adapt_context(value: object) -> bool:
    return hasattr(value, "adapters") and not isinstance(value, str)


@dataclass(frozen=True, slots=True)
class _PyValue:
    """A Python object handed to the driver as is (a class, a dict, a function).

    Such values cannot be written in a DSN: they are keyword arguments only, and a spec holding
    one has no DSN text (`ConnectionSpec.to_dsn` refuses it).
    """

    what: str
    check: Callable[[object], bool] = field(compare=False)
    unit: str = ""

    @property
    def expected(self) -> str:
        return f"{self.what}, given as a keyword argument (it cannot be written in a DSN)"

    def parse(self, value: object) -> object:
        if isinstance(value, str) or not self.check(value):
            raise _Invalid(self.expected)
        return value

    def render(self, value: object) -> str:
        raise _Invalid(self.expected)


# -- host helpers, shared with the DSN parser ---------------------------------------------------

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?")


def _is_hostname(text: str) -> bool:
    """Whether `text` is a host name or IPv4 address (letters, digits, `-`, `_` and dots)."""
    return len(text) <= 253 and _HOSTNAME_RE.fullmatch(text) is not None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _port_number(text: str) -> int | None:
    """The port number written as `text`, or None unless it is a number from 1 to 65535."""
    if not re.fullmatch(r"\d{1,5}", text):
        return None
    number = int(text)
    return number if 1 <= number <= 65535 else None


def _split_port(text: str) -> tuple[str, str | None]:
    """Split `host:port` or `[ipv6]:port` into host and port text (port None when absent)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            return text, None
        if rest == "":
            return host, None
        return (host, rest[1:]) if rest.startswith(":") else (text, None)
    host, colon, port = text.partition(":")
    return (host, port) if colon else (host, None)


# -- the parameters ------------------------------------------------------------------------------


def _meta(
    kind: _Kind, section: str, doc: str, *, secret: bool = False, engine: Engine | None = None
) -> dict[str, object]:
    """The metadata that makes a `Settings` field a documented `Parameter` (unit from `kind`)."""
    return {"kind": kind, "section": section, "doc": doc, "secret": secret, "engine": engine}


_TOPOLOGY = "Topology"
_DNS = "DNS"
_ROUTING = "Routing"
_POOL = "Pools"
_FAILOVER = "Timeouts and failover"
_AUTH = "Authentication"
_CUSTOM = "Custom endpoints"
_PROXY = "RDS Proxy"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = rf"{_LABEL}(?:\.{_LABEL})+\.?"
"""A DNS name of two labels or more (a proxy endpoint's)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """The library's parameters for one cluster: typed, validated, immutable.

    Constructing one (directly, through `from_params` or `dataclasses.replace`) parses each
    value, so DSN strings such as ``"250ms"`` or ``"on"`` are accepted in place of typed values,
    then checks the parameters against each other; anything wrong is a `ConfigError`.
    """

    # Topology
    topology_source: TopologySource = field(
        default="auto",
        metadata=_meta(
            _Choice(get_args(TopologySource)),
            _TOPOLOGY,
            "How members and roles are learned: auto detects it from the first connection; "
            "static takes the DSN's hosts as they are, the first host being the writer.",
        ),
    )
    refresh_interval: float = field(
        default=5.0,
        metadata=_meta(
            _Seconds(), _TOPOLOGY, "Time between topology refreshes while the cluster is healthy."
        ),
    )
    fast_refresh_interval: float = field(
        default=0.1,
        metadata=_meta(
            _Seconds(),
            _TOPOLOGY,
            "Time between topology refreshes while a failover is in progress.",
        ),
    )
    staleness_window: float = field(
        default=300.0,
        metadata=_meta(
            _Seconds(),
            _TOPOLOGY,
            "Replica status rows older than this are ignored, except the writer's.",
        ),
    )
    instance_host_pattern: str | None = field(
        default=None,
        metadata=_meta(
            _HostPattern(),
            _TOPOLOGY,
            "Host name of an instance, `?` standing for its id, optionally with `:port` "
            "(e.g. `?.abc123.us-east-1.rds.amazonaws.com`); derived from an RDS endpoint if unset.",
        ),
    )
    cluster_id: str | None = field(
        default=None,
        metadata=_meta(
            _Text(optional=True),
            _TOPOLOGY,
            "Stable identity of the cluster, under which one monitor is shared by every pool "
            "of the process; derived from the endpoint if unset.",
        ),
    )
    replica_status_schema: str = field(
        default="information_schema",
        metadata=_meta(
            _Text(
                pattern=r"[A-Za-z_][A-Za-z0-9_$]*", what="an SQL identifier (letters, digits, _, $)"
            ),
            _TOPOLOGY,
            "Schema holding the `replica_host_status` table.",
            engine="mysql",
        ),
    )
    read_only_variable: ReadOnlyVariable = field(
        default="innodb_read_only",
        metadata=_meta(
            _Choice(get_args(ReadOnlyVariable)),
            _TOPOLOGY,
            "Server variable that is on for readers and off for the writer.",
            engine="mysql",
        ),
    )
    global_instance_host_patterns: str | None = field(
        default=None,
        metadata=_meta(
            _RegionPatterns(),
            _TOPOLOGY,
            "Aurora Global Database: each region's instance host pattern, as `region:pattern` "
            "pairs separated by commas (`aurora-global` needs one for every region it reports).",
        ),
    )
    # DNS
    dns_server: tuple[tuple[str, int], ...] = field(
        default=(),
        metadata=_meta(
            _Nameservers(),
            _DNS,
            "Nameservers to ask, as `ip[:port]`, comma separated; empty uses the system's.",
        ),
    )
    dns_timeout: float = field(
        default=2.0, metadata=_meta(_Seconds(), _DNS, "Time allowed for one DNS query.")
    )
    dns_ttl_cap: float = field(
        default=5.0,
        metadata=_meta(
            _Seconds(positive=False),
            _DNS,
            "Answers are cached for their TTL but never longer than this.",
        ),
    )
    resolve: bool = field(
        default=True,
        metadata=_meta(
            _Flag(),
            _DNS,
            "Resolve host names with the library's own resolver, bypassing the operating "
            "system's caches; off leaves names to the driver.",
        ),
    )
    # Routing
    role: TargetRole = field(
        default="writer",
        metadata=_meta(
            _Choice(get_args(TargetRole)), _ROUTING, "Which instance a connection goes to."
        ),
    )
    reader_strategy: ReaderStrategy = field(
        default="random",
        metadata=_meta(
            _Choice(get_args(ReaderStrategy)),
            _ROUTING,
            "How a reader is chosen among those that qualify; fastest_response pings each "
            "instance once per refresh_interval, on one extra connection per instance.",
        ),
    )
    max_replica_lag: float | None = field(
        default=None,
        metadata=_meta(
            _Seconds(positive=False, optional=True),
            _ROUTING,
            "Readers lagging more than this are not chosen; unset means no limit.",
        ),
    )
    reader_fallback: ReaderFallback = field(
        default="writer",
        metadata=_meta(
            _Choice(get_args(ReaderFallback)),
            _ROUTING,
            "What a reader request does when no reader qualifies: use the writer, or fail.",
        ),
    )
    home_region: str | None = field(
        default=None,
        metadata=_meta(
            _Text(optional=True, pattern=r"[a-z][a-z0-9-]*", what="a region name (e.g. us-east-1)"),
            _ROUTING,
            "Aurora Global Database: reads go to readers in this region only (when none "
            "qualifies, `reader_fallback` decides); writes go to the primary region's writer.",
        ),
    )
    consistency: Consistency = field(
        default="eventual",
        metadata=_meta(
            _Choice(get_args(Consistency)),
            _ROUTING,
            "eventual: a reader may not yet have the session's own writes. session: reads see "
            "every write committed earlier through the same session (see docs/consistency.md).",
        ),
    )
    consistency_wait: float = field(
        default=0.05,
        metadata=_meta(
            _Seconds(positive=False),
            _ROUTING,
            "With consistency=session, how long a read waits for a replica to catch up with "
            "the session's writes before it is served by the writer instead.",
        ),
    )
    # Pools
    pool_min_size: int = field(
        default=0,
        metadata=_meta(
            _Count(0, unit="connections"),
            _POOL,
            "Connections each host's pool keeps open even when idle.",
        ),
    )
    pool_max_size: int = field(
        default=10,
        metadata=_meta(
            _Count(1, unit="connections"), _POOL, "Most connections each host's pool opens."
        ),
    )
    borrow_timeout: float = field(
        default=30.0,
        metadata=_meta(
            _Seconds(positive=False),
            _POOL,
            "How long borrowing waits for a free connection before failing.",
        ),
    )
    max_lifetime: float = field(
        default=3600.0,
        metadata=_meta(_Seconds(), _POOL, "Connections older than this are closed when returned."),
    )
    max_lifetime_jitter: float = field(
        default=0.1,
        metadata=_meta(
            _Fraction(),
            _POOL,
            "Each connection's lifetime is shortened by a random part up to this fraction, "
            "so connections opened together do not expire together.",
        ),
    )
    max_idle: float = field(
        default=600.0,
        metadata=_meta(_Seconds(), _POOL, "Connections idle for longer than this are closed."),
    )
    validate_after_idle: float = field(
        default=1.0,
        metadata=_meta(
            _Seconds(positive=False),
            _POOL,
            "A connection idle for longer than this is checked before it is lent out.",
        ),
    )
    max_concurrent_connects: int = field(
        default=4,
        metadata=_meta(
            _Count(1, unit="connections"),
            _POOL,
            "Most connection attempts in progress to one host at a time.",
        ),
    )
    backoff_initial: float = field(
        default=0.05,
        metadata=_meta(
            _Seconds(), _POOL, "First delay before retrying a failed connection attempt to a host."
        ),
    )
    backoff_max: float = field(
        default=2.0,
        metadata=_meta(_Seconds(), _POOL, "Longest delay between connection attempts to a host."),
    )
    # Timeouts and failover
    connect_timeout: float = field(
        default=5.0,
        metadata=_meta(
            _Seconds(),
            _FAILOVER,
            "Time allowed for one connection: TCP, TLS and the database handshake together.",
        ),
    )
    statement_timeout: float | None = field(
        default=None,
        metadata=_meta(
            _Seconds(optional=True),
            _FAILOVER,
            "Time allowed for one statement; unset means no limit.",
        ),
    )
    failover_timeout: float = field(
        default=30.0,
        metadata=_meta(
            _Seconds(),
            _FAILOVER,
            "How long a failover waits for a writer before raising NoWriterAvailable.",
        ),
    )
    failure_detection_time: float = field(
        default=2.0,
        metadata=_meta(
            _Seconds(),
            _FAILOVER,
            "Silence from a server after which its connections are cut: the watchdog's probe "
            "window, and the TCP keepalive and TCP_USER_TIMEOUT of the library's sockets.",
        ),
    )
    retry_reads: bool = field(
        default=False,
        metadata=_meta(
            _Flag(),
            _FAILOVER,
            "Re-run a read-only autocommit statement after a failover instead of raising.",
        ),
    )
    session_init: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            _Statements(),
            _FAILOVER,
            "SQL run on every new connection and replayed after a failover, `;` separated.",
        ),
    )
    failover: bool = field(
        default=True,
        metadata=_meta(
            _Flag(),
            _FAILOVER,
            "Reconnect to the new writer when a connection dies; off raises the driver's error.",
        ),
    )
    # Authentication
    auth: AuthMethod = field(
        default="password",
        metadata=_meta(
            _Choice(get_args(AuthMethod)),
            _AUTH,
            "Where the password comes from: the DSN, an IAM token, or Secrets Manager.",
        ),
    )
    secret_id: str | None = field(
        default=None,
        metadata=_meta(
            _Text(optional=True),
            _AUTH,
            "Secrets Manager secret (name or ARN) holding the credentials, for auth=secrets.",
        ),
    )
    region: str | None = field(
        default=None,
        metadata=_meta(
            _Text(optional=True, pattern=r"[a-z]{2}(?:-[a-z]+)+-\d+", what="an AWS region name"),
            _AUTH,
            "AWS region for IAM tokens and Secrets Manager; derived from the endpoint if unset.",
        ),
    )
    credentials_refresh_interval: float = field(
        default=60.0,
        metadata=_meta(
            _Seconds(positive=False),
            _AUTH,
            "Shortest time between two re-reads of the secret after refused logins, however "
            "many fail.",
        ),
    )
    # Custom endpoints
    custom_endpoint: str | None = field(
        default=None,
        metadata=_meta(
            _Text(
                optional=True,
                pattern=r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*",
                what="an Aurora custom endpoint identifier (lowercase letters, digits, -)",
            ),
            _CUSTOM,
            "Aurora custom endpoint whose members alone serve reader and any connections; "
            "taken from the DSN's host when it is a custom endpoint name "
            "(see docs/custom-endpoints.md).",
        ),
    )
    custom_endpoint_refresh_interval: float = field(
        default=30.0,
        metadata=_meta(
            _Seconds(),
            _CUSTOM,
            "Time between two readings of the custom endpoint's members from the RDS API.",
        ),
    )
    custom_endpoint_fallback: CustomEndpointFallback = field(
        default="fail",
        metadata=_meta(
            _Choice(get_args(CustomEndpointFallback)),
            _CUSTOM,
            "What a reader or any connection does when no member of the custom endpoint can "
            "serve it: fail with NoHostAvailable, or use the rest of the cluster.",
        ),
    )
    rds_endpoint_url: str | None = field(
        default=None,
        metadata=_meta(
            _Text(
                optional=True, pattern=r"https?://[^\s/?#]+(?:/[^\s?#]*)?", what="an http(s) URL"
            ),
            _CUSTOM,
            "URL of the RDS API (a VPC interface endpoint, or the lab's stand-in); unset uses "
            "the region's public endpoint.",
        ),
    )
    # RDS Proxy
    rds_proxy: RdsProxyMode = field(
        default="auto",
        metadata=_meta(
            _Choice(get_args(RdsProxyMode)),
            _PROXY,
            "Whether the DSN's host is an RDS Proxy endpoint, and of which kind: auto from "
            "its name (a proxy name is a read/write endpoint); read_write or read_only say so; "
            "off treats it as any host. Behind a proxy no topology is queried, the host is "
            "connected to as given and failover is the proxy's (see docs/rds-proxy.md).",
        ),
    )
    rds_proxy_read_only_endpoint: str | None = field(
        default=None,
        metadata=_meta(
            _Text(
                optional=True,
                pattern=_DNS_NAME,
                what="a host name (the proxy's read-only endpoint)",
            ),
            _PROXY,
            "A read-only endpoint of the same RDS Proxy (same port): reader connections go "
            "there; unset, they use the DSN's proxy endpoint.",
        ),
    )
    blue_green_hold_timeout: float = field(
        default=10.0,
        metadata=_meta(
            _Seconds(positive=False),
            _FAILOVER,
            "Longest time new connections wait while a Blue/Green switchover is in progress, "
            "counted from when it was first seen in progress; then they go where the topology "
            "says. 0 never holds.",
        ),
    )
    resume_timeout: float = field(
        default=0.0,
        metadata=_meta(
            _Seconds(positive=False),
            _FAILOVER,
            "Longest wait for a paused instance (Aurora Serverless v2 at 0 ACUs) to resume: a "
            "connection to an instance this process has not been connected to for 5 minutes "
            "may take this long, one attempt per instance while the others wait for it; then "
            "InstanceResumeTimeout. 0 (off): a handshake slower than connect_timeout is a dead "
            "host. At least connect_timeout when set.",
        ),
    )

    def __post_init__(self) -> None:
        for name, parameter in PARAMETERS.items():
            object.__setattr__(self, name, parameter.parse(getattr(self, name)))
        _check_consistency(self)

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> Settings:
        """Settings from parameter names and values (DSN text or Python values).

        Unknown names are a `ConfigError` with the closest known name as suggestion.
        """
        for name in params:
            if name not in PARAMETERS:
                raise _unknown_parameter(name, PARAMETERS)
        return cls(**cast(dict[str, Any], dict(params)))

    def query_params(self, *, mask_secrets: bool = True) -> dict[str, str]:
        """The parameters that differ from their defaults, as written in a DSN query."""
        return {
            name: _MASK if mask_secrets and parameter.secret else parameter.render(value)
            for name, parameter, value in self._changed()
        }

    def _changed(self) -> Iterator[tuple[str, Parameter, object]]:
        for name, parameter in PARAMETERS.items():
            value = getattr(self, name)
            if value != parameter.default:
                yield name, parameter, value

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={_MASK!r}" if parameter.secret else f"{name}={value!r}"
            for name, parameter, value in self._changed()
        )
        return f"Settings({shown})"


def _check_consistency(settings: Settings) -> None:
    """Reject combinations of parameters that contradict each other or would be ignored."""
    if settings.pool_min_size > settings.pool_max_size:
        raise ConfigError(
            f"pool_min_size ({settings.pool_min_size}) exceeds pool_max_size "
            f"({settings.pool_max_size})",
            parameter="pool_min_size",
            value=str(settings.pool_min_size),
            suggestion="raise pool_max_size or lower pool_min_size",
        )
    if settings.fast_refresh_interval > settings.refresh_interval:
        raise ConfigError(
            f"fast_refresh_interval ({settings.fast_refresh_interval:g}s) exceeds "
            f"refresh_interval ({settings.refresh_interval:g}s)",
            parameter="fast_refresh_interval",
            value=f"{settings.fast_refresh_interval:g}",
            suggestion="the failover refresh must be at least as frequent as the normal one",
        )
    if 0 < settings.resume_timeout < settings.connect_timeout:
        raise ConfigError(
            f"resume_timeout ({settings.resume_timeout:g}s) is shorter than connect_timeout "
            f"({settings.connect_timeout:g}s) and would never wait longer than a connection does",
            parameter="resume_timeout",
            value=f"{settings.resume_timeout:g}",
            suggestion="use 0 (off) or at least connect_timeout (Aurora resumes in about 15s)",
        )
    if settings.backoff_initial > settings.backoff_max:
        raise ConfigError(
            f"backoff_initial ({settings.backoff_initial:g}s) exceeds backoff_max "
            f"({settings.backoff_max:g}s)",
            parameter="backoff_initial",
            value=f"{settings.backoff_initial:g}",
        )
    if settings.auth == "secrets" and settings.secret_id is None:
        raise ConfigError(
            "auth=secrets needs secret_id",
            parameter="secret_id",
            suggestion="give the Secrets Manager secret's name or ARN as secret_id",
        )
    if settings.auth != "secrets" and settings.secret_id is not None:
        raise ConfigError(
            f"secret_id is only used with auth=secrets, not auth={settings.auth}",
            parameter="secret_id",
            value=settings.secret_id,
            suggestion="add auth=secrets or remove secret_id",
        )
    if not settings.resolve and settings.dns_server:
        raise ConfigError(
            "dns_server has no effect with resolve=off",
            parameter="dns_server",
            suggestion="remove dns_server or set resolve=on",
        )
    if settings.instance_host_pattern is not None and settings.topology_source in (
        "static",
        "probe",
    ):
        raise ConfigError(
            f"instance_host_pattern has no effect with topology_source={settings.topology_source},"
            " which takes instances from the DSN's host list",
            parameter="instance_host_pattern",
            value=settings.instance_host_pattern,
        )


@dataclass(frozen=True, slots=True)
class Parameter:
    """One parameter as documented: its name, section, default, unit and description."""

    name: str
    section: str
    default: object
    unit: str
    doc: str
    secret: bool
    engine: Engine | None
    """The only engine the parameter applies to, or None for both."""
    kind: _Kind = field(repr=False, compare=False)

    def parse(self, value: object) -> object:
        """The typed value of `value` (DSN text or a Python value); `ConfigError` if invalid."""
        try:
            return self.kind.parse(value)
        except _Invalid as invalid:
            shown = self.shown(value)
            raise ConfigError(
                f"invalid value {shown!r} for parameter {self.name!r}: expected {invalid.expected}",
                parameter=self.name,
                value=shown,
                suggestion=invalid.suggestion,
            ) from None

    def render(self, value: object) -> str:
        """The typed `value` as written in a DSN; `ConfigError` for a keyword-only value."""
        try:
            return self.kind.render(value)
        except _Invalid as invalid:
            raise ConfigError(
                f"parameter {self.name!r} holds a Python object, which a DSN cannot express: "
                f"expected {invalid.expected}",
                parameter=self.name,
            ) from None

    @property
    def takes_none(self) -> bool:
        """Whether None is a value here (it turns something off), not "not given"."""
        return isinstance(self.kind, _Threshold)

    @property
    def keyword_only(self) -> bool:
        """Whether values are Python objects given as keyword arguments, never DSN text."""
        return isinstance(self.kind, _PyValue)

    def shown(self, value: object) -> str:
        """`value` as it may appear in messages: masked when secret, shortened when long."""
        if self.secret:
            return _MASK
        text = value if isinstance(value, str) else repr(value)
        return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."


def _parameter_from_field(item: dataclasses.Field[Any]) -> Parameter:
    meta = item.metadata
    return Parameter(
        name=item.name,
        section=meta["section"],
        default=item.default,
        unit=meta["kind"].unit,
        doc=meta["doc"],
        secret=meta["secret"],
        engine=meta["engine"],
        kind=meta["kind"],
    )


PARAMETERS: Mapping[str, Parameter] = MappingProxyType(
    {item.name: _parameter_from_field(item) for item in dataclasses.fields(Settings)}
)
"""The library's parameters by name, in declaration (and documentation) order."""


def _driver_parameters(
    engine: Engine, section: str, doc: str, kinds: Mapping[str, _Kind], secret: frozenset[str]
) -> Mapping[str, Parameter]:
    return MappingProxyType(
        {
            name: Parameter(name, section, None, "", doc, name in secret, engine, kind)
            for name, kind in sorted(kinds.items())
        }
    )


_LIBPQ_TEXT = (
    "application_name",
    "channel_binding",
    "client_encoding",
    "fallback_application_name",
    "gssdelegation",
    "gssencmode",
    "gsslib",
    "keepalives",
    "keepalives_count",
    "keepalives_idle",
    "keepalives_interval",
    "krbsrvname",
    "max_protocol_version",
    "min_protocol_version",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_issuer",
    "oauth_scope",
    "options",
    "passfile",
    "require_auth",
    "requirepeer",
    "ssl_max_protocol_version",
    "ssl_min_protocol_version",
    "sslcert",
    "sslcertmode",
    "sslcompression",
    "sslcrl",
    "sslcrldir",
    "sslkey",
    "sslkeylogfile",
    "sslmode",
    "sslnegotiation",
    "sslpassword",
    "sslrootcert",
    "sslsni",
    "tcp_user_timeout",
)

_PYMYSQL_KINDS: Mapping[str, _Kind] = {
    "auth_plugin_map": _PyValue("a dict of authentication plugin names to classes", _is_mapping),
    "autocommit": _Flag(),
    "binary_prefix": _Flag(),
    "bind_address": _Text(),
    "charset": _Text(),
    "client_flag": _Count(0),
    "collation": _Text(),
    "compress": _Off("PyMySQL does not support compression"),
    "conv": _PyValue("a dict of converters, as pymysql.converters.conversions", _is_mapping),
    "cursorclass": _PyValue("a cursor class such as pymysql.cursors.DictCursor", _is_class),
    "defer_connect": _Flag(),
    "init_command": _Text(),
    "local_infile": _Flag(),
    "max_allowed_packet": _Count(1),
    "program_name": _Text(),
    "read_default_file": _Text(),
    "read_default_group": _Text(),
    "read_timeout": _Seconds(),
    "server_public_key": _PyValue(
        "the server's RSA public key, PEM as bytes", lambda value: isinstance(value, bytes)
    ),
    "sql_mode": _Text(),
    "ssl": _PyValue(
        "a dict of TLS options (ca, cert, key, ...) or an ssl.SSLContext", _is_tls_options
    ),
    "ssl_ca": _Text(),
    "ssl_cert": _Text(),
    "ssl_disabled": _Flag(),
    "ssl_key": _Text(),
    "ssl_key_password": _Text(),
    "ssl_verify_cert": _Flag(),
    "ssl_verify_identity": _Flag(),
    "use_unicode": _Flag(),
    "write_timeout": _Seconds(),
}

_PSYCOPG_KINDS: Mapping[str, _Kind] = {
    **{name: _Text(numbers=True) for name in _LIBPQ_TEXT},
    "autocommit": _Flag(),
    "context": _PyValue(
        "an adaptation context (a connection or psycopg.adapt.AdaptersMap)", _is_adapt_context
    ),
    "cursor_factory": _PyValue("a cursor class such as psycopg.ClientCursor", _is_class),
    "prepare_threshold": _Threshold(),
    "row_factory": _PyValue("a row factory such as psycopg.rows.dict_row", callable),
}

DRIVER_PARAMETERS: Mapping[Engine, Mapping[str, Parameter]] = MappingProxyType(
    {
        "postgresql": _driver_parameters(
            "postgresql",
            "PostgreSQL driver (libpq and psycopg)",
            "Passed to psycopg.connect.",
            _PSYCOPG_KINDS,
            frozenset({"sslpassword", "oauth_client_secret"}),
        ),
        "mysql": _driver_parameters(
            "mysql",
            "MySQL driver (PyMySQL)",
            "Passed to pymysql.connect.",
            _PYMYSQL_KINDS,
            frozenset({"ssl", "ssl_key_password"}),
        ),
    }
)
"""Driver parameters that pass through unchanged, per engine (an explicit allow-list).

Parameters the library takes over are absent on purpose: connect_timeout is the library's own;
host, port, user, password and the database name are the connection's identity; and routing,
name resolution and reconnection (libpq's hostaddr, service, target_session_attrs,
load_balance_hosts; PyMySQL's unix_socket) are the library's job. Python objects (PyMySQL's
cursorclass, conv, ssl as a dict, auth_plugin_map; psycopg's row_factory, cursor_factory,
context) are keyword arguments only. PyMySQL's deprecated db and passwd are read as database
and password.
"""


_MEANT: Mapping[str, str] = MappingProxyType(
    {
        "pool_size": "pool_max_size",  # SQLAlchemy: the connections kept open, i.e. the cap here
        "max_size": "pool_max_size",  # psycopg_pool
        "min_size": "pool_min_size",  # psycopg_pool
        "pool_timeout": "borrow_timeout",  # SQLAlchemy
        "pool_recycle": "max_lifetime",  # SQLAlchemy
    }
)
"""Other libraries' names for the library's parameters, which spelling alone would not find."""


def _unknown_parameter(name: str, *known: Mapping[str, object]) -> ConfigError:
    """The error for a parameter name found in none of `known`, with the closest as suggestion:
    the parameter another library's name means (`_MEANT`), else the closest spelling."""
    candidates = [candidate for names in known for candidate in names]
    meant = _MEANT.get(name)
    close = [meant] if meant in candidates else []
    close = close or difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
    return ConfigError(
        f"unknown parameter {name!r}",
        parameter=name,
        suggestion=f"did you mean {close[0]!r}?" if close else None,
    )


# -- the parameter reference -----------------------------------------------------------------


def parameter_reference_markdown() -> str:
    """The parameter reference (docs/parameters.md) as Markdown, generated from `Settings`."""
    lines = [
        "# Parameters",
        "",
        "<!-- Generated by `python -m aurora_smartdriver.settings > docs/parameters.md`;"
        " do not edit. -->",
        "",
        "Every parameter can be given in the DSN's query string (`?role=reader&pool_max_size=20`)"
        " or as a keyword argument, which overrides the DSN. An unknown parameter or a malformed"
        " value is a `ConfigError`.",
        "",
        "Durations accept `250ms`, `5s`, `2m`, `1h` or a plain number of seconds; switches accept"
        " `on`/`off`, `true`/`false`, `yes`/`no`, `1`/`0`; lists are comma separated"
        " (`session_init` is `;` separated).",
        "",
        "The connection's identity is not a parameter but comes from the DSN itself:"
        " `postgresql://user:password@host1:5432,host2:5432/database?...` (also `postgres://`,"
        " `mysql://`, `mariadb://`) or libpq's `host=host1,host2 port=5432 user=... password=..."
        " dbname=...`. The names `host`, `port`, `user`, `password`, `database` (or `dbname`)"
        " may also be given in the query string or as keyword arguments.",
    ]
    sections: dict[str, list[Parameter]] = {}
    for parameter in PARAMETERS.values():
        sections.setdefault(parameter.section, []).append(parameter)
    for section, parameters in sections.items():
        lines += ["", f"## {section}", "", "| name | default | unit | description |"]
        lines.append("| --- | --- | --- | --- |")
        for parameter in parameters:
            lines.append(
                f"| `{parameter.name}` | {_default_cell(parameter)} | {parameter.unit or '—'} "
                f"| {_description_cell(parameter)} |"
            )
    lines += [
        "",
        "## Driver parameters",
        "",
        "These pass through to the driver unchanged; any other name is an error. Those marked"
        " keyword only take Python objects (a class, a dict, a function) and are given as"
        " keyword arguments, never in a DSN. PyMySQL's deprecated `db` and `passwd` are read"
        " as `database` and `password`.",
    ]
    for driver_parameters in DRIVER_PARAMETERS.values():
        section = next(iter(driver_parameters.values())).section
        names = ", ".join(
            f"`{name}` (keyword only)" if parameter.keyword_only else f"`{name}`"
            for name, parameter in driver_parameters.items()
        )
        lines += ["", f"{section}: {names}."]
    return "\n".join(lines) + "\n"


def _default_cell(parameter: Parameter) -> str:
    if parameter.default is None:
        return "unset"
    if parameter.default == ():
        return "empty"
    return f"`{parameter.render(parameter.default)}`"


def _description_cell(parameter: Parameter) -> str:
    text = parameter.doc
    if isinstance(parameter.kind, _Choice):
        text += " Values: " + ", ".join(f"`{choice}`" for choice in parameter.kind.choices) + "."
    if parameter.engine == "mysql":
        text += " MySQL only."
    return text.replace("|", "\\|")


if __name__ == "__main__":
    print(parameter_reference_markdown(), end="")
