"""What the lab needs from a database engine; one implementation per engine."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from aurora_smartdriver.lab._state import LabState, NodeState

MASTER_SESSION_ID = "MASTER_SESSION_ID"

T = TypeVar("T")


class LabError(RuntimeError):
    """A lab operation failed; the message says which node and what happened."""


class Unsupported(LabError):
    """The operation cannot be done on this machine (e.g. no iptables, not root)."""


@dataclass(frozen=True, slots=True)
class Probe:
    """What a node says about itself: its role and how far behind the writer it is."""

    is_writer: bool
    lag_ms: float
    position: int | None = None
    """How far its data has come (replayed, on a replica), comparable across nodes."""


@dataclass(frozen=True, slots=True)
class Fresh:
    """Figures the heartbeat publishes for a node that answered."""

    lag_ms: float
    cpu: float
    position: int | None = None
    """The node's own position (see `Probe`); None: the writer's is published."""


class Engine(Protocol):
    """The operations the lab performs on nodes of one engine."""

    name: str
    default_port: int
    lagged_replicas_reconnect: bool
    """Whether a replica held back by :meth:`set_lag` reconnects to a restarted writer at once
    (PostgreSQL's does not: it starts its WAL receiver again only once the delay has passed)."""

    def prepare(self, lab: LabState, node: NodeState, writer: NodeState | None) -> None:
        """Create the node's data directory: a fresh primary, or a replica of ``writer``."""

    def start(self, lab: LabState, node: NodeState) -> int:
        """Start the node's server process; return its pid (also its process group)."""

    def wait_ready(self, lab: LabState, node: NodeState, timeout: float) -> None:
        """Block until the node accepts admin connections."""

    def bootstrap(self, lab: LabState, writer: NodeState) -> None:
        """Create users, the database and the Aurora/RDS metadata on the first writer."""

    def attach_replica(self, lab: LabState, node: NodeState, writer: NodeState) -> None:
        """Make a started, prepared node replicate from ``writer``."""

    def set_sync(self, lab: LabState, writer: NodeState, enabled: bool) -> None:
        """Turn synchronous (PostgreSQL) or semi-synchronous (MariaDB) replication on or off."""

    def sync_active(self, lab: LabState, writer: NodeState) -> bool:
        """Whether at least one replica acknowledges the writer's commits right now."""

    def position(self, lab: LabState, node: NodeState) -> int:
        """Replication progress of a replica (received and applied), comparable across nodes."""

    def applied_position(self, lab: LabState, node: NodeState) -> int:
        """How far a replica has applied the log (PostgreSQL: replayed; a commit is
        acknowledged once flushed), comparable with :meth:`writer_position`."""

    def writer_position(self, lab: LabState, writer: NodeState) -> int:
        """The writer's own progress, comparable with :meth:`position`."""

    def drain(self, lab: LabState, node: NodeState, timeout: float) -> None:
        """Wait until a replica has applied everything it received (before a promotion)."""

    def promote(self, lab: LabState, node: NodeState) -> None:
        """Make a replica the writer."""

    def repoint(self, lab: LabState, node: NodeState, writer: NodeState) -> None:
        """Make a replica follow a new writer."""

    def set_lag(self, lab: LabState, node: NodeState, seconds: float) -> None:
        """Make a replica apply each commit ``seconds`` after the writer made it (0: at once)."""

    def probe(self, lab: LabState, node: NodeState, timeout: float) -> Probe:
        """Ask the node for its role and lag (raises when it does not answer)."""

    def publish(
        self,
        lab: LabState,
        writer: NodeState,
        fresh: Mapping[str, Fresh],
        *,
        structure: bool = True,
    ) -> None:
        """Write the cluster metadata on the writer; only ``fresh`` nodes get a new timestamp.

        ``structure=False`` (the heartbeat) only updates the figures of existing rows: the
        members and roles are written by the lab's operations, under the lab's lock, so a
        heartbeat working from a state read a moment earlier cannot bring back a removed node.
        """

    def execute(self, lab: LabState, node: NodeState, sql: str) -> list[tuple[object, ...]]:
        """Run one statement as the administrator on a node and return its rows."""

    def after_kill(self, lab: LabState, node: NodeState) -> None:
        """Release what a killed server leaves behind outside its data directory."""


def node_dir(lab: LabState, node: NodeState) -> Path:
    # The node's own directory once set: a Blue/Green switchover renames nodes, not their data.
    return Path(node.datadir) if node.datadir else Path(lab.dir) / node.id


def fresh_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def retry_until(fn: Callable[[], T], timeout: float, what: str, interval: float = 0.02) -> T:
    """Call ``fn`` until it returns without raising, or raise LabError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except Exception as exc:
            if time.monotonic() >= deadline:
                raise LabError(f"{what}: still failing after {timeout:.1f}s: {exc}") from exc
        time.sleep(interval)


def cpu_percent(pid: int | None, previous: dict[int, tuple[float, float]]) -> float:
    """CPU use of a process since the previous call, in percent of one core."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    now = time.monotonic()
    last = previous.get(pid)
    previous[pid] = (now, ticks)
    if last is None or now <= last[0]:
        return 0.0
    return round(100.0 * (ticks - last[1]) / (now - last[0]), 1)


def remove_sysv_segment(shmid: int, *, key: int, creator: int) -> bool:
    """Remove the System V shared memory segment a killed server left behind; return whether
    it did.

    Segment ids are system-wide and a pid file may be stale: only the segment that is exactly
    the one named (``key``, created by the server's pid ``creator``) and that no process is
    attached to any more is removed, as Linux's /proc/sysvipc/shm shows it. Any other (this
    machine's own PostgreSQL's, another lab's) is left alone.
    """
    try:
        rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        fields = row.split()  # key shmid perms size cpid lpid nattch ...
        if len(fields) < 7 or fields[1] != str(shmid):
            continue
        if fields[0] != str(key) or fields[4] != str(creator) or fields[6] != "0":
            return False
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        ipc_rmid = 0
        return int(libc.shmctl(ctypes.c_int(shmid), ctypes.c_int(ipc_rmid), None)) == 0
    return False
