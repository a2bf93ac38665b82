"""An authoritative DNS server for the lab's zone, served from background threads.

The lab changes its answers at any moment (a failover flips the cluster endpoint's CNAME, a delayed
flip becomes due), so the server keeps no data of its own: it asks its zone provider on every query
and caches nothing.
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import itertools
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = ["NEGATIVE_TTL", "ARecord", "CNAMERecord", "DNSServer", "Record", "Zone"]

_log = logging.getLogger("aurora_smartdriver.lab.dns")

NEGATIVE_TTL = 5
"""TTL of the zone's SOA and its minimum field, hence how long a resolver may cache a 'no'."""

_MAX_CNAME_STEPS = 8
_TCP_IDLE_TIMEOUT = 10.0
_UDP_PLAIN_SIZE = 512  # the most a client without EDNS accepts over UDP (RFC 1035)
_TCP_MAX_SIZE = 65535


def _check_name(name: str, what: str) -> None:
    if not name.endswith(".") or name != name.lower():
        raise ValueError(
            f"{what} must be absolute and lowercase (like 'db.example.'), got {name!r}"
        )


@dataclass(frozen=True, slots=True)
class ARecord:
    """The IPv4 addresses of a name."""

    addresses: tuple[str, ...]
    ttl: int

    def __post_init__(self) -> None:
        for address in self.addresses:
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise ValueError(f"ARecord address must be IPv4, got {address!r}") from None
        if self.ttl < 0:
            raise ValueError(f"ARecord ttl must be >= 0, got {self.ttl}")


@dataclass(frozen=True, slots=True)
class CNAMERecord:
    """An alias: the name is another name for `target`."""

    target: str
    ttl: int

    def __post_init__(self) -> None:
        _check_name(self.target, "CNAMERecord target")
        if self.ttl < 0:
            raise ValueError(f"CNAMERecord ttl must be >= 0, got {self.ttl}")


Record = ARecord | CNAMERecord


@dataclass(frozen=True, slots=True)
class Zone:
    """The names the server is authoritative for, and their records, at one moment."""

    origin: str
    records: Mapping[str, Record]

    def __post_init__(self) -> None:
        _check_name(self.origin, "Zone origin")
        suffix = "." + self.origin
        for name in self.records:
            _check_name(name, "Zone record name")
            if name != self.origin and not name.endswith(suffix):
                raise ValueError(f"record {name!r} is outside the zone origin {self.origin!r}")


def _soa(origin: dns.name.Name) -> dns.rrset.RRset:
    o = origin.to_text()
    return dns.rrset.from_text(
        origin,
        NEGATIVE_TTL,
        dns.rdataclass.IN,
        dns.rdatatype.SOA,
        f"ns.{o} hostmaster.{o} 1 3600 600 86400 {NEGATIVE_TTL}",
    )


def _has_descendant(zone: Zone, name: str) -> bool:
    suffix = "." + name
    return any(key.endswith(suffix) for key in zone.records)


def _answer(query: dns.message.Message, zone: Zone) -> dns.message.Message:
    """Build the authoritative response to `query` from `zone`."""
    response = dns.message.make_response(query)
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    question = query.question[0]
    origin = dns.name.from_text(zone.origin)
    if question.rdclass != dns.rdataclass.IN or not question.name.is_subdomain(origin):
        response.set_rcode(dns.rcode.REFUSED)
        return response
    response.flags |= dns.flags.AA
    rdtype = question.rdtype

    name = question.name
    seen: set[str] = set()
    # The first step looks up the question's name, each later one the previous CNAME's target.
    for _ in range(1 + _MAX_CNAME_STEPS):
        key = name.to_text().lower()
        if key in seen:
            return response  # a CNAME loop: answer what we have
        seen.add(key)
        record = zone.records.get(key)
        if record is None:
            if name == origin and rdtype == dns.rdatatype.SOA:
                response.answer.append(_soa(origin))
                return response
            # A name that exists only because names below it do (an empty non-terminal) is NODATA.
            if name != origin and not _has_descendant(zone, key):
                response.set_rcode(dns.rcode.NXDOMAIN)
            break
        if isinstance(record, CNAMERecord):
            response.answer.append(
                dns.rrset.from_text(
                    name, record.ttl, dns.rdataclass.IN, dns.rdatatype.CNAME, record.target
                )
            )
            target = dns.name.from_text(record.target)
            if rdtype == dns.rdatatype.CNAME or not target.is_subdomain(origin):
                return response
            name = target
            continue
        if rdtype == dns.rdatatype.A and record.addresses:
            response.answer.append(
                dns.rrset.from_text_list(
                    name, record.ttl, dns.rdataclass.IN, dns.rdatatype.A, list(record.addresses)
                )
            )
            return response
        break  # the name exists without data of this type: NODATA
    else:
        return response  # the chain is longer than we follow: answer what we have
    response.authority.append(_soa(origin))
    return response


