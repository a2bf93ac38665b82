"""DSNs parsed into a `ConnectionSpec` and rendered back.

Two forms are read:

- the URL form, ``scheme://[user[:password]@]host[:port][,...][/database][?name=value&...]``,
  with the schemes postgresql (or postgres), mysql and mariadb (the mysql engine, MariaDB
  flavour). User, password, database and query values are percent-decoded (``+`` stays ``+``). The
  host list ends at the first ``/`` or ``?``, and the user information at the last ``@`` before it,
  so ``@`` may appear raw in a password but ``/`` and ``?`` must be encoded (``%2F``, ``%3F``); an
  ``@`` after the host list is refused, because it almost always is a password cut in two by a raw
  ``/`` or ``?``, and naming the pieces in an error would show the password. IPv6 addresses go in
  brackets.
- libpq's keyword form, for PostgreSQL: ``host=a,b port=5432 dbname=app user=u password='p w'``,
  with libpq's quoting (single quotes around values with spaces, backslash escapes).

Every name is the connection's identity (host, port, user, password, database or dbname), a
library parameter (`aurora_smartdriver.settings.PARAMETERS`) or an allowed driver parameter
(`aurora_smartdriver.settings.DRIVER_PARAMETERS`); anything else is a `ConfigError`. A name given
twice with different values is an error too, as are hosts without a host name and bad ports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, cast
from urllib.parse import quote, unquote

from aurora_smartdriver.errors import ConfigError
from aurora_smartdriver.settings import (
    DRIVER_PARAMETERS,
    PARAMETERS,
    Engine,
    Settings,
    _is_hostname,
    _is_ip,
    _port_number,
    _split_port,
    _unknown_parameter,
)

__all__ = ["ConnectionSpec", "DriverValue", "parse"]

DriverValue = object
"""A driver parameter's value: text for libpq, typed for PyMySQL (e.g. ssl_verify_cert=True), or
a Python object given as a keyword argument (``cursorclass=DictCursor``, ``row_factory=...``)."""

_SCHEMES: Mapping[str, tuple[Engine, bool]] = {
    "postgresql": ("postgresql", False),
    "postgres": ("postgresql", False),
    "mysql": ("mysql", False),
    "mariadb": ("mysql", True),
}
_DEFAULT_PORTS: Mapping[Engine, int] = {"postgresql": 5432, "mysql": 3306}
_IDENTITY = ("host", "port", "user", "password", "database")
_ALIASES: Mapping[Engine, Mapping[str, str]] = {
    "postgresql": {"dbname": "database"},
    "mysql": {"dbname": "database", "db": "database", "passwd": "password"},
}
"""Other names of identity fields: libpq's dbname; PyMySQL's deprecated db and passwd."""
_TAKEN_OVER: Mapping[Engine, Mapping[str, str]] = {
    "postgresql": {
        "hostaddr": "the library resolves host names itself; list addresses as hosts instead",
        "service": "give the hosts, port, user and database in the DSN itself",
        "target_session_attrs": "routing is the library's job: use role=writer|reader|any",
        "load_balance_hosts": "routing is the library's job: use reader_strategy",
        "replication": "replication connections are not supported",
    },
    "mysql": {
        "unix_socket": "the library connects to each instance over TCP",
    },
}
_URL_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_C_SPACE = " \t\n\v\f\r"
_MASK = "***"
_QUERY_SAFE = ":/,?*"
_ENCODE_HINT = (
    "percent-encode '/', '?' and '@' in user names, passwords, database names and parameter "
    "values (%2F, %3F, %40)"
)

_HostEntry = tuple[str, int | None]


@dataclass(frozen=True, slots=True)
class ConnectionSpec:
    """Where and as whom to connect, with the library's settings and the driver's parameters.

    Built by `parse`; constructing one directly validates it the same way. `repr` and `str`
    show the DSN with the password and every secret parameter masked; `to_dsn` gives the real
    one.
    """

    engine: Engine
    hosts: tuple[tuple[str, int], ...]
    user: str | None = None
    password: str | None = None
    database: str | None = None
    settings: Settings = field(default_factory=Settings)
    driver_params: Mapping[str, DriverValue] = field(default_factory=lambda: MappingProxyType({}))
    mariadb: bool = False
    """MariaDB rather than MySQL (the mariadb:// scheme); the engine is mysql either way."""

    def __post_init__(self) -> None:
        if self.engine not in _DEFAULT_PORTS:
            raise ConfigError(
                f"unknown engine {self.engine!r}",
                value=str(self.engine),
                suggestion="use postgresql or mysql",
            )
        if self.mariadb and self.engine != "mysql":
            raise ConfigError("mariadb applies to the mysql engine only", value=self.engine)
        object.__setattr__(self, "hosts", _checked_hosts(self.hosts))
        for name in ("user", "password", "database"):
            object.__setattr__(self, name, _checked_text(name, getattr(self, name)))
        object.__setattr__(
            self, "driver_params", _checked_driver_params(self.engine, self.driver_params)
        )
        _check_engine_settings(self.engine, self.settings)

    def render(
        self, mask_password: bool = True, *, style: Literal["url", "keywords"] = "url"
    ) -> str:
        """The DSN, with the password and secret parameters shown as *** unless told otherwise.

        `style` "keywords" gives libpq's keyword form, for PostgreSQL only.
        """
        params = list(self.settings.query_params(mask_secrets=mask_password).items())
        for name, value in self.driver_params.items():
            parameter = DRIVER_PARAMETERS[self.engine][name]
            if mask_password and parameter.secret:
                params.append((name, _MASK))
            elif mask_password and parameter.keyword_only:
                params.append((name, _object_label(value)))
            else:
                params.append((name, parameter.render(value)))  # ConfigError if keyword-only
        password = _MASK if mask_password and self.password is not None else self.password
        if style == "keywords":
            return self._render_keywords(password, params)
        return self._render_url(password, params)

    def to_dsn(self, *, style: Literal["url", "keywords"] = "url") -> str:
        """The DSN with its real password and secrets, such that `parse` gives this spec back.

        A `ConfigError` when a driver parameter holds a Python object (``cursorclass``,
        ``row_factory``, ...), which no DSN can express.
        """
        return self.render(mask_password=False, style=style)

    def with_overrides(self, **overrides: object) -> ConnectionSpec:
        """This spec with some values replaced, as `parse` applies keyword arguments."""
        values: dict[str, object] = {"host": list(self.hosts)}
        for name in ("user", "password", "database"):
            if (value := getattr(self, name)) is not None:
                values[name] = value
        for name, parameter in PARAMETERS.items():
            if (value := getattr(self.settings, name)) != parameter.default:
                values[name] = value
        values.update(self.driver_params)
        return _build(self.engine, self.mariadb, _merged(self.engine, values, overrides))

    def _render_url(self, password: str | None, params: list[tuple[str, str]]) -> str:
        userinfo = ""
        if self.user is not None or password is not None:
            userinfo = quote(self.user or "", safe="")
            if password is not None:
                userinfo += ":" + quote(password, safe="*")
            userinfo += "@"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        path = "" if self.database is None else "/" + quote(self.database, safe="")
        query = "&".join(
            f"{name}={quote(text, safe=_QUERY_SAFE + '<>' if _is_label(text) else _QUERY_SAFE)}"
            for name, text in params
        )
        scheme = "mariadb" if self.mariadb else self.engine
        return f"{scheme}://{userinfo}{hosts}{path}{'?' if query else ''}{query}"

    def _render_keywords(self, password: str | None, params: list[tuple[str, str]]) -> str:
        if self.engine != "postgresql":
            raise ConfigError(
                "the keyword form is libpq's, for PostgreSQL only",
                value=self.engine,
                suggestion="use the URL form for mysql",
            )
        ports = [str(port) for _, port in self.hosts]
        items = [
            ("host", ",".join(host for host, _ in self.hosts)),
            ("port", ports[0] if len(set(ports)) == 1 else ",".join(ports)),
        ]
        for name, value in (("user", self.user), ("password", password), ("dbname", self.database)):
            if value is not None:
                items.append((name, value))
        return " ".join(f"{name}={_keyword_quote(text)}" for name, text in [*items, *params])

    def __repr__(self) -> str:
        return f"ConnectionSpec({self.render()!r})"

    def __str__(self) -> str:
        return self.render()

    def __hash__(self) -> int:
        return hash(
            (
                self.engine,
                self.hosts,
                self.user,
                self.password,
                self.database,
                self.settings,
                frozenset((name, _hashable(v)) for name, v in self.driver_params.items()),
                self.mariadb,
            )
        )


def _object_label(value: object) -> str:
    """How a keyword-only driver value shows in a printed DSN: ``<DictCursor>``, ``<dict>``."""
    name = (
        getattr(value, "__qualname__", None) if isinstance(value, type) or callable(value) else None
    )
    return f"<{name or type(value).__name__}>"


def _is_label(text: str) -> bool:
    return text.startswith("<") and text.endswith(">")


def _hashable(value: object) -> object:
    """`value` itself when hashable, else a hashable stand-in equal for equal contents."""
    if isinstance(value, Mapping):
        return tuple(sorted((repr(key), _hashable(item)) for key, item in value.items()))
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def parse(dsn: str, /, **overrides: object) -> ConnectionSpec:
    """The `ConnectionSpec` a DSN describes, keyword arguments replacing what the DSN says.

    Keyword arguments may name anything a DSN can (identity, library and driver parameters) and
    take DSN text or Python values (``pool_max_size=20``, ``session_init=["SET ..."]``); a
    keyword whose value is None is ignored, as in psycopg, except where None is a value
    (``prepare_threshold=None`` turns prepared statements off). A ``port`` keyword replaces the
    ports of the DSN's hosts.
    """
    text = dsn.strip()
    if not text:
        raise ConfigError("empty DSN", suggestion="give e.g. postgresql://user@host:5432/db")
    if match := _URL_RE.fullmatch(text):
        engine, mariadb, values = _parse_url(match[1], match[2])
    elif "=" in text:
        engine, mariadb, values = "postgresql", False, _parse_keywords(text)
    else:
        raise ConfigError(
            "not a DSN",
            suggestion="give a URL such as postgresql://user@host/db or libpq keywords such as "
            "host=h dbname=db",
        )
    return _build(engine, mariadb, _merged(engine, values, overrides))


# -- reading the two forms ------------------------------------------------------------------------


def _parse_url(scheme: str, rest: str) -> tuple[Engine, bool, dict[str, object]]:
    try:
        engine, mariadb = _SCHEMES[scheme.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown scheme {scheme!r}",
            value=scheme,
            suggestion="use one of " + ", ".join(f"{name}://" for name in _SCHEMES),
        ) from None
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in tail:
        raise ConfigError("malformed DSN: '@' after the host list", suggestion=_ENCODE_HINT)
    values: dict[str, object] = {}
    userinfo, at, hostlist = authority.rpartition("@")
    if at:
        user, _, password = userinfo.partition(":")
        if user:
            _put(engine, values, "user", _decoded(user, "the user name"))
        if password:
            _put(engine, values, "password", _decoded(password, "the password"))
    if hostlist:
        _put(engine, values, "host", _parse_hosts(hostlist, ports=True))
    path, _, query = tail.partition("?")
    if database := _decoded(path[1:], "the database name"):
        _put(engine, values, "database", database)
    for position, item in enumerate(query.split("&"), 1):
        if not item:
            continue
        raw_name, equals, raw_value = item.partition("=")
        if not equals or not raw_name:
            raise ConfigError(
                f"malformed query: item {position} is not name=value",
                suggestion="percent-encode '&' in values as %26",
            )
        name = _decoded(raw_name, f"query item {position}")
        _put_text(engine, values, name, _decoded(raw_value, f"the value of {name!r}"), ports=True)
    return engine, mariadb, values


def _parse_keywords(text: str) -> dict[str, object]:
    """Read libpq's keyword form: ``name=value`` pairs, values optionally single-quoted.

    As in libpq, a backslash escapes the next character both inside and outside quotes, and
    blanks after ``=`` are skipped, so an empty value must be written ``''``.
    """
    values: dict[str, object] = {}
    position, end = 0, len(text)
    while True:
        while position < end and text[position] in _C_SPACE:
            position += 1
        if position == end:
            return values
        start = position
        while position < end and text[position] != "=" and text[position] not in _C_SPACE:
            position += 1
        name = text[start:position]
        while position < end and text[position] in _C_SPACE:
            position += 1
        if not name or position == end or text[position] != "=":
            raise ConfigError(
                f"malformed connection string: expected name=value at character {start + 1}",
                suggestion="quote values that contain blanks: password='a b'",
            )
        position += 1
        while position < end and text[position] in _C_SPACE:
            position += 1
        value, position = _keyword_value(text, position, name)
        _put_text("postgresql", values, name, value, ports=False)


def _keyword_value(text: str, position: int, name: str) -> tuple[str, int]:
    """The value starting at `position` and the position after it."""
    chars: list[str] = []
    end = len(text)
    quoted = position < end and text[position] == "'"
    position += quoted
    while True:
        if position >= end:
            if quoted:
                raise ConfigError(
                    f"unterminated quoted value for {name!r}",
                    parameter=name,
                    suggestion="close it with ' (write a quote inside a value as \\')",
                )
            break
        char = text[position]
        if char == "\\":
            chars.append(text[position + 1 : position + 2])
            position += 2
            continue
        if (quoted and char == "'") or (not quoted and char in _C_SPACE):
            position += 1
            break
        chars.append(char)
        position += 1
    return "".join(chars), min(position, end)


def _keyword_quote(text: str) -> str:
    if text and not any(c.isspace() or c in "'\\" for c in text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _decoded(text: str, what: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{what} is not valid percent-encoded UTF-8",
            suggestion="encode each byte of the UTF-8 text as %XX",
        ) from None


def _parse_hosts(text: str, *, ports: bool) -> list[_HostEntry]:
    """Hosts from a comma separated list; with `ports`, each may end in ``:port``."""
    entries: list[_HostEntry] = []
    for item in text.split(","):
        if ports and not _is_ip(item):
            host, port_text = _split_port(item)
        else:
            host, port_text = item.removeprefix("[").removesuffix("]"), None
        if not host:
            raise ConfigError(
                "missing host: the host list has an empty entry",
                parameter="host",
                suggestion="separate hosts with single commas",
            )
        port = None if port_text is None else _port(port_text, host)
        entries.append((_checked_host(host, ports=ports), port))
    return entries


def _port(text: str, host: str | None = None) -> int:
    port = _port_number(text)
    if port is None:
        where = f" for host {host!r}" if host else ""
        raise ConfigError(
            f"bad port {text!r}{where}: expected a number from 1 to 65535",
            parameter="port",
            value=text,
            suggestion="write IPv6 addresses in brackets: [::1]:5432" if ":" in text else None,
        )
    return port


def _checked_host(host: str, *, ports: bool = True) -> str:
    if _is_hostname(host) or (":" in host and _is_ip(host)):
        return host
    hint = "expected a host name, an IPv4 address or an IPv6 address"
    if not ports and ":" in host:
        hint += "; give ports with port=..."
    raise ConfigError(f"bad host {host!r}", parameter="host", value=host, suggestion=hint)


# -- collecting values ----------------------------------------------------------------------------


def _put_text(
    engine: Engine, values: dict[str, object], name: str, text: str, *, ports: bool
) -> None:
    """Record `name` = `text` as read from a DSN, parsing host and port lists."""
    canonical = _ALIASES[engine].get(name, name)
    if canonical == "host":
        _put(engine, values, name, _parse_hosts(text, ports=ports) if text else [])
    elif canonical == "port":
        _put(engine, values, name, [_port(item) for item in text.split(",")])
    else:
        _put(engine, values, name, text)


def _put(engine: Engine, values: dict[str, object], name: str, value: object) -> None:
    """Record `name` = `value`, refusing a second, different value for the same name."""
    canonical = _ALIASES[engine].get(name, name)
    if canonical in values and values[canonical] != value:
        first, second = (_shown(engine, canonical, v) for v in (values[canonical], value))
        raise ConfigError(
            f"parameter {canonical!r} is given twice with different values, {first!r} and "
            f"{second!r}",
            parameter=canonical,
            value=second,
            suggestion="give it once",
        )
    values[canonical] = value


def _shown(engine: Engine, name: str, value: object) -> str:
    if name == "password":
        return _MASK
    if name == "host":
        entries = cast(list[_HostEntry], value)
        return ",".join(host if port is None else f"{host}:{port}" for host, port in entries)
    if name == "port":
        return ",".join(str(port) for port in cast(list[int], value))
    parameter = PARAMETERS.get(name) or DRIVER_PARAMETERS[engine].get(name)
    if parameter is not None:
        return parameter.shown(value)
    return str(value)


def _merged(
    engine: Engine, values: Mapping[str, object], overrides: Mapping[str, object]
) -> dict[str, object]:
    """`values` with `overrides` applied; a port override replaces the hosts' own ports."""
    given: dict[str, object] = {}
    for name, value in overrides.items():
        canonical = _ALIASES[engine].get(name, name)
        parameter = DRIVER_PARAMETERS[engine].get(canonical)
        if value is None and not (parameter is not None and parameter.takes_none):
            continue
        if canonical == "host":
            _put(engine, given, name, _host_override(value))
        elif canonical == "port":
            _put(engine, given, name, _port_override(value))
        else:
            _put(engine, given, name, value)
    merged = dict(values)
    if "port" in given and "host" not in given and "host" in merged:
        merged["host"] = [(host, None) for host, _ in cast(list[_HostEntry], merged["host"])]
    merged.update(given)
    return merged


def _host_override(value: object) -> list[_HostEntry]:
    if isinstance(value, str):
        return _parse_hosts(value, ports=True)
    if isinstance(value, Sequence):
        entries: list[_HostEntry] = []
        for item in value:
            if isinstance(item, str):
                entries += _parse_hosts(item, ports=True)
            elif (
                isinstance(item, tuple)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], int)
            ):
                entries.append((_checked_host(item[0]), _port(str(item[1]), item[0])))
            else:
                break
        else:
            return entries
    raise ConfigError(
        f"invalid value {value!r} for parameter 'host'",
        parameter="host",
        value=repr(value),
        suggestion="give 'host[:port],...' or a list of 'host[:port]' or (host, port)",
    )


