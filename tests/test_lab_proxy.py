"""The lab's fault proxy, in front of an echo server, over real loopback sockets."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from aurora_smartdriver.lab._proxy import FaultProxy


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(ConnectionResetError):  # the proxy's reset reaches us too
            while data := self.request.recv(65536):
                self.request.sendall(data)


class EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    request_queue_size = 512
    block_on_close = True  # server_close() joins the handler threads


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = EchoServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", 0, echo) as p:
        yield p


def connect(proxy: FaultProxy, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def round_trip(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def assert_broken(sock: socket.socket) -> None:
    """The connection is reset or closed: recv fails or sees EOF at once, not a timeout."""
    sock.settimeout(1.0)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


def test_bytes_are_forwarded_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"hello") == b"hello"
        assert round_trip(sock, bytes(range(256)) * 1000) == bytes(range(256)) * 1000


def test_hundreds_of_connections_are_forwarded_at_once(proxy: FaultProxy) -> None:
    socks = [connect(proxy) for _ in range(300)]
    try:
        for i, sock in enumerate(socks):
            sock.sendall(b"%d;" % i)
        for i, sock in enumerate(socks):
            assert sock.recv(64) == b"%d;" % i
        assert proxy.accepted == 300
        assert proxy.connections == 300
    finally:
        for sock in socks:
            sock.close()
    assert wait_until(lambda: proxy.connections == 0)


def test_client_end_of_stream_is_passed_on(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(64):
            received += chunk
        assert received == b"last words"


def test_latency_delays_each_direction(proxy: FaultProxy) -> None:
    proxy.set_latency(0.15)
    with connect(proxy) as sock:
        start = time.monotonic()
        assert round_trip(sock) == b"ping"
        assert time.monotonic() - start >= 0.3


def test_latency_keeps_the_bytes_in_order(proxy: FaultProxy) -> None:
    proxy.set_latency(0.05)
    sent = b"".join(b"%05d" % i for i in range(2000))
    with connect(proxy) as sock:
        for i in range(0, len(sent), 7):
            sock.sendall(sent[i : i + 7])
        received = b""
        while len(received) < len(sent):
            received += sock.recv(65536)
    assert received == sent


def test_latency_can_be_removed(proxy: FaultProxy) -> None:
    proxy.set_latency(0.5)
    proxy.set_latency(0)
    with connect(proxy, timeout=0.4) as sock:
        assert round_trip(sock) == b"ping"


def test_negative_latency_is_rejected(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        proxy.set_latency(-1)


def test_blackhole_accepts_connections_but_never_answers(proxy: FaultProxy) -> None:
    proxy.blackhole()
    with connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            sock.recv(1)
    assert proxy.accepted == 1


def test_blackhole_swallows_bytes_on_open_connections(proxy: FaultProxy) -> None:
    with connect(proxy, timeout=0.3) as sock:
        assert round_trip(sock) == b"ping"
        proxy.blackhole()
        sock.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            sock.recv(1)


def test_reset_breaks_open_connections_at_once(proxy: FaultProxy) -> None:
    with connect(proxy) as first, connect(proxy) as second:
        assert round_trip(first) == b"ping"
        assert round_trip(second) == b"ping"
        proxy.reset()
        assert proxy.connections == 0
        with pytest.raises(ConnectionResetError):
            first.recv(1)
        with pytest.raises(ConnectionResetError):
            round_trip(second)


def test_reset_breaks_new_connections_right_after_accept(proxy: FaultProxy) -> None:
    proxy.reset()
    # The RST can beat connect() to the client; either way the connection is dead at once.
    with contextlib.suppress(ConnectionResetError), connect(proxy) as sock:
        assert_broken(sock)
    assert wait_until(lambda: proxy.accepted == 1)
    assert proxy.connections == 0


def test_reset_breaks_blackholed_connections(proxy: FaultProxy) -> None:
    proxy.blackhole()
    with connect(proxy) as sock:
        assert wait_until(lambda: proxy.connections == 1)
        proxy.reset()
        assert_broken(sock)


def test_restore_brings_forwarding_back(proxy: FaultProxy) -> None:
    proxy.blackhole()
    proxy.restore()
    with connect(proxy) as sock:
        assert round_trip(sock) == b"ping"
    proxy.reset()
    proxy.restore()
    with connect(proxy) as sock:
        assert round_trip(sock) == b"ping"


def test_upstream_down_breaks_the_client_connection(echo: tuple[str, int]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    with (
        FaultProxy("127.0.0.1", 0, ("127.0.0.1", closed_port)) as proxy,
        contextlib.suppress(ConnectionResetError),
        connect(proxy) as sock,
    ):
        assert_broken(sock)


def test_stop_closes_connections_and_leaves_no_threads(echo: tuple[str, int]) -> None:
    baseline = threading.active_count()
    proxy = FaultProxy("127.0.0.1", 0, echo)
    proxy.start()
    socks = [connect(proxy) for _ in range(20)]
    for sock in socks:
        assert round_trip(sock) == b"ping"
    proxy.stop()
    assert proxy.connections == 0
    for sock in socks:
        assert_broken(sock)
        sock.close()
    # The echo server's handler threads end once the proxy's upstream sockets close.
    assert wait_until(lambda: threading.active_count() == baseline)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1)


def test_stop_is_idempotent(echo: tuple[str, int]) -> None:
    proxy = FaultProxy("127.0.0.1", 0, echo)
    proxy.stop()
    proxy.start()
    proxy.stop()
    proxy.stop()


def test_faults_set_before_start_apply_once_started(echo: tuple[str, int]) -> None:
    proxy = FaultProxy("127.0.0.1", 0, echo)
    proxy.blackhole()
    with proxy, connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"anyone?")
        with pytest.raises(TimeoutError):
            sock.recv(1)
