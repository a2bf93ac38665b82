"""Reads a custom endpoint's members from the RDS API on an interval, on a thread of its own.

One `CustomEndpointWatch` per cluster, custom endpoint and API configuration in a process
(`Watches` keeps them in the cluster's shared machinery). It calls
`describe_db_cluster_endpoints(DBClusterEndpointIdentifier=...)` every
`custom_endpoint_refresh_interval`, through boto3 (the `aws` extra) with the region, the
`rds_endpoint_url` and the timeouts of the `rds-api` topology source.

When the API cannot be read (unreachable, refused, throttled) the last members read stay in
force and the event `custom_endpoint_unreachable` says so, once per run of failures; a
later success emits `custom_endpoint_recovered`. A change of members emits
`custom_endpoint_changed`. When the endpoint does not exist (never did, or was deleted) there
are no members: `current()` is None and `problem` says why, so connections fail instead of
spreading over instances the endpoint never named. Failed reads are retried sooner than the
interval (backing off from 0.5 s), never in a busy loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from aurora_smartdriver.custom_endpoint import CustomEndpoint, from_api
from aurora_smartdriver.discovery.rds_api import client_config, region
from aurora_smartdriver.dsn import ConnectionSpec
from aurora_smartdriver.events import Events

if TYPE_CHECKING:
    from mypy_boto3_rds import RDSClient

__all__ = ["CustomEndpointWatch", "Watches"]

log = logging.getLogger("aurora_smartdriver.custom_endpoint")

_FIRST_RETRY = 0.5


class CustomEndpointWatch:
    """The members of one custom endpoint, as last read from the RDS API."""

    def __init__(
        self,
        identifier: str,
        *,
        region: str,
        endpoint_url: str | None,
        refresh_interval: float,
        timeout: float,
        events: Events,
    ) -> None:
        self.identifier = identifier
        self.region = region
        self.endpoint_url = endpoint_url
        self.refresh_interval = refresh_interval
        self.timeout = timeout
        self._events = events
        self._endpoint: CustomEndpoint | None = None
        self._gone = False
        self.problem: str | None = None
        """Why the last read failed (None after a success)."""
        self.reads = 0
        self.failures = 0
        self.changes = 0
        self._client: RDSClient | None = None
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._closed = False
        self._stalled = False
        self._thread: threading.Thread | None = None

    # -- what routing asks ---------------------------------------------------------------
    def current(self) -> CustomEndpoint | None:
        """The endpoint as last read; None before the first read or when it does not exist."""
        self._start()
        return None if self._gone else self._endpoint

    def wait_first(self, timeout: float) -> CustomEndpoint | None:
        """`current()`, waiting up to `timeout` seconds for a first answer if there is none.

        Once a wait has run out with no reading done (the API hangs), later calls return at
        once until a reading ends: each connection must not stall for `timeout` in turn.
        """
        self._start()
        deadline = time.monotonic() + timeout
        with self._answered:
            # A failed reading says the API cannot be read now: no use waiting for the next.
            while not (self._endpoint is not None or self._gone or self._closed or self.failures):
                left = deadline - time.monotonic()
                if left <= 0 or self._stalled:
                    self._stalled = True
                    break
                self._answered.wait(left)
            return None if self._gone else self._endpoint

    def refresh_now(self) -> CustomEndpoint | None:
        """Read the API now, on the caller's thread (tools and tests); returns `current()`."""
        self._read()
        return None if self._gone else self._endpoint

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._answered.notify_all()
        self._wake.set()

    # -- the thread ----------------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None or self._closed:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"asd-custom-endpoint-{self.identifier}", daemon=True
            )
        self._thread.start()

    def _run(self) -> None:
        delay = _FIRST_RETRY
        while not self._closed:
            ok = self._read()
            if ok:
                delay = _FIRST_RETRY
                wait = self.refresh_interval
            else:
                wait = min(delay, self.refresh_interval)
                delay = min(delay * 2, self.refresh_interval)
            self._wake.wait(wait)
            self._wake.clear()

    def _read(self) -> bool:
        """One reading of the API; True when it answered (the endpoint exists or not)."""
        try:
            found = self._describe()
        except Exception as exc:  # no answer, a refusal, or an answer we cannot read
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        with self._answered:
            before, was_gone, had_problem = self._endpoint, self._gone, self.problem
            self.reads += 1
            self._stalled = False
            if found is None:
                self._gone = True
                self.problem = (
                    f"custom endpoint {self.identifier!r} does not exist in region {self.region}"
                )
            else:
                self._endpoint, self._gone, self.problem = found, False, None
            self._answered.notify_all()
        if found is None:
            if not was_gone:
                log.warning("%s", self.problem)
                self._events.emit(
                    "custom_endpoint_unreachable",
                    endpoint=self.identifier,
                    reason=self.problem,
                    kept=None,
                )
            return True
        if had_problem is not None and not was_gone:
            self._events.emit("custom_endpoint_recovered", endpoint=self.identifier)
        if before != found or was_gone:
            self.changes += 1
            self._events.emit(
                "custom_endpoint_changed",
                endpoint=self.identifier,
                kind=found.kind,
                static=sorted(found.static_members),
                excluded=sorted(found.excluded_members),
                status=found.status,
            )
        return True

    def _failed(self, why: str) -> None:
        with self._answered:
            first = self.problem is None
            self.failures += 1
            self._stalled = False
            self.problem = (
                f"reading custom endpoint {self.identifier!r} from the RDS API in "
                f"{self.region} failed: {why}"
            )
            kept = self._endpoint
            self._answered.notify_all()
        if first:
            log.warning(
                "%s; %s",
                self.problem,
                "keeping the members last read" if kept is not None else "no members known yet",
            )
            self._events.emit(
                "custom_endpoint_unreachable",
                endpoint=self.identifier,
                reason=self.problem,
                kept=None if kept is None else kept.describe(),
            )

    def _describe(self) -> CustomEndpoint | None:
        client = self._client or self._make_client()
        answer = client.describe_db_cluster_endpoints(DBClusterEndpointIdentifier=self.identifier)
        items = answer.get("DBClusterEndpoints", [])
        for item in items:
            if str(item.get("DBClusterEndpointIdentifier", "")).lower() == self.identifier:
                return from_api(dict(item))
        return None

    def _make_client(self) -> RDSClient:
        try:
            import boto3
        except ImportError as exc:
            raise RuntimeError(
                f"custom endpoints need boto3, which cannot be imported ({exc}); install it "
                "with `pip install 'aurora-smartdriver[aws]'`"
            ) from exc
        client: Any = boto3.session.Session().client(
            "rds",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            config=client_config(self.timeout),
        )
        self._client = client
        return client  # type: ignore[no-any-return]


class Watches:
    """The custom endpoint watches of one cluster's shared machinery, made on first use."""

    def __init__(self, events: Events) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._watches: dict[tuple[object, ...], CustomEndpointWatch] = {}
        self._closed = False

    def for_spec(self, identifier: str, spec: ConnectionSpec) -> CustomEndpointWatch:
        """The watch of `identifier` read as `spec`'s settings say (region, URL, interval)."""
        settings = spec.settings
        where = region(spec)
        key = (
            identifier,
            where,
            settings.rds_endpoint_url,
            settings.custom_endpoint_refresh_interval,
            settings.connect_timeout,
        )
        with self._lock:
            found = self._watches.get(key)
            if found is None:
                found = self._watches[key] = CustomEndpointWatch(
                    identifier,
                    region=where,
                    endpoint_url=settings.rds_endpoint_url,
                    refresh_interval=settings.custom_endpoint_refresh_interval,
                    timeout=settings.connect_timeout,
                    events=self._events,
                )
                if self._closed:
                    found.close()
            return found

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watches = list(self._watches.values())
        for watch in watches:
            watch.close()
