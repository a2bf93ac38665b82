"""The lab's operations for async tests: each runs in a worker thread, so the loop keeps running.

A lab operation is blocking work (signals, processes, waits of seconds: a failover waits for a
replica to be promoted). Called directly from an async test it stops the event loop for that
long, and with it every async client under test: they neither notice the fault nor recover from
it until the operation returns, which is not what an application sees when a real node fails.
``await lab.aio.failover()`` runs the same operation in a thread (``asyncio.to_thread``) while
the loop keeps serving the clients. The sync fixtures (``aurora_lab``...) work unchanged from
pytest-asyncio tests; their ``restore()`` runs after the test, outside its loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aurora_smartdriver.lab._cluster import FailoverReport, Lab, NodeInfo

__all__ = ["AsyncLab"]


class AsyncLab:
    """Awaitable twins of a `Lab`'s operations that take time (``lab.aio``); the rest of the
    lab (``dsn``, ``writer``, ``nodes``...) is read from the `Lab` itself."""

    __slots__ = ("lab",)

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    async def execute(self, node: str | NodeInfo, sql: str) -> list[tuple[object, ...]]:
        """`Lab.execute` in a thread."""
        return await asyncio.to_thread(self.lab.execute, node, sql)

    async def crash(self, node: str | NodeInfo) -> None:
        """`Lab.crash` in a thread."""
        await asyncio.to_thread(self.lab.crash, node)

    async def hang(self, node: str | NodeInfo) -> None:
        """`Lab.hang` in a thread."""
        await asyncio.to_thread(self.lab.hang, node)

    async def resume(self, node: str | NodeInfo) -> None:
        """`Lab.resume` in a thread."""
        await asyncio.to_thread(self.lab.resume, node)

    async def partition(self, node: str | NodeInfo) -> None:
        """`Lab.partition` in a thread."""
        await asyncio.to_thread(self.lab.partition, node)

    async def heal(self, node: str | NodeInfo) -> None:
        """`Lab.heal` in a thread."""
        await asyncio.to_thread(self.lab.heal, node)

    async def lag(self, node: str | NodeInfo, seconds: float, *, in_process: bool = True) -> None:
        """`Lab.lag` in a thread."""
        await asyncio.to_thread(self.lab.lag, node, seconds, in_process=in_process)

    async def restart(self, node: str | NodeInfo, timeout: float = 30.0) -> None:
        """`Lab.restart` in a thread."""
        await asyncio.to_thread(self.lab.restart, node, timeout)

    async def failover(
        self, to: str | NodeInfo | None = None, *, how: str = "crash", dns_lag: float | None = None
    ) -> FailoverReport:
        """`Lab.failover` in a thread: the loop serves the clients while the writer is replaced."""
        return await asyncio.to_thread(self.lab.failover, to, how=how, dns_lag=dns_lag)

    async def rejoin(self, node: str | NodeInfo, timeout: float = 60.0) -> None:
        """`Lab.rejoin` in a thread."""
        await asyncio.to_thread(self.lab.rejoin, node, timeout)

    async def remove(self, node: str | NodeInfo, *, drain: float = 2.0) -> None:
        """`Lab.remove` in a thread."""
        await asyncio.to_thread(self.lab.remove, node, drain=drain)

    async def pause(self, node: str | NodeInfo, *, resume_delay: float = 15.0) -> None:
        """`Lab.pause` in a thread."""
        await asyncio.to_thread(self.lab.pause, node, resume_delay=resume_delay)

    async def wake(self, node: str | NodeInfo) -> None:
        """`Lab.wake` in a thread."""
        await asyncio.to_thread(self.lab.wake, node)

    async def add_replica(self, timeout: float = 60.0) -> NodeInfo:
        """`Lab.add_replica` in a thread."""
        return await asyncio.to_thread(self.lab.add_replica, timeout)

    async def pause_heartbeat(self) -> None:
        """`Lab.pause_heartbeat` in a thread."""
        await asyncio.to_thread(self.lab.pause_heartbeat)

    async def resume_heartbeat(self) -> None:
        """`Lab.resume_heartbeat` in a thread."""
        await asyncio.to_thread(self.lab.resume_heartbeat)

    async def wait_replicated(self, timeout: float = 30.0) -> None:
        """`Lab.wait_replicated` in a thread."""
        await asyncio.to_thread(self.lab.wait_replicated, timeout)

    async def restore(self, timeout: float = 60.0) -> bool:
        """`Lab.restore` in a thread (the fixtures restore after the test on their own)."""
        return await asyncio.to_thread(self.lab.restore, timeout)

    def __repr__(self) -> str:
        return f"<aurora_smartdriver.lab.AsyncLab of {self.lab!r}>"
