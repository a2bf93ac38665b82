"""Start-up, failover and tear-down times of the lab, per engine (medians over several runs).

    .venv/bin/python bench/lab_times.py [--runs 3] [--engines postgresql,mariadb]

Prints a table; nothing is asserted (the machine is shared). Targets: up < 5 s, failover < 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

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


@dataclass(frozen=True)
class LabTimesResult:
    replicas: int
    runs: dict[str, list[dict[str, float]]]  # engine -> one measurement per run


def run(
    engines: tuple[str, ...] = ("postgresql", "mariadb"), replicas: int = 2, runs: int = 3
) -> LabTimesResult:
    return LabTimesResult(
        replicas, {engine: [measure(engine, replicas) for _ in range(runs)] for engine in engines}
    )


def markdown(result: LabTimesResult) -> str:
    count = max((len(r) for r in result.runs.values()), default=0)
    lines = [
        f"Lab with {result.replicas} replicas, median of {count} runs; failover = crash the "
        "writer, promote, repoint, publish; acked/lost = bare-driver writes during it.",
        "",
        "| engine | up | failover | promote | down | acked | lost |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for engine, runs in result.runs.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        lines.append(
            f"| {engine} | {med('up_s'):.2f} s | {med('failover_s'):.2f} s | "
            f"{med('promote_s'):.2f} s | {med('down_s'):.2f} s | "
            f"{int(sum(r['acknowledged'] for r in runs))} | {int(sum(r['lost'] for r in runs))} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--engines", default="postgresql,mariadb")
    args = parser.parse_args()
    engines = tuple(e for e in args.engines.split(",") if e)
    print(markdown(run(engines, args.replicas, args.runs)))


if __name__ == "__main__":
    main()
