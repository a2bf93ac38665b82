"""Name resolution that the library controls: DNS queried directly, cached no longer than told.

The operating system's resolver may keep an answer for as long as it likes (nscd,
systemd-resolved, a JVM-style cache in a sidecar), and after a failover a stale answer for a
cluster endpoint sends writes to the demoted writer. So the library asks DNS servers itself with
dnspython and keeps each answer for its TTL, capped, and no longer. The system resolver is only
a fallback for when no DNS server answers at all.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from aurora_smartdriver._instruments import Histogram

__all__ = ["Resolution", "ResolveError", "Resolver", "TcpKeepalive", "open_socket"]

_RESOLV_CONF = "/etc/resolv.conf"

_Source = Literal["dns", "system", "literal"]


class ResolveError(OSError):
    """A host name could not be turned into addresses."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """The addresses of one host name, where they came from and until when they hold.

    `ttl` is the time to live the answer came with (seconds; infinite for an IP literal; for a
    system-resolver answer, which has none, the resolver's cap). `expires_at` is on the
    resolver's clock and is when the cached answer stops being used: `ttl` capped at `ttl_cap`.
    """

    host: str
    addresses: tuple[str, ...]
    ttl: float
    source: _Source
    expires_at: float


class _Flight:
    """One lookup in progress, which other callers for the same host wait for."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Resolution | None = None
        self.error: ResolveError | None = None


class Resolver:
    """Resolves host names with DNS queried directly, caching answers for their TTL, capped.

    With `nameservers` (`(ip, port)` pairs) those servers are asked; without, the servers and
    search list of `/etc/resolv.conf`. Each lookup gives up after `timeout` seconds in all.
    When no server answers (timeout, refusal, server failure, network error) the system
    resolver (`getaddrinfo`) answers instead and the result is marked `"system"`. A name the
    servers say does not exist raises `ResolveError`; in system mode the system resolver is
    asked first, since it also knows names DNS does not (`/etc/hosts`, container host aliases).

    Thread-safe: the cache is guarded by a lock that is never held during I/O, and concurrent
    lookups of one host share a single query. Counters: `lookups`, lookups made (callers that
    joined one in flight are not counted); `cache_hits`, answers served from the cache;
    `fallbacks`, lookups handed to the system resolver; `failures`, lookups that raised
    `ResolveError`; `lookup_times`, a histogram of the lookups' durations in seconds. A
    system answer has no TTL and is kept for `ttl_cap`, so an outage of DNS does not cost
    every connection attempt a `timeout`.
    """

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        timeout: float = 2.0,
        ttl_cap: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"resolver timeout must be > 0 seconds, got {timeout!r}")
        if not ttl_cap >= 0:
            raise ValueError(f"resolver ttl_cap must be >= 0 seconds, got {ttl_cap!r}")
        self._timeout = timeout
        self._ttl_cap = ttl_cap
        self._clock = clock
        self._search = nameservers is None
        self._dns = _make_dns_resolver(nameservers, timeout)
        self._lock = threading.Lock()
        self._cache: dict[str, Resolution] = {}
        self._flights: dict[str, _Flight] = {}
        self.lookups = 0
        self.cache_hits = 0
        self.fallbacks = 0
        self.failures = 0
        self.lookup_times = Histogram()
        #: Applied to every answer `resolve` gives (cached or not), when set: the cluster's
        #: Blue/Green gate sends the names of old blue instances to their green successors.
        self.rewrite: Callable[[Resolution], Resolution] | None = None

    def resolve(self, host: str, *, as_is: bool = False) -> Resolution:
        """The addresses of `host`, from the cache while its answer holds, else looked up;
        ``as_is``: the answer itself, without `rewrite` (what the Blue/Green gate learns from).

        Raises `ResolveError` naming the host when it has no address.
        """
        found = self._resolve(host)
        rewrite = self.rewrite
        return found if rewrite is None or as_is else rewrite(found)

    def _resolve(self, host: str) -> Resolution:
        literal = _ip_literal(host)
        if literal is not None:
            return Resolution(literal, (literal,), math.inf, "literal", math.inf)
        key = host.strip().rstrip(".").lower()
        if not key:
            raise ResolveError(f"cannot resolve an empty host name ({host!r})")
        while True:
            with self._lock:
                cached = self._cache.get(key)
                if cached is not None and cached.expires_at > self._clock():
                    self.cache_hits += 1
                    return cached
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    self.lookups += 1
                    break
            flight.done.wait()
            if flight.result is not None:
                return flight.result
            if flight.error is not None:
                raise ResolveError(*flight.error.args) from flight.error
            # The lookup we waited for died of something else; look up ourselves.
        started = time.perf_counter()
        try:
            result = self._lookup(key)
        except ResolveError as exc:
            flight.error = exc
            raise
        else:
            flight.result = result
            return result
        finally:
            self.lookup_times.observe(time.perf_counter() - started)
            with self._lock:
                if flight.result is None:
                    self.failures += 1
                if flight.result is not None and flight.result.expires_at > self._clock():
                    self._cache[key] = flight.result
                del self._flights[key]
            flight.done.set()

    def invalidate(self, host: str | None = None) -> None:
        """Forget the cached answer for `host`, or every cached answer."""
        with self._lock:
            if host is None:
                self._cache.clear()
            else:
                self._cache.pop(host.strip().rstrip(".").lower(), None)

    def _lookup(self, host: str) -> Resolution:
        try:
            # Relative in system mode, so that the search list of resolv.conf applies.
            qname = dns.name.from_text(host, origin=None if self._search else dns.name.root)
        except dns.exception.DNSException as exc:
            raise ResolveError(f"cannot resolve {host!r}: not a valid host name ({exc})") from exc
        if self._dns is None:
            return self._system(host, "no DNS server is configured")
        try:
            addresses, ttl = _query(self._dns, qname, search=self._search, lifetime=self._timeout)
        except dns.resolver.NXDOMAIN as exc:
            if self._search:
                return self._system(host, "DNS says the name does not exist", exc)
            raise ResolveError(f"cannot resolve {host!r}: no such name in DNS") from exc
        except dns.resolver.NoAnswer as exc:
            raise ResolveError(f"cannot resolve {host!r}: DNS has no address for it") from exc
        except (dns.exception.DNSException, OSError) as exc:
            return self._system(host, f"no DNS server answered ({_describe(exc)})", exc)
        return self._resolution(host, addresses, ttl, "dns")

    def _system(self, host: str, why: str, cause: BaseException | None = None) -> Resolution:
        with self._lock:
            self.fallbacks += 1
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ResolveError(
                f"cannot resolve {host!r}: {why}, and the system resolver failed too ({exc})"
            ) from (cause or exc)
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise ResolveError(f"cannot resolve {host!r}: {why}, and the system has no address")
        return self._resolution(host, addresses, self._ttl_cap, "system")

    def _resolution(
        self, host: str, addresses: tuple[str, ...], ttl: float, source: _Source
    ) -> Resolution:
        return Resolution(host, addresses, ttl, source, self._clock() + min(ttl, self._ttl_cap))


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """TCP keepalive and TCP_USER_TIMEOUT for one detection window: a silent peer is given up.

    The kernel sends keepalive probes after `idle` seconds without traffic, then every
    `interval` seconds, and drops the connection after `count` unanswered ones; where the
    platform has TCP_USER_TIMEOUT, data (or probes) left unacknowledged for `user_timeout_ms`
    drops it as well. A healthy server answers both from its kernel even in the middle of a long
    statement, so they end only connections to a node that is gone or cut off (not one that is
    hung: its kernel still answers; that is the watchdog's part).
    """

    idle: int
    interval: int
    count: int
    user_timeout_ms: int

    @classmethod
    def for_window(cls, seconds: float) -> TcpKeepalive:
        """Values that give up a silent peer after about `seconds` (whole seconds, at least 1,
        for the keepalive timers, as the socket options count them)."""
        idle = max(1, int(seconds // 2))
        interval = max(1, int((seconds - idle) // 3))
        count = max(1, int((seconds - idle) // interval))
        return cls(idle, interval, count, max(1, round(seconds * 1000)))

    def apply(self, sock: socket.socket) -> None:
        """Set these options on a TCP socket (options the platform lacks are skipped)."""
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # a Unix-domain socket has no TCP to keep alive
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", self.idle),
            ("TCP_KEEPINTVL", self.interval),
            ("TCP_KEEPCNT", self.count),
            ("TCP_USER_TIMEOUT", self.user_timeout_ms),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def open_socket(
    address: str, port: int, timeout: float, *, keepalive: TcpKeepalive | None = None
) -> socket.socket:
    """Open a TCP connection to an IP address, with TCP_NODELAY and SO_KEEPALIVE set.

    Takes an address, never a name, so no resolver outside the library's control is consulted.
    `timeout` bounds the connect and stays the socket's timeout; callers set their own after.
    `keepalive` sets the keepalive timers and TCP_USER_TIMEOUT too (before the connect, so a
    peer that stops answering during the handshake is given up as well); without it the
    system's keepalive timers apply (hours, on Linux).
    """
    literal = _ip_literal(address)
    if literal is None:
        raise ValueError(f"open_socket needs an IP address, got {address!r}; resolve it first")
    family = socket.AF_INET6 if ":" in literal else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if keepalive is not None:
            keepalive.apply(sock)
        sock.connect((literal, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _make_dns_resolver(
    nameservers: Sequence[tuple[str, int]] | None, timeout: float
) -> dns.resolver.Resolver | None:
    if nameservers is None:
        try:
            resolver = dns.resolver.Resolver(filename=_RESOLV_CONF, configure=True)
        except (dns.exception.DNSException, OSError):
            return None  # no usable configuration: every lookup goes to the system resolver
    else:
        if not nameservers:
            raise ValueError("resolver nameservers is empty; give None to use /etc/resolv.conf")
        servers: list[str | dns.nameserver.Nameserver] = []
        for address, port in nameservers:
            if _ip_literal(address) is None or not 0 < port < 65536:
                raise ValueError(
                    "resolver nameserver must be an (IP address, port) pair, "
                    f"got {(address, port)!r}"
                )
            servers.append(dns.nameserver.Do53Nameserver(address, port))
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = servers
    resolver.cache = None
    resolver.timeout = timeout
    resolver.lifetime = timeout
    return resolver


def _query(
    resolver: dns.resolver.Resolver, qname: dns.name.Name, *, search: bool, lifetime: float
) -> tuple[tuple[str, ...], float]:
    """Ask for A records, then AAAA when the name has no A; return the addresses and TTL.

    The TTL is the smallest along any CNAME chain, as a cache must use.
    """
    try:
        answer = resolver.resolve(qname, dns.rdatatype.A, lifetime=lifetime, search=search)
    except dns.resolver.NoAnswer:
        answer = resolver.resolve(qname, dns.rdatatype.AAAA, lifetime=lifetime, search=search)
    addresses = tuple(dict.fromkeys(rdata.to_text() for rdata in answer))
    return addresses, float(answer.chaining_result.minimum_ttl)


def _ip_literal(host: str) -> str | None:
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
