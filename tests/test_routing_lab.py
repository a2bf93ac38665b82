"""Routing through the runtime against the lab: reader strategies stay fair whatever else the
application borrows."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import aurora_smartdriver as asd
from aurora_smartdriver import _runtime
from aurora_smartdriver.lab import Lab


@pytest.fixture(autouse=True)
def _close_runtimes() -> Iterator[None]:
    yield
    _runtime.close_all()


def _dsn(lab: Lab, strategy: str) -> str:
    return f"{lab.dsn}&reader_strategy={strategy}&cluster_id={uuid.uuid4().hex}"


def test_round_robin_reads_alternate_readers_when_writes_interleave(
    aurora_lab_postgresql: Lab,
) -> None:
    """Writer and reader borrows in turn: every reader still gets its share of reads."""
    lab = aurora_lab_postgresql
    cluster = asd.Cluster(_dsn(lab, "round_robin"))
    reads: Counter[str] = Counter()
    try:
        for _ in range(20):
            with cluster.writer():
                pass
            with cluster.reader() as conn:
                reads[str(conn.instance_id)] += 1
    finally:
        cluster.close()
    assert sorted(reads) == sorted(r.id for r in lab.readers)
    # A fair share each, however many readers earlier tests left the session's lab with.
    assert max(reads.values()) - min(reads.values()) <= 1, reads


def test_least_connections_counts_connections_of_their_own(aurora_lab_postgresql: Lab) -> None:
    """``connect()`` connections in use count: a new reader goes where fewest are open."""
    lab = aurora_lab_postgresql
    dsn_text = _dsn(lab, "least_connections")
    held: list[Any] = []
    try:
        first = asd.connect(dsn_text, role="reader")
        second = asd.connect(dsn_text, role="reader")
        held += [first, second]
        assert first.instance_id != second.instance_id
        second.close()
        third = asd.connect(dsn_text, role="reader")
        held.append(third)
        # first's reader has one connection in use, every other none (two readers or more,
        # whatever earlier tests left the session's lab with): not first's.
        assert third.instance_id != first.instance_id
    finally:
        for conn in held:
            conn.close()
