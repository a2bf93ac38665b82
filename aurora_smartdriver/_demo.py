"""``aurora-smartdriver demo``: a lab cluster failing over under a write load, as it happens."""

from __future__ import annotations

import time

from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._workload import WriteLoad


def _table(lab: Lab) -> str:
    lines = [f"    {'instance':<22} {'role':<7} {'status':<8} {'address':<21} endpoint"]
    for node in lab.nodes:
        lines.append(
            f"    {node.id:<22} {node.role:<7} {node.status:<8} "
            f"{node.address + ':' + str(node.port):<21} {node.host}"
        )
    return "\n".join(lines)


def run_demo(engine: str = "postgresql", replicas: int = 2, dns_lag: float = 5.0) -> int:
    """Start a lab, load it, fail it over with stale DNS, report, and always tear it down."""
    label = "PostgreSQL" if engine == "postgresql" else "MariaDB"
    print(f"Starting a {label} lab cluster: 1 writer, {replicas} replicas ...", flush=True)
    started = time.monotonic()
    lab = Lab.start(engine, replicas=replicas, dns_lag=dns_lag)
    try:
        print(f"  up in {time.monotonic() - started:.2f}s")
        print(f"  cluster endpoint {lab.state().cluster_endpoint} (DNS {lab.dns[0]}:{lab.dns[1]})")
        print(_table(lab))
        load = WriteLoad(lab, threads=4).start()
        print("\nWriting through the cluster endpoint with 4 bare-driver clients ...", flush=True)
        time.sleep(2.0)
        print(f"  {len(load.result.acknowledged)} writes acknowledged so far")
        print(
            f"\nFailing over: kill -9 the writer, promote the most advanced replica; "
            f"DNS follows {dns_lag:.1f}s later ...",
            flush=True,
        )
        report = lab.failover()
        print(
            f"  {report.old_writer} -> {report.new_writer}: promoted after "
            f"{report.promoted_at - report.started_at:.2f}s, failover done in "
            f"{report.duration:.2f}s"
        )
        print(_table(lab))
        deadline = time.time() + dns_lag + lab.state().dns.ttl + 5.0
        while time.time() < deadline and load.result.first_ack_after(report.started_at) is None:
            time.sleep(0.1)
        time.sleep(1.0)
        result = load.stop()
        lost = load.lost()
        first = result.first_ack_after(report.started_at)
        errors = sum(1 for e in result.events if not e.ok and e.at >= report.started_at)
        print("\nWhat the bare driver saw (reconnecting through the cluster endpoint name):")
        print(f"  writes acknowledged:          {len(result.acknowledged)}")
        print(f"  acknowledged writes lost:     {len(lost)}")
        print(f"  errors during the failover:   {errors}")
        print(f"  connections opened:           {result.connects}")
        if first is None:
            print("  no write succeeded after the fault within the wait")
        else:
            gap = first - report.started_at
            print(f"  write unavailability:         {gap:.2f}s (fault to first write)")
            print(
                f"  new writer ready -> 1st write: {first - report.writable_at:.2f}s "
                f"(stale DNS kept it from the new writer)"
            )
        return 1 if lost else 0
    finally:
        print("\nTearing the lab down ...", end=" ", flush=True)
        lab.down()
        print("done.")
