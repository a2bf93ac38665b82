"""Events: every step the library takes on the application's behalf, with its figures.

Subscribe a callable to hear them (``events.subscribe(hook)``; it receives an ``Event``); every
event is also logged on ``aurora_smartdriver.events`` (INFO for failover steps, DEBUG for the
rest). Hooks run on the thread that did the work: keep them quick and never let them raise.

Names and fields (stable):

- ``failover_started``: instance, role, cause (``disconnect`` | ``read_only``)
- ``writer_found``: instance, after_s (since ``failover_started``)
- ``connection_moved``: old, new (instance ids)
- ``failover_failed``: role, after_s, reason
- ``transaction_rolled_back``: old, new, after_s (a failover interrupted an open transaction)
- ``outcome_unknown``: old, new, after_s (a failover interrupted COMMIT)
- ``read_retried``: instance, after_s (a read re-run after a failover, ``retry_reads=on``)
- ``host_unresponsive``: instance, silent_s (a node stopped answering; its connections were cut)
- ``custom_endpoint_changed``: endpoint, kind, static, excluded, status (members first read or
  changed; see docs/custom-endpoints.md)
- ``custom_endpoint_unreachable``: endpoint, reason, kept (the RDS API could not be read; the
  members last read, if any, stay in force)
- ``custom_endpoint_recovered``: endpoint (the RDS API answers again)
- ``custom_endpoint_fallback``: endpoint, instance, reason (no member could serve a connection
  and ``custom_endpoint_fallback=cluster`` sent it elsewhere)
- ``global_writer_moved``: old, new, old_region, new_region, rpo_lag_ms_before,
  writes_may_be_lost (Aurora Global Database: the writer is in another region now; see
  docs/global-database.md)
- ``blue_green_phase``: old, new (a Blue/Green deployment's phase changed; see
  docs/blue-green.md)
- ``blue_green_held``: instance, waited_s (a new connection was held during a Blue/Green
  switchover)
- ``instance_resumed``: instance, waited_s (a connection to an instance that was paused, or
  slower than ``connect_timeout`` to answer, completed within ``resume_timeout``; see
  docs/serverless-and-scaling.md)
- ``instance_resume_timeout``: instance, waited_s, resume_timeout (an instance accepted a
  connection but did not complete it within ``resume_timeout``: ``InstanceResumeTimeout``)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["Event", "Events", "Hook", "subscribe", "unsubscribe"]

log = logging.getLogger("aurora_smartdriver.events")

_LOUD = frozenset(
    {
        "failover_started",
        "writer_found",
        "failover_failed",
        "host_unresponsive",
        "global_writer_moved",
        "instance_resumed",
        "instance_resume_timeout",
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened: its name, the cluster it happened to, when, and its fields."""

    name: str
    cluster: str
    at: float  # time.time()
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


Hook = Callable[[Event], None]

_hooks: tuple[Hook, ...] = ()
_lock = threading.Lock()


def subscribe(hook: Hook) -> None:
    """Call ``hook(event)`` for every event of every cluster of this process."""
    global _hooks
    with _lock:
        _hooks = (*_hooks, hook)


def unsubscribe(hook: Hook) -> None:
    global _hooks
    with _lock:
        _hooks = tuple(h for h in _hooks if h is not hook)


class Events:
    """The event source of one cluster."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster

    def emit(self, name: str, **fields: Any) -> None:
        hooks = _hooks
        level = logging.INFO if name in _LOUD else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "%s %s %s", self.cluster, name, fields)
        if not hooks:
            return
        event = Event(name, self.cluster, time.time(), MappingProxyType(fields))
        for hook in hooks:
            try:
                hook(event)
            except Exception:
                log.exception("event hook %r failed on %s", hook, name)
