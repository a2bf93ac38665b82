"""A real local cluster for tests and demos: PostgreSQL or MariaDB, Aurora metadata, DNS, faults.

>>> from aurora_smartdriver import lab
>>> with lab.start("postgresql", replicas=2) as cluster:       # doctest: +SKIP
...     print(cluster.dsn)                                     # through the cluster endpoint
...     report = cluster.failover()                            # crash the writer, promote a replica
...     print(report.new_writer, f"{report.duration:.2f}s")

See docs/lab.md for the nodes, the names the lab's DNS serves, the metadata and every fault.
"""

from __future__ import annotations

from aurora_smartdriver.lab._aio import AsyncLab
from aurora_smartdriver.lab._cluster import ENGINES, FailoverReport, Lab, NodeInfo, residue
from aurora_smartdriver.lab._engine import LabError, Unsupported
from aurora_smartdriver.lab._firewall import available as partition_available
from aurora_smartdriver.lab._proxy import FaultProxy

__all__ = [
    "ENGINES",
    "AsyncLab",
    "FailoverReport",
    "FaultProxy",
    "Lab",
    "LabError",
    "NodeInfo",
    "Unsupported",
    "attach",
    "partition_available",
    "residue",
    "start",
]

start = Lab.start
attach = Lab.attach
