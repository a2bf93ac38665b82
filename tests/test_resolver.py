"""Specification of the resolver, against a real DNS server on loopback."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aurora_smartdriver import resolver as resolver_module
from aurora_smartdriver.lab._dns import ARecord, CNAMERecord, DNSServer, Record, Zone
from aurora_smartdriver.resolver import Resolution, ResolveError, Resolver, open_socket

ORIGIN = "lab.aurora.test."
CLUSTER = "lab.cluster-c0ffee12ab34.lab.aurora.test"
INSTANCE_1 = "lab-instance-1.c0ffee12ab34.lab.aurora.test"
INSTANCE_2 = "lab-instance-2.c0ffee12ab34.lab.aurora.test"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LabZone:
    """A zone the test edits between queries."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {
            INSTANCE_1 + ".": ARecord(("127.0.0.11",), ttl=5),
            INSTANCE_2 + ".": ARecord(("127.0.0.12",), ttl=5),
            CLUSTER + ".": CNAMERecord(INSTANCE_1 + ".", ttl=1),
        }

    def __call__(self) -> Zone:
        return Zone(ORIGIN, dict(self.records))

    def set(self, name: str, record: Record) -> None:
        self.records[name + "."] = record


@pytest.fixture
def zone() -> LabZone:
    return LabZone()


@pytest.fixture
def server(zone: LabZone) -> Iterator[DNSServer]:
    with DNSServer("127.0.0.1", 0, zone) as dns_server:
        yield dns_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_resolver(
    server: DNSServer, clock: FakeClock, *, ttl_cap: float = 60.0, timeout: float = 1.0
) -> Resolver:
    return Resolver([server.address], timeout=timeout, ttl_cap=ttl_cap, clock=clock)


def test_an_answer_comes_from_dns_with_its_ttl(server: DNSServer, clock: FakeClock) -> None:
    r = make_resolver(server, clock)
    assert r.resolve(INSTANCE_2) == Resolution(INSTANCE_2, ("127.0.0.12",), 5.0, "dns", 1005.0)


def test_an_answer_is_served_from_the_cache_until_its_ttl_runs_out(
    server: DNSServer, clock: FakeClock
) -> None:
    r = make_resolver(server, clock)
    r.resolve(INSTANCE_1)
    clock.advance(4.999)
    r.resolve(INSTANCE_1)
    assert (server.queries, r.lookups, r.cache_hits) == (1, 1, 1)
    clock.advance(0.001)
    r.resolve(INSTANCE_1)
    assert (server.queries, r.lookups, r.cache_hits) == (2, 2, 1)


def test_the_ttl_is_capped(server: DNSServer, zone: LabZone, clock: FakeClock) -> None:
    zone.set(INSTANCE_1, ARecord(("127.0.0.11",), ttl=3600))
    r = make_resolver(server, clock, ttl_cap=2.0)
    first = r.resolve(INSTANCE_1)
    assert first.ttl == 3600
    assert first.expires_at == clock.now + 2.0
    clock.advance(2.0)
    r.resolve(INSTANCE_1)
    assert server.queries == 2


def test_a_zone_change_is_seen_after_expiry_and_not_before(
    server: DNSServer, zone: LabZone, clock: FakeClock
) -> None:
    r = make_resolver(server, clock)
    assert r.resolve(INSTANCE_1).addresses == ("127.0.0.11",)
    zone.set(INSTANCE_1, ARecord(("127.0.0.21",), ttl=5))
    clock.advance(4.9)
    assert r.resolve(INSTANCE_1).addresses == ("127.0.0.11",)
    clock.advance(0.1)
    assert r.resolve(INSTANCE_1).addresses == ("127.0.0.21",)


def test_a_cname_chain_is_followed_and_its_shortest_ttl_kept(
    server: DNSServer, zone: LabZone, clock: FakeClock
) -> None:
    alias = "writer.lab.aurora.test"
    zone.set(alias, CNAMERecord(CLUSTER + ".", ttl=30))
    r = make_resolver(server, clock)
    answer = r.resolve(alias)
    assert answer.addresses == ("127.0.0.11",)
    assert answer.ttl == 1.0  # the cluster endpoint's CNAME
    assert answer.source == "dns"


