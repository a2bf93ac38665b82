"""The README's main command ends in `aurora-smartdriver demo`: it must run and tell the story."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_demo_fails_over_and_reports_both_clients(engine: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aurora_smartdriver", "demo", "--engine", engine, "--dns-lag", "2"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "Failing over" in out
    lost = next(line for line in out.splitlines() if "acknowledged writes lost" in line)
    assert lost.split()[-2:] == ["0", "0"]
    assert "Tearing the lab down ... done." in out
