"""`_handshake`'s steps and waits, with a stand-in for psycopg's connection generator: what
is left when the task gives up during a step (on a worker thread) or during a wait (on the
loop), and the deadline. (The real handshake: tests/test_aio_handshake.py, on the lab.)"""

from __future__ import annotations

import asyncio
import selectors
import socket
import sys
import threading
from collections.abc import Generator, Iterator
from typing import Any

import psycopg
import pytest

from aurora_smartdriver.aio import _handshake

pytestmark = pytest.mark.asyncio


class _PGconn:
    def __init__(self) -> None:
        self.finished = threading.Event()

    def finish(self) -> None:
        self.finished.set()


class _Connecting:
    """A connection generator: waits to read on ``sock`` ``waits`` times, and its first step
    blocks (on the worker) until ``go_on`` is set; records being closed unfinished."""

    def __init__(self, sock: socket.socket, *, waits: int) -> None:
        self.sock = sock
        self.waits = waits
        self.stepping = threading.Event()
        self.go_on = threading.Event()
        self.closed_unfinished = threading.Event()
        self.pgconn = _PGconn()

    def __call__(self, conninfo: str) -> Generator[tuple[int, int], int, _PGconn]:
        try:
            self.stepping.set()
            self.go_on.wait(10)
            for _ in range(self.waits):
                yield self.sock.fileno(), selectors.EVENT_READ
            return self.pgconn
        except GeneratorExit:
            self.closed_unfinished.set()
            raise


def _waiting_once(monkeypatch: pytest.MonkeyPatch, sock: socket.socket) -> _Connecting:
    """psycopg's connection generator replaced by one that waits to read on ``sock`` once."""
    connecting = _Connecting(sock, waits=1)
    connecting.go_on.set()
    monkeypatch.setattr(psycopg.generators, "connect", connecting)
    return connecting


@pytest.fixture
def quiet_socket() -> Iterator[socket.socket]:
    """A socket nothing ever arrives on."""
    mine, theirs = socket.socketpair()
    yield mine
    mine.close()
    theirs.close()


async def test_given_up_during_a_step_the_connection_it_makes_is_closed(
    monkeypatch: pytest.MonkeyPatch, quiet_socket: socket.socket
) -> None:
    connecting = _Connecting(quiet_socket, waits=0)
    monkeypatch.setattr(psycopg.generators, "connect", connecting)
    task = asyncio.create_task(_handshake.connect([""], timeout=30, autocommit=True))
    assert await asyncio.to_thread(connecting.stepping.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not connecting.pgconn.finished.is_set()
    connecting.go_on.set()  # the step ends connected, with nobody waiting
    assert await asyncio.to_thread(connecting.pgconn.finished.wait, 10)


async def test_given_up_during_a_wait_the_handshake_is_closed(
    monkeypatch: pytest.MonkeyPatch, quiet_socket: socket.socket
) -> None:
    connecting = _waiting_once(monkeypatch, quiet_socket)
    task = asyncio.create_task(_handshake.connect([""], timeout=30, autocommit=True))
    while not connecting.stepping.is_set() or not _waiting_on(quiet_socket):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert connecting.closed_unfinished.is_set()
    assert not _waiting_on(quiet_socket)


async def test_a_silent_server_times_out_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch, quiet_socket: socket.socket
) -> None:
    connecting = _waiting_once(monkeypatch, quiet_socket)
    with pytest.raises(psycopg.OperationalError, match="connection timeout expired") as raised:
        await _handshake.connect(["password=secret"], timeout=0.2, autocommit=True)
    assert connecting.closed_unfinished.is_set()
    assert "secret" not in str(raised.value)
    assert not _waiting_on(quiet_socket)


def _waiting_on(sock: socket.socket) -> bool:
    """Whether the running loop watches ``sock`` for reading."""
    loop: Any = asyncio.get_running_loop()
    try:
        key = loop._selector.get_key(sock.fileno())
    except KeyError:
        return False
    return key.data[0] is not None


async def test_every_attempt_is_made_and_every_failure_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One conninfo per address, in turn; all failing, psycopg's message naming each (and no
    password)."""
    tried: list[str] = []

    def refusing(conninfo: str) -> Generator[tuple[int, int], int, Any]:
        tried.append(conninfo)
        raise psycopg.OperationalError(f"connection failed: refused #{len(tried)}")
        yield  # a generator, as psycopg's

    monkeypatch.setattr(psycopg.generators, "connect", refusing)
    attempts = [
        f"host=db.example.test hostaddr={address} port=5432 password=secret"
        for address in ("10.0.0.1", "10.0.0.2")
    ]
    with pytest.raises(psycopg.OperationalError) as raised:
        await _handshake.connect(attempts, timeout=5, autocommit=True)
    assert tried == attempts
    message = str(raised.value)
    assert message.splitlines()[:2] == [
        "connection failed: refused #2",
        "Multiple connection attempts failed. All failures were:",
    ]
    assert "hostaddr: '10.0.0.1'" in message and "refused #1" in message
    assert "hostaddr: '10.0.0.2'" in message
    assert "secret" not in message


@pytest.mark.parametrize(
    ("host", "looked_up"),
    [
        ("db.example.test", True),
        ("10.0.0.1", True),
        ("/run/postgresql", False),
        ("@abstract", False),
        ("C:\\sockets", False),
    ],
)
async def test_socket_directories_are_not_looked_up(host: str, looked_up: bool) -> None:
    assert _handshake.by_name(host) == looked_up


async def test_the_first_handshake_of_a_fresh_process_works() -> None:
    """Nothing the library imports before its first handshake loads concurrent.futures'
    thread module on its own (a check of the interpreter's exit read it: AttributeError)."""
    script = (
        "import asyncio, psycopg\n"
        "from aurora_smartdriver.aio import _handshake\n"
        "async def main():\n"
        "    try:\n"
        "        await _handshake.connect(\n"
        "            ['host=127.0.0.1 port=1 user=u dbname=d connect_timeout=2'],\n"
        "            timeout=5, autocommit=True)\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__)\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out.decode().strip() == "OperationalError"  # refused, as psycopg says it