def test_a_failover_flip_of_the_cluster_cname_is_seen_after_its_ttl(
    server: DNSServer, zone: LabZone, clock: FakeClock
) -> None:
    r = make_resolver(server, clock)
    assert r.resolve(CLUSTER).addresses == ("127.0.0.11",)
    zone.set(CLUSTER, CNAMERecord(INSTANCE_2 + ".", ttl=1))
    assert r.resolve(CLUSTER).addresses == ("127.0.0.11",)
    clock.advance(1.0)
    assert r.resolve(CLUSTER).addresses == ("127.0.0.12",)


def test_a_name_that_does_not_exist_raises_naming_the_host(
    server: DNSServer, clock: FakeClock
) -> None:
    r = make_resolver(server, clock)
    missing = "lab-instance-9.c0ffee12ab34.lab.aurora.test"
    with pytest.raises(ResolveError, match=re.escape(missing)):
        r.resolve(missing)
    assert r.fallbacks == 0


def test_a_name_without_addresses_raises(server: DNSServer, clock: FakeClock) -> None:
    r = make_resolver(server, clock)
    # Exists only because names below it do: no A, no AAAA.
    with pytest.raises(ResolveError, match="no address"):
        r.resolve("c0ffee12ab34.lab.aurora.test")
    assert r.fallbacks == 0


def test_when_dns_is_dropped_the_system_resolver_answers(
    server: DNSServer, clock: FakeClock
) -> None:
    server.set_drop(True)
    r = make_resolver(server, clock, timeout=0.2, ttl_cap=3.0)
    answer = r.resolve("localhost")
    assert answer.source == "system"
    assert "127.0.0.1" in answer.addresses
    assert answer.expires_at == clock.now + 3.0
    assert r.fallbacks == 1


def test_when_dns_refuses_the_system_resolver_answers(server: DNSServer, clock: FakeClock) -> None:
    r = make_resolver(server, clock)
    answer = r.resolve("localhost")  # outside the lab's zone: the server refuses
    assert answer.source == "system"
    assert r.fallbacks == 1


