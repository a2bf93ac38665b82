"""The cluster monitor: one per cluster per process, keeping the topology fresh for everyone.

A background daemon thread asks the cluster for its topology every ``refresh_interval``
(``fast_refresh_interval`` while a failover is suspected, until a node answers as the writer);
every connection, pool and engine of the process reads the snapshot it holds. Reading is an
attribute load, no lock; all refreshes happen on the monitor's thread, so any number of callers of
:meth:`ClusterMonitor.refresh_now` cause one query between them, and two refreshes never start
less than ``fast_refresh_interval`` apart, however many callers ask.

A writer is believed once it says so itself, whatever the source: the node that answered the
topology query said it is the writer (Aurora, RDS Multi-AZ), or probe asked it, or (static,
rds-api, and the metadata sources answered by a reader) the monitor asks the named writer for
its role. Fast mode ends then.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aurora_smartdriver import auth, discovery, rds_proxy
from aurora_smartdriver._bluegreen import Phase
from aurora_smartdriver._bluegreen_gate import BlueGreenGate
from aurora_smartdriver._instruments import Histogram, HistogramSnapshot, empty_histogram
from aurora_smartdriver.discovery import Answer, Source, SourceContext, blue_green
from aurora_smartdriver.discovery.probe import Probe
from aurora_smartdriver.discovery.rds_proxy import RdsProxy
from aurora_smartdriver.drivers import DriverAdapter, adapter_for
from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.endpoints import EndpointKind, classify, parse_rds_host
from aurora_smartdriver.errors import AuthenticationFailed, ConfigError
from aurora_smartdriver.pool._errors import mask_secrets
from aurora_smartdriver.resolver import Resolver
from aurora_smartdriver.topology import Host, Rejected, Role, Topology, TopologyDiff, accept, diff

__all__ = ["ClusterMonitor", "Listener", "MonitorStats", "cluster_key"]

log = logging.getLogger("aurora_smartdriver.monitor")

Listener = Callable[[TopologyDiff, Topology], None]
"""Called on the monitor's thread after every accepted change: ``listener(diff, topology)``."""


@dataclass(frozen=True, slots=True)
class MonitorStats:
    """Counters of one monitor (a snapshot; the monitor keeps counting)."""

    refreshes: int  # topology queries answered
    changes: int  # answers that changed the topology
    rejected: int  # answers that were not believable and were ignored
    errors: int  # refreshes that failed (no node reachable, connection lost, query failed)
    connects: int  # connections the monitor opened
    fast_mode_entries: int
    last_error: str | None
    refresh_times: HistogramSnapshot = field(default_factory=empty_histogram)
    """Seconds each refresh took, answered or failed (connecting included)."""
    version: int = 0  # of the current topology, 0 before the first
    fast_mode: bool = False


_CLOSE_WAIT = 0.5
"""Seconds `ClusterMonitor.close` waits for its threads before leaving them to end alone."""

_EWMA = 0.5
"""Weight of a new response-time sample in the moving average (`ClusterMonitor.response_ms`)."""

_BLUE_GREEN_WATCH = 1.0
"""Longest time between refreshes while a Blue/Green deployment exists: its switchover's
in-progress phase lasts seconds, and a monitor that missed it could not hold connections."""


def cluster_key(spec: ConnectionSpec) -> tuple[str, ...]:
    """The identity of the cluster ``spec`` points at: monitors are shared per key.

    Behind an RDS Proxy, the proxy's endpoints (with ``cluster_id`` when set: its resource id
    and its ``cluster_id`` may be the cluster's, but a proxy's view is not the cluster's);
    otherwise ``cluster_id`` when set; otherwise the RDS cluster resource id and region when
    the first host is an RDS (or lab) endpoint, so the cluster, reader and instance endpoints
    of one cluster share a monitor; otherwise the host list.
    """
    proxy = rds_proxy.plan(spec)
    if proxy is not None:
        return (
            spec.engine,
            "proxy",
            spec.settings.cluster_id or "",
            *(f"{h.host.lower()}:{h.port}" for h in rds_proxy.rows(proxy)),
        )
    if spec.settings.cluster_id:
        return (spec.engine, "id", spec.settings.cluster_id)
    rds = parse_rds_host(spec.hosts[0][0])
    if rds is not None and rds.resource_id:
        return (spec.engine, "rds", rds.resource_id, rds.region, rds.domain)
    return (spec.engine, "hosts", *sorted(f"{h.lower()}:{p}" for h, p in spec.hosts))


