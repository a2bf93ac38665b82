"""Connection storm: hundreds of threads lose their writer at once; who hammers the new one?

    .venv/bin/python bench/storm.py [--threads 200] [--dns-lag 5] [--after 12] [--png PATH]

A PostgreSQL lab; ``--threads`` threads each run ``SELECT 1`` every 50 ms on the writer, first
all through one library ``Cluster`` (its pools: ``pool_max_size``, ``max_concurrent_connects``
and backoff with jitter), then, on the restored lab, each through its own bare psycopg
connection reconnecting via the cluster endpoint name every 50 ms after an error (what an
application without the library does). Each phase kills the writer and promotes a chosen
replica while the endpoint's DNS lags. Connection attempts *against the new writer* are counted
by the server itself (``log_connections`` on that node: one ``connection received`` line per
TCP connection), per second; attempts the clients made anywhere are counted by the clients.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

import aurora_smartdriver as asd
from aurora_smartdriver.lab import FailoverReport, Lab, NodeInfo
from aurora_smartdriver.settings import Settings

THINK_S = 0.05


@dataclass
class Phase:
    client: str
    threads: int
    fault: float = 0.0
    end: float = 0.0
    report: FailoverReport | None = None
    server_attempts: list[float] = field(default_factory=list)  # times, on the new writer
    client_attempts: int = 0  # connection attempts the clients made, to any host
    errors: int = 0
    ok_times: list[list[float]] = field(default_factory=list)  # successes, per thread
    pool_size_cap: int | None = None
    peak_concurrent: int | None = None

    def back_after_writable(self) -> list[float]:
        """Per thread that got back: seconds from the new writer accepting writes to its first
        success from then on."""
        assert self.report is not None
        writable = self.report.writable_at
        firsts = [min((t for t in times if t >= writable), default=None) for times in self.ok_times]
        return [t - writable for t in firsts if t is not None]

    def per_second(self, start: float, end: float) -> list[int]:
        width = 1.0
        counts = [0] * max(1, math.ceil((end - start) / width))
        for t in self.server_attempts:
            if start <= t < end:
                counts[min(len(counts) - 1, int((t - start) // width))] += 1
        return counts


def connection_log(lab: Lab, node: NodeInfo) -> Path:
    """Turn on ``log_connections`` on ``node`` (epoch-stamped lines); returns its log file."""
    base = Path(lab.state().dir) / node.id
    with open(base / "data" / "node.conf", "a") as conf:
        conf.write("log_connections = on\nlog_line_prefix = '%n '\n")
    lab.execute(node.id, "SELECT pg_reload_conf()")
    return base / "server.log"


def received(log: Path, since: float) -> list[float]:
    """Times of the ``connection received`` lines in ``log`` at or after ``since``."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        if "connection received" in line:
            with contextlib.suppress(ValueError, IndexError):
                at = float(line.split(" ", 1)[0])
                if at >= since:
                    times.append(at)
    return times


class _Library:
    def __init__(self, lab: Lab) -> None:
        self.cluster = asd.Cluster(lab.dsn, cluster_id=uuid.uuid4().hex)

    def once(self, state: dict[str, Any]) -> None:
        with self.cluster.writer() as conn:
            conn.cursor().execute("SELECT 1")

    def attempts(self) -> int:
        stats = self.cluster.stats()["pools"].values()
        return sum(s.opened + s.connect_failures for s in stats)

    def close(self) -> None:
        self.cluster.close()


class _Bare:
    def __init__(self, lab: Lab) -> None:
        import dns.resolver

        self.lab = lab
        state = lab.state()
        self.kwargs: dict[str, Any] = {
            "port": state.port,
            "user": state.user,
            "password": state.password,
            "dbname": state.database,
            "connect_timeout": 2,
            "autocommit": True,
        }
        self.endpoint = state.cluster_endpoint
        address, port = lab.dns
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers, self.resolver.port, self.resolver.cache = [address], port, None
        self._attempts = 0
        self._lock = threading.Lock()

    def once(self, state: dict[str, Any]) -> None:
        conn = state.get("conn")
        if conn is None:
            with self._lock:
                self._attempts += 1
            host = str(self.resolver.resolve(self.endpoint, "A")[0])
            conn = state["conn"] = psycopg.connect(host=host, **self.kwargs)
        try:
            conn.execute("SELECT 1")
        except Exception:
            state["conn"] = None
            with contextlib.suppress(Exception):
                conn.close()
            raise

    def attempts(self) -> int:
        return self._attempts

    def close(self) -> None:
        pass