def _port_override(value: object) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [_port(str(value))]
    if isinstance(value, str):
        return [_port(item) for item in value.split(",")]
    raise ConfigError(
        f"invalid value {value!r} for parameter 'port'",
        parameter="port",
        value=repr(value),
        suggestion="give a number from 1 to 65535",
    )


# -- building and checking the spec -----------------------------------------------------------


def _build(engine: Engine, mariadb: bool, values: dict[str, object]) -> ConnectionSpec:
    hosts = cast(list[_HostEntry], values.pop("host", []))
    ports = cast(list[int] | None, values.pop("port", None))
    user, password, database = (values.pop(name, None) for name in ("user", "password", "database"))
    library: dict[str, object] = {}
    driver: dict[str, object] = {}
    for name, value in values.items():
        if name in PARAMETERS:
            library[name] = value
        elif name in DRIVER_PARAMETERS[engine]:
            driver[name] = value
        else:
            raise _unexpected_parameter(engine, name)
    return ConnectionSpec(
        engine=engine,
        hosts=_with_ports(engine, hosts, ports),
        user=cast(str | None, user),
        password=cast(str | None, password),
        database=cast(str | None, database),
        settings=Settings.from_params(library),
        driver_params=cast(Mapping[str, DriverValue], driver),
        mariadb=mariadb,
    )


