"""The lab's supervisor process: serves DNS, keeps the metadata fresh, watches the owner.

Run as ``python -m aurora_smartdriver.lab._supervisor STATE_FILE CLAIM_FD``. It follows the state
file (re-read when it changes), so faults and failovers made by any process show up in DNS and in
the metadata without talking to it. When the process that owns the lab dies, it tears the lab
down, so a killed test run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from aurora_smartdriver.lab import _custom, _global, _procs, _rds_api, _rds_proxy
from aurora_smartdriver.lab import _state as st
from aurora_smartdriver.lab._cluster import dns_target, engine_for, teardown
from aurora_smartdriver.lab._dns import ARecord, CNAMERecord, DNSServer, Record, Zone
from aurora_smartdriver.lab._engine import Fresh, Probe, cpu_percent

log = logging.getLogger("aurora_smartdriver.lab.supervisor")

_PROXY_SYNC = 0.2
"""Seconds between two looks at the state for RDS Proxy endpoints added or removed."""


class _Follower:
    """The latest state file contents, re-read only when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self.state = st.load(path)
        self._lock = threading.Lock()

    def current(self) -> st.LabState:
        with self._lock:
            try:
                info = os.stat(self.path)
            except FileNotFoundError:
                return self.state
            stamp = (info.st_mtime_ns, info.st_ino)
            if stamp != self._stamp:
                with contextlib.suppress(FileNotFoundError, ValueError):
                    self.state = st.load(self.path)
                    self._stamp = stamp
            return self.state


def zone_of(state: st.LabState, now: float) -> Zone:
    """The DNS zone for a lab at time ``now``: cluster, reader and instance endpoints."""
    ttl = state.dns.ttl
    records: dict[str, Record] = {}
    for node in [*state.nodes, *state.leaving]:  # a deleting instance keeps its name
        records[state.instance_endpoint(node.id) + "."] = ARecord((node.address,), ttl)
    target = dns_target(state.dns, now)
    records[state.cluster_endpoint + "."] = CNAMERecord(state.instance_endpoint(target) + ".", ttl)
    readers = [n.address for n in state.readers if n.status in ("running", "hung", "paused")]
    if not readers and state.writer is not None:
        readers = [state.writer.address]  # Aurora points the reader endpoint at the writer
    records[state.reader_endpoint + "."] = ARecord(tuple(readers), ttl)
    for custom in state.custom_endpoints:
        records[state.custom_endpoint(custom.name) + "."] = ARecord(
            _custom.rotated_addresses(state, custom), ttl
        )
    for proxy in state.proxy_endpoints:  # RDS Proxy endpoints lead to the proxy, never a node
        records[state.proxy_endpoint(proxy.name) + "."] = ARecord((proxy.address,), ttl)
    from aurora_smartdriver.lab._bluegreen import zone_addresses

    for name, addresses in zone_addresses(state, now).items():  # green or -old1 names
        records[name] = ARecord(addresses, ttl)
    for name, (kind, value) in _global.records(state).items():  # a global database's names
        records[name + "."] = (
            CNAMERecord(f"{value}.", ttl) if kind == "cname" else ARecord(tuple(value), ttl)
        )
    origin = st.DOMAIN if state.regions else state.origin
    return Zone(origin=origin + ".", records=records)