class ClusterMonitor:
    """Keeps one cluster's topology fresh.

    The process shares one per cluster through ``aurora_smartdriver._runtime.acquire``; create
    one directly only for a private view (the ``topology`` command does).
    """

    def __init__(
        self,
        spec: ConnectionSpec,
        *,
        adapter: DriverAdapter | None = None,
        resolver: Resolver | None = None,
        start: bool = True,
        credentials: auth.CredentialsProvider | None = None,
    ) -> None:
        self.spec = spec
        self.key = cluster_key(spec)
        settings = spec.settings
        self._adapter = adapter or adapter_for(spec.engine)
        self._credentials = credentials if credentials is not None else auth.provider_for(spec)
        #: The refused login that kept the last connection attempt from succeeding, if any.
        self.auth_error: AuthenticationFailed | None = None
        #: A connection attempt failed because of the DSN itself (a database that does not
        #: exist, a malformed driver parameter): retrying elsewhere cannot help.
        self.config_error: ConfigError | None = None
        self._resolver = resolver or Resolver(
            settings.dns_server or None, timeout=settings.dns_timeout, ttl_cap=settings.dns_ttl_cap
        )
        self._ctx = SourceContext.for_spec(spec, connect=self._connect_to, adapter=self._adapter)
        #: The cluster's Blue/Green deployment as last read; its resolver follows it.
        self.blue_green = BlueGreenGate(
            settings.blue_green_hold_timeout,
            lambda host: self._resolver.resolve(host, as_is=True).addresses,
        )
        self._resolver.rewrite = self.blue_green.rewrite
        self._proxy = rds_proxy.plan(spec)
        """The RDS Proxy endpoints the DSN leads to, if it does: then they are the topology."""
        self._source: Source | None = RdsProxy(self._proxy) if self._proxy is not None else None
        #: The current snapshot; None until the first answer. Read it without a lock.
        self.topology: Topology | None = None
        self._listeners: list[Listener] = []
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._started_gen = 0
        self._completed_gen = 0
        self._fast = False
        self._confirmed: str | None = None  # instance id of the writer that answered as writer
        self._conn: Any = None
        self._conn_host: str | None = None
        self._conn_address: str | None = None  # the address the monitor's connection went to
        self._last_address: str | None = None
        self._suspects: set[str] = set()  # nodes whose view could not be confirmed, asked last
        self._seeds: tuple[tuple[str, int], ...] = ()  # asked after the DSN's hosts (add_seed)
        # Addresses the watchdog found silent, with when (monotonic): not connected to for
        # failure_detection_time after the verdict (a name may still lead there until DNS moves).
        self._silent: dict[str, float] = {}
        self._failures = 0
        self._refreshes = self._changes = self._rejected = self._errors = 0
        self._connects = self._fast_entries = 0
        self._last_error: str | None = None
        self._attempt: tuple[str, float] | None = None  # what the thread waits on, since when
        self._last_start = -math.inf  # monotonic time the last refresh started
        self._fast_since = 0.0  # monotonic time fast mode began
        self._deadline = _Deadline(
            self._adapter.abort, f"aurora-smartdriver-deadline {spec.hosts[0][0]}"
        )
        self._refresh_times = Histogram()
        #: Round-trip time in ms per instance id, a moving average of pings on connections of
        #: the monitor's own (only with ``reader_strategy=fastest_response``, which reads it;
        #: empty otherwise). An instance that fails its ping is dropped until it answers again.
        #: Replaced, never changed in place: read it without a lock.
        self.response_ms: Mapping[str, float] = MappingProxyType({})
        self._thread = threading.Thread(
            target=self._run, name=f"aurora-smartdriver-monitor {spec.hosts[0][0]}", daemon=True
        )
        self._timer: threading.Thread | None = None
        if settings.reader_strategy == "fastest_response":
            self._timer = threading.Thread(
                target=self._time_responses,
                name=f"aurora-smartdriver-timer {spec.hosts[0][0]}",
                daemon=True,
            )
        if start:
            self._thread.start()
            if self._timer is not None:
                self._timer.start()

    # -- what consumers call ---------------------------------------------------------------
    @property
    def source(self) -> str | None:
        """The name of the topology source in use (None before the first connection)."""
        return self._source.name if self._source is not None else None

    @property
    def source_context(self) -> SourceContext:
        """What the topology sources work with (for a role check outside the monitor)."""
        return self._ctx

    @property
    def fast_mode(self) -> bool:
        return self._fast

    def refresh_now(self, timeout: float | None = None) -> Topology | None:
        """Refresh now and return the result; concurrent callers share one refresh.

        Waits for a refresh that *starts* after the call (one already running may hold an old
        answer), up to ``timeout`` seconds (default: ``connect_timeout`` plus a margin); before
        the first topology, for the next refresh to end (nothing older can be in it, and the
        first connection of a program need not wait for a second refresh).
        """
        limit = timeout if timeout is not None else self.spec.settings.connect_timeout + 5.0
        with self._cond:
            goal = self._started_gen + 1 if self.topology is not None else self._completed_gen + 1
            self._wake.set()
            self._cond.wait_for(
                lambda: self._completed_gen >= goal or self._closed.is_set(), timeout=limit
            )
        return self.topology

    def enter_fast_mode(self, reason: str = "") -> None:
        """Refresh every ``fast_refresh_interval`` until a node answers as the writer."""
        with self._cond:
            if not self._fast:
                self._fast = True
                self._fast_since = time.monotonic()
                self._fast_entries += 1
                self._confirmed = None
                log.info(
                    "fast mode on %s%s", self.spec.hosts[0][0], f": {reason}" if reason else ""
                )
            self._wake.set()

    def wait_for_writer(self, timeout: float, *, not_id: str | None = None) -> Topology | None:
        """Wait until a writer is confirmed (it answered as writer), optionally not ``not_id``.

        Returns the topology then, or None on timeout. Enters fast mode.
        """
        self.enter_fast_mode("waiting for a writer")
        deadline = time.monotonic() + timeout

        def ready() -> bool:
            topo = self.topology
            return (
                self._confirmed is not None
                and topo is not None
                and topo.writer is not None
                and topo.writer.instance_id == self._confirmed
                and topo.writer.instance_id != not_id
            ) or self._closed.is_set()

        with self._cond:
            while not ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)  # notified after every refresh
        return self.topology

    def add_listener(self, listener: Listener) -> None:
        with self._cond:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._cond, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def stats(self) -> MonitorStats:
        return MonitorStats(
            refreshes=self._refreshes,
            changes=self._changes,
            rejected=self._rejected,
            errors=self._errors,
            connects=self._connects,
            fast_mode_entries=self._fast_entries,
            last_error=self._last_error,
            refresh_times=self._refresh_times.snapshot(),
            version=self.topology.version if self.topology is not None else 0,
            fast_mode=self._fast,
        )

    def trouble(self) -> str | None:
        """Why there is no answer yet, for an error message: what the monitor is waiting on
        and for how long, and the last failure (secrets masked); None when all is well."""
        parts = []
        attempt = self._attempt
        if attempt is not None:
            what, since = attempt
            parts.append(f"{what}: no answer yet after {time.monotonic() - since:.1f}s")
        if self._last_error:
            parts.append(("before that: " if parts else "") + self._last_error)
        return mask_secrets("; ".join(parts)) if parts else None

    def close(self) -> None:
        """Stop the thread and close the monitor's connection (idempotent).

        Does not wait out a connection attempt in progress (a hung host holds one for
        ``connect_timeout``): the daemon thread closes what it gets and ends on its own.
        """
        self._closed.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        conn = self._conn
        if conn is not None:
            self._adapter.abort(conn)  # a query waiting on a hung node ends now
        for thread in (self._thread, self._timer):
            alive = thread is not None and thread.is_alive()
            if alive and thread is not None and threading.current_thread() is not thread:
                thread.join(timeout=_CLOSE_WAIT)
        if not self._thread.is_alive():
            self._drop_connection()
        self._deadline.close()

    def __repr__(self) -> str:
        topo = self.topology
        writer = topo.writer.instance_id if topo is not None and topo.writer else None
        return (
            f"<ClusterMonitor {self.spec.hosts[0][0]} source={self.source} writer={writer} "
            f"version={topo.version if topo else 0} fast={self._fast}>"
        )

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        ok = True
        try:
            while not self._closed.is_set():
                # However many callers ask (refresh_now, failing borrowers), two refreshes
                # start at least fast_refresh_interval apart (more after failures).
                gap = self._last_start + self._min_gap()
                if self._closed.wait(max(0.0, gap - time.monotonic())):
                    break
                with self._cond:
                    self._started_gen += 1
                    gen = self._started_gen
                    self._wake.clear()
                self._last_start = time.monotonic()
                started = time.perf_counter()
                try:
                    ok = self._refresh()
                except Exception as exc:  # never let the thread die
                    log.exception("topology refresh failed unexpectedly")
                    self._note_error(f"unexpected: {exc!r}")
                    ok = False
                self._refresh_times.observe(time.perf_counter() - started)
                with self._cond:
                    self._completed_gen = gen
                    self._cond.notify_all()
                self._wake.wait(self._next_wait(ok))
        finally:
            self._deadline.close()
            if self._closed.is_set():
                self._drop_connection()  # close() may have given up waiting for this thread

    def _next_wait(self, ok: bool) -> float:
        """How long to wait for the next refresh unless woken (and `_min_gap` allows it)."""
        settings = self.spec.settings
        if ok:
            self._failures = 0
            if self._fast or self.blue_green.active:  # a switchover moves in seconds
                return settings.fast_refresh_interval
            if self.blue_green.phase is not None:  # a deployment that may switch over any time
                return min(settings.refresh_interval, _BLUE_GREEN_WATCH)
            return settings.refresh_interval
        self._failures += 1
        if not self._fast:
            return settings.refresh_interval
        return self._min_gap()

    def _min_gap(self) -> float:
        """The least time between the starts of two refreshes, however many callers ask.

        ``fast_refresh_interval`` while refreshes succeed; after failures in a row it doubles
        up to ``backoff_max``, so that a cluster that is down entirely is asked ever less often
        (during a failover some node answers, and the gap stays short). Fast mode that has
        found no writer for ``failover_timeout`` goes on at ``backoff_max``.
        """
        settings = self.spec.settings
        fast = settings.fast_refresh_interval
        gap = fast
        if self._failures > 0:
            gap = max(fast, min(settings.backoff_max, fast * 2.0 ** min(self._failures - 1, 30)))
        if self._fast and time.monotonic() - self._fast_since > settings.failover_timeout:
            # No writer confirmed for longer than anyone waits for one (a static writer that
            # is gone, a cluster without a writer): keep looking, at backoff_max.
            gap = max(gap, settings.backoff_max)
        return gap

    def _refresh(self) -> bool:
        """One topology query; False when it failed (no answer, or an answer not believed)."""
        conn: Any = None
        source = self._source
        if source is None and self.spec.settings.topology_source != "auto":
            try:
                source = self._source = discovery.source_for(
                    self.spec.settings.topology_source, self.spec.engine
                )
            except ConfigError as exc:
                self.config_error = exc
                self._note_error(str(exc))
                return False
        if source is None or source.uses_connection:
            conn = self._connection()
            if conn is None:
                self._failed()
                return False
        try:
            if source is None:
                source = self._source = self._choose_source(conn)
                if not source.uses_connection:
                    self._drop_connection()  # it served the detection; the source asks elsewhere
                    conn = None
            answer = self._fetch(source, conn)
        except Exception as exc:
            unanswered = isinstance(exc, discovery.Unreachable | OSError)
            if self._adapter.error_kind(exc) == "other" and not unanswered:
                self._rejected += 1
            where = f"{self._conn_host}: " if conn is not None else ""
            self._note_error(f"{where}{exc}")
            self._drop_connection()
            self._failed()
            return False
        self._refreshes += 1
        if conn is not None:
            self._read_blue_green(conn)
        return self._take(answer)

    def _read_blue_green(self, conn: Any) -> None:
        """Read the Blue/Green metadata on the connection that just answered (see
        `aurora_smartdriver.discovery.blue_green`); a failure keeps the last status."""
        try:
            with self._deadline.bound(conn, self._query_bound):
                status = blue_green.fetch(conn, self._ctx)
        except Exception as exc:
            self._note_error(f"{self._conn_host}: Blue/Green metadata: {exc}")
            if self._adapter.error_kind(exc) != "other":
                self._drop_connection()
            return
        gate = self.blue_green
        gate.observe(status)
        phase = gate.phase
        switched = phase is not None and phase >= Phase.IN_PROGRESS
        if switched and self._conn_address in gate.book.old_addresses:
            self._drop_connection()  # never stay on an old blue instance: reconnect to green

    def _failed(self) -> None:
        """A refresh got no answer: the node it asked may be the writer that just died, so
        look for the writer quickly (once a topology is known; before, there is nothing to
        fail over from)."""
        if self.topology is not None and not self._fast:
            self.enter_fast_mode("a topology refresh failed")

    def _take(self, answer: Answer) -> bool:
        previous = self.topology
        source = self._source.name if self._source else "unknown"
        if (
            answer.self_reported
            and answer.rows
            and not any(h.role is Role.WRITER for h in answer.rows)
        ):
            # Every host that answered says it is a reader: between a writer's death and a
            # promotion that is the truth, not a bad answer. Keep the last topology, and
            # keep asking at the fast pace (nodes answered: this is no outage to back off from).
            self._note_error(f"{source}: no host answered as the writer")
            return True
        result = accept(
            previous,
            answer.rows,
            source=source,
            now=answer.now,
            staleness_window=self.spec.settings.staleness_window,
            # A read-only RDS Proxy endpoint alone has no writer to show, and needs none.
            writer_required=self._proxy is None or self._proxy.writer is not None,
        )
        if isinstance(result, Rejected):
            self._rejected += 1
            self._note_error(result.reason)
            log.warning("topology answer ignored, keeping the last good one: %s", result.reason)
            # That node may be behind (a replica still catching up): ask another one next.
            if self._conn_host is not None:
                self._suspects.add(self._conn_host)
            self._drop_connection()
            return False
        if result is not previous:
            self.topology = result
            self._changes += 1
            change = diff(previous, result)
            log.info(
                "topology v%d from %s: writer %s, readers %s%s",
                result.version,
                result.source,
                result.writer.instance_id if result.writer else None,
                [r.instance_id for r in result.readers],
                f" (writer changed {change.writer_changed})" if change.writer_changed else "",
            )
            with self._cond:
                listeners = list(self._listeners)
                self._cond.notify_all()
            for listener in listeners:
                try:
                    listener(change, result)
                except Exception:
                    log.exception("topology listener %r failed", listener)
        # Confirm the writer after publishing the snapshot it belongs to.
        confirmed = answer.confirmed_writer
        if confirmed is not None:
            self._confirm(confirmed)
        elif self._fast and result.writer is not None and self._conn_host != result.writer.host:
            self._confirm_by_asking(result)
        return True

    def _confirm(self, instance_id: str) -> None:
        """``instance_id`` said it is the writer, in the refresh under way."""
        topo = self.topology
        with self._cond:
            if self._fast and self._last_start < self._fast_since:
                # The refresh began before fast mode did: its writer may be the one whose
                # death started fast mode. Only a refresh begun since can confirm a writer.
                return
            self._confirmed = instance_id
            self._suspects.clear()
            if self._fast and (
                topo is None or topo.writer is None or topo.writer.instance_id == instance_id
            ):
                self._fast = False
                log.info("writer %s confirmed; fast mode off", instance_id)
            self._cond.notify_all()

    def _confirm_by_asking(self, topo: Topology) -> None:
        """In fast mode, ask the writer the answer names whether it really is the writer.

        Through the source itself when its answer says who answered (the metadata sources);
        otherwise (static, rds-api) by asking the node its role (`discovery.role_of`).
        """
        writer = topo.writer
        source = self._source
        assert writer is not None and source is not None
        try:
            conn = self._connect_to(writer.host, writer.port, self.spec.settings.connect_timeout)
        except Exception as exc:
            self._note_error(f"writer {writer.instance_id} not reachable yet: {exc}")
            return
        says: Role | None = None
        try:
            if source.uses_connection:
                answer = self._fetch(source, conn)
                says = answer.role if answer.instance_id in (None, writer.instance_id) else None
            else:
                with self._deadline.bound(conn, self._query_bound):
                    says = discovery.role_of(conn, self._ctx)
        except Exception as exc:
            self._note_error(f"writer {writer.instance_id} did not answer: {exc}")
        finally:
            _close_quietly(conn)
        if says is Role.WRITER:
            self._confirm(writer.instance_id)
        elif says is not None:
            self._note_error(f"{writer.instance_id} says it is not the writer ({says.value})")
            if source.uses_connection and self._conn_host is not None:
                # The node we ask may be behind (its metadata names a writer that is not
                # one): ask another node next time.
                self._suspects.add(self._conn_host)
                self._drop_connection()

    @property
    def _query_bound(self) -> float:
        """How long one of the monitor's queries may take: ``failure_detection_time`` (the
        silence after which a connection counts as dead), at most ``connect_timeout``."""
        settings = self.spec.settings
        return min(settings.connect_timeout, settings.failure_detection_time)

    def _fetch(self, source: Source, conn: Any) -> Answer:
        """One topology query, cut off after `_query_bound`: a node that stops answering
        (hung, cut off) must not stall the monitor, which everyone waits on in a failover."""
        if isinstance(source, Probe):  # in fast mode, do not wait on silent hosts once a
            # writer answered: a cut-off old writer would hold each probe connect_timeout long
            source.hurry = self._probe_hurry
        if conn is None:  # the source bounds its own waits (probe's deadline, boto3's timeouts)
            hosts = ", ".join(f"{h}:{p}" for h, p in self.spec.hosts)
            self._attempt = (f"{source.name} asking {hosts}", time.monotonic())
            try:
                return source.fetch(conn, self._ctx)
            finally:
                self._attempt = None
        with self._deadline.bound(conn, self._query_bound):
            return source.fetch(conn, self._ctx)

    def _probe_hurry(self) -> float | None:
        """`Probe.hurry`: in fast mode, how long to wait for other hosts once a writer answered."""
        return self.spec.settings.fast_refresh_interval if self._fast else None

    def _choose_source(self, conn: Any) -> Source:
        name = self.spec.settings.topology_source
        if name == "auto":
            return discovery.detect(conn, self.spec.engine, self._ctx)
        return discovery.source_for(name, self.spec.engine)

    # -- connections ------------------------------------------------------------------------
    def _candidates(self) -> Iterator[tuple[str, int]]:
        """Where to ask: known readers, the writer, the DSN's hosts, then its reader endpoint."""
        seen: set[tuple[str, int]] = set()
        topo = self.topology
        known = [] if topo is None else [*topo.readers, *([topo.writer] if topo.writer else [])]
        # A cluster endpoint's DNS may still name a dead writer: its reader endpoint leads to
        # readers, which know the topology too.
        readers_of_cluster = [
            (host.replace(".cluster-", ".cluster-ro-", 1), port)
            for host, port in self.spec.hosts
            if classify(host) is EndpointKind.RDS_CLUSTER
        ]
        ordered = [*(h.endpoint for h in known), *self.spec.hosts, *readers_of_cluster]
        ordered += self._seeds
        ordered.sort(key=lambda endpoint: endpoint[0] in self._suspects)  # stable: suspects last
        for endpoint in ordered:
            if endpoint not in seen:
                seen.add(endpoint)
                yield endpoint

    def add_seed(self, host: str, port: int) -> None:
        """Also ask `host:port` when no known instance answers (after the DSN's hosts): the
        cluster endpoint behind a custom endpoint whose members are all down, say."""
        if (host, port) not in self._seeds:
            self._seeds = (*self._seeds, (host, port))

    def _connection(self) -> Any:
        if self._conn is not None:
            return self._conn
        errors = []
        settings = self.spec.settings
        timeout = settings.connect_timeout
        if self.topology is None:
            # Before the first topology the node asked may be paused (Serverless v2 at 0 ACUs,
            # a whole idle cluster): its resume is waited for, as `resume_timeout` says.
            timeout = max(timeout, settings.resume_timeout)
        for host, port in self._candidates():
            if self._closed.is_set():
                return None
            try:
                conn = self._connect_to(host, port, timeout)
            except AuthenticationFailed as exc:
                # The same credentials would be refused by the next node too: stop here.
                self.auth_error = exc
                errors.append(str(exc))
                break
            except Exception as exc:
                problem = config_problem(exc)
                if problem is not None:
                    # The DSN itself is wrong: every node would say the same.
                    self.config_error = ConfigError(
                        mask_secrets(f"{host}:{port} refused the connection: {problem[1]}"),
                        parameter=problem[0],
                        suggestion="check the DSN",
                    )
                    errors.append(f"{host}:{port}: {problem[1]}")
                    break
                errors.append(f"{host}:{port}: {_one_line(exc)}")
                continue
            if self._closed.is_set():  # close() did not wait for this attempt
                _close_quietly(conn)
                return None
            self._conn, self._conn_host = conn, host
            self._conn_address = self._last_address
            self.auth_error = self.config_error = None
            return self._conn
        self._note_error("no node reachable: " + "; ".join(errors))
        return None

    def _connect_to(self, host: str, port: int, timeout: float) -> Any:
        on_thread = threading.current_thread() is self._thread
        if on_thread:
            self._attempt = (
                f"connecting to {host}:{port} (connect_timeout={timeout:g}s)",
                time.monotonic(),
            )
        try:
            address = (
                self._resolver.resolve(host).addresses[0] if self.spec.settings.resolve else None
            )
            if on_thread:
                self._last_address = address
            since = self._silent.get(address or "")
            if since is not None:
                if time.monotonic() - since < self.spec.settings.failure_detection_time:
                    raise OSError(f"{host} leads to {address}, which stopped answering")
                self._silent.pop(address or "", None)
            with self._cond:  # the refresh thread and the response timer both connect
                self._connects += 1
            return auth.connect(
                self._adapter,
                self._credentials,
                self.spec,
                host,
                port,
                address=address,
                timeout=timeout,
            )
        finally:
            if on_thread:
                self._attempt = None

    def host_silent(self, host: str, addresses: tuple[str, ...]) -> None:
        """The watchdog's verdict: ``host`` (at ``addresses``) stopped answering.

        When the monitor's own connection is on it (through the cluster endpoint, say), its
        socket is cut now, so the refresh waiting on it fails at once and the monitor asks
        another node, instead of waiting for its own timeouts on a silent host.
        """
        self._suspects.add(host)  # no lock: the refresh may hold it while it waits on the host
        now = time.monotonic()
        for address in addresses:
            self._silent[address] = now
        conn = self._conn
        if conn is not None and (
            self._conn_host == host or (self._conn_address or "") in addresses
        ):
            self._adapter.abort(conn)

    def _drop_connection(self) -> None:
        conn, self._conn, self._conn_host = self._conn, None, None
        self._conn_address = None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # -- response times (fastest_response) ----------------------------------------------------
    def _time_responses(self) -> None:
        """The timer thread: every ``refresh_interval``, ping each instance of the topology on a
        connection of its own and fold the round trip into `response_ms`.

        A thread of its own so that a hung instance (whose ping waits out the bound) never
        delays a topology refresh. The cost: one connection per instance, one ping per
        instance per interval.
        """
        settings = self.spec.settings
        bound = min(settings.connect_timeout, settings.failure_detection_time)
        conns: dict[str, tuple[tuple[str, int], Any]] = {}
        try:
            while not self._closed.is_set():
                topo = self.topology
                if topo is not None:
                    figures = dict(self.response_ms)
                    present = {h.instance_id for h in topo.hosts}
                    for host in topo.hosts:
                        if self._closed.is_set():
                            return
                        sample = self._time_one(host, conns, bound)
                        old = figures.get(host.instance_id)
                        if sample is None:
                            figures.pop(host.instance_id, None)
                        else:
                            figures[host.instance_id] = (
                                sample if old is None else old + _EWMA * (sample - old)
                            )
                    for key in [k for k in conns if k not in present]:
                        _close_quietly(conns.pop(key)[1])
                    self.response_ms = MappingProxyType(
                        {k: v for k, v in figures.items() if k in present}
                    )
                self._closed.wait(settings.refresh_interval)
        finally:
            for _endpoint, conn in conns.values():
                _close_quietly(conn)

    def _time_one(
        self, host: Host, conns: dict[str, tuple[tuple[str, int], Any]], bound: float
    ) -> float | None:
        """One ping of ``host`` in ms, on its timer connection (opened if needed); None when it
        failed (the connection is then closed)."""
        entry = conns.get(host.instance_id)
        if entry is not None and entry[0] != host.endpoint:
            _close_quietly(conns.pop(host.instance_id)[1])
            entry = None
        try:
            if entry is None:
                conn = self._connect_to(host.host, host.port, bound)
                conns[host.instance_id] = (host.endpoint, conn)
            else:
                conn = entry[1]
            started = time.perf_counter()
            self._adapter.ping(conn, bound)
            return (time.perf_counter() - started) * 1000.0
        except Exception as exc:
            log.debug("response timer: %s did not answer: %s", host.instance_id, exc)
            dropped = conns.pop(host.instance_id, None)
            if dropped is not None:
                _close_quietly(dropped[1])
            return None

    def _note_error(self, text: str) -> None:
        text = mask_secrets(text)  # it reaches logs, stats and NoHostAvailable messages
        self._errors += 1
        self._last_error = text
        log.debug("monitor %s: %s", self.spec.hosts[0][0], text)


