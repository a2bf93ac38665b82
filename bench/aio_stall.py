"""The event loop's longest stall while 200 tasks write through a writer crash (aio).

    .venv/bin/python bench/aio_stall.py [--engines postgresql,mariadb] [--tasks 200] [--runs 1]

Per engine a lab cluster is started; 200 tasks insert rows through one ``aio.Cluster``
(``async with cluster.writer()``, autocommit) while a ticker task sleeps 1 ms at a time and
records how late each wake-up is: a wake-up late by X ms means the loop's thread was busy (or
blocked) for about X ms. The writer is crashed and a replica promoted by the lab's command line
in another process (so the fault's own work is not on this process's GIL). Every callback the
loop runs is timed, in wall time and in the thread's CPU time: a callback long in wall time but
short in CPU time was preempted (other processes on the cores, another thread holding the GIL)
or blocked in a system call; one long in CPU time held the loop with work of its own. Printed:
the longest callback both ways, and without the cyclic garbage collector's passes that ran
inside it, in wall and CPU time (the passes' wall time taken from the CPU time: exact for a
callback with no pass; a full pass costs in proportion to every object the process holds, the
application's as much as the library's: ``--freeze`` calls ``gc.freeze()`` once warm, as
services do after start-up); the collector's longest pass; the ticker's longest lateness
before the fault, from the fault to 3 s after it, and overall; the 99th percentile of
lateness; what the tasks were told (acknowledged, FailoverSucceeded, TransactionOutcomeUnknown,
no host, other errors); and the time from the fault to the first acknowledged write on the new
writer. Nothing is asserted.
Target (issue #14): longest stall <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aurora_smartdriver.aio as aio
from aurora_smartdriver.aio.connection import PsycopgAsyncConnection
from aurora_smartdriver.lab import Lab

_TICK = 0.001


class _Collector:
    """Times the cyclic garbage collector's passes: a pass runs inside whatever callback
    allocated last, so a long callback may be the collector's and not that callback's own."""

    def __init__(self) -> None:
        self.total = 0.0
        self.longest = 0.0
        self.longest_generation = -1
        self.passes: Counter[int] = Counter()
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.total += took
        self.passes[info["generation"]] += 1
        if took > self.longest:
            self.longest, self.longest_generation = took, info["generation"]

    def install(self) -> None:
        gc.callbacks.append(self)

    def uninstall(self) -> None:
        gc.callbacks.remove(self)


class _StepTimer:
    """Times every callback the loop runs (each task step is one): the longest is how long
    the loop's thread was held at once, whatever the load; the longest once the collector's
    passes inside it are taken out is what the code itself held."""

    def __init__(self, collector: _Collector) -> None:
        self.longest = 0.0
        self.longest_cpu = 0.0
        self.longest_own = 0.0
        self.longest_own_cpu = 0.0
        self.what = ""
        self.what_own = ""
        self.since = 0.0
        self.collector = collector
        self._original = asyncio.events.Handle._run

    def install(self) -> None:
        timer, original, collector = self, self._original, self.collector

        def timed(handle: asyncio.events.Handle) -> None:
            started = time.perf_counter()
            cpu = time.thread_time()
            collected = collector.total
            try:
                original(handle)
            finally:
                took = time.perf_counter() - started
                collecting = collector.total - collected
                own = took - collecting
                cpu_took = time.thread_time() - cpu
                timer.longest_cpu = max(timer.longest_cpu, cpu_took)
                if started >= timer.since:  # the collector's passes are CPU work: taken out
                    timer.longest_own_cpu = max(timer.longest_own_cpu, cpu_took - collecting)
                if started >= timer.since and (took > timer.longest or own > timer.longest_own):
                    task = getattr(getattr(handle, "_callback", None), "__self__", None)
                    coro = task.get_coro() if isinstance(task, asyncio.Task) else None
                    what = getattr(coro, "__qualname__", repr(handle))[:80]
                    if took > timer.longest:
                        timer.longest, timer.what = took, what
                    if own > timer.longest_own:
                        timer.longest_own, timer.what_own = own, what

        asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        asyncio.events.Handle._run = self._original  # type: ignore[method-assign]


@dataclass
class Run:
    engine: str
    stall_before_ms: float = 0.0
    stall_during_ms: float = 0.0
    stall_max_ms: float = 0.0
    longest_step_ms: float = 0.0
    longest_step: str = ""
    longest_step_cpu_ms: float = 0.0
    longest_own_ms: float = 0.0
    longest_own_cpu_ms: float = 0.0
    longest_own: str = ""
    gc_longest_ms: float = 0.0
    gc_longest_generation: int = -1
    gc_total_ms: float = 0.0
    gc_passes: Counter[int] = field(default_factory=Counter)
    objects: int = 0
    lateness_p99_ms: float = 0.0
    said: Counter[str] = field(default_factory=Counter)
    first_write_after_fault_s: float | None = None
    failover_s: float | None = None
    new_writer: str = ""


async def _ticker(samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        start = loop.time()
        await asyncio.sleep(_TICK)
        samples.append((start, loop.time() - start - _TICK))


async def _execute(conn: Any, sql: str, params: Any = None) -> None:
    cur = conn.cursor() if isinstance(conn, PsycopgAsyncConnection) else await conn.cursor()
    await cur.execute(sql, params)


async def _writer(
    cluster: aio.Cluster,
    stop: asyncio.Event,
    said: Counter[str],
    acks: list[tuple[float, str]],
    pause: float,
) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            async with cluster.writer() as conn:
                await _execute(conn, "INSERT INTO aio_stall VALUES (%s)", (uuid.uuid4().hex,))
                where = conn.instance_id
            said["ack"] += 1
            acks.append((loop.time(), where))
        except aio.TransactionOutcomeUnknown:
            said["unknown"] += 1
        except aio.FailoverSucceeded:
            said["failover_succeeded"] += 1
        except (aio.NoHostAvailable, aio.PoolTimeout):
            said["no_host"] += 1
            await asyncio.sleep(0.05)
        except Exception as exc:
            said[f"error {type(exc).__name__}"] += 1
            await asyncio.sleep(0.05)
        await asyncio.sleep(pause)


async def _fail_over(lab: Lab) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aurora_smartdriver",
        "lab",
        "failover",
        "--state",
        str(lab.state_path),
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    report: dict[str, Any] = json.loads(out)
    return report


async def _run(lab: Lab, tasks: int, pause: float, freeze: bool) -> Run:
    engine = lab.state().engine
    result = Run(engine)
    autocommit: Any = "on" if engine == "postgresql" else True
    cluster = aio.Cluster(
        lab.dsn,
        cluster_id=f"stall-{uuid.uuid4().hex[:8]}",
        fast_refresh_interval="0.05s",
        pool_max_size=20,
        autocommit=autocommit,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    samples: list[tuple[float, float]] = []
    acks: list[tuple[float, str]] = []
    try:
        async with cluster.writer() as conn:
            await _execute(conn, "CREATE TABLE IF NOT EXISTS aio_stall (id VARCHAR(64))")
        ticker = asyncio.create_task(_ticker(samples, stop))
        writers = [
            asyncio.create_task(_writer(cluster, stop, result.said, acks, pause))
            for _ in range(tasks)
        ]
        await asyncio.sleep(2.0)  # warm: pools full, every task writing
        result.objects = len(gc.get_objects())
        if freeze:
            gc.freeze()  # what a service does after start-up: full passes skip what is old
        collector = _Collector()
        steps = _StepTimer(collector)
        steps.since = time.perf_counter()  # connections opened at start-up are not counted
        collector.install()
        steps.install()
        fault = loop.time()
        report = await _fail_over(lab)
        result.failover_s = report.get("duration_s")
        result.new_writer = str(report.get("new_writer", ""))
        await asyncio.sleep(max(0.0, fault + 4.0 - loop.time()))
        stop.set()
        await asyncio.gather(ticker, *writers)
        steps.uninstall()
        collector.uninstall()
        result.longest_step_ms = steps.longest * 1000
        result.longest_own_ms = steps.longest_own * 1000
        result.longest_own_cpu_ms = steps.longest_own_cpu * 1000
        result.longest_own = steps.what_own
        result.gc_longest_ms = collector.longest * 1000
        result.gc_longest_generation = collector.longest_generation
        result.gc_total_ms = collector.total * 1000
        result.gc_passes = collector.passes
        result.longest_step = steps.what
        result.longest_step_cpu_ms = steps.longest_cpu * 1000
    finally:
        await cluster.close()
    before = [late for at, late in samples if at < fault]
    during = [late for at, late in samples if fault <= at < fault + 3.0]
    every = [late for _, late in samples]
    result.stall_before_ms = max(before, default=0.0) * 1000
    result.stall_during_ms = max(during, default=0.0) * 1000
    result.stall_max_ms = max(every, default=0.0) * 1000
    if len(every) > 100:
        result.lateness_p99_ms = statistics.quantiles(every, n=100)[98] * 1000
    after = [at for at, where in acks if at >= fault and where == result.new_writer]
    if after:
        result.first_write_after_fault_s = min(after) - fault
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--pause", type=float, default=0.05, help="seconds each task waits between writes"
    )
    parser.add_argument(
        "--freeze",
        action="store_true",
        help="gc.freeze() once warm, as services do after start-up",
    )
    args = parser.parse_args()
    for engine in args.engines.split(","):
        lab = Lab.start(engine, replicas=2, name=f"{engine[:2]}stall")
        try:
            for _ in range(args.runs):
                started = time.monotonic()
                run = asyncio.run(_run(lab, args.tasks, args.pause, args.freeze))
                gc.unfreeze()
                first = run.first_write_after_fault_s
                print(
                    f"{engine}: {args.tasks} tasks, {args.pause:g} s apart; longest callback "
                    f"{run.longest_step_ms:.1f} ms wall ({run.longest_step}), "
                    f"{run.longest_step_cpu_ms:.1f} ms of CPU; without the collector's passes "
                    f"{run.longest_own_ms:.1f} ms ({run.longest_own}), "
                    f"{run.longest_own_cpu_ms:.1f} ms of CPU; collector: longest pass "
                    f"{run.gc_longest_ms:.1f} ms (generation {run.gc_longest_generation}), "
                    f"{run.gc_total_ms:.0f} ms in {sum(run.gc_passes.values())} passes "
                    f"{dict(sorted(run.gc_passes.items()))} over {run.objects} tracked objects"
                    f"{' (frozen)' if args.freeze else ''}; ticker lateness: "
                    f"{run.stall_before_ms:.1f} ms before the crash, "
                    f"{run.stall_during_ms:.1f} ms in the 3 s after, {run.stall_max_ms:.1f} ms "
                    f"overall (p99 lateness {run.lateness_p99_ms:.2f} ms); lab failover "
                    f"{run.failover_s} s; first write on the new writer "
                    f"{'-' if first is None else f'{first:.3f}'} s after the crash began; "
                    f"told: {dict(run.said)} ({time.monotonic() - started:.0f} s)",
                    flush=True,
                )
                lab.restore()
        finally:
            lab.down()


if __name__ == "__main__":
    main()
