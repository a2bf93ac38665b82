"""psycopg's AsyncConnection with libpq's handshake computed off the event loop's thread.

``psycopg.AsyncConnection.connect`` calls ``PQconnectPoll`` on the event loop's thread, and one
of those calls does the client's share of TLS and of SCRAM-SHA-256 (PBKDF2 over the server's
iteration count): 3-9 ms of CPU at PostgreSQL's default of 4096 rounds, in proportion beyond
it, during which the loop runs nothing else, once for every connection a failover reopens.
Here each step of psycopg's connection generator (each poll) runs on a small pool of threads
and the waits for the socket between steps are the loop's, as in psycopg: a thread is busy
only while a step computes (no handshake waits behind another's slow server), and a task
cancelled or timed out stops the handshake at the next step. The loop then makes the
AsyncConnection around the connected ``PGconn`` as psycopg's ``connect`` does.

A name with no address (``resolve=off``) is looked up with ``loop.getaddrinfo`` first, as
psycopg does: libpq's own lookup would hold the GIL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
import selectors
import sys
import threading
from concurrent.futures import thread as _futures_thread
from typing import Any

__all__ = ["by_name", "connect", "lookup"]

_WORKERS = 4
"""Threads computing handshake steps at once per process: a step is a burst of CPU (a few ms
at most at common iteration counts), and the machine has only so many cores for them."""

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


class _Steps:
    """psycopg's connection generator, stepped from any thread one step at a time, and closed
    once: a step that runs after the close (queued when the task had gone) does nothing."""

    __slots__ = ("_closed", "_gen", "_lock")

    def __init__(self, gen: Any) -> None:
        self._gen = gen
        self._lock = threading.Lock()  # held for one step (a poll) or the close
        self._closed = False

    def advance(self, value: Any) -> tuple[bool, Any]:
        """One step: (False, (fd, wait)) to wait for the socket next, (True, pgconn) when
        connected (its errors are raised as they are); (False, None) once closed."""
        with self._lock:
            if self._closed:
                return False, None
            try:
                return False, self._gen.send(value)
            except StopIteration as done:
                return True, done.value

    def close(self) -> None:
        """Close the generator (the PGconn it holds is finished with it)."""
        with self._lock:
            self._closed = True
            self._gen.close()


def _abandon(steps: _Steps, step: concurrent.futures.Future[tuple[bool, Any]]) -> None:
    """A step the task gave up waiting for (cancelled, timed out), once it ended: its
    connection closed, connected or not; nothing is left open with no owner."""
    if not step.cancelled() and step.exception() is None:
        finished, pgconn = step.result()
        if finished:
            pgconn.finish()
            return
    steps.close()


async def _step(steps: _Steps, value: Any) -> tuple[bool, Any]:
    if _futures_thread._shutdown:
        # The interpreter is exiting (a loop in a thread that outlives the main one): no new
        # work for threads, so the step runs on the loop.
        return steps.advance(value)
    try:
        step = _workers().submit(steps.advance, value)
    except RuntimeError as exc:  # no thread could start; the step may be queued still
        import psycopg

        steps.close()
        raise psycopg.OperationalError(f"connection failed: no handshake thread ({exc})") from None
    try:
        return await asyncio.wrap_future(step)
    except BaseException:
        step.add_done_callback(functools.partial(_abandon, steps))
        raise


async def _ready(loop: asyncio.AbstractEventLoop, fileno: int, wait: int, deadline: float) -> int:
    """Wait on the loop until ``fileno`` is ready as ``wait`` asks (psycopg's ``Wait`` values
    are the selectors' event masks); the readiness seen, or the timeout error at
    ``deadline``."""
    import psycopg

    ready: asyncio.Future[int] = loop.create_future()

    def wake(event: int) -> None:
        if not ready.done():
            ready.set_result(event)

    def expire() -> None:
        if not ready.done():
            timeout = getattr(psycopg.errors, "ConnectionTimeout", psycopg.OperationalError)
            ready.set_exception(timeout("connection timeout expired"))

    reading, writing = bool(wait & selectors.EVENT_READ), bool(wait & selectors.EVENT_WRITE)
    if reading:
        loop.add_reader(fileno, wake, selectors.EVENT_READ)
    if writing:
        loop.add_writer(fileno, wake, selectors.EVENT_WRITE)
    timer = loop.call_at(deadline, expire)
    try:
        return await ready
    finally:
        timer.cancel()
        if reading:
            loop.remove_reader(fileno)
        if writing:
            loop.remove_writer(fileno)


async def _handshake(conninfo: str, deadline: float) -> Any:
    """psycopg's connection generator driven to a connected ``PGconn`` by ``deadline``
    (``loop.time()``)."""
    from psycopg import generators

    loop = asyncio.get_running_loop()
    steps = _Steps(generators.connect(conninfo))
    value: Any = None  # the first step is next(gen)
    while True:
        finished, result = await _step(steps, value)
        if finished:
            return result
        fileno, wait = result
        try:
            value = await _ready(loop, fileno, wait, deadline)
        except BaseException:
            steps.close()
            raise


async def lookup(host: str, port: int) -> list[str]:
    """The addresses of ``host``, looked up as psycopg does (``loop.getaddrinfo``, in the
    loop's executor), in the order to try them; psycopg's error when there are none."""
    import socket

    import psycopg

    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            host, port, proto=socket.IPPROTO_TCP, type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise psycopg.OperationalError(f"failed to resolve host {host!r}: {exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def by_name(host: str) -> bool:
    """Whether ``host`` is a name or an address to look up, not a Unix socket's directory
    (``/run/postgresql``, ``C:\\sockets``; psycopg's test) or abstract namespace (``@name``,
    which libpq takes as a socket too)."""
    return not (host.startswith(("/", "@")) or host[1:2] == ":")


async def connect(
    attempts: list[str],
    *,
    timeout: float,
    autocommit: bool,
    prepare_threshold: int | None = 5,
    context: Any = None,
    row_factory: Any = None,
    cursor_factory: Any = None,
) -> Any:
    """``psycopg.AsyncConnection.connect(conninfo, ...)`` with the same keywords and errors
    (but for psycopg's warning about GSSAPI used by default), each handshake step on a worker
    thread, bounded by ``timeout`` s. ``attempts``: one conninfo per address, tried in turn
    as psycopg does (libpq's own next-address logic is not used: in its non-blocking mode it
    does not bound each address, nor go on after a refusal past the TCP connect); unlike
    psycopg, which gives each the whole ``connect_timeout``, each has its share of what is
    left of ``timeout``, so that a silent first address leaves time for the next."""
    import psycopg
    from psycopg.adapt import AdaptersMap

    loop = asyncio.get_running_loop()
    if sys.platform == "win32" and isinstance(loop, asyncio.ProactorEventLoop):
        raise psycopg.InterfaceError(
            "Psycopg cannot use the 'ProactorEventLoop' to run in async mode: use a "
            "selector event loop (asyncio.WindowsSelectorEventLoopPolicy())"
        )
    if not attempts:
        raise psycopg.OperationalError("connection failed: no address to connect to")
    deadline = loop.time() + timeout
    errors: list[psycopg.Error] = []
    pgconn = None
    for index, conninfo in enumerate(attempts):
        share = (deadline - loop.time()) / (len(attempts) - index)
        try:
            pgconn = await _handshake(conninfo, loop.time() + share)
            break
        except psycopg.Error as exc:
            errors.append(exc)  # raised below without the worker's frames (the conninfo)
    if pgconn is not None:
        try:
            conn = psycopg.AsyncConnection(pgconn)
            conn._autocommit = bool(autocommit)  # as psycopg's connect(): no await, no I/O
            if row_factory:
                conn.row_factory = row_factory
            if cursor_factory:
                conn.cursor_factory = cursor_factory
            if context:
                conn._adapters = AdaptersMap(context.adapters)
            conn.prepare_threshold = prepare_threshold
        except BaseException:
            pgconn.finish()
            raise
        return conn
    last = errors[-1]
    if len(errors) == 1:
        raise last.with_traceback(None)
    lines = [str(last), "Multiple connection attempts failed. All failures were:"]
    lines += [
        f"- {_described(conninfo)}: {error}"
        for conninfo, error in zip(attempts, errors, strict=True)
    ]
    raise type(last)("\n".join(lines), pgconn=last.pgconn).with_traceback(None)


def _described(conninfo: str) -> str:
    """An attempt as psycopg names it in its error: host, port and address (no secrets)."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(conninfo)
    host, port, address = given.get("host"), given.get("port"), given.get("hostaddr")
    return f"host: {host!r}, port: {port!r}, hostaddr: {address!r}"