def test_when_dns_and_the_system_both_fail_the_error_says_both(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_system_answer(*args: object, **kwargs: object) -> list[tuple[object, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_system_answer)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # bound, never read: queries go unanswered
        r = Resolver([silent.getsockname()], timeout=0.2, clock=clock)
        with pytest.raises(ResolveError, match="no DNS server answered") as info:
            r.resolve("no-such-host.invalid")
    assert "no-such-host.invalid" in str(info.value)
    assert "system resolver failed" in str(info.value)


def test_an_ip_literal_bypasses_dns(server: DNSServer, clock: FakeClock) -> None:
    r = make_resolver(server, clock)
    assert r.resolve("127.0.0.11").addresses == ("127.0.0.11",)
    assert r.resolve("[::1]").addresses == ("::1",)
    assert r.resolve("127.0.0.11").source == "literal"
    assert (server.queries, r.lookups, r.cache_hits) == (0, 0, 0)


def test_a_ttl_of_zero_is_never_cached(server: DNSServer, zone: LabZone, clock: FakeClock) -> None:
    zone.set(INSTANCE_1, ARecord(("127.0.0.11",), ttl=0))
    r = make_resolver(server, clock)
    r.resolve(INSTANCE_1)
    r.resolve(INSTANCE_1)
    assert (server.queries, r.cache_hits) == (2, 0)


def test_a_ttl_cap_of_zero_disables_the_cache(server: DNSServer, clock: FakeClock) -> None:
    r = make_resolver(server, clock, ttl_cap=0)
    r.resolve(INSTANCE_1)
    r.resolve(INSTANCE_1)
    assert (server.queries, r.cache_hits) == (2, 0)


def test_invalidate_forgets_one_host_or_all(server: DNSServer, clock: FakeClock) -> None:
    r = make_resolver(server, clock)
    r.resolve(INSTANCE_1)
    r.resolve(INSTANCE_2)
    r.invalidate(INSTANCE_1.upper() + ".")
    r.resolve(INSTANCE_1)
    r.resolve(INSTANCE_2)
    assert (server.queries, r.cache_hits) == (3, 1)
    r.invalidate()
    r.resolve(INSTANCE_2)
    assert server.queries == 4


def test_names_are_cached_case_insensitively(server: DNSServer, clock: FakeClock) -> None:
    r = make_resolver(server, clock)
    r.resolve(INSTANCE_1)
    assert r.resolve(INSTANCE_1.upper() + ".").addresses == ("127.0.0.11",)
    assert server.queries == 1


def test_concurrent_lookups_of_one_host_share_one_query(
    server: DNSServer, clock: FakeClock
) -> None:
    server.set_delay(0.2)
    r = make_resolver(server, clock)
    results: list[Resolution] = []
    start = threading.Barrier(8)

    def lookup() -> None:
        start.wait()
        results.append(r.resolve(INSTANCE_1))

    threads = [threading.Thread(target=lookup) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert {res.addresses for res in results} == {("127.0.0.11",)}
    assert server.queries == 1


def test_concurrent_lookups_share_an_error(server: DNSServer, clock: FakeClock) -> None:
    server.set_delay(0.2)
    r = make_resolver(server, clock)
    errors: list[BaseException] = []

    def lookup() -> None:
        try:
            r.resolve("gone.lab.aurora.test")
        except ResolveError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lookup) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4
    assert all("gone.lab.aurora.test" in str(e) for e in errors)
    assert server.queries == 1


def test_a_slow_answer_within_the_timeout_still_comes_from_dns(
    server: DNSServer, clock: FakeClock
) -> None:
    server.set_delay(0.1)
    r = make_resolver(server, clock, timeout=1.0)
    assert r.resolve(INSTANCE_2).source == "dns"


@pytest.mark.parametrize("host", ["", "  ", "a..b", "x" * 64 + ".test"])
def test_a_malformed_name_raises_without_asking_anyone(
    host: str, server: DNSServer, clock: FakeClock
) -> None:
    r = make_resolver(server, clock)
    with pytest.raises(ResolveError):
        r.resolve(host)
    assert (server.queries, r.fallbacks) == (0, 0)


@pytest.mark.parametrize(
    ("kwargs", "complaint"),
    [
        ({"nameservers": []}, "empty"),
        ({"nameservers": [("dns.example", 53)]}, "IP address"),
        ({"nameservers": [("127.0.0.1", 0)]}, "IP address"),
        ({"timeout": 0}, "timeout"),
        ({"ttl_cap": -1}, "ttl_cap"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Resolver(**kwargs)  # type: ignore[arg-type]


# --- system configuration ---------------------------------------------------------------------


@pytest.fixture
def port_53_server(zone: LabZone) -> Iterator[DNSServer]:
    """The lab zone served on port 53 of an otherwise unused loopback address, as resolv.conf
    can name no other port."""
    dns_server = DNSServer("127.83.41.7", 53, zone)
    try:
        dns_server.start()
    except OSError as exc:
        pytest.skip(f"cannot serve DNS on 127.83.41.7:53 ({exc})")
    try:
        yield dns_server
    finally:
        dns_server.stop()


def test_without_nameservers_resolv_conf_and_its_search_list_are_used(
    port_53_server: DNSServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.83.41.7\nsearch c0ffee12ab34.lab.aurora.test\n")
    monkeypatch.setattr(resolver_module, "_RESOLV_CONF", str(conf))
    r = Resolver(timeout=1.0, clock=clock)
    assert r.resolve("lab-instance-2").addresses == ("127.0.0.12",)
    assert r.resolve(INSTANCE_1).source == "dns"
    assert port_53_server.queries >= 2


def test_without_nameservers_a_name_dns_lacks_is_asked_of_the_system(
    port_53_server: DNSServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.83.41.7\n")
    monkeypatch.setattr(resolver_module, "_RESOLV_CONF", str(conf))
    asked: list[str] = []

    def hosts_file(host: str, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.99", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", hosts_file)
    r = Resolver(timeout=1.0, clock=clock)
    answer = r.resolve("only-in-etc-hosts.lab.aurora.test")
    assert answer.addresses == ("127.0.0.99",)
    assert answer.source == "system"
    assert asked == ["only-in-etc-hosts.lab.aurora.test"]
    assert port_53_server.queries == 1


def test_without_a_usable_resolv_conf_the_system_resolver_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    monkeypatch.setattr(resolver_module, "_RESOLV_CONF", str(tmp_path / "missing"))
    r = Resolver(timeout=0.5, clock=clock)
    answer = r.resolve("localhost")
    assert answer.source == "system"
    assert r.fallbacks == 1


# --- sockets ----------------------------------------------------------------------------------


def test_open_socket_connects_with_nodelay_and_keepalive() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with open_socket("127.0.0.1", port, timeout=1.0) as sock:
            assert sock.getpeername() == ("127.0.0.1", port)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0
            assert sock.gettimeout() == 1.0


def test_open_socket_refuses_a_name() -> None:
    with pytest.raises(ValueError, match="IP address"):
        open_socket("localhost", 5432, timeout=1.0)


def test_open_socket_reports_a_refused_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        open_socket("127.0.0.1", port, timeout=1.0)
