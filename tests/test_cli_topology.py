"""`aurora-smartdriver topology` and `watch` against the lab."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from aurora_smartdriver.lab import Lab


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aurora_smartdriver", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_topology_json_matches_the_lab(aurora_lab: Lab) -> None:
    done = _run("topology", aurora_lab.dsn, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["writer"]["id"] == aurora_lab.writer.id
    assert doc["writer"]["host"] == aurora_lab.writer.host
    assert sorted(r["id"] for r in doc["readers"]) == sorted(r.id for r in aurora_lab.readers)
    for row in [doc["writer"], *doc["readers"]]:
        assert {"id", "host", "port", "lag_ms"} <= row.keys()
    assert doc["source"].startswith("aurora-")
    assert doc["version"] >= 1


def test_topology_table_names_every_instance(aurora_lab: Lab) -> None:
    done = _run("topology", aurora_lab.dsn)
    assert done.returncode == 0, done.stderr
    for node in aurora_lab.nodes:
        assert node.id in done.stdout


def test_topology_of_a_bad_dsn_is_a_clear_error_without_the_password(aurora_lab: Lab) -> None:
    password = aurora_lab.state().password
    done = _run("topology", aurora_lab.dsn + "&pool_max_sise=3")
    assert done.returncode == 1
    assert "did you mean 'pool_max_size'" in done.stderr
    assert password not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_watch_prints_the_failover(aurora_lab: Lab) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aurora_smartdriver",
            "watch",
            aurora_lab.dsn + "&refresh_interval=0.5s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert aurora_lab.writer.id in first
        report = aurora_lab.failover()
        deadline = time.monotonic() + 20
        line = ""
        while time.monotonic() < deadline and "writer changed" not in line:
            line = proc.stdout.readline()
        assert f"writer {report.new_writer}" in line
        assert "writer changed" in line
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "soon"])
def test_watch_refuses_an_interval_that_is_not_above_zero(interval: str) -> None:
    done = _run("watch", "postgresql://app@127.0.0.1:1/app", "--interval", interval)
    assert done.returncode == 2
    assert "--interval" in done.stderr
    assert "Traceback" not in done.stderr
    assert "seconds" in done.stderr


def test_watch_refuses_a_count_below_one() -> None:
    done = _run("watch", "postgresql://app@127.0.0.1:1/app", "--count", "0")
    assert done.returncode == 2
    assert "--count" in done.stderr
    assert "Traceback" not in done.stderr


TOPOLOGY_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} v\d+ writer ", re.MULTILINE)


def test_watch_prints_a_topology_line_only_when_what_it_shows_changes(aurora_lab: Lab) -> None:
    """The lab's lag and CPU figures move every second, making new topology versions; the
    writer and readers do not change, so one line is printed, not one per version."""
    done = _run(
        "watch",
        aurora_lab.dsn + "&refresh_interval=0.3s",
        "--interval",
        "4",
        "--count",
        "1",
    )
    assert done.returncode == 0, done.stderr
    lines = TOPOLOGY_LINE.findall(done.stdout)
    assert len(lines) == 1, done.stdout
