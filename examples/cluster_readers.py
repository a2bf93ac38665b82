"""Reads on readers, writes on the writer, with pools: python examples/cluster_readers.py

A `Cluster` keeps one pool per instance and routes each `reader()` to a replica chosen by
`reader_strategy`, skipping replicas lagging more than `max_replica_lag`. The program writes a
row on the writer, waits until the replicas have it, then reads it from the readers and shows
which instance served each read.
"""

from __future__ import annotations

import collections

import aurora_smartdriver as asd
from aurora_smartdriver import lab


def main() -> None:
    with lab.start("mariadb", replicas=2) as cluster_lab:
        cluster = asd.Cluster(
            cluster_lab.dsn,
            reader_strategy="round_robin",
            max_replica_lag="10s",
            pool_max_size=4,
        )
        with cluster:
            topology = cluster.topology
            assert topology is not None and topology.writer is not None
            print(f"writer {topology.writer.instance_id}, readers", end=" ")
            print(", ".join(h.instance_id for h in topology.readers))

            with cluster.writer() as conn:
                cur = conn.cursor()
                cur.execute("CREATE TABLE IF NOT EXISTS readers_example (k VARCHAR(8) PRIMARY KEY)")
                cur.execute("REPLACE INTO readers_example VALUES ('hello')")
            cluster_lab.wait_replicated()

            served: collections.Counter[str] = collections.Counter()
            for _ in range(6):
                with cluster.reader() as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT k FROM readers_example")
                    assert cur.fetchall() == (("hello",),)
                    served[conn.instance_id] += 1
            print("reads served by:", dict(served))
            assert set(served) == {h.instance_id for h in topology.readers}
            pools = cluster.stats()["pools"]
            open_now = {instance: p.idle + p.in_use for instance, p in pools.items()}
            print("connections open per instance:", open_now)


if __name__ == "__main__":
    main()
