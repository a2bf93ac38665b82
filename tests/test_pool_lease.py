"""The runtime's lease path: routing decisions reused on an unchanged topology, and only then."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aurora_smartdriver import dsn
from aurora_smartdriver._runtime import Runtime
from aurora_smartdriver.errors import NoHostAvailable
from aurora_smartdriver.topology import Host, Role, Topology

# Nothing listens on port 9: the monitor never gets an answer, so the test sets the topology.
_DSN = (
    "postgresql://app:pw@127.0.0.1:9/app?topology_source=static&connect_timeout=1"
    "&reader_strategy=round_robin"
)


def _topology(writer: str, version: int, *readers: str) -> Topology:
    return Topology(
        writer=Host(writer, f"{writer}.example", 5432, Role.WRITER),
        readers=tuple(Host(r, f"{r}.example", 5432, Role.READER) for r in readers),
        version=version,
    )


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    made = Runtime(dsn.parse(_DSN))
    yield made
    made.close()


def test_writer_requests_on_one_snapshot_get_the_same_decision(runtime: Runtime) -> None:
    runtime.monitor.topology = _topology("one", 1, "r1")
    first = runtime.choose("writer")
    assert first.target.instance_id == "one"
    assert runtime.choose("writer") is first
    assert runtime.metrics.routed.snapshot()[("writer", "one")] == 2  # each request counted


def test_a_writer_request_follows_a_new_snapshot_at_once(runtime: Runtime) -> None:
    runtime.monitor.topology = _topology("one", 1, "r1")
    assert runtime.choose("writer").target.instance_id == "one"
    runtime.monitor.topology = _topology("r1", 2, "one")  # a failover: r1 promoted
    assert runtime.choose("writer").target.instance_id == "r1"
    # An equal snapshot is still a new one: decided again, with the same outcome.
    runtime.monitor.topology = _topology("r1", 2, "one")
    assert runtime.choose("writer").target.instance_id == "r1"


def test_excluding_the_writer_is_never_answered_from_the_last_decision(runtime: Runtime) -> None:
    runtime.monitor.topology = _topology("one", 1)
    assert runtime.choose("writer").target.instance_id == "one"
    with pytest.raises(NoHostAvailable):
        runtime.choose("writer", frozenset({"one"}))
    assert runtime.choose("writer").target.instance_id == "one"


def test_reader_requests_are_decided_every_time(runtime: Runtime) -> None:
    runtime.monitor.topology = _topology("w", 1, "r1", "r2")
    chosen = {runtime.choose("reader").target.instance_id for _ in range(4)}
    assert chosen == {"r1", "r2"}  # round robin: no decision is reused