def _close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


_PG_CONFIG_MESSAGES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r'database "[^"]*" does not exist'), "database"),
    (re.compile(r'invalid (\w+) value: "[^"]*"'), ""),  # the option's name is the parameter
    (re.compile(r'invalid connection option "([^"]*)"'), ""),
    (re.compile(r"invalid integer value \"[^\"]*\" for connection option \"(\w+)\""), ""),
)
_MYSQL_CONFIG_CODES = {1049: "database"}  # ER_BAD_DB_ERROR: Unknown database


def config_problem(exc: BaseException) -> tuple[str, str] | None:
    """``(parameter, what)`` when a failed connection attempt says the DSN itself is wrong (a
    database that does not exist, a malformed driver parameter), else None.

    Such an attempt fails alike on every node and on every retry: it is a `ConfigError` for
    the caller, not a host to give up on.
    """
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        parameter = _MYSQL_CONFIG_CODES.get(args[0])
        if parameter is not None:
            return parameter, f"{args[0]}: {args[1] if len(args) > 1 else ''}".strip()
        return None
    text = " ".join(str(exc).split())
    for pattern, parameter in _PG_CONFIG_MESSAGES:
        found = pattern.search(text)
        if found is not None:
            name = parameter or (found.group(1) if found.groups() else "")
            return name, found.group(0)
    return None


class _Deadline:
    """Cuts a query off when it overruns: one thread per monitor, armed for each query.

    The monitor's queries run one at a time on its own thread, so one deadline at a time is
    enough; a thread started per query (``threading.Timer``) would cost one thread start per
    refresh, ten a second in fast mode.
    """

    def __init__(self, abort: Callable[[Any], None], name: str) -> None:
        self._abort = abort
        self._name = name
        self._cond = threading.Condition()
        self._armed: tuple[Any, float] | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def bound(self, conn: Any, seconds: float) -> Iterator[None]:
        """Abort ``conn`` (the driver's ``abort``) if the block lasts over ``seconds``."""
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._armed = (conn, time.monotonic() + seconds)
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._armed = None
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._armed = None
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                armed = self._armed
                if armed is None:
                    self._cond.wait()
                    continue
                conn, deadline = armed
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._armed = None
            self._abort(conn)  # outside the lock: the query's thread may be disarming
