"""The lab's DNS server, queried with dnspython over real loopback sockets."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest

from aurora_smartdriver.lab._dns import NEGATIVE_TTL, ARecord, CNAMERecord, DNSServer, Zone

ORIGIN = "c0ffee12ab34.lab.aurora.test."
WRITER = f"node-1.{ORIGIN}"
READER = f"node-2.{ORIGIN}"
CLUSTER = f"orders.cluster.{ORIGIN}"
ALIAS = f"www.{ORIGIN}"


def make_zone(cluster_target: str = WRITER) -> Zone:
    return Zone(
        ORIGIN,
        {
            WRITER: ARecord(("127.0.0.11",), 30),
            READER: ARecord(("127.0.0.12", "127.0.0.13"), 30),
            CLUSTER: CNAMERecord(cluster_target, 5),
            ALIAS: CNAMERecord(CLUSTER, 60),
        },
    )


class ZoneHolder:
    """What the lab does: keeps the current zone, swapped whole when something changes."""

    def __init__(self) -> None:
        self.zone = make_zone()

    def __call__(self) -> Zone:
        return self.zone


Query = Callable[..., dns.message.Message]


@pytest.fixture
def zone() -> ZoneHolder:
    return ZoneHolder()


@pytest.fixture
def server(zone: ZoneHolder) -> Iterator[DNSServer]:
    with DNSServer("127.0.0.1", 0, zone) as srv:
        yield srv


@pytest.fixture(params=["udp", "tcp"])
def query(request: pytest.FixtureRequest, server: DNSServer) -> Query:
    """Send one query to the server over UDP or TCP and return the response."""
    host, port = server.address
    send = dns.query.udp if request.param == "udp" else dns.query.tcp

    def ask(name: str, rdtype: str = "A") -> dns.message.Message:
        return send(dns.message.make_query(name, rdtype), host, port=port, timeout=2)

    return ask


def resolver_for(server: DNSServer, lifetime: float = 2.0) -> dns.resolver.Resolver:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.address[0]]
    resolver.port = server.address[1]
    resolver.cache = None
    resolver.lifetime = lifetime
    return resolver


def addresses(response: dns.message.Message, name: str) -> set[str]:
    rrset = response.find_rrset(
        response.answer, dns.name.from_text(name), dns.rdataclass.IN, dns.rdatatype.A
    )
    return {rdata.to_text() for rdata in rrset}


def test_a_record_is_answered_authoritatively_with_its_ttl(query: Query) -> None:
    response = query(READER)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert addresses(response, READER) == {"127.0.0.12", "127.0.0.13"}
    assert response.answer[0].ttl == 30


def test_query_names_are_case_insensitive(query: Query) -> None:
    assert addresses(query(WRITER.upper()), WRITER) == {"127.0.0.11"}


def test_cname_chain_is_followed_and_the_address_appended(query: Query) -> None:
    response = query(ALIAS)
    assert response.rcode() == dns.rcode.NOERROR
    assert [(r.name.to_text(), r.rdtype, r.ttl) for r in response.answer] == [
        (ALIAS, dns.rdatatype.CNAME, 60),
        (CLUSTER, dns.rdatatype.CNAME, 5),
        (WRITER, dns.rdatatype.A, 30),
    ]
    assert addresses(response, WRITER) == {"127.0.0.11"}


def test_cname_query_gets_only_the_cname(query: Query) -> None:
    response = query(CLUSTER, "CNAME")
    assert [(r.name.to_text(), r.rdtype) for r in response.answer] == [
        (CLUSTER, dns.rdatatype.CNAME)
    ]


def test_cname_loop_is_answered_with_what_there_is(zone: ZoneHolder, query: Query) -> None:
    a, b = f"a.{ORIGIN}", f"b.{ORIGIN}"
    zone.zone = Zone(ORIGIN, {a: CNAMERecord(b, 5), b: CNAMERecord(a, 5)})
    response = query(a)
    assert response.rcode() == dns.rcode.NOERROR
    assert [r.name.to_text() for r in response.answer] == [a, b]


def test_cname_to_a_missing_name_in_the_zone_is_nxdomain_with_the_cname(
    zone: ZoneHolder, query: Query
) -> None:
    zone.zone = make_zone(cluster_target=f"node-9.{ORIGIN}")
    response = query(CLUSTER)
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert [r.rdtype for r in response.answer] == [dns.rdatatype.CNAME]


def test_cname_out_of_the_zone_is_not_followed(zone: ZoneHolder, query: Query) -> None:
    zone.zone = make_zone(cluster_target="db.example.com.")
    response = query(CLUSTER)
    assert response.rcode() == dns.rcode.NOERROR
    assert [r.rdtype for r in response.answer] == [dns.rdatatype.CNAME]


def test_zone_change_is_visible_on_the_next_query(zone: ZoneHolder, server: DNSServer) -> None:
    resolver = resolver_for(server)
    assert [r.to_text() for r in resolver.resolve(CLUSTER, "A")] == ["127.0.0.11"]
    zone.zone = make_zone(cluster_target=READER)
    assert {r.to_text() for r in resolver.resolve(CLUSTER, "A")} == {"127.0.0.12", "127.0.0.13"}


def test_unknown_name_inside_the_origin_is_nxdomain_with_the_soa(query: Query) -> None:
    response = query(f"node-9.{ORIGIN}")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    assert not response.answer
    [soa] = response.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name.to_text() == ORIGIN
    assert soa.ttl == NEGATIVE_TTL
    assert soa[0].minimum == NEGATIVE_TTL


def test_name_with_records_only_below_it_is_nodata(query: Query) -> None:
    response = query(f"cluster.{ORIGIN}")
    assert response.rcode() == dns.rcode.NOERROR
    assert not response.answer
    assert response.authority[0].rdtype == dns.rdatatype.SOA


def test_name_outside_the_origin_is_refused(query: Query) -> None:
    response = query("www.example.com.")
    assert response.rcode() == dns.rcode.REFUSED
    assert not response.flags & dns.flags.AA
    assert not response.answer


def test_aaaa_for_an_existing_name_is_nodata_with_the_soa(query: Query) -> None:
    response = query(WRITER, "AAAA")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    assert not response.answer
    assert response.authority[0].rdtype == dns.rdatatype.SOA


def test_soa_of_the_origin_is_answered(query: Query) -> None:
    response = query(ORIGIN, "SOA")
    assert response.answer[0].rdtype == dns.rdatatype.SOA


def test_delay_makes_a_short_lived_resolver_time_out(server: DNSServer) -> None:
    server.set_delay(0.5)
    with pytest.raises(dns.resolver.LifetimeTimeout):
        resolver_for(server, lifetime=0.2).resolve(WRITER, "A")
    start = time.monotonic()
    answer = resolver_for(server, lifetime=2.0).resolve(WRITER, "A")
    assert time.monotonic() - start >= 0.5
    assert [r.to_text() for r in answer] == ["127.0.0.11"]


def test_delay_applies_over_tcp(server: DNSServer) -> None:
    server.set_delay(0.3)
    host, port = server.address
    start = time.monotonic()
    dns.query.tcp(dns.message.make_query(WRITER, "A"), host, port=port, timeout=2)
    assert time.monotonic() - start >= 0.3


def test_dropped_queries_go_unanswered_until_drop_is_lifted(server: DNSServer) -> None:
    host, port = server.address
    server.set_drop(True)
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query(WRITER, "A"), host, port=port, timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        dns.query.tcp(dns.message.make_query(WRITER, "A"), host, port=port, timeout=0.3)
    assert server.queries == 0
    server.set_drop(False)
    assert addresses(resolver_for(server).resolve(WRITER, "A").response, WRITER) == {"127.0.0.11"}
    assert server.queries == 1


def test_malformed_udp_packets_do_not_stop_the_server(server: DNSServer) -> None:
    host, port = server.address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for garbage in (
            b"",
            b"\x00",
            b"\xff" * 40,
            dns.message.make_query(WRITER, "A").to_wire()[:-3],
        ):
            sock.sendto(garbage, (host, port))
    assert addresses(resolver_for(server).resolve(WRITER, "A").response, WRITER) == {"127.0.0.11"}
    assert server.queries == 1


def test_malformed_tcp_message_is_skipped_and_the_connection_still_answers(
    server: DNSServer,
) -> None:
    query = dns.message.make_query(WRITER, "A").to_wire()
    with socket.create_connection(server.address, timeout=2) as sock:
        sock.sendall(struct.pack("!H", 5) + b"\xff" * 5 + struct.pack("!H", len(query)) + query)
        response = dns.query.receive_tcp(sock, expiration=time.time() + 2)[0]
    assert addresses(response, WRITER) == {"127.0.0.11"}


def test_one_tcp_connection_carries_several_queries(server: DNSServer) -> None:
    with socket.create_connection(server.address, timeout=2) as sock:
        for name, expected in ((WRITER, {"127.0.0.11"}), (READER, {"127.0.0.12", "127.0.0.13"})):
            dns.query.send_tcp(sock, dns.message.make_query(name, "A"))
            response = dns.query.receive_tcp(sock, expiration=time.time() + 2)[0]
            assert addresses(response, name) == expected
    assert server.queries == 2


def test_answers_are_counted(query: Query, server: DNSServer) -> None:
    query(WRITER)
    query(f"nothing.{ORIGIN}")
    assert server.queries == 2


def test_a_failing_zone_provider_gives_servfail() -> None:
    def broken() -> Zone:
        raise RuntimeError("lab state unavailable")

    with DNSServer("127.0.0.1", 0, broken) as failing:
        host, port = failing.address
        response = dns.query.udp(dns.message.make_query(WRITER, "A"), host, port=port, timeout=2)
    assert response.rcode() == dns.rcode.SERVFAIL


def test_stop_frees_the_port_and_joins_its_threads(zone: ZoneHolder) -> None:
    before = threading.active_count()
    server = DNSServer("127.0.0.1", 0, zone)
    server.start()
    host, port = server.address
    with socket.create_connection((host, port), timeout=2):  # an idle TCP client
        assert addresses(resolver_for(server).resolve(WRITER, "A").response, WRITER)
        server.stop()
    assert threading.active_count() == before
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((host, port))
    with DNSServer(host, port, zone) as again:
        assert again.address == (host, port)
        assert resolver_for(again).resolve(WRITER, "A")


def test_stop_is_idempotent(zone: ZoneHolder) -> None:
    server = DNSServer("127.0.0.1", 0, zone)
    server.stop()
    server.start()
    server.stop()
    server.stop()


def test_start_raises_when_the_port_is_taken(server: DNSServer, zone: ZoneHolder) -> None:
    with pytest.raises(OSError):
        DNSServer(*server.address, zone).start()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Zone("lab.test", {}),
        lambda: Zone("Lab.Test.", {}),
        lambda: Zone("lab.test.", {"db.other.test.": ARecord(("127.0.0.1",), 5)}),
        lambda: ARecord(("::1",), 5),
        lambda: ARecord(("127.0.0.1",), -1),
        lambda: CNAMERecord("db.lab.test", 5),
    ],
)
def test_malformed_zone_data_is_rejected(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()
