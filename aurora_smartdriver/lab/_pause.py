"""A paused Aurora Serverless v2 instance (0 ACUs) that resumes when someone connects.

The node's processes are stopped (SIGSTOP): the kernel still completes TCP connects, nobody
answers the handshake. A thread of the lab's process watches the node's listening address for
the first connection attempt (a socket on the node's address and port, established or half
open, in ``/proc/net/tcp``) and resumes the node `delay` seconds later, as Aurora resumes a
paused instance on the first connection request (about 15 s; longer after a day paused).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["Pauser", "knockers", "knocking"]

_TCP_TABLE = Path("/proc/net/tcp")
_ESTABLISHED, _SYN_RECV = "01", "03"
_POLL = 0.005


def _hex_endpoint(address: str, port: int) -> str:
    """``address:port`` as ``/proc/net/tcp`` spells a local endpoint (IPv4, host byte order)."""
    packed = socket.inet_aton(address)
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def knocking(address: str, port: int, table: str | None = None) -> bool:
    """Whether a connection to ``address:port`` is established or half open at the server's
    side (waiting to be accepted: on a stopped server, a connection attempt)."""
    return bool(knockers(address, port, table))


def knockers(address: str, port: int, table: str | None = None) -> set[str]:
    """The client ends (``/proc/net/tcp``'s remote ``ADDR:PORT``) of the connections to
    ``address:port`` established or half open at the server's side."""
    wanted = _hex_endpoint(address, port)
    text = _TCP_TABLE.read_text() if table is None else table
    found: set[str] = set()
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1] == wanted and fields[3] in (_ESTABLISHED, _SYN_RECV):
            found.add(fields[2])
    return found


class Pauser:
    """Watches a paused node for its first connection attempt, then calls `resume` after
    `delay` seconds (unless stopped first). `knocked_at` and `resumed_at` are wall-clock
    times once they happen; `attempts` counts the distinct connection attempts seen while
    the node was paused (a connection storm shows here)."""

    def __init__(
        self,
        node_id: str,
        address: str,
        port: int,
        delay: float,
        resume: Callable[[], None],
        *,
        ignore: set[str] | None = None,
    ) -> None:
        """`ignore`: client ends of connections already there when the node was stopped."""
        self.node_id = node_id
        self.address = address
        self.port = port
        self.delay = delay
        self.knocked_at: float | None = None
        self.resumed_at: float | None = None
        self._seen: set[str] = set()
        self._ignore = frozenset(ignore or ())
        self._resume = resume
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lab-pause-{node_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the node is woken or removed by other means)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)

    @property
    def attempts(self) -> int:
        return len(self._seen)

    def _run(self) -> None:
        while not self._stop.is_set():
            seen = knockers(self.address, self.port) - self._ignore
            if seen:
                self._seen |= seen
                break
            self._stop.wait(_POLL)
        else:
            return
        self.knocked_at = time.time()
        due = time.monotonic() + self.delay
        while time.monotonic() < due:  # count the attempts made while it resumes
            if self._stop.wait(min(_POLL * 4, max(0.0, due - time.monotonic()))):
                return
            self._seen |= knockers(self.address, self.port) - self._ignore
        self.resumed_at = time.time()  # before the node answers: a client never sees None
        self._resume()
