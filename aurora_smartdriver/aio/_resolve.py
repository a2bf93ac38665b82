"""Name resolution on the event loop, sharing the cluster's resolver cache.

The process has one `Resolver` per cluster (the sync side's, in `SharedCluster`); its cache
answers async callers too. A miss is looked up with dnspython's async resolver, configured as
the shared one (same servers, search list, timeout, TTL cap), and the answer goes into the
shared cache. The shared resolver's lock is held only to read or store one entry, never
during I/O, so taking it on the loop's thread costs no more than a dictionary access. The
system resolver (when DNS has no answer) runs in the loop's executor.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from aurora_smartdriver.resolver import Resolution, ResolveError, Resolver

__all__ = ["AsyncResolver"]


class AsyncResolver:
    """Resolves host names on one event loop, through ``shared``'s cache."""

    def __init__(self, shared: Resolver) -> None:
        self._shared = shared
        self._flights: dict[str, asyncio.Future[Resolution]] = {}
        sync: Any = shared._dns
        self._dns: dns.asyncresolver.Resolver | None = None
        if sync is not None:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = list(sync.nameservers)
            resolver.search = list(sync.search)
            resolver.domain = sync.domain
            resolver.ndots = sync.ndots
            resolver.timeout = sync.timeout
            resolver.lifetime = sync.lifetime
            resolver.cache = None
            self._dns = resolver

    async def resolve(self, host: str) -> Resolution:
        """The addresses of ``host``; `ResolveError` when it has none."""
        found = await self._resolve(host)
        rewrite = self._shared.rewrite  # the cluster's Blue/Green gate, as on the sync side
        return found if rewrite is None else rewrite(found)

    async def _resolve(self, host: str) -> Resolution:
        shared: Any = self._shared
        key = host.strip().rstrip(".").lower()
        with shared._lock:  # held for one lookup in a dict, never during I/O
            cached = shared._cache.get(key)
            if cached is not None and cached.expires_at > shared._clock():
                shared.cache_hits += 1
                return cached  # type: ignore[no-any-return]
        if cached is None and _literal(host):
            return self._shared._resolve(host)  # an IP literal: no I/O
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        started = time.perf_counter()
        try:
            result = await self._lookup(key)
        except BaseException as exc:
            if not flight.done():
                flight.set_exception(exc)
                flight.exception()  # retrieved: no "never retrieved" warning without waiters
            with shared._lock:
                shared.failures += 1
            raise
        else:
            flight.set_result(result)
            with shared._lock:
                shared.lookups += 1
                if result.expires_at > shared._clock():
                    shared._cache[key] = result
            return result
        finally:
            shared.lookup_times.observe(time.perf_counter() - started)
            del self._flights[key]

    async def _lookup(self, host: str) -> Resolution:
        shared: Any = self._shared
        search = bool(shared._search)
        try:
            qname = dns.name.from_text(host, origin=None if search else dns.name.root)
        except dns.exception.DNSException as exc:
            raise ResolveError(f"cannot resolve {host!r}: not a valid host name ({exc})") from exc
        if self._dns is None:
            return await self._system(host, "no DNS server is configured")
        try:
            addresses, ttl = await _query(self._dns, qname, search=search)
        except dns.resolver.NXDOMAIN as exc:
            if search:
                return await self._system(host, "DNS says the name does not exist", exc)
            raise ResolveError(f"cannot resolve {host!r}: no such name in DNS") from exc
        except dns.resolver.NoAnswer as exc:
            raise ResolveError(f"cannot resolve {host!r}: DNS has no address for it") from exc
        except (dns.exception.DNSException, OSError) as exc:
            return await self._system(host, f"no DNS server answered ({type(exc).__name__})", exc)
        return self._resolution(host, addresses, ttl, "dns")

    async def _system(self, host: str, why: str, cause: BaseException | None = None) -> Resolution:
        shared: Any = self._shared
        with shared._lock:
            shared.fallbacks += 1
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ResolveError(
                f"cannot resolve {host!r}: {why}, and the system resolver failed too ({exc})"
            ) from (cause or exc)
        addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise ResolveError(f"cannot resolve {host!r}: {why}, and the system has no address")
        return self._resolution(host, addresses, shared._ttl_cap, "system")

    def _resolution(
        self, host: str, addresses: tuple[str, ...], ttl: float, source: Any
    ) -> Resolution:
        shared: Any = self._shared
        expires = shared._clock() + min(ttl, shared._ttl_cap)
        return Resolution(host, addresses, ttl, source, expires)


def _literal(host: str) -> bool:
    import ipaddress

    text = host.strip().removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


async def _query(
    resolver: dns.asyncresolver.Resolver, qname: dns.name.Name, *, search: bool
) -> tuple[tuple[str, ...], float]:
    """A records, else AAAA; the addresses and the smallest TTL along the CNAME chain."""
    try:
        answer = await resolver.resolve(qname, dns.rdatatype.A, search=search)
    except dns.resolver.NoAnswer:
        answer = await resolver.resolve(qname, dns.rdatatype.AAAA, search=search)
    addresses = tuple(dict.fromkeys(rdata.to_text() for rdata in answer))
    ttl = float(answer.chaining_result.minimum_ttl)
    return addresses, ttl if ttl >= 0 else math.inf
