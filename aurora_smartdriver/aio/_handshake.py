"""psycopg's AsyncConnection with libpq's handshake done on a worker thread.

``psycopg.AsyncConnection.connect`` calls ``PQconnectPoll`` on the event loop's thread, and one
of those calls does the client's share of TLS and of SCRAM-SHA-256 (PBKDF2 over the server's
iteration count): 3-9 ms of CPU at PostgreSQL's default of 4096 rounds, in proportion beyond
it, during which the loop runs nothing else, once for every connection a failover reopens.
Here the whole handshake (``PQconnectStart``, each poll, the waits between them) runs on a
small pool of threads, as ``loop.getaddrinfo`` does for name lookups; the loop only awaits its
end, then makes the AsyncConnection around the connected ``PGconn`` as psycopg's ``connect``
does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import selectors
import threading
import time
from typing import Any

__all__ = ["connect"]

_WORKERS = 8
"""Handshakes at once per process. Each is mostly waiting on the network (a thread per
handshake waits, so a slow server does not queue the others behind it); the library's
connection-storm cap bounds how many a cluster starts at once anyway."""

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _workers() -> concurrent.futures.ThreadPoolExecutor:
    """The process's handshake threads, made on first use (threads start as they are needed)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                _WORKERS, thread_name_prefix="aurora-smartdriver-handshake"
            )
        return _executor


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads: a new pool on its first connect."""
    global _executor, _executor_lock
    _executor = None
    _executor_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _finish_late(work: concurrent.futures.Future[Any]) -> None:
    """A handshake the task gave up on (cancelled, timed out) that ended connected: closed,
    not left open with no owner."""
    if not work.cancelled() and work.exception() is None:
        work.result().finish()


def _handshake(conninfo: str, deadline: float) -> Any:
    """On a worker thread: psycopg's connection generator driven to its end, waiting on the
    socket with a selector, within ``deadline`` (``time.monotonic``)."""
    import psycopg
    from psycopg import generators

    gen = generators.connect(conninfo)
    try:
        fileno, wait = next(gen)
        with selectors.DefaultSelector() as selector:
            while True:
                left = deadline - time.monotonic()
                ready = []
                if left > 0:
                    selector.register(fileno, wait)
                    try:
                        ready = selector.select(left)
                    finally:
                        selector.unregister(fileno)
                if not ready:
                    gen.close()
                    timeout = getattr(psycopg.errors, "ConnectionTimeout", psycopg.OperationalError)
                    raise timeout("connection timeout expired")
                fileno, wait = gen.send(ready[0][1])
    except StopIteration as done:
        return done.value


async def connect(
    conninfo: str,
    *,
    timeout: float,
    autocommit: bool,
    prepare_threshold: int | None = 5,
    context: Any = None,
    row_factory: Any = None,
    cursor_factory: Any = None,
) -> Any:
    """``psycopg.AsyncConnection.connect(conninfo, ...)`` with the same keywords and errors,
    the handshake on a worker thread, bounded by ``timeout`` s."""
    import psycopg
    from psycopg.adapt import AdaptersMap

    work = _workers().submit(_handshake, conninfo, time.monotonic() + timeout)
    try:
        pgconn = await asyncio.wrap_future(work)
    except BaseException:
        work.add_done_callback(_finish_late)  # now, or when the worker ends
        raise
    conn = psycopg.AsyncConnection(pgconn)
    await conn.set_autocommit(autocommit)  # no round trip: the connection is idle
    if row_factory:
        conn.row_factory = row_factory
    if cursor_factory:
        conn.cursor_factory = cursor_factory
    if context:
        conn._adapters = AdaptersMap(context.adapters)  # what psycopg's connect() does
    conn.prepare_threshold = prepare_threshold
    return conn
