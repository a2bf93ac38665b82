"""The lab's RDS Proxy imitation: a TCP front per proxy endpoint, run by the lab's supervisor.

What RDS Proxy does, imitated from the lab's state alone (no import from the library, so a
library bug cannot hide behind the same code on both sides):

- a read/write endpoint forwards each new client connection to the current writer, a
  read-only endpoint to a running reader (in turn); the client never learns which;
- while no node of that role accepts connections (a failover between the writer's death and
  the promotion), a new connection is held, not refused, and forwarded as soon as one does,
  for up to the endpoint's `borrow_timeout` (RDS Proxy's ConnectionBorrowTimeout); then it
  is reset;
- a connection whose node dies is cut (RDS Proxy cancels those in a transaction or a
  statement). Unlike RDS Proxy, idle connections are cut too: a TCP front cannot move an
  authenticated session to another server (docs/rds-proxy.md says what that changes).

Connections leave from the endpoint's own address, so a server sees the proxy as its client
(PostgreSQL's `inet_client_addr()`, MariaDB's processlist host), as behind RDS Proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from aurora_smartdriver.lab import _state as st

__all__ = ["ROLES", "RdsProxyFront", "upstream_for"]

_log = logging.getLogger("aurora_smartdriver.lab.rds_proxy")

ROLES = ("read_write", "read_only")
_CHUNK = 65536
_CONNECT_TIMEOUT = 1.0
_RETRY = 0.02
_CALL_TIMEOUT = 10.0
_LINGER_ZERO = struct.pack("ii", 1, 0)
_turns = itertools.count()


def upstream_for(state: st.LabState, role: str) -> tuple[str, int] | None:
    """Where a new connection through an endpoint of `role` goes now: the writer, or a
    running reader in turn (None when no such node is running)."""
    if role == "read_write":
        writer = state.writer
        if writer is None or writer.status != "running":
            return None
        return writer.endpoint
    readers = [n for n in state.readers if n.status == "running"]
    if not readers:
        return None
    return readers[next(_turns) % len(readers)].endpoint


async def _stop(pipes: list[asyncio.Task[None]]) -> None:
    """Cancel a connection's pipe tasks and wait until they are done, even when the task
    waiting is cancelled meanwhile (then re-raised once they are).

    Only then may their sockets close. A pipe still waiting to read keeps its socket's
    descriptor registered in the event loop's selector; closed under it, the number goes to the
    next socket opened in the process (a new client's, say), and asyncio takes the leftover
    registration for that socket's own: it never asks epoll to watch it, so that connection
    stalls in one direction. A PostgreSQL client held through a failover then had its startup
    packet stuck in the proxy until the server's authentication_timeout closed the session:
    "server closed the connection unexpectedly".
    """
    for task in pipes:
        task.cancel()
    interrupted = False
    while not all(task.done() for task in pipes):
        try:
            await asyncio.wait(pipes)
        except asyncio.CancelledError:
            interrupted = True  # cancelled pipes end within a turn of the loop: wait for them
    if interrupted:
        raise asyncio.CancelledError


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()


class RdsProxyFront:
    """The listeners of every proxy endpoint in the lab's state, on one asyncio thread.

    `sync` (called on every supervisor tick) starts a listener for each new endpoint and
    stops those of endpoints that were removed, cutting their connections.
    """

    def __init__(self, current: Callable[[], st.LabState]) -> None:
        self._current = current
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="lab-rds-proxy", daemon=True
        )
        self._thread.start()
        self._listeners: dict[str, asyncio.Task[None]] = {}  # endpoint name -> accept task
        self._addresses: dict[str, str] = {}  # endpoint name -> the address it listens on
        self._links: dict[str, set[asyncio.Task[None]]] = {}

    def sync(self) -> None:
        """Listen on exactly the endpoints the state names now."""
        state = self._current()
        wanted = {e.name: e for e in state.proxy_endpoints}
        for name in list(self._listeners):  # gone, or back on another address since
            if name not in wanted or self._addresses.get(name) != wanted[name].address:
                self._call(self._close(name))
        for name, endpoint in wanted.items():
            if name not in self._listeners:
                try:
                    listener = socket.create_server((endpoint.address, state.port), backlog=1024)
                except OSError as exc:
                    _log.warning("proxy endpoint %s cannot listen: %s", name, exc)
                    continue
                listener.setblocking(False)
                self._addresses[name] = endpoint.address
                self._call(self._open(name, listener))

    def stop(self) -> None:
        """Close every listener and connection, then end the thread (the supervisor's exit)."""
        for name in list(self._listeners):
            self._call(self._close(name))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT)

    async def _open(self, name: str, listener: socket.socket) -> None:
        self._links[name] = set()
        self._listeners[name] = asyncio.create_task(self._accept(name, listener))

    async def _close(self, name: str) -> None:
        self._addresses.pop(name, None)
        task = self._listeners.pop(name)
        task.cancel()
        links = self._links.pop(name, set())
        for link in links:
            link.cancel()
        await asyncio.gather(task, *links, return_exceptions=True)

    async def _accept(self, name: str, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                client, _ = await loop.sock_accept(listener)
                client.setblocking(False)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                links = self._links[name]
                task = asyncio.create_task(self._serve(name, client))
                links.add(task)
                task.add_done_callback(links.discard)
        finally:
            listener.close()

    async def _borrow(self, name: str) -> socket.socket | None:
        """A connection to a node of the endpoint's role, waiting for one up to its
        borrow timeout; None when the time ran out or the endpoint is gone."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            state = self._current()
            endpoint = next((e for e in state.proxy_endpoints if e.name == name), None)
            if endpoint is None:
                return None
            if deadline is None:
                deadline = loop.time() + endpoint.borrow_timeout
            target = upstream_for(state, endpoint.role)
            if target is not None:
                upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                upstream.setblocking(False)
                upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    upstream.bind((endpoint.address, 0))  # the server sees the proxy
                    await asyncio.wait_for(loop.sock_connect(upstream, target), _CONNECT_TIMEOUT)
                    return upstream
                except (OSError, TimeoutError):
                    upstream.close()  # the node is going (a failover): wait for the next one
                except BaseException:
                    upstream.close()  # cancelled (the endpoint closes): leave no socket behind
                    raise
            if loop.time() >= deadline:
                return None
            await asyncio.sleep(_RETRY)

    async def _serve(self, name: str, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        pipes: list[asyncio.Task[None]] = []
        clean = False
        try:
            upstream = await self._borrow(name)
            if upstream is None:
                return
            outward = asyncio.create_task(self._pipe(client, upstream))
            back = asyncio.create_task(self._pipe(upstream, client))
            pipes = [outward, back]
            done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            clean = all(not t.cancelled() and t.exception() is None for t in done)
            if clean and back not in done:  # the client said goodbye: let the server finish
                await asyncio.wait([back], timeout=5.0)  # however it ends: this side is done
        finally:
            # A node that went away takes the client with it; so does the endpoint's removal,
            # which cancels this task (`_close`), whatever it was waiting for.
            try:
                await _stop(pipes)  # before the sockets close: see `_stop`
            finally:
                for sock in (client, upstream):
                    if sock is None:
                        continue
                    if clean:
                        sock.close()
                    else:
                        _reset(sock)  # a broken path: the other side learns at once

    async def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk = await loop.sock_recv(src, _CHUNK)
            if not chunk:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            await loop.sock_sendall(dst, chunk)