class Heartbeat:
    """Probes every running node and publishes fresh rows on the writer, once per interval.

    A node that does not answer (crashed, hung, cut off) gets no new timestamp, so its row goes
    stale as on Aurora; a paused one (`Lab.pause`) is published fresh with no lag and no CPU.
    A probe still stuck on a hung node is not started again.
    """

    def __init__(self, follower: _Follower) -> None:
        self.follower = follower
        self.engine = engine_for(follower.state.engine)
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="lab-probe")
        self.pending: dict[str, Future[Probe]] = {}
        self.publishing: Future[None] | None = None
        self.cpu: dict[int, tuple[float, float]] = {}
        self.lag_clock = _global.LagClock()

    def tick(self) -> None:
        state = self.follower.current()
        if state.heartbeat_paused:
            return
        for node in state.nodes:
            if node.id in self.pending or node.status != "running" or not _procs.alive(node.pid):
                continue
            self.pending[node.id] = self.pool.submit(self.engine.probe, state, node, 2.0)
        deadline = time.monotonic() + state.heartbeat_interval * 0.5
        fresh: dict[str, Fresh] = {}
        for node_id, fut in list(self.pending.items()):
            try:
                probe = fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                continue  # still waiting on that node: it stays pending, its row goes stale
            except Exception as exc:
                log.debug("probe of %s failed: %s", node_id, exc)
                del self.pending[node_id]
                continue
            del self.pending[node_id]
            found = next((n for n in state.nodes if n.id == node_id), None)
            if found is not None:
                fresh[node_id] = Fresh(
                    lag_ms=probe.lag_ms,
                    cpu=cpu_percent(found.pid, self.cpu),
                    position=probe.position,
                )
        for node in state.readers:  # a paused instance is a member at 0 ACUs, not a lost one
            if node.status == "paused":
                fresh[node.id] = Fresh(lag_ms=0.0, cpu=0.0)
        writer = state.writer
        if writer is None or writer.id not in fresh:
            return
        if self.publishing is not None and not self.publishing.done():
            return
        regions = self.lag_clock.figures(state, fresh, time.time()) if state.regions else {}
        self.publishing = self.pool.submit(self._publish, state, writer, fresh, regions)

    def _publish(
        self,
        state: st.LabState,
        writer: st.NodeState,
        fresh: dict[str, Fresh],
        regions: dict[str, _global.RegionFigures] | None = None,
    ) -> None:
        try:
            self.engine.publish(state, writer, fresh, structure=False)
            if regions:
                _global.publish(self.engine, state, writer, fresh, regions, structure=False)
        except Exception as exc:
            log.debug("publishing on %s failed: %s", writer.id, exc)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    path = Path(argv[0])
    claim_fd = int(argv[1]) if len(argv) > 1 else None
    claim = socket.socket(fileno=claim_fd) if claim_fd is not None else None
    follower = _Follower(path)
    state = follower.state
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    server = DNSServer(
        state.dns.address, state.dns.port, lambda: zone_of(follower.current(), time.time())
    )
    server.start()
    rds_api = _rds_api.RdsApiServer(state.dns.address, follower.current)
    rds_api.start(path.parent / _rds_api.PORT_FILE)
    (path.parent / "supervisor.ready").write_text(str(os.getpid()))
    log.info("serving DNS on %s:%s for %s", state.dns.address, state.dns.port, state.origin)
    heartbeat = Heartbeat(follower)
    proxies = _rds_proxy.RdsProxyFront(follower.current)
    next_beat = time.monotonic()
    try:
        while not stop.is_set():
            started = time.monotonic()
            current = follower.current()
            if current.owner_pid is not None and not _procs.alive(current.owner_pid):
                log.info("owner %s is gone: tearing the lab down", current.owner_pid)
                server.stop()
                rds_api.stop()
                teardown(path, keep_supervisor=os.getpid())
                return 0
            if not path.exists():
                return 0
            try:
                proxies.sync()
            except Exception:
                log.exception("RDS Proxy endpoints failed to follow the state")
            if started >= next_beat:
                next_beat = started + current.heartbeat_interval
                try:
                    heartbeat.tick()
                except Exception:
                    log.exception("heartbeat failed")
            # Proxy endpoints are added at any moment: look again soon, whatever the interval.
            stop.wait(max(0.05, min(next_beat - time.monotonic(), _PROXY_SYNC)))
    finally:
        server.stop()
        rds_api.stop()
        proxies.stop()
        heartbeat.pool.shutdown(wait=False, cancel_futures=True)
        if claim is not None:
            claim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
