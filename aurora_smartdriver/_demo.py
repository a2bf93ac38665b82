"""``aurora-smartdriver demo``: a lab cluster failing over under a write load, as it happens."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

import aurora_smartdriver as asd
from aurora_smartdriver.lab import Lab
from aurora_smartdriver.lab._workload import TABLE, WriteLoad


@dataclass
class _Outcomes:
    acked: list[str] = field(default_factory=list)
    write_ok_at: list[float] = field(default_factory=list)
    write_errors: int = 0
    read_ok: int = 0
    read_errors: int = 0
    read_errors_on_readers: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


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
                    self.out.write_errors += 1
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
                    self.out.read_ok += 1
            except Exception:
                with self.out.lock:
                    self.out.read_errors += 1
                self.stop.wait(0.01)
            self.stop.wait(0.002)

    def start(self) -> LibraryLoad:
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def pool_figures(self) -> tuple[int, int]:
        stats = self.cluster.stats()["pools"].values()
        opened = sum(s.opened for s in stats)
        peak = max((s.max_concurrent_connecting_seen for s in stats), default=0)
        return opened, peak


def _table(lab: Lab) -> str:
    lines = [f"    {'instance':<22} {'role':<7} {'status':<8} {'address':<21} endpoint"]
    for node in lab.nodes:
        lines.append(
            f"    {node.id:<22} {node.role:<7} {node.status:<8} "
            f"{node.address + ':' + str(node.port):<21} {node.host}"
        )
    return "\n".join(lines)


def write_gap(times: list[float], fault: float, end: float) -> float:
    """The longest stretch without an acknowledged write between the fault and ``end``."""
    ordered = sorted(times)
    before = [t for t in ordered if t < fault]
    marks = [before[-1] if before else fault, *(t for t in ordered if t >= fault), end]
    return max(b - a for a, b in itertools.pairwise(marks))


def _first_after(times: list[float], moment: float) -> str:
    after = [t for t in times if t >= moment]
    return f"{min(after) - moment:.2f}s" if after else "none yet"


def lost_writes(lab: Lab, acked: list[str]) -> int:
    present = {str(r[0]) for r in lab.execute(lab.writer.id, f"SELECT id FROM {TABLE}")}
    return sum(1 for row in acked if row not in present)


def run_demo(engine: str = "postgresql", replicas: int = 2, dns_lag: float = 5.0) -> int:
    """Start a lab, load it through the library and a bare driver side by side, fail it over
    while DNS lags, report both, and always tear the lab down."""
    # The library's own warnings (a host refusing connections during the failover) are the
    # story the table tells; keep them from interleaving with it.
    logging.getLogger("aurora_smartdriver").setLevel(logging.ERROR)
    label = "PostgreSQL" if engine == "postgresql" else "MariaDB"
    print(f"Starting a {label} lab cluster: 1 writer, {replicas} replicas ...", flush=True)
    started = time.monotonic()
    lab = Lab.start(engine, replicas=replicas, dns_lag=dns_lag)
    try:
        print(f"  up in {time.monotonic() - started:.2f}s")
        print(f"  cluster endpoint {lab.state().cluster_endpoint} (DNS {lab.dns[0]}:{lab.dns[1]})")
        print(_table(lab))
        ours = LibraryLoad(lab).start()
        bare = WriteLoad(lab, threads=4).start()
        print(
            "\nLoad: 4 writers + 4 readers through aurora_smartdriver, and beside them 4 writers "
            "through the bare driver reconnecting via the cluster endpoint name.",
            flush=True,
        )
        for _ in range(4):
            time.sleep(0.5)
            print(
                f"  library {len(ours.out.acked):>6} writes {ours.out.read_ok:>6} reads | "
                f"bare {len(bare.result.acknowledged):>6} writes",
                flush=True,
            )
        print(
            f"\nFailing over: kill -9 the writer, promote the most advanced replica; "
            f"the cluster endpoint's DNS follows {dns_lag:.1f}s later ...",
            flush=True,
        )
        fault = time.time()
        report = lab.failover()
        print(
            f"  {report.old_writer} -> {report.new_writer}: promoted after "
            f"{report.promoted_at - report.started_at:.2f}s, done in {report.duration:.2f}s"
        )
        print(_table(lab))
        watch_until = time.time() + dns_lag + lab.state().dns.ttl + 2.0
        while time.time() < watch_until:
            time.sleep(1.0)
            print(
                f"  t+{time.time() - fault:4.1f}s  library {len(ours.out.acked):>6} writes "
                f"({ours.out.write_errors} errors) {ours.out.read_ok:>6} reads "
                f"({ours.out.read_errors} errors) | bare {len(bare.result.acknowledged):>6} "
                f"writes ({bare.result.errors} errors)",
                flush=True,
            )
        end = time.time()
        ours.finish()
        bare_result = bare.stop()
        opened, peak = ours.pool_figures()
        ours.cluster.close()
        bare_times = [e.at for e in bare_result.events if e.ok]
        rows = [
            ("acknowledged writes", str(len(ours.out.acked)), str(len(bare_result.acknowledged))),
            (
                "acknowledged writes lost",
                str(lost_writes(lab, ours.out.acked)),
                str(len(bare.lost())),
            ),
            (
                "write unavailability",
                f"{write_gap(ours.out.write_ok_at, fault, end):.2f}s",
                f"{write_gap(bare_times, fault, end):.2f}s",
            ),
            (
                "new writer ready -> 1st write",
                _first_after(ours.out.write_ok_at, report.writable_at),
                _first_after(bare_times, report.writable_at),
            ),
            ("write errors seen", str(ours.out.write_errors), str(bare_result.errors)),
            ("read errors seen", str(ours.out.read_errors), "-"),
            ("connections opened", str(opened), str(bare_result.connects)),
            ("most concurrent connects/host", str(peak), "-"),
        ]
        print(f"\n  {'':<30} {'aurora_smartdriver':>19} {'bare driver':>12}")
        for name, mine, theirs in rows:
            print(f"  {name:<30} {mine:>19} {theirs:>12}")
        lost = lost_writes(lab, ours.out.acked)
        return 1 if lost else 0
    finally:
        print("\nTearing the lab down ...", end=" ", flush=True)
        lab.down()
        print("done.")
