"""``aurora-smartdriver demo``: a lab cluster failing over under a write load, as it happens.

The demo starts a lab cluster, runs writers and readers through the library and, beside them,
writers through the bare driver reconnecting via the cluster endpoint name; it fails the writer
over while the endpoint's DNS still names the dead writer, prints one progress line per interval
(throughput and errors of both), a summary table, and saves a timeline plot (PNG).

The deciding parts are pure functions (:func:`bucket`, :func:`progress_line`, :func:`write_gap`,
:func:`timeline_series`); the rest does I/O and stays thin.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aurora_smartdriver as asd
from aurora_smartdriver.lab import FailoverReport, Lab
from aurora_smartdriver.lab._workload import TABLE, WriteLoad, WriteLoadResult

MATPLOTLIB_HINT = (
    "the timeline plot needs matplotlib: pip install 'aurora-smartdriver[demo]' "
    "(or run the demo with --no-png)"
)
BUCKET_S = 0.1  # the plot's resolution: requests per 100 ms


@dataclass
class _Outcomes:
    """What the library's clients saw, with wall-clock times."""

    acked: list[str] = field(default_factory=list)
    write_ok_at: list[float] = field(default_factory=list)
    write_err_at: list[float] = field(default_factory=list)
    read_ok_at: list[float] = field(default_factory=list)
    read_err_at: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def write_errors(self) -> int:
        return len(self.write_err_at)

    @property
    def read_ok(self) -> int:
        return len(self.read_ok_at)

    @property
    def read_errors(self) -> int:
        return len(self.read_err_at)

    @property
    def read_errors_on_readers(self) -> int:  # kept for callers of the earlier shape
        return self.read_errors


