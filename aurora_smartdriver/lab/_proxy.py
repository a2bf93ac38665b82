"""A TCP proxy in front of one lab node, with switchable network faults (a local Toxiproxy).

It runs one asyncio loop in a daemon thread. Each connection is forwarded by two coroutines
per direction: one reads chunks and stamps them with the time they are due, the other delivers
them in order once due, so latency delays every chunk without cutting throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

__all__ = ["FaultProxy"]

_log = logging.getLogger("aurora_smartdriver.lab.proxy")

_CHUNK = 65536
_QUEUED_CHUNKS = 64  # per direction; a full queue stops reading, which keeps memory bounded
_BACKLOG = 1024
_CALL_TIMEOUT = 10.0
_LINGER_ZERO = struct.pack("ii", 1, 0)


def _close(sock: socket.socket | None, *, rst: bool) -> None:
    """Close `sock`; with `rst`, send an RST instead of a FIN."""
    if sock is None:
        return
    if rst:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    sock.close()


@dataclass(eq=False, slots=True)
class _Link:
    """One client connection and its upstream connection."""

    client: socket.socket
    upstream: socket.socket | None = None
    swallow: bool = False  # blackholed: bytes in either direction are dropped
    rst: bool = False  # reset: close both sides with an RST
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class FaultProxy:
    """A TCP proxy in front of one upstream (host, port) with switchable faults.

    Faults, like a network's: `set_latency` delays every chunk, `blackhole` drops every byte,
    `reset` kills connections with an RST; `restore` returns new connections to plain forwarding.
    """

    def __init__(self, listen_host: str, listen_port: int, upstream: tuple[str, int]) -> None:
        self._listen = (listen_host, listen_port)
        self._upstream = upstream
        self._latency = 0.0
        self._blackholed = False
        self._resetting = False
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._accepting: asyncio.Task[None] | None = None
        self.accepted = 0
        """Client connections accepted since start, faults or not."""

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect (the bound port once started, if 0 was asked for)."""
        return self._listen

    @property
    def connections(self) -> int:
        """Client connections currently open."""
        return len(self._links)

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by `seconds` in each direction (0 for none)."""
        if seconds < 0:
            raise ValueError(f"latency must be >= 0 seconds, got {seconds}")
        self._latency = seconds

    def blackhole(self) -> None:
        """Drop every byte, on open connections and on new ones, which are still accepted."""
        self._blackholed = True
        self._call(self._swallow_all())

    def reset(self) -> None:
        """Reset every open connection, and every new one as soon as it is accepted."""
        self._resetting = True
        self._call(self._reset_all())

    def restore(self) -> None:
        """Forward new connections again (blackholed ones stay so: their stream lost bytes)."""
        self._blackholed = self._resetting = False

    def start(self) -> None:
        """Listen and start forwarding; raise OSError if the address cannot be bound."""
        if self._thread is not None:
            raise RuntimeError(f"proxy on {self._listen[0]}:{self._listen[1]} is already running")
        # Resolved once here, so the loop never needs a resolver thread.
        family, _, _, _, sockaddr = socket.getaddrinfo(*self._upstream, type=socket.SOCK_STREAM)[0]
        listener = socket.create_server(self._listen, backlog=_BACKLOG)
        listener.setblocking(False)
        self._listen = (self._listen[0], listener.getsockname()[1])
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever,
            name=f"lab-proxy-{self._listen[0]}:{self._listen[1]}",
            daemon=True,
        )
        self._thread.start()
        self._call(self._open(listener, family, sockaddr))

    def stop(self) -> None:
        """Close the listener and every connection and join the thread; idempotent."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._loop = self._thread = self._accepting = None

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

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on the proxy's loop and wait for it; drop it when not started."""
        if self._loop is None:
            coro.close()
            return
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT)

    async def _open(self, listener: socket.socket, family: int, sockaddr: Any) -> None:
        self._accepting = asyncio.create_task(self._accept(listener, family, sockaddr))

    async def _shutdown(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        await self._close_all(rst=False)

    async def _swallow_all(self) -> None:
        for link in self._links:
            link.swallow = True

    async def _reset_all(self) -> None:
        await self._close_all(rst=True)

    async def _close_all(self, *, rst: bool) -> None:
        """Close every connection and return once they are closed."""
        links = list(self._links)
        for link in links:
            link.rst = rst
            if link.task is not None:
                link.task.cancel()
        await asyncio.gather(*(link.task for link in links if link.task), return_exceptions=True)
        # A task cancelled before its first step never ran its cleanup.
        for link in links:
            self._finish(link)

    def _finish(self, link: _Link) -> None:
        self._links.discard(link)
        _close(link.client, rst=link.rst)
        _close(link.upstream, rst=link.rst)

    async def _accept(self, listener: socket.socket, family: int, sockaddr: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                client, _ = await loop.sock_accept(listener)
                self.accepted += 1
                if self._resetting:
                    _close(client, rst=True)
                    continue
                client.setblocking(False)
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                link = _Link(client, swallow=self._blackholed)
                self._links.add(link)
                link.task = asyncio.create_task(self._serve(link, family, sockaddr))
        finally:
            listener.close()

    async def _serve(self, link: _Link, family: int, sockaddr: Any) -> None:
        loop = asyncio.get_running_loop()
        try:
            if link.swallow:
                # Accepted into the blackhole: read and drop until the client gives up.
                while await loop.sock_recv(link.client, _CHUNK):
                    pass
                return
            upstream = socket.socket(family, socket.SOCK_STREAM)
            link.upstream = upstream
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(upstream, sockaddr)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._forward(link, link.client, upstream))
                group.create_task(self._forward(link, upstream, link.client))
        except* OSError as errors:
            # A side that failed (refused, reset) fails the other one, as a broken path would.
            _log.debug("connection through %s broke: %r", self._listen, errors.exceptions)
            link.rst = True
        finally:
            self._finish(link)

    async def _forward(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUED_CHUNKS)

        async def deliver() -> None:
            while True:
                due, chunk = await chunks.get()
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if link.swallow:
                    if not chunk:
                        return
                elif chunk:
                    await loop.sock_sendall(dst, chunk)
                else:
                    dst.shutdown(socket.SHUT_WR)  # pass the end of the stream on
                    return

        async with asyncio.TaskGroup() as group:
            group.create_task(deliver())
            while True:
                chunk = await loop.sock_recv(src, _CHUNK)
                await chunks.put((loop.time() + self._latency, chunk))
                if not chunk:
                    return
