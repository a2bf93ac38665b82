"""A psycopg async connect does libpq's handshake (TLS, SCRAM's PBKDF2 rounds) off the event
loop's thread: the loop keeps running other tasks while a connection is being made."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import urllib.parse
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import aurora_smartdriver.aio as aio
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


def _as_user(dsn: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


async def _longest_gap(stop: asyncio.Event, gaps: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(0.002)
        gaps.append(loop.time() - started)


@pytest_asyncio.fixture
async def slow_login(aurora_lab_postgresql: Lab) -> AsyncIterator[tuple[str, str]]:
    """A DSN for a role whose SCRAM verifier has `_ITERATIONS` rounds, and the role's name."""
    lab = aurora_lab_postgresql
    user, password = f"slow_{uuid.uuid4().hex[:8]}", secrets.token_hex(12)
    verifier = await asyncio.to_thread(_scram_verifier, password, _ITERATIONS)
    owner = lab.state().user
    lab.execute(lab.writer, f"CREATE ROLE {user} LOGIN PASSWORD '{verifier}' IN ROLE {owner}")
    try:
        yield _as_user(lab.dsn, user, password), user
    finally:
        lab.execute(lab.writer, f"DROP ROLE {user}")


async def test_the_handshake_does_not_hold_the_loop(slow_login: tuple[str, str]) -> None:
    dsn, user = slow_login
    stop, gaps = asyncio.Event(), []
    ticker = asyncio.create_task(_longest_gap(stop, gaps))
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    conn = await aio.connect(dsn, cluster_id=f"handshake-{uuid.uuid4().hex[:8]}")
    took = loop.time() - started
    stop.set()
    await ticker
    try:
        cur = conn.cursor()
        await cur.execute("SELECT current_user")
        assert await cur.fetchone() == (user,)
    finally:
        await conn.close()
    # The client's PBKDF2 alone is most of `took`; held on the loop, one gap would be too.
    assert took > 0.2, f"the role's SCRAM verifier should make the handshake slow: {took}"
    assert max(gaps) < took / 2, (max(gaps), took)
