"""The README's main command ends in `aurora-smartdriver demo`: it must run and tell the story.

The end-to-end runs start real lab clusters; the pure parts (bucketing, progress lines, gaps)
are checked exhaustively with hypothesis. No timing is asserted.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aurora_smartdriver import _demo
from aurora_smartdriver._demo import (
    Counts,
    Timeline,
    bucket,
    default_png_path,
    first_after,
    plot_timeline,
    progress_line,
    write_gap,
)
from aurora_smartdriver.lab import FailoverReport, Lab

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def own_tmpdir() -> Iterator[Path]:
    """A temporary directory of the test's own for the demo's lab (so the residue check sees
    only it); servers running as another account must be able to enter it."""
    # Directly under /tmp: a lab's Unix socket paths must stay short (the suite's own TMPDIR
    # is already a level deep).
    path = Path(tempfile.mkdtemp(prefix="asd-demo-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(tmpdir: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmpdir)}


def _residue(tmpdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aurora_smartdriver", "lab", "residue"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=_env(tmpdir),
    )


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["postgresql", "mariadb"])
def test_demo_fails_over_and_reports_both_clients(engine: str, own_tmpdir: Path) -> None:
    png = own_tmpdir / "plots" / f"{engine}.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aurora_smartdriver",
            "demo",
            "--engine",
            engine,
            "--dns-lag",
            "2",
            "--png",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=_env(own_tmpdir),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    progress = [line for line in out.splitlines() if " w/s " in line and "| bare" in line]
    assert len(progress) >= 6, out  # warm-up, fault, DNS flip: one line per half second
    assert any("kill -9 the writer" in line for line in progress), out
    assert any("promoted" in line for line in progress), out
    lost = next(line for line in out.splitlines() if "acknowledged writes lost" in line)
    assert lost.split()[-2:] == ["0", "0"]
    for row in ("write unavailability", "read errors seen", "connections opened"):
        assert row in out
    assert f"Timeline plot: {png}" in out
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert "Tearing the lab down ... done." in out
    assert _residue(own_tmpdir).returncode == 0


def test_ctrl_c_tears_the_lab_down(own_tmpdir: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "aurora_smartdriver", "demo", "--no-png", "--dns-lag", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(own_tmpdir),
    )
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # wait until the load runs and the failover has happened
            seen.append(line)
            if "promoted" in line or time.monotonic() > deadline:
                break
        assert any("promoted" in line for line in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert "Interrupted." in out
    assert "Tearing the lab down ... done." in out
    assert "Traceback" not in out
    residue = _residue(own_tmpdir)
    assert residue.returncode == 0, residue.stdout + residue.stderr


def test_without_matplotlib_the_demo_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert not _demo.matplotlib_available()

    class Stop(Exception):
        pass

    def no_lab(*args: object, **kwargs: object) -> None:
        raise Stop

    monkeypatch.setattr(Lab, "start", no_lab)
    with pytest.raises(Stop):
        _demo.run_demo()
    assert "pip install 'aurora-smartdriver[demo]'" in capsys.readouterr().err


# -- pure parts ------------------------------------------------------------------------------

times_st = st.lists(st.floats(-50, 50, allow_nan=False), max_size=200)
start_st = st.floats(-20, 20, allow_nan=False)
span_st = st.floats(0.001, 30, allow_nan=False)
width_st = st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0])


@given(times_st, start_st, span_st, width_st)
def test_bucket_counts_every_time_in_range_once(
    times: list[float], start: float, span: float, width: float
) -> None:
    end = start + span
    counts = bucket(times, start, end, width)
    assert len(counts) == max(1, math.ceil((end - start) / width))
    assert sum(counts) == sum(1 for t in times if start <= t < end)
    assert all(c >= 0 for c in counts)


@given(st.floats(-20, 20, allow_nan=False), start_st, span_st, width_st)
def test_bucket_puts_a_time_in_its_interval(
    t: float, start: float, span: float, width: float
) -> None:
    end = start + span
    counts = bucket([t], start, end, width)
    if not start <= t < end:
        assert sum(counts) == 0
        return
    (index,) = [i for i, c in enumerate(counts) if c]
    eps = 1e-9 * max(1.0, abs(start), abs(t))
    assert start + index * width <= t + eps
    assert t < start + (index + 1) * width + eps


@given(times_st, times_st, start_st, span_st, width_st)
def test_bucket_is_additive(
    a: list[float], b: list[float], start: float, span: float, width: float
) -> None:
    end = start + span
    both = bucket(a + b, start, end, width)
    assert both == [
        x + y
        for x, y in zip(bucket(a, start, end, width), bucket(b, start, end, width), strict=True)
    ]


@given(times_st, start_st, st.floats(-30, 0, allow_nan=False))
def test_bucket_of_an_empty_span_is_empty(times: list[float], start: float, back: float) -> None:
    assert bucket(times, start, start + back) == []


def test_bucket_refuses_a_non_positive_width() -> None:
    with pytest.raises(ValueError, match="width"):
        bucket([1.0], 0.0, 1.0, 0.0)


def test_bucket_example() -> None:
    assert bucket([0.0, 0.05, 0.1, 0.25, 0.3, 9.0], 0.0, 0.3) == [2, 1, 1]


@given(
    st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=50),
    st.floats(0, 100, allow_nan=False),
)
def test_write_gap_covers_the_fault_to_the_end(times: list[float], fault: float) -> None:
    end = 101.0
    gap = write_gap(times, fault, end)
    after = sorted(t for t in times if t >= fault)
    assert gap >= (after[0] if after else end) - fault - 1e-9
    assert gap <= end - min([*times, fault]) + 1e-9


def test_first_after() -> None:
    assert first_after([1.0, 2.5, 4.0], 2.0) == pytest.approx(0.5)
    assert first_after([1.0], 2.0) is None


def test_progress_line_gives_rates_per_second_and_errors_per_interval() -> None:
    before = Counts(writes=100, reads=200, bare_writes=50)
    now = Counts(
        writes=150, write_errors=2, reads=300, read_errors=1, bare_writes=50, bare_errors=7
    )
    line = progress_line(1.5, before, now, 0.5, "kill -9 the writer")
    assert "+1.5s" in line
    assert "library   100 w/s   200 r/s    3 err" in line
    assert "bare     0 w/s    7 err" in line
    assert line.endswith("<- kill -9 the writer")
    assert "<-" not in progress_line(0.0, now, now, 0.5, "")


def test_markers_and_default_path() -> None:
    report = FailoverReport("a", "b", "crash", 10.0, 10.2, 10.3, 10.4, 15.3)
    labels = _demo.failover_markers(report, 10.0)
    assert [round(at, 2) for _, at in labels] == [0.0, 0.2, 5.3]
    assert "b promoted" in labels[1][0]
    path = default_png_path("mariadb", datetime(2024, 5, 6, 7, 8, 9), "/somewhere")
    assert path == Path("/somewhere/aurora-smartdriver-demo-mariadb-20240506-070809.png")


def test_plot_timeline_writes_a_png(tmp_path: Path) -> None:
    series = {
        "library writes": [10, 12, 0, 11],
        "library reads": [20, 21, 19, 20],
        "bare driver writes": [9, 0, 0, 10],
        "library errors": [0, 1, 0, 0],
        "bare driver errors": [0, 4, 4, 0],
    }
    timeline = Timeline(
        start=99.8,
        width=0.1,
        series=series,
        markers=[("writer killed", 0.0), ("promoted", 0.1)],
        fault=100.0,
        title="test",
    )
    path = plot_timeline(timeline, tmp_path / "sub" / "t.png")
    assert path.read_bytes().startswith(PNG_MAGIC)
