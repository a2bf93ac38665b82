"""bench/pool_bench.py's tables from made-up rounds: medians, in-round ratios, their range."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import pool_bench


def _result() -> pool_bench.PoolResult:
    # Three rounds; the library's rate doubles each round's psycopg_pool + reset.
    theirs = {1: (100.0, 50.0, 200.0), 4: (80.0, 40.0, 160.0)}
    runs: dict[tuple[str, int], tuple[float, ...]] = {}
    for threads, rounds in theirs.items():
        for name in (*pool_bench.API, *pool_bench.LAYER):
            runs[name, threads] = rounds
        runs[pool_bench.CLUSTER, threads] = tuple(2 * r for r in rounds)
        runs[pool_bench.HOSTPOOL, threads] = tuple(3 * r for r in rounds)
    cpu = {key: tuple(r / 10 for r in rounds) for key, rounds in runs.items()}
    cpu[pool_bench.CLUSTER, 4] = (8.0, 8.0, 8.0)  # a loaded machine: not the wall ratio
    best = {key: max(rounds) for key, rounds in runs.items()}
    return pool_bench.PoolResult(4, 3, 0.5, best, runs, cpu, (1.5, 2.5))


def test_rates_are_medians_and_ratios_are_medians_of_in_round_ratios() -> None:
    text = pool_bench.markdown(_result())
    assert "| 1 | 200 | 100 | 100 | 100 | 2.00x | 2.00-2.00 | 2.00x |" in text
    assert "| 4 | 240 | 80 | 80 | 3.00x | 3.00x | 3.00-3.00 |" in text  # the layer alone
    assert "Load average 1.5 before and 2.5 after" in text


def test_ratios_per_cpu_second_come_from_the_cpu_rounds() -> None:
    text = pool_bench.markdown(_result())
    cpu_table = text[text.index("per second of the process's CPU time") :]
    assert "| 1 | 2.00x | 2.00x | 2.00x | 3.00x | 3.00x |" in cpu_table
    assert "| 4 | 1.00x | 1.00x | 1.00x | 3.00x | 3.00x |" in cpu_table  # median of 8/8, 8/4, 8/16


def test_a_result_with_the_pool_layer_alone_prints_its_table_only() -> None:
    best = {
        (name, threads): rate
        for threads in (1, 4, 16, 64)
        for name, rate in (("HostPool", 300.0), ("psycopg_pool", 100.0), ("QueuePool", 50.0))
    }
    text = pool_bench.markdown(pool_bench.PoolResult(4, 1, 0.5, best))
    assert "| 64 | 300 | 100 | 50 | 3.00x | 6.00x | 3.00-3.00 |" in text
    assert "Cluster.writer()" not in text
