"""The lab from the command line and from other processes; and that it always cleans up."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from aurora_smartdriver.cli import _print_nodes, build_parser
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._cluster import FailoverReport


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aurora_smartdriver", "lab", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


def test_lab_up_status_failover_down_from_other_processes() -> None:
    up = json.loads(_cli("up", "--engine", "postgresql", "--replicas", "1", "--json").stdout)
    state = up["state"]
    try:
        assert up["dsn"].startswith("postgresql://app:")
        assert f"dns_server={up['dns']['address']}:{up['dns']['port']}" in up["dsn"]
        assert {n["role"] for n in up["nodes"]} == {"writer", "reader"}
        for node in up["nodes"]:
            assert {"id", "address", "port", "role"} <= node.keys()
        writer = next(n for n in up["nodes"] if n["role"] == "writer")
        with psycopg.connect(
            host=writer["address"],
            port=writer["port"],
            user=up["user"],
            password=up["password"],
            dbname=up["database"],
        ) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)

        status = json.loads(_cli("status", "--state", state, "--json").stdout)
        assert [n["id"] for n in status["nodes"]] == [n["id"] for n in up["nodes"]]

        reader = next(n for n in up["nodes"] if n["role"] == "reader")
        lagged = json.loads(_cli("lag", "--state", state, reader["id"], "0.25", "--json").stdout)
        assert {n["id"]: n["lag"] for n in lagged["nodes"]} == {writer["id"]: 0, reader["id"]: 0.25}
        refused = _cli("lag", "--state", state, writer["id"], "1", check=False)
        assert refused.returncode != 0 and "only a replica can lag" in refused.stderr

        failover = json.loads(_cli("failover", "--state", state, "--json").stdout)
        assert failover["old_writer"] == writer["id"]
        roles = {n["id"]: n["role"] for n in failover["nodes"]}
        assert roles[failover["new_writer"]] == "writer"
        assert all(n["lag"] == 0 for n in failover["nodes"])  # a failover ends the fault
        assert Lab.attach(state).writer.id == failover["new_writer"]
    finally:
        _cli("down", "--state", state)
    assert not Path(state).parent.exists()


def test_status_of_a_missing_lab_is_a_clear_error(tmp_path: Path) -> None:
    done = _cli("status", "--state", str(tmp_path / "nope.json"), check=False)
    assert done.returncode == 1
    assert "no lab state file" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_node_is_a_clear_error() -> None:
    up = json.loads(_cli("up", "--engine", "postgresql", "--replicas", "0", "--json").stdout)
    try:
        done = _cli("crash", "--state", up["state"], "no-such-node", check=False)
        assert done.returncode == 1
        assert "no node 'no-such-node'" in done.stderr
        # The message as written, not a KeyError's repr in quotes.
        assert done.stderr.startswith("aurora-smartdriver: error: no node 'no-such-node' in lab")
        assert done.stderr.rstrip().endswith(")")
    finally:
        _cli("down", "--state", up["state"])


def test_a_killed_owner_leaves_nothing_behind(tmp_path: Path) -> None:
    script = (
        "import os, signal, sys\n"
        "from aurora_smartdriver import lab\n"
        "cluster = lab.start('postgresql', replicas=1)\n"
        "print(cluster.state_path, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    state = Path(proc.stdout.strip())
    assert state.name == "state.json", proc.stderr
    pids = [n.pid for n in Lab.attach(state).nodes] if state.exists() else []
    deadline = time.monotonic() + 30
    while state.parent.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not state.parent.exists(), "the supervisor did not tear the orphaned lab down"
    for pid in pids:
        assert pid is None or not Path(f"/proc/{pid}").exists() or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_context_manager_tears_down_on_error(engine: str) -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab.start(engine, replicas=0) as lab:
        directory = Path(lab.state().dir)
        raise RuntimeError("boom")
    assert not directory.exists()


def test_no_lab_residue_after_tear_down() -> None:
    lab = Lab.start("postgresql", replicas=0)
    directory = lab.state().dir
    lab.down()
    from aurora_smartdriver.lab import residue

    assert not [line for line in residue() if directory in line]
    assert os.path.exists(directory) is False


def _options(*path: str) -> list[argparse.Action]:
    parser: argparse.ArgumentParser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return [a for a in parser._actions if a.option_strings and a.dest not in ("help", "json")]


@pytest.mark.parametrize("command", ["up", "failover"])
def test_lab_options_say_what_they_do_their_default_and_unit(command: str) -> None:
    for action in _options("lab", command):
        name = action.option_strings[0]
        assert action.help, f"{name} has no help text"
        if action.default not in (None, False) or action.dest in ("dns_lag", "to"):
            assert "default" in action.help, f"{name} does not say its default"
        if action.dest in ("dns_ttl", "dns_lag"):
            assert "seconds" in action.help, f"{name} does not say its unit"


def test_lab_help_shows_the_defaults() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aurora_smartdriver", "lab", "up", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(done.stdout.split())
    assert "(default: 2)" in text  # --replicas
    assert "(default: 5)" in text  # --dns-ttl


def test_lab_status_columns_stay_apart_with_long_values(capsys: pytest.CaptureFixture[str]) -> None:
    nodes = [
        {
            "id": "orders-production-instance-1",
            "role": "writer",
            "status": "running",
            "address": "127.0.0.111",
            "port": 15432,
            "host": "orders-production-instance-1.abc.lab.aurora.test",
        },
        {
            "id": "r2",
            "role": "reader",
            "status": "partitioned-long",
            "address": "127.0.0.12",
            "port": 5432,
            "host": "r2.abc.lab.aurora.test",
            "partitioned": True,
        },
    ]
    _print_nodes(nodes)
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[0], lines[1:]
    assert header.split() == ["id", "role", "status", "address", "host"]
    starts = [header.index(word) for word in ("role", "status", "address", "host")]
    for row, node in zip(rows, nodes, strict=True):
        fields = row.split()
        assert fields[:5] == [
            node["id"],
            node["role"],
            node["status"],
            f"{node['address']}:{node['port']}",
            node["host"],
        ]
        for start in starts:  # every column starts where its heading does, after a blank
            assert row[start - 1] == " " and row[start] != " "


def test_failover_report_json_keys_are_its_attribute_names() -> None:
    report = FailoverReport("a", "b", "crash", 100.0, 101.0, 101.5, 102.25, 103.0)
    doc = report.to_json()
    for key, value in doc.items():
        assert getattr(report, key) == pytest.approx(value), key
    assert doc["duration_s"] == pytest.approx(2.25)
    assert report.duration == report.duration_s  # the older name still works