def _with_ports(
    engine: Engine, hosts: list[_HostEntry], ports: list[int] | None
) -> tuple[tuple[str, int], ...]:
    """Each host with its port: its own, else the port parameter's, else the engine's default."""
    if not hosts:
        raise ConfigError(
            "missing host",
            parameter="host",
            suggestion=f"give at least one host, e.g. {engine}://user@host:"
            f"{_DEFAULT_PORTS[engine]}/db",
        )
    if ports is not None and len(ports) not in (1, len(hosts)):
        raise ConfigError(
            f"{len(ports)} ports given for {len(hosts)} hosts",
            parameter="port",
            suggestion="give one port for all hosts or one per host",
        )
    result = []
    for index, (host, own) in enumerate(hosts):
        listed = None if ports is None else ports[index if len(ports) > 1 else 0]
        if own is not None and listed is not None and own != listed:
            raise ConfigError(
                f"host {host!r} has port {own} in the host list but {listed} in 'port'",
                parameter="port",
                value=str(listed),
                suggestion="give the port once",
            )
        port = own if own is not None else listed
        result.append((host, port if port is not None else _DEFAULT_PORTS[engine]))
    return tuple(result)


def _unexpected_parameter(engine: Engine, name: str) -> ConfigError:
    if name in _TAKEN_OVER[engine]:
        return ConfigError(
            f"parameter {name!r} is not accepted by aurora_smartdriver",
            parameter=name,
            suggestion=_TAKEN_OVER[engine][name],
        )
    for other, params in DRIVER_PARAMETERS.items():
        if other != engine and name in params:
            return ConfigError(
                f"parameter {name!r} belongs to the {other} driver; this is a {engine} DSN",
                parameter=name,
            )
    identity = dict.fromkeys([*_IDENTITY, *_ALIASES[engine]])
    return _unknown_parameter(name, PARAMETERS, DRIVER_PARAMETERS[engine], identity)


