"""The ledger check (aurora_smartdriver.lab._ledger) through failovers: applications that obey
the library never lose an acknowledged write and never apply one twice."""

from __future__ import annotations

import time

from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._ledger import Ledger


def test_obedient_writers_lose_nothing_and_apply_nothing_twice(aurora_lab: Lab) -> None:
    ledger = Ledger(
        aurora_lab.dsn, aurora_lab.state().engine, fast_refresh_interval="0.05s"
    ).start()
    try:
        time.sleep(1.0)
        aurora_lab.failover()
        time.sleep(1.5)
        aurora_lab.hang(aurora_lab.writer.id)
        time.sleep(0.3)
        aurora_lab.failover()  # the hung writer is killed with statements in flight
        time.sleep(1.5)
    finally:
        report = ledger.stop()
    print(report)
    assert report.ok, (report, report.lost[:5], report.twice[:5], report.phantom[:5])
    assert report.acknowledged > 100
    assert report.errors == 0, report.error_samples
