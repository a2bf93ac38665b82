"""Test your own code's failover handling against a lab cluster: python examples/lab_failover.py

This is what an application's own failover test looks like with the lab: start a cluster,
run your code, break the cluster, and check what your code saw. Here "your code" is a bare
psycopg client that reconnects through the cluster endpoint; swap in your own.
"""

from __future__ import annotations

import time

import dns.resolver
import psycopg

from aurora_smartdriver import lab


def resolve(cluster: lab.Lab, name: str) -> str:
    """Ask the lab's DNS server, as a client without a local cache would."""
    address, port = cluster.dns
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port, resolver.cache = [address], port, None
    return str(resolver.resolve(name, "A")[0])


def write_once(cluster: lab.Lab) -> bool:
    """One insert through the cluster endpoint; True when the database acknowledged it."""
    state = cluster.state()
    try:
        with psycopg.connect(
            host=resolve(cluster, state.cluster_endpoint),
            port=state.port,
            user=state.user,
            password=state.password,
            dbname=state.database,
            connect_timeout=2,
            autocommit=True,
        ) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS example (at double precision)")
            conn.execute("INSERT INTO example VALUES (%s)", (time.time(),))
        return True
    except psycopg.Error:
        return False


def main() -> None:
    with lab.start("postgresql", replicas=1, dns_lag=2.0) as cluster:
        assert write_once(cluster)
        report = cluster.failover()
        print(f"failover {report.old_writer} -> {report.new_writer} in {report.duration:.2f}s")
        attempts = 0
        while not write_once(cluster):
            attempts += 1
            time.sleep(0.2)
        gap = time.time() - report.started_at
        print(f"first write after the failover: {gap:.2f}s later, {attempts} failed attempts")


if __name__ == "__main__":
    main()