def _checked_hosts(hosts: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(hosts, Sequence) or isinstance(hosts, str):
        raise ConfigError("hosts must be a sequence of (host, port) pairs", parameter="host")
    checked = []
    for entry in hosts:
        if not (
            isinstance(entry, tuple)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], int)
        ):
            raise ConfigError(
                f"invalid host entry {entry!r}: expected (host, port)", parameter="host"
            )
        checked.append((_checked_host(entry[0]), _port(str(entry[1]), entry[0])))
    if not checked:
        raise ConfigError("missing host", parameter="host", suggestion="give at least one host")
    return tuple(checked)


def _checked_text(name: str, value: object) -> str | None:
    if value is None or value == "":
        return None
    shown = _MASK if name == "password" else repr(value)
    if not isinstance(value, str):
        raise ConfigError(
            f"invalid value for {name!r}: expected a string", parameter=name, value=shown
        )
    if "\x00" in value or _has_surrogate(value):
        raise ConfigError(
            f"invalid value for {name!r}: it contains a NUL character or an unpaired surrogate",
            parameter=name,
            value=shown,
        )
    return value


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= char <= "\udfff" for char in text)


def _checked_driver_params(
    engine: Engine, params: Mapping[str, object]
) -> Mapping[str, DriverValue]:
    known = DRIVER_PARAMETERS[engine]
    checked: dict[str, DriverValue] = {}
    for name, value in params.items():
        if name not in known:
            raise _unexpected_parameter(engine, name)
        checked[name] = known[name].parse(value)
    return MappingProxyType(checked)


def _check_engine_settings(engine: Engine, settings: Settings) -> None:
    """Reject settings that contradict the engine or would be ignored by it."""
    source = settings.topology_source
    if source.startswith("aurora-") and source not in (f"aurora-{engine}", "aurora-global"):
        raise ConfigError(
            f"topology_source={source} does not fit a {engine} DSN",
            parameter="topology_source",
            value=source,
            suggestion=f"use aurora-{engine} or auto",
        )
    for name, parameter in PARAMETERS.items():
        value = getattr(settings, name)
        if parameter.engine not in (None, engine) and value != parameter.default:
            raise ConfigError(
                f"parameter {name!r} applies to {parameter.engine} only; this is a {engine} DSN",
                parameter=name,
                value=parameter.shown(value),
            )