class LibraryLoad:
    """Writers and readers through ``Cluster``: what an application using the library does."""

    def __init__(self, lab: Lab, writers: int = 4, readers: int = 4) -> None:
        self.cluster = asd.Cluster(
            lab.dsn, cluster_id=uuid.uuid4().hex, fast_refresh_interval="0.05s", pool_max_size=8
        )
        self.out = _Outcomes()
        self.stop = threading.Event()
        self.prefix = uuid.uuid4().hex[:12]
        self.threads = [
            threading.Thread(target=self._write, args=(i,), daemon=True) for i in range(writers)
        ] + [threading.Thread(target=self._read, daemon=True) for _ in range(readers)]

    def _write(self, client: int) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            row = f"{self.prefix}-{client}-{seq}"
            try:
                with self.cluster.writer() as conn:
                    conn.cursor().execute(
                        f"INSERT INTO {TABLE} (id, client) VALUES (%s, %s)", (row, client)
                    )
                with self.out.lock:
                    self.out.acked.append(row)
                    self.out.write_ok_at.append(time.time())
            except Exception:
                with self.out.lock:
                    self.out.write_err_at.append(time.time())
                self.stop.wait(0.01)
            self.stop.wait(0.002)

    def _read(self) -> None:
        while not self.stop.is_set():
            try:
                with self.cluster.reader() as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT 1")
                    cur.fetchall()
                with self.out.lock:
                    self.out.read_ok_at.append(time.time())
            except Exception:
                with self.out.lock:
                    self.out.read_err_at.append(time.time())
                self.stop.wait(0.01)
            self.stop.wait(0.002)

    def start(self) -> LibraryLoad:
        for t in self.threads:
            t.start()
        return self

    def finish(self, timeout: float = 30.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def pool_figures(self) -> tuple[int, int]:
        stats = self.cluster.stats()["pools"].values()
        opened = sum(s.opened for s in stats)
        peak = max((s.max_concurrent_connecting_seen for s in stats), default=0)
        return opened, peak


# -- pure parts ------------------------------------------------------------------------------


def bucket(times: Sequence[float], start: float, end: float, width: float = BUCKET_S) -> list[int]:
    """Count ``times`` per interval of ``width`` seconds from ``start`` to ``end``.

    Interval ``i`` is ``[start + i*width, start + (i+1)*width)``; there are
    ``ceil((end - start) / width)`` of them (none when ``end <= start``), the last one cut at
    ``end``. Times outside ``[start, end)`` are not counted.
    """
    if width <= 0:
        raise ValueError(f"width must be positive, not {width}")
    if end <= start:
        return []
    counts = [0] * max(1, math.ceil((end - start) / width))
    last = len(counts) - 1
    for t in times:
        if start <= t < end:
            counts[min(last, int((t - start) // width))] += 1
    return counts


def write_gap(times: list[float], fault: float, end: float) -> float:
    """The longest stretch without an acknowledged write between the fault and ``end``."""
    ordered = sorted(times)
    before = [t for t in ordered if t < fault]
    marks = [before[-1] if before else fault, *(t for t in ordered if t >= fault), end]
    return max(b - a for a, b in itertools.pairwise(marks))


def first_after(times: Sequence[float], moment: float) -> float | None:
    """Seconds from ``moment`` to the first of ``times`` at or after it (None: there is none)."""
    return min((t - moment for t in times if t >= moment), default=None)


@dataclass(frozen=True, slots=True)
class Counts:
    """Running totals of both clients at one instant."""

    writes: int = 0
    write_errors: int = 0
    reads: int = 0
    read_errors: int = 0
    bare_writes: int = 0
    bare_errors: int = 0


def progress_line(elapsed: float, before: Counts, now: Counts, interval: float, note: str) -> str:
    """One progress line: throughput (per second) and errors in the interval that just ended."""

    def rate(a: int, b: int) -> int:
        return round((b - a) / interval) if interval > 0 else 0

    errors = now.write_errors - before.write_errors + now.read_errors - before.read_errors
    line = (
        f"  {elapsed:+6.1f}s  library {rate(before.writes, now.writes):>5} w/s "
        f"{rate(before.reads, now.reads):>5} r/s {errors:>4} err | "
        f"bare {rate(before.bare_writes, now.bare_writes):>5} w/s "
        f"{now.bare_errors - before.bare_errors:>4} err"
    )
    return f"{line}  <- {note}" if note else line


@dataclass(frozen=True, slots=True)
class Timeline:
    """What the plot shows: per-interval counts from ``start``, and marked instants."""

    start: float
    width: float
    series: dict[str, list[int]]
    markers: list[tuple[str, float]]  # label, seconds relative to the fault
    fault: float
    title: str


def timeline_series(
    lib: _Outcomes,
    bare: WriteLoadResult,
    start: float,
    end: float,
    width: float = BUCKET_S,
) -> dict[str, list[int]]:
    """The plotted series: requests and errors of both clients per ``width`` seconds."""
    bare_ok = [e.at for e in bare.events if e.ok]
    bare_err = [e.at for e in bare.events if not e.ok]
    return {
        "library writes": bucket(lib.write_ok_at, start, end, width),
        "library reads": bucket(lib.read_ok_at, start, end, width),
        "bare driver writes": bucket(bare_ok, start, end, width),
        "library errors": bucket([*lib.write_err_at, *lib.read_err_at], start, end, width),
        "bare driver errors": bucket(bare_err, start, end, width),
    }


def failover_markers(report: FailoverReport, fault: float) -> list[tuple[str, float]]:
    """The instants the plot marks, relative to the fault: crash, promotion, DNS flip."""
    return [
        ("writer killed", report.started_at - fault),
        (f"{report.new_writer} promoted", report.promoted_at - fault),
        ("DNS names the new writer", report.dns_flip_at - fault),
    ]


def default_png_path(engine: str, now: datetime, directory: str | None = None) -> Path:
    """Where the plot goes by default: the temporary directory, named by engine and time."""
    folder = Path(directory if directory is not None else tempfile.gettempdir())
    return folder / f"aurora-smartdriver-demo-{engine}-{now:%Y%m%d-%H%M%S}.png"


# -- I/O -------------------------------------------------------------------------------------


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_timeline(timeline: Timeline, path: Path) -> Path:
    """Draw ``timeline`` into a PNG at ``path`` (matplotlib, Agg backend: no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max((len(v) for v in timeline.series.values()), default=0)
    xs = [timeline.start - timeline.fault + (i + 0.5) * timeline.width for i in range(n)]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    styles = {
        "library writes": ("tab:blue", "-"),
        "library reads": ("tab:cyan", "-"),
        "bare driver writes": ("tab:orange", "-"),
        "library errors": ("tab:blue", "-"),
        "bare driver errors": ("tab:orange", "-"),
    }
    for name, counts in timeline.series.items():
        color, style = styles.get(name, ("gray", "-"))
        axis = bottom if "errors" in name else top
        axis.step(xs, counts, where="mid", color=color, linestyle=style, label=name, lw=1.4)
    marker_styles = [("tab:red", "--"), ("tab:green", "--"), ("dimgray", ":")]
    for (label, at), (color, style) in zip(
        timeline.markers, itertools.cycle(marker_styles), strict=False
    ):
        top.axvline(at, color=color, linestyle=style, lw=1.3, label=f"{label} ({at:+.2f}s)")
        bottom.axvline(at, color=color, linestyle=style, lw=1.3)
    top.set_title(timeline.title)
    top.set_ylabel(f"requests per {timeline.width * 1000:.0f} ms")
    bottom.set_ylabel(f"errors per {timeline.width * 1000:.0f} ms")
    bottom.set_xlabel("seconds since the fault")
    peak = max(
        (max(v, default=0) for k, v in timeline.series.items() if "errors" not in k), default=0
    )
    top.set_ylim(0, max(1.0, peak) * 1.45)  # room for the legend above the curves
    errors = max(
        (max(v, default=0) for k, v in timeline.series.items() if "errors" in k), default=0
    )
    bottom.set_ylim(0, max(1.0, errors) * 1.5)
    top.legend(loc="upper center", ncol=3, fontsize=8)
    bottom.legend(loc="upper right", ncol=2, fontsize=8)
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _table(lab: Lab) -> str:
    lines = [f"    {'instance':<22} {'role':<7} {'status':<8} {'address':<21} endpoint"]
    for node in lab.nodes:
        lines.append(
            f"    {node.id:<22} {node.role:<7} {node.status:<8} "
            f"{node.address + ':' + str(node.port):<21} {node.host}"
        )
    return "\n".join(lines)


def _fmt(seconds: float | None) -> str:
    return "none yet" if seconds is None else f"{seconds:.2f}s"


def lost_writes(lab: Lab, acked: list[str]) -> int:
    present = {str(r[0]) for r in lab.execute(lab.writer.id, f"SELECT id FROM {TABLE}")}
    return sum(1 for row in acked if row not in present)


def _counts(ours: LibraryLoad, bare: WriteLoad) -> Counts:
    out, res = ours.out, bare.result
    with out.lock:
        lib = (len(out.write_ok_at), out.write_errors, out.read_ok, out.read_errors)
    acked, events = len(res.acknowledged), len(res.events)
    return Counts(*lib, bare_writes=acked, bare_errors=events - acked)


class _Failover(threading.Thread):
    """Runs ``lab.failover()`` off the main thread, so progress lines keep coming meanwhile."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(daemon=True, name="demo-failover")
        self.lab = lab
        self.report: FailoverReport | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.report = self.lab.failover()
        except BaseException as exc:
            self.error = exc


@dataclass
class _Run:
    """The state of one demo run, filled in as it goes."""

    fault: float = 0.0
    end: float = 0.0
    report: FailoverReport | None = None


def _watch(
    lab: Lab,
    ours: LibraryLoad,
    bare: WriteLoad,
    *,
    warmup: float,
    after: float,
    interval: float,
    run: _Run,
) -> None:
    """Print a progress line every ``interval``; fail over after ``warmup``; stop ``after``
    seconds past the fault (extended to cover the DNS flip)."""
    begin = time.time()
    previous = _counts(ours, bare)
    failover: _Failover | None = None
    flip_noted = False
    for tick in itertools.count(1):
        time.sleep(max(0.0, begin + tick * interval - time.time()))
        now, notes = time.time(), []
        if failover is None and now - begin >= warmup:
            run.fault = now
            failover = _Failover(lab)
            failover.start()
            notes.append("kill -9 the writer")
        if failover is not None and run.report is None and not failover.is_alive():
            if failover.error is not None:
                raise failover.error
            run.report = failover.report
            assert run.report is not None
            notes.append(
                f"{run.report.new_writer} promoted "
                f"(+{run.report.promoted_at - run.report.started_at:.2f}s)"
            )
        if run.report is not None and not flip_noted and now >= run.report.dns_flip_at:
            flip_noted = True
            notes.append("DNS now names the new writer")
        current = _counts(ours, bare)
        elapsed = now - (run.fault or begin + warmup)
        print(progress_line(elapsed, previous, current, interval, "; ".join(notes)), flush=True)
        previous = current
        if run.report is not None and now >= max(run.fault + after, run.report.dns_flip_at + 1):
            run.end = now
            return


def _summary(lab: Lab, ours: LibraryLoad, bare: WriteLoad, run: _Run) -> tuple[str, int]:
    assert run.report is not None
    bare_result = bare.result
    opened, peak = ours.pool_figures()
    bare_times = [e.at for e in bare_result.events if e.ok]
    lost = lost_writes(lab, ours.out.acked)
    rows = [
        ("acknowledged writes", str(len(ours.out.acked)), str(len(bare_result.acknowledged))),
        ("acknowledged writes lost", str(lost), str(len(bare.lost()))),
        (
            "write unavailability",
            f"{write_gap(ours.out.write_ok_at, run.fault, run.end):.2f}s",
            f"{write_gap(bare_times, run.fault, run.end):.2f}s",
        ),
        (
            "new writer ready -> 1st write",
            _fmt(first_after(ours.out.write_ok_at, run.report.writable_at)),
            _fmt(first_after(bare_times, run.report.writable_at)),
        ),
        ("write errors seen", str(ours.out.write_errors), str(bare_result.errors)),
        ("read errors seen", str(ours.out.read_errors), "-"),
        ("connections opened", str(opened), str(bare_result.connects)),
        ("most concurrent connects/host", str(peak), "-"),
    ]
    lines = [f"  {'':<30} {'aurora_smartdriver':>19} {'bare driver':>12}"]
    lines += [f"  {name:<30} {mine:>19} {theirs:>12}" for name, mine, theirs in rows]
    return "\n".join(lines), lost


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Ignore Ctrl-C for a moment (the lab's tear-down must not be cut short)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to guard
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_demo(
    engine: str = "postgresql",
    replicas: int = 2,
    dns_lag: float = 5.0,
    *,
    png: str | Path | None = None,
    plot: bool = True,
    interval: float = 0.5,
) -> int:
    """Start a lab, load it through the library and a bare driver side by side, fail it over
    while DNS lags, report both (progress, table, timeline PNG), and always tear the lab down.

    Returns 0, 1 when an acknowledged write was lost, 130 when interrupted.
    """
    # The library's own warnings (a host refusing connections during the failover) are the
    # story the table tells; keep them from interleaving with it, for the demo's length only.
    library = logging.getLogger("aurora_smartdriver")
    level = library.level
    library.setLevel(logging.ERROR)
    try:
        return _demo(engine, replicas, dns_lag, png=png, plot=plot, interval=interval)
    finally:
        library.setLevel(level)


def _demo(
    engine: str,
    replicas: int,
    dns_lag: float,
    *,
    png: str | Path | None,
    plot: bool,
    interval: float,
) -> int:
    if plot and not matplotlib_available():
        print(f"Note: {MATPLOTLIB_HINT}; continuing without the plot.", file=sys.stderr)
        plot = False
    label = "PostgreSQL" if engine == "postgresql" else "MariaDB"
    print(f"Starting a {label} lab cluster: 1 writer, {replicas} replicas ...", flush=True)
    started = time.monotonic()
    lab: Lab | None = None
    loads: list[LibraryLoad | WriteLoad] = []
    try:
        lab = Lab.start(engine, replicas=replicas, dns_lag=dns_lag)
        print(f"  up in {time.monotonic() - started:.2f}s")
        print(f"  cluster endpoint {lab.state().cluster_endpoint} (DNS {lab.dns[0]}:{lab.dns[1]})")
        print(_table(lab))
        ours = LibraryLoad(lab).start()
        loads.append(ours)
        bare = WriteLoad(lab, threads=4).start()
        loads.append(bare)
        print(
            "\nLoad: 4 writers + 4 readers through aurora_smartdriver, and beside them 4 writers "
            "through the bare driver reconnecting via the cluster endpoint name.\n"
            f"Failover after 2 s: kill -9 the writer, promote the most advanced replica; the "
            f"cluster endpoint's DNS follows {dns_lag:.1f}s later. One line per {interval:g}s "
            "(time relative to the fault):",
            flush=True,
        )
        run = _Run()
        load_start = time.time()
        _watch(lab, ours, bare, warmup=2.0, after=3.0, interval=interval, run=run)
        assert run.report is not None
        report = run.report
        ours.finish()
        bare.stop()
        loads.clear()
        print(
            f"\nFailed over {report.old_writer} -> {report.new_writer}: promoted after "
            f"{report.promoted_at - report.started_at:.2f}s, done in {report.duration:.2f}s"
        )
        print(_table(lab))
        table, lost = _summary(lab, ours, bare, run)
        ours.cluster.close()
        print("\n" + table)
        if plot:
            # Whole intervals only: the last, cut short when the load stopped, would dip.
            end = load_start + int((run.end - load_start) / BUCKET_S) * BUCKET_S
            timeline = Timeline(
                start=load_start,
                width=BUCKET_S,
                series=timeline_series(ours.out, bare.result, load_start, end),
                markers=failover_markers(report, run.fault),
                fault=run.fault,
                title=(
                    f"aurora_smartdriver vs bare driver: {label} writer failover, "
                    f"DNS {dns_lag:g}s stale"
                ),
            )
            path = Path(png) if png is not None else default_png_path(engine, datetime.now())
            print(f"\nTimeline plot: {plot_timeline(timeline, path)}")
        return 1 if lost else 0
    except KeyboardInterrupt:
        print("\nInterrupted.", flush=True)
        return 130
    finally:
        with _no_interrupts():
            _stop_loads(loads)
            if lab is not None:
                print("\nTearing the lab down ...", end=" ", flush=True)
                lab.down()
                print("done.", flush=True)


def _stop_loads(loads: list[LibraryLoad | WriteLoad]) -> None:
    for load in loads:
        with contextlib.suppress(Exception):
            if isinstance(load, LibraryLoad):
                load.finish(timeout=5.0)
                load.cluster.close()
            else:
                load.stop(timeout=5.0)
