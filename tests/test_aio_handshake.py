"""A psycopg async connect computes libpq's handshake (TLS, SCRAM's PBKDF2 rounds) and looks
names up off the event loop's thread: the loop keeps running other tasks meanwhile."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import socket
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

import aurora_smartdriver.aio as aio
from aurora_smartdriver import dsn
from aurora_smartdriver.aio import _drivers
from aurora_smartdriver.drivers import adapter_for
from aurora_smartdriver.lab import Lab

pytestmark = pytest.mark.asyncio

_ITERATIONS = 1_000_000
"""SCRAM iterations for the test's role: the client's PBKDF2 takes a good part of a second
(PostgreSQL's default, 4096, takes 3-5 ms here, lost in the noise of a shared machine)."""


def _scram_verifier(password: str, iterations: int) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5802, 7677)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _as_user(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


class _Ticker:
    """A task waking every 2 ms: its longest gap is the longest the loop was held."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            started = loop.time()
            await asyncio.sleep(0.002)
            self.gaps.append(loop.time() - started)


@pytest_asyncio.fixture
async def slow_login(aurora_lab_postgresql: Lab) -> AsyncIterator[str]:
    """The lab's DSN as a role whose SCRAM verifier has `_ITERATIONS` rounds."""
    lab = aurora_lab_postgresql
    user, password = f"slow_{uuid.uuid4().hex[:8]}", secrets.token_hex(12)
    verifier = await asyncio.to_thread(_scram_verifier, password, _ITERATIONS)
    owner = lab.state().user
    lab.execute(lab.writer, f"CREATE ROLE {user} LOGIN PASSWORD '{verifier}' IN ROLE \"{owner}\"")
    try:
        yield _as_user(lab.dsn, user, password)
    finally:
        lab.execute(lab.writer, f"DROP ROLE {user}")


async def test_the_handshake_does_not_hold_the_loop(slow_login: str) -> None:
    cluster_id = f"handshake-{uuid.uuid4().hex[:8]}"
    warm = aio.Cluster(slow_login, cluster_id=cluster_id)
    try:
        async with warm.writer():  # the monitor's and the pool's logins: not timed
            pass
        loop = asyncio.get_running_loop()
        async with _Ticker() as ticker:
            started = loop.time()
            conn = await aio.connect(slow_login, cluster_id=cluster_id)  # one login, timed
            took = loop.time() - started
        try:
            cur = conn.cursor()
            await cur.execute("SELECT 1")
            assert await cur.fetchone() == (1,)
        finally:
            await conn.close()
    finally:
        await warm.close()
    # The client's PBKDF2 is most of `took`; held on the loop, one gap would be too.
    assert took > 0.2, f"the role's SCRAM verifier should make the handshake slow: {took}"
    assert max(ticker.gaps) < took / 3, (max(ticker.gaps), took)


async def test_a_name_with_no_address_is_looked_up_off_the_loop(
    aurora_lab_postgresql: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no address from the library (``resolve=off``), the name is looked up through
    the loop's ``getaddrinfo`` (in its executor) and libpq is given the addresses: libpq's
    own lookup would hold the GIL, the loop's thread included, for as long as DNS takes."""
    lab = aurora_lab_postgresql
    node, name = lab.writer, "slow-dns.aio-handshake.test"
    real = socket.getaddrinfo
    asked: list[str] = []

    def slow_dns(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        time.sleep(0.5)
        return real(node.address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_dns)
    async with _Ticker() as ticker:
        raw = await _by_name(lab, name)
    try:
        assert asked == [name]
        assert raw.info.hostaddr == node.address
        assert raw.info.host == name
    finally:
        await raw.close()
    assert max(ticker.gaps) < 0.25, max(ticker.gaps)


async def test_each_address_of_a_name_is_tried_in_turn(
    aurora_lab_postgresql: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name with two addresses, the first of which accepts and hangs up (a node going down,
    a load balancer with no target): the second is tried, as psycopg tries them (libpq given
    both at once gave up after the first)."""
    lab = aurora_lab_postgresql
    node, name = lab.writer, "two-addresses.aio-handshake.test"
    server = await asyncio.start_server(_hang_up, "127.251.0.7", node.port)
    real = socket.getaddrinfo

    def two(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, port, *args, **kwargs)
        return real("127.251.0.7", port, *args, **kwargs) + real(
            node.address, port, *args, **kwargs
        )

    monkeypatch.setattr(socket, "getaddrinfo", two)
    try:
        raw = await _by_name(lab, name)
    finally:
        server.close()
        await server.wait_closed()
    try:
        assert raw.info.hostaddr == node.address
    finally:
        await raw.close()


async def _by_name(lab: Lab, name: str) -> Any:
    """A driver connection to the lab's writer as the library opens one with ``resolve=off``:
    to ``name`` with no address (the test's getaddrinfo says where ``name`` leads)."""
    spec = dsn.parse(lab.dsn)
    return await _drivers.open_connection(
        adapter_for("postgresql"),
        spec,
        name,
        lab.writer.port,
        address=None,
        timeout=10.0,
        autocommit=True,
        user=spec.user,
        password=spec.password,
    )


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()