class DNSServer:
    """Serves the zone returned by `zone()` over UDP and TCP on one host and port.

    `zone()` is called for every query, so a change is visible on the next one. One thread
    receives UDP queries, accepts TCP connections and sends delayed UDP answers; each TCP
    connection has a thread of its own, closed after some idle time.
    """

    def __init__(self, host: str, port: int, zone: Callable[[], Zone]) -> None:
        self._host = host
        self._port = port
        self._zone = zone
        self._delay = 0.0
        self._drop = False
        self._queries = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._tcp_clients: dict[socket.socket, threading.Thread] = {}

    @property
    def address(self) -> tuple[str, int]:
        """The host and port served (the bound port once started, if 0 was asked for)."""
        return self._host, self._port

    @property
    def queries(self) -> int:
        """How many queries have been answered."""
        return self._queries

    def set_delay(self, seconds: float) -> None:
        """Delay every answer by `seconds` (0 for none), like a slow DNS server."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {seconds}")
        self._delay = seconds

    def set_drop(self, drop: bool) -> None:
        """Drop every query silently while `drop` is true, like a DNS outage."""
        self._drop = drop

    def start(self) -> None:
        """Bind the UDP and TCP sockets and start serving; raise OSError if they cannot bind."""
        if self._thread is not None:
            raise RuntimeError(f"DNS server on {self._host}:{self._port} is already running")
        self._udp, self._tcp = self._bind()
        self._port = self._udp.getsockname()[1]
        self._wake = socket.socketpair()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._serve, name=f"lab-dns-{self._host}:{self._port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every socket and join every thread; does nothing if not running."""
        if self._thread is None or self._wake is None:
            return
        self._stopping.set()
        self._wake[1].send(b"\0")
        self._thread.join()
        for sock in (self._udp, self._tcp, *self._wake):
            if sock is not None:
                sock.close()
        with self._lock:
            clients = list(self._tcp_clients.items())
        for conn, thread in clients:
            # Wakes the thread out of recv(); the thread closes the socket itself.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            thread.join()
        self._thread = self._udp = self._tcp = self._wake = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        # With port 0 the UDP socket picks a free port, which may be taken for TCP: try again.
        attempts = 1
        while True:
            try:
                return self._bind_once()
            except OSError:
                if self._port != 0 or attempts == 20:
                    raise
                attempts += 1

    def _bind_once(self) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            for sock in (udp, tcp):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setblocking(False)
            udp.bind((self._host, self._port))
            tcp.bind((self._host, udp.getsockname()[1]))
            tcp.listen(128)
        except OSError:
            udp.close()
            tcp.close()
            raise
        return udp, tcp

    def _serve(self) -> None:
        assert self._udp is not None and self._tcp is not None and self._wake is not None
        udp, tcp, wake = self._udp, self._tcp, self._wake[0]
        # Delayed UDP answers wait here, so one slow answer does not hold up the others.
        pending: list[tuple[float, int, bytes, tuple[str, int]]] = []
        order = itertools.count()
        with selectors.DefaultSelector() as selector:
            for sock in (udp, tcp, wake):
                selector.register(sock, selectors.EVENT_READ)
            while not self._stopping.is_set():
                timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
                for key, _ in selector.select(timeout):
                    if key.fileobj is udp:
                        answer = self._receive_udp(udp)
                        if answer is not None:
                            wire, peer = answer
                            due = time.monotonic() + self._delay
                            heapq.heappush(pending, (due, next(order), wire, peer))
                    elif key.fileobj is tcp:
                        self._accept(tcp)
                    else:
                        wake.recv(64)
                while pending and pending[0][0] <= time.monotonic():
                    _, _, wire, peer = heapq.heappop(pending)
                    self._count_answer()  # before sending, so a client that has it sees it counted
                    try:
                        udp.sendto(wire, peer)
                    except OSError as exc:
                        _log.debug("cannot answer %s over UDP: %s", peer, exc)

    def _receive_udp(self, udp: socket.socket) -> tuple[bytes, tuple[str, int]] | None:
        try:
            data, peer = udp.recvfrom(_TCP_MAX_SIZE)
        except OSError as exc:  # e.g. an ICMP error from an earlier answer surfaces here
            _log.debug("UDP receive failed: %s", exc)
            return None
        wire = self._respond(data, peer, udp=True)
        return None if wire is None else (wire, peer)

    def _accept(self, tcp: socket.socket) -> None:
        try:
            conn, peer = tcp.accept()
        except OSError as exc:
            _log.debug("TCP accept failed: %s", exc)
            return
        conn.settimeout(_TCP_IDLE_TIMEOUT)
        thread = threading.Thread(
            target=self._serve_tcp, args=(conn, peer), name=f"lab-dns-tcp-{peer}", daemon=True
        )
        with self._lock:
            self._tcp_clients[conn] = thread
        thread.start()

    def _serve_tcp(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            with conn:
                while not self._stopping.is_set():
                    header = _recv_exactly(conn, 2)
                    if header is None:
                        return
                    data = _recv_exactly(conn, struct.unpack("!H", header)[0])
                    if data is None:
                        return
                    wire = self._respond(data, peer, udp=False)
                    if wire is None:
                        continue
                    if self._delay and self._stopping.wait(self._delay):
                        return
                    self._count_answer()
                    conn.sendall(struct.pack("!H", len(wire)) + wire)
        except OSError as exc:  # includes the idle timeout
            _log.debug("TCP connection from %s closed: %s", peer, exc)
        finally:
            with self._lock:
                self._tcp_clients.pop(conn, None)

    def _respond(self, data: bytes, peer: tuple[str, int], *, udp: bool) -> bytes | None:
        """Return the answer to the query in `data`, or None when there is none to send."""
        if self._drop:
            return None
        try:
            query = dns.message.from_wire(data)
        except Exception as exc:  # dnspython raises more than DNSException on some garbage
            _log.debug("ignoring a malformed packet from %s: %r", peer, exc)
            return None
        if query.flags & dns.flags.QR:
            _log.debug("ignoring a response sent to us by %s", peer)
            return None
        try:
            response = _answer(query, self._zone())
        except Exception:
            _log.warning("cannot answer a query from %s", peer, exc_info=True)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
        if udp:
            limit = max(_UDP_PLAIN_SIZE, query.payload) if query.edns >= 0 else _UDP_PLAIN_SIZE
        else:
            limit = _TCP_MAX_SIZE
        try:
            # Over UDP an answer too big sets the TC flag, so the client retries over TCP.
            return response.to_wire(max_size=limit, prefer_truncation=udp)
        except dns.exception.DNSException as exc:
            _log.warning("cannot encode the answer to %s: %r", peer, exc)
            return None

    def _count_answer(self) -> None:
        with self._lock:
            self._queries += 1


def _recv_exactly(conn: socket.socket, size: int) -> bytes | None:
    """Read `size` bytes, or return None if the peer closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)
