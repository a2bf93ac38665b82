"""bench/report.py: its pure parts (the page, the machine facts, each section's table).

No benchmark runs here (they take minutes and their figures are not asserted anywhere);
``bench/report.py --quick`` is the short real run.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import create_engine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import chaos
import monitor_load
import overhead_bench
import pool_bench
import report
import source_failover
import storm
import wrapper_failover

from aurora_smartdriver.dsn import parse
from aurora_smartdriver.lab import FailoverReport


def test_quick_mode_is_shorter_in_every_respect() -> None:
    quick, full = report.Params.for_mode(True), report.Params.for_mode(False)
    for name in (
        "overhead_rounds",
        "overhead_per_round",
        "pool_seconds",
        "pool_rounds",
        "failover_runs",
        "storm_threads",
        "monitor_window",
        "chaos_runs",
        "lab_runs",
    ):
        assert getattr(quick, name) <= getattr(full, name), name
    assert set(quick.chaos_scenarios) <= set(full.chaos_scenarios) == set(chaos.SCENARIOS)


def test_cpu_model_from_cpuinfo() -> None:
    text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
    assert report.cpu_model(text) == "AMD EPYC 7B13"
    assert report.cpu_model("") != ""


def test_machine_names_the_versions() -> None:
    facts = report.machine()
    for key in ("CPUs", "CPU model", "Python", "psycopg", "PyMySQL", "PostgreSQL server"):
        assert facts[key]
    assert "aws-advanced-python-wrapper" in facts


def test_render_states_the_date_the_machine_and_that_it_is_shared() -> None:
    sections = [report.Section("pool", "Pool borrow + return", "| a |\n| --- |", 3.2)]
    page = report.render(
        sections, {"CPUs": "2"}, datetime(2025, 1, 2, 3, 4, tzinfo=UTC), quick=True
    )
    assert page.startswith("# Benchmarks\n")
    assert "2025-01-02 03:04 UTC" in page
    assert "--quick" in page
    assert "shared" in page
    assert "| CPUs | 2 |" in page
    assert "## Pool borrow + return" in page
    assert "(#pool-borrow--return)" in page
    assert "*(pool: 3 s)*" in page


def test_overhead_table() -> None:
    result = overhead_bench.OverheadResult(
        3,
        100,
        [
            overhead_bench.OverheadRow("psycopg", 30e-6, 31e-6, 60e-6),
            overhead_bench.OverheadRow("PyMySQL", 40e-6, 40e-6),
        ],
        "not installed",
    )
    text = overhead_bench.markdown(result)
    assert "| psycopg | 30.0 | 31.0 | +3.3 % | 60.0 | +100.0 % |" in text
    assert "| PyMySQL | 40.0 | 40.0 | +0.0 % | - | - |" in text


def test_pool_table() -> None:
    best = {
        (name, threads): rate
        for threads in (1, 4, 16)
        for name, rate in (("HostPool", 200.0), ("psycopg_pool", 100.0), ("QueuePool", 50.0))
    }
    text = pool_bench.markdown(pool_bench.PoolResult(4, 1, 0.5, best))
    assert "| 16 | 200 | 100 | 50 | 2.00x | 4.00x |" in text


def test_storm_counts_per_second_and_table() -> None:
    rep = FailoverReport("a", "b", "crash", 100.0, 100.2, 100.3, 100.4, 105.0)
    library = storm.Phase("library", 2, fault=100.0, end=103.0, report=rep)
    library.server_attempts = [100.1, 100.5, 101.2, 102.99, 103.5]
    library.ok_times = [[99.0, 100.4, 100.6], [100.1, 100.5]]
    library.pool_size_cap, library.peak_concurrent = 10, 4
    assert library.per_second(100.0, 103.0) == [2, 1, 1]
    bare = storm.Phase("bare", 2, fault=200.0, end=203.0, report=rep)
    bare.ok_times = [[205.0], [99.0]]
    text = storm.markdown(storm.StormResult(2, 5.0, 4, [library, bare]), "img/storm.png")
    assert "| library | 5 | 2 |" in text
    assert "0.20 s after writable" in text
    assert "1/2 back" in text
    assert "![connection attempts on the new writer](img/storm.png)" in text


def test_connection_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "1700000000.100 LOG:  connection received: host=127.0.0.1 port=1\n"
        "1700000000.200 LOG:  connection authorized: user=app\n"
        "garbage connection received\n"
        "1700000001.500 LOG:  connection received: host=127.0.0.1 port=2\n"
    )
    assert storm.received(log, 1700000000.150) == [pytest.approx(1700000001.5)]


def test_monitor_table() -> None:
    rows = [monitor_load.LoadRow("normal: 1 Cluster", 20.0, 6, 4, 1)]
    text = monitor_load.markdown(monitor_load.MonitorLoadResult(5.0, 0.1, rows))
    assert "| normal: 1 Cluster | 20.0 s | 6 | 4 | 0.20 | 1 |" in text


def test_failover_table_orders_clients_and_counts_misses() -> None:
    rows: dict[float, dict[str, list[float | None]]] = {
        5.0: {"bare psycopg": [5.0, None], "library": [0.1, 0.2]}
    }
    text = wrapper_failover.markdown(wrapper_failover.WrapperFailoverResult(2, "n/a", rows))
    assert "| DNS lag | library | bare psycopg |" in text
    assert "| 5 s | 0.15 s | 5.00 s (1 never) |" in text


def test_fault_table_puts_the_wrapper_beside_as_ratios_and_names_who_never_recovered() -> None:
    faults: wrapper_failover.FaultRows = {
        ("postgresql", "hang"): {
            "library": [(1.0, 0.1), (2.0, 0.2)],
            "aws wrapper": [(3.0, 2.0), (None, None)],
            "bare psycopg": [(6.0, 5.0), (6.0, 5.0)],
        },
        ("postgresql", "partition"): {
            "library": [(1.5, 0.4)],
            "aws wrapper": [(None, None)],
            "bare psycopg": [(None, None)],
        },
    }
    result = wrapper_failover.WrapperFailoverResult(2, "3.1.0", {}, faults, 5.0)
    text = wrapper_failover.markdown(result)
    assert (
        "| engine | fault | library | aws wrapper | bare driver | library / bare "
        "| library / aws wrapper | aws wrapper / bare |" in text
    )
    assert (
        "| postgresql | hang | 1.50 s (0.15 s) | 3.00 s (1 never) (2.00 s (1 never)) "
        "| 6.00 s (5.00 s) | 0.25 | 0.50 | 0.50 |" in text
    )
    assert (
        "| postgresql | partition | 1.50 s (0.40 s) | never (never) | never (never) "
        "| bare never recovered | aws wrapper never recovered | neither recovered |" in text
    )


def test_chaos_table() -> None:
    lib = chaos.Row(0, 0.2, 0.05, 1, 16, 4, twice=0, unknown=3, phantom=0)
    bare = chaos.Row(0, 5.1, 5.0, 0, 300, 0)
    result = chaos.ChaosResult(
        1, 2.0, [("postgresql", "writer crash", {"aurora": [(lib, bare)]})], []
    )
    text = chaos.markdown(result)
    row = (
        "| postgresql | writer crash | library | aurora | 0 | 0 | 3 | 0 | 0.20 s | 0.05 s "
        "| 1 | 16 | 4 |"
    )
    assert row in text
    assert (
        "| postgresql | writer crash | bare | - | 0 | - | - | - | 5.10 s | 5.00 s | - | 300 | - |"
        in text
    )


def test_chaos_table_has_a_row_per_source_and_one_bare_row_over_all_their_runs() -> None:
    fast = chaos.Row(0, 0.2, 0.1, 0, 16, 4, twice=0, unknown=1, phantom=0)
    slow = chaos.Row(1, 2.0, 0.9, 2, 20, 5, twice=0, unknown=0, phantom=0)
    bare = [chaos.Row(0, gap, gap, 0, 100, 0) for gap in (5.0, 6.0, 7.0)]
    by_source = {"probe": [(fast, bare[0])], "static": [(slow, bare[1]), (slow, bare[2])]}
    text = chaos.markdown(chaos.ChaosResult(2, 6.0, [("mariadb", "writer hang", by_source)], []))
    lines = [line for line in text.splitlines() if line.startswith("| mariadb | writer hang |")]
    assert [line.split(" | ", 2)[2] for line in lines] == [
        "library | probe | 0 | 0 | 1 | 0 | 0.20 s | 0.10 s | 0 | 16 | 4 |",
        "library | static | 2 | 0 | 0 | 0 | 2.00 s | 0.90 s | 2 | 20 | 5 |",
        "bare | - | 0 | - | - | - | 6.00 s | 6.00 s | - | 100 | - |",
    ]


def test_source_dsns_name_their_hosts_in_one_query_item() -> None:
    """connect() and the SQLAlchemy dialects (the ledger's writers) both read that form."""
    lab: Any = SimpleNamespace(
        dsn="postgresql://app:pw@c.lab.test:5432/app?dns_server=127.0.0.2:53",
        state=lambda: SimpleNamespace(
            engine="postgresql",
            user="app",
            password="p@ss/w?rd",
            database="app",
            port=5432,
            cluster_endpoint="c.lab.test",
            dns=SimpleNamespace(address="127.0.0.2", port=53),
        ),
        nodes=[SimpleNamespace(address=f"127.0.0.{i}", port=5432) for i in (11, 12, 13)],
    )
    lab.readers = lab.nodes[1:]
    assert source_failover.source_dsn(lab, "aurora") == lab.dsn
    probe = parse(source_failover.source_dsn(lab, "probe"))
    assert [h for h, _ in probe.hosts] == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    assert probe.settings.topology_source == "probe"
    assert probe.password == "p@ss/w?rd"
    static = source_failover.source_dsn(lab, "static")
    assert [h for h, _ in parse(static).hosts] == ["c.lab.test", "127.0.0.12", "127.0.0.13"]
    # As the ledger makes its SQLAlchemy engine: the same DSN, its settings appended.
    engine = create_engine(
        "postgresql+aurora_psycopg://" + static.split("://", 1)[1] + "&cluster_id=x"
    )
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    assert [h for h, _ in parse(args[0], **kwargs).hosts] == [
        "c.lab.test",
        "127.0.0.12",
        "127.0.0.13",
    ]
