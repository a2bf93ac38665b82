"""The lab's state file: what runs where, shared by every process that acts on one lab.

The file is JSON so that people and other tools can read it; writes are atomic (write, then
rename) and every change happens under an exclusive ``flock`` on a sibling lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DOMAIN = "aurora.test"  # RFC 2606 reserves .test; nothing here can leak to real DNS
REGION = "lab"


class UnknownNode(KeyError):
    """No node of that id in the lab. A `KeyError` whose message reads as written."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(slots=True)
class NodeState:
    """One database node: an instance in Aurora's terms."""

    id: str
    index: int
    address: str
    port: int
    role: str  # "writer" | "reader"
    status: str  # "running" | "crashed" | "hung" | "stopped" | "paused"
    datadir: str
    server_id: int
    session_id: str
    pid: int | None = None
    partitioned: bool = False
    lag: float = 0.0  # seconds of replica lag injected (Lab.lag); 0 = replicates at once
    region: str = REGION  # the region of the node's cluster (lab/_global.py adds others)

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.address, self.port)


@dataclass(slots=True)
class DNSState:
    address: str
    port: int
    ttl: int
    lag: float
    cluster_target: str  # the instance id the cluster endpoint points at now
    pending_target: str | None = None  # where it will point once ``pending_at`` is reached
    pending_at: float | None = None  # wall-clock time of the delayed flip


@dataclass(slots=True)
class CustomEndpointState:
    """An Aurora custom endpoint of the lab (`Lab.add_custom_endpoint`).

    `kind` is "reader" or "any"; `static` lists its members, or, when empty, every instance
    but those in `excluded` is one (instances added later included), as on RDS.
    """

    name: str
    kind: str
    static: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ProxyEndpointState:
    """An endpoint of the lab's RDS Proxy imitation (`Lab.add_rds_proxy_endpoint`).

    `name` "default" is the proxy's default endpoint (`<lab>-proxy.proxy-<hash>...`), any
    other an additional endpoint (`<name>.endpoint.proxy-<hash>...`); `role` is "read_write"
    (new connections go to the writer) or "read_only" (to a reader); `address` is where it
    listens, on the lab's port. New connections wait up to `borrow_timeout` seconds for a
    node of that role to accept them, as RDS Proxy queues them while the writer is away.
    """

    name: str
    role: str
    address: str
    borrow_timeout: float = 30.0


@dataclass(slots=True)
class LabState:
    """Everything needed to find, change and tear down one lab from any process."""

    engine: str
    name: str
    cluster_hash: str
    dir: str
    prefix: str
    port: int
    user: str
    password: str
    database: str
    repl_password: str
    dns: DNSState
    nodes: list[NodeState] = field(default_factory=list)
    next_index: int = 1
    supervisor_pid: int | None = None
    owner_pid: int | None = None
    heartbeat_interval: float = 1.0
    replicas_wanted: int = 0
    heartbeat_paused: bool = False
    server_user: str | None = None
    created_at: float = field(default_factory=time.time)
    failovers: int = 0
    tls_ca: str | None = None  # the lab CA's certificate when the nodes serve TLS, else None
    custom_endpoints: list[CustomEndpointState] = field(default_factory=list)
    proxy_endpoints: list[ProxyEndpointState] = field(default_factory=list)
    # Proxy endpoint addresses handed out so far: the next one is the next in turn, so an
    # endpoint added right after one was removed never lands on the address still closing.
    proxy_addresses_given: int = 0
    rds_api_down: bool = False  # the lab's RDS API stand-in drops every request
    blue_green: dict[str, Any] | None = None  # a Blue/Green deployment (lab/_bluegreen.py)
    # Global database (lab/_global.py): region -> that region's cluster hash; empty: one region.
    regions: dict[str, str] = field(default_factory=dict)
    global_hash: str | None = None  # the global writer endpoint's hash while regions exist
    # Replicas being deleted (Lab.remove): out of the metadata and the reader endpoint, still
    # serving the connections they have until they shut down, as an Aurora instance deleting.
    leaving: list[NodeState] = field(default_factory=list)

    # -- names ------------------------------------------------------------------------------
    @property
    def origin(self) -> str:
        return f"{REGION}.{DOMAIN}"

    @property
    def cluster_endpoint(self) -> str:
        return f"{self.name}.cluster-{self.cluster_hash}.{self.origin}"

    @property
    def reader_endpoint(self) -> str:
        return f"{self.name}.cluster-ro-{self.cluster_hash}.{self.origin}"

    def custom_endpoint(self, name: str) -> str:
        return f"{name}.cluster-custom-{self.cluster_hash}.{self.origin}"

    @property
    def proxy_domain(self) -> str:
        """What follows an RDS Proxy endpoint's first label(s): `proxy-<hash>.<origin>`."""
        return f"proxy-{self.cluster_hash}.{self.origin}"

    def proxy_endpoint(self, name: str) -> str:
        """The host name of the proxy endpoint `name` ("default": the proxy's own)."""
        if name == "default":
            return f"{self.name}-proxy.{self.proxy_domain}"
        return f"{name}.endpoint.{self.proxy_domain}"

    def instance_endpoint(self, node_id: str) -> str:
        region = next((n.region for n in self.nodes if n.id == node_id), REGION)
        if region != REGION and region in self.regions:
            return f"{node_id}.{self.regions[region]}.{region}.{DOMAIN}"
        return f"{node_id}.{self.cluster_hash}.{self.origin}"

    @property
    def instance_host_pattern(self) -> str:
        return f"?.{self.cluster_hash}.{self.origin}"

    # -- lookups -----------------------------------------------------------------------------
    def node(self, node_id: str) -> NodeState:
        for node in self.nodes:
            if node.id == node_id:
                return node
        known = ", ".join(n.id for n in self.nodes)
        raise UnknownNode(f"no node {node_id!r} in lab {self.name!r} (nodes: {known})")

    @property
    def writer(self) -> NodeState | None:
        return next((n for n in self.nodes if n.role == "writer"), None)

    @property
    def readers(self) -> list[NodeState]:
        """The readers of the writer's cluster (a global database's other regions are not)."""
        writer = self.writer
        home = writer.region if writer is not None else REGION
        return [n for n in self.nodes if n.role == "reader" and n.region == home]

    @property
    def cluster_nodes(self) -> list[NodeState]:
        """The writer's cluster: the nodes of the writer's region."""
        writer = self.writer
        home = writer.region if writer is not None else REGION
        return [n for n in self.nodes if n.region == home]

    # -- persistence -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        data = dict(data)
        data["dns"] = DNSState(**data["dns"])
        data["nodes"] = [NodeState(**n) for n in data["nodes"]]
        data["leaving"] = [NodeState(**n) for n in data.get("leaving", [])]
        data["custom_endpoints"] = [
            CustomEndpointState(**e) for e in data.get("custom_endpoints", [])
        ]
        data["proxy_endpoints"] = [ProxyEndpointState(**e) for e in data.get("proxy_endpoints", [])]
        return cls(**data)


def state_path(lab_dir: Path) -> Path:
    return lab_dir / "state.json"


def load(path: Path) -> LabState:
    """Read a lab's state file; a clear error when it is missing or not a lab's."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"no lab state file at {path} (is the lab down already?)") from None
    try:
        return LabState.from_json(json.loads(raw))
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path} is not a lab state file: {exc}") from exc


def save(path: Path, state: LabState) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the lab's exclusive lock (one fault or failover at a time, across processes)."""
    lock_path = path.with_name("state.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
