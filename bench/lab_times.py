"""Start-up, failover and tear-down times of the lab, per engine (medians over several runs).

    .venv/bin/python bench/lab_times.py [--runs 3] [--engines postgresql,mariadb]

Prints a table; nothing is asserted (the machine is shared). Targets: up < 5 s, failover < 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import time

from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._workload import WriteLoad


def measure(engine: str, replicas: int) -> dict[str, float]:
    started = time.monotonic()
    lab = Lab.start(engine, replicas=replicas)
    up = time.monotonic() - started
    try:
        load = WriteLoad(lab, threads=4).start()
        time.sleep(1.0)
        report = lab.failover()
        deadline = time.time() + 15
        while load.result.first_ack_after(report.completed_at) is None and time.time() < deadline:
            time.sleep(0.02)
        load.stop()
        lost = len(load.lost())
        acked = len(load.result.acknowledged)
    finally:
        started = time.monotonic()
        lab.down()
        down = time.monotonic() - started
    return {
        "up_s": up,
        "failover_s": report.duration,
        "promote_s": report.promoted_at - report.started_at,
        "down_s": down,
        "acknowledged": acked,
        "lost": lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--engines", default="postgresql,mariadb")
    args = parser.parse_args()
    print(f"lab timings, {args.replicas} replicas, median of {args.runs} runs")
    print(f"{'engine':<11} {'up':>7} {'failover':>9} {'promote':>8}", end="")
    print(f" {'down':>7} {'acked':>7} {'lost':>5}")
    for engine in args.engines.split(","):
        runs = [measure(engine, args.replicas) for _ in range(args.runs)]

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"{engine:<11} {med('up_s'):>6.2f}s {med('failover_s'):>8.2f}s"
            f" {med('promote_s'):>7.2f}s"
            f" {med('down_s'):>6.2f}s {int(sum(r['acknowledged'] for r in runs)):>7}"
            f" {int(sum(r['lost'] for r in runs)):>5}"
        )


if __name__ == "__main__":
    main()