def _phase(lab: Lab, client: str, threads: int, dns_lag: float, after: float) -> Phase:
    phase = Phase(client, threads)
    target = lab.readers[0]
    log = connection_log(lab, target)
    contender: _Library | _Bare = _Library(lab) if client == "library" else _Bare(lab)
    stop = threading.Event()
    lock = threading.Lock()

    def work() -> None:
        state: dict[str, Any] = {}
        ok: list[float] = []
        with lock:
            phase.ok_times.append(ok)
        while not stop.is_set():
            try:
                contender.once(state)
                ok.append(time.time())
            except Exception:
                with lock:
                    phase.errors += 1
            stop.wait(THINK_S)
        conn = state.get("conn")
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    workers = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(2.0)
    before = contender.attempts()
    phase.fault = time.time()
    phase.report = lab.failover(to=target, dns_lag=dns_lag)
    time.sleep(max(0.0, phase.fault + after - time.time()))
    phase.end = time.time()
    phase.client_attempts = contender.attempts() - before
    if isinstance(contender, _Library):
        stats = contender.cluster.stats()["pools"].values()
        phase.peak_concurrent = max((s.max_concurrent_connecting_seen for s in stats), default=0)
        phase.pool_size_cap = contender.cluster.spec.settings.pool_max_size
    stop.set()
    for worker in workers:
        worker.join(10)
    contender.close()
    phase.server_attempts = [t for t in received(log, phase.fault) if t < phase.end]
    return phase


@dataclass(frozen=True)
class StormResult:
    threads: int
    dns_lag: float
    max_concurrent_connects: int
    phases: list[Phase]


def run(threads: int = 200, dns_lag: float = 5.0, after: float = 12.0) -> StormResult:
    logging.getLogger("aurora_smartdriver").setLevel(logging.CRITICAL)
    phases = []
    with Lab.start("postgresql", replicas=2, name="storm") as lab:
        for client in ("library", "bare"):
            lab.restore()
            phases.append(_phase(lab, client, threads, dns_lag, after))
    cap = Settings().max_concurrent_connects
    return StormResult(threads, dns_lag, cap, phases)


def markdown(result: StormResult, png: str | None = None) -> str:
    lines = [
        f"{result.threads} threads, each running `SELECT 1` on the writer every "
        f"{THINK_S * 1000:.0f} ms; kill -9 the writer, promote a replica, DNS lags "
        f"{result.dns_lag:g} s. Attempts on the new writer are counted by the new writer "
        "(`log_connections`), from the fault on.",
        "",
        "| client | attempts on new writer | peak per second | client attempts (any host) "
        "| errors seen | most concurrent connects/host | last thread back |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for phase in result.phases:
        assert phase.report is not None
        seconds = phase.per_second(phase.fault, phase.end)
        backs = phase.back_after_writable()
        back = (
            f"{max(backs):.2f} s after writable"
            if len(backs) == phase.threads
            else f"{len(backs)}/{phase.threads} back"
        )
        peak = "-" if phase.peak_concurrent is None else str(phase.peak_concurrent)
        lines.append(
            f"| {phase.client} | {len(phase.server_attempts)} | {max(seconds)} | "
            f"{phase.client_attempts} | {phase.errors} | {peak} | {back} |"
        )
    lines += ["", "Attempts on the new writer per second (second 0 starts at the fault):", ""]
    width = max(len(p.per_second(p.fault, p.end)) for p in result.phases)
    lines.append("| client | " + " | ".join(str(i) for i in range(width)) + " |")
    lines.append("| --- |" + " ---: |" * width)
    for phase in result.phases:
        counts = phase.per_second(phase.fault, phase.end)
        lines.append(f"| {phase.client} | " + " | ".join(str(c) for c in counts) + " |")
    library = result.phases[0]
    lines += [
        "",
        f"The library's pools allow `pool_max_size` = {library.pool_size_cap} connections per "
        f"host and at most `max_concurrent_connects` = {result.max_concurrent_connects} "
        "attempts in progress per host at a time, with backoff and jitter between failed ones.",
    ]
    if png:
        lines += ["", f"![connection attempts on the new writer]({png})"]
    return "\n".join(lines)


def plot(result: StormResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(9, 4))
    for phase, color in zip(result.phases, ("tab:blue", "tab:orange"), strict=False):
        assert phase.report is not None
        counts = phase.per_second(phase.fault, phase.end)
        axis.step(range(len(counts)), counts, where="post", color=color, label=phase.client)
    report = result.phases[0].report
    assert report is not None
    fault = result.phases[0].fault
    axis.axvline(report.promoted_at - fault, color="tab:green", ls="--", label="promoted")
    axis.axvline(report.dns_flip_at - fault, color="dimgray", ls=":", label="DNS flips")
    axis.set_title(f"Connection storm: {result.threads} threads lose the writer")
    axis.set_xlabel("seconds since the fault")
    axis.set_ylabel("connection attempts per second\non the new writer")
    axis.set_yscale("symlog")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=200)
    parser.add_argument("--dns-lag", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=12.0, help="seconds watched after the fault")
    parser.add_argument("--png", default=None, help="also save a plot here")
    args = parser.parse_args()
    result = run(args.threads, args.dns_lag, args.after)
    if args.png:
        plot(result, Path(args.png))
    print(markdown(result, args.png))


if __name__ == "__main__":
    main()
