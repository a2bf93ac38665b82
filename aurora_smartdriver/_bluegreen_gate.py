"""The cluster's Blue/Green state, as its monitor last read it, and the gate new connections pass.

The monitor hands every status it reads to `BlueGreenGate.observe` (on its thread); connections
ask `hold` before they open (waiting while a switchover is in progress, within
`blue_green_hold_timeout`) and every name the cluster's resolver returns goes through
`rewrite` (so no connection reaches an old blue instance once the switchover has started). The
decisions are `aurora_smartdriver._bluegreen`'s; this holds the state and does the waiting.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from aurora_smartdriver._bluegreen import (
    OLD_SUFFIX,
    AddressBook,
    BlueGreenStatus,
    Phase,
    learn,
    learn_late,
    refused,
    should_hold,
    substitute,
)
from aurora_smartdriver.resolver import Resolution, ResolveError

__all__ = ["BlueGreenGate", "GateStats"]

log = logging.getLogger("aurora_smartdriver.bluegreen")

_POLL = 0.05
"""Seconds between two looks at the status while a connection is held (each asks the monitor
for a refresh, which it makes at most every `fast_refresh_interval`)."""

PhaseListener = Callable[[Phase | None, Phase | None], None]


@dataclass(frozen=True, slots=True)
class GateStats:
    """What the gate did (a snapshot)."""

    phase: str | None  # the deployment's phase as last read, None without a deployment
    held: int  # new connections that waited for a switchover
    held_seconds: float  # the time they waited, in all
    hold_timeouts: int  # waits that ended because the budget ran out, not the switchover
    substituted: int  # resolutions sent to a green instance's address instead of DNS's answer
    refused: int = 0  # resolutions refused: they led only to old blue instances (see `rewrite`)


class BlueGreenGate:
    """One cluster's Blue/Green state; thread-safe, read without locks on the hot path."""

    def __init__(
        self,
        budget: float,
        resolve: Callable[[str], tuple[str, ...]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._budget = budget
        self._resolve = resolve
        self._clock = clock
        self._cond = threading.Condition()
        self.status: BlueGreenStatus | None = None
        self.phase: Phase | None = None
        self.book = AddressBook()
        self._in_progress_since: float | None = None
        self._listeners: list[PhaseListener] = []
        self._held = self._timeouts = self._substituted = self._refused = 0
        self._held_seconds = 0.0

    # -- the monitor's side ----------------------------------------------------------------
    def observe(self, status: BlueGreenStatus | None) -> None:
        """The status the monitor just read (None: the instance shows no deployment)."""
        old = self.phase
        if status is None:
            # The metadata is gone: the deployment was deleted, or (as on RDS instances) the
            # new instance dropped it at the switchover. Once a switchover had started that
            # means it is over: never stay "in progress" for want of metadata.
            phase = Phase.COMPLETED if old is not None and old >= Phase.IN_PROGRESS else None
            book = self.book if phase is not None else AddressBook()
        else:
            phase = status.phase
            book = self.book
            if phase < Phase.IN_PROGRESS:
                book = book.of(status)  # a new deployment after an earlier one: learn afresh
                book = learn(book, status, self._addresses(status, book))
            elif status != self.status:  # the names moved: check the old ones (learn_late)
                book = learn_late(book, status, self._old_addresses(status))
        with self._cond:
            self.status, self.book = status, book
            if phase is Phase.IN_PROGRESS and self._in_progress_since is None:
                self._in_progress_since = self._clock()
            if phase is None or phase < Phase.IN_PROGRESS:
                self._in_progress_since = None  # a new switchover counts its own budget
            self.phase = phase
            self._cond.notify_all()
            listeners = list(self._listeners)
        if phase is not old:
            log.info("Blue/Green deployment: %s -> %s", _name(old), _name(phase))
            for listener in listeners:
                try:
                    listener(old, phase)
                except Exception:
                    log.exception("Blue/Green listener %r failed", listener)

    def _old_addresses(self, status: BlueGreenStatus) -> dict[str, tuple[str, ...]]:
        """The addresses of the deployment's `-old1` names (they always lead to old blue)."""
        found: dict[str, tuple[str, ...]] = {}
        for member in status.members:
            if member.name.endswith(OLD_SUFFIX):
                try:
                    found[member.name] = self._resolve(member.host)
                except OSError as exc:
                    log.debug("Blue/Green: %s does not resolve: %s", member.host, exc)
        return found

    def _addresses(self, status: BlueGreenStatus, book: AddressBook) -> dict[str, tuple[str, ...]]:
        """The addresses of the deployment's names not in `book` yet (DNS, before the rename)."""
        known = {p.blue for p in book.pairs if p.blue_addresses and p.green_addresses}
        found: dict[str, tuple[str, ...]] = {}
        for pair in book.pairs:
            if pair.blue in known:
                found[pair.blue], found[pair.green] = pair.blue_addresses, pair.green_addresses
        for member in status.members:
            if member.name in found or (member.environment == "blue" and member.name in known):
                continue
            try:
                found[member.name] = self._resolve(member.host)
            except OSError as exc:  # a green name DNS does not know yet: learned next time
                log.debug("Blue/Green: %s does not resolve yet: %s", member.host, exc)
        return found

    @property
    def active(self) -> bool:
        """A switchover is under way (the monitor then refreshes at its fast pace)."""
        phase = self.phase
        return phase is not None and Phase.PREPARATION <= phase < Phase.COMPLETED

    def add_listener(self, listener: PhaseListener) -> None:
        """Call ``listener(old, new)`` on the monitor's thread when the phase changes."""
        with self._cond:
            self._listeners.append(listener)

    # -- the connections' side ---------------------------------------------------------------
    def holding(self) -> bool:
        """Whether a new connection must wait now."""
        since = self._in_progress_since
        waited = 0.0 if since is None else self._clock() - since
        return should_hold(self.phase, waited, self._budget)

    def hold(self, refresh: Callable[[float], object]) -> float:
        """Wait while a switchover is in progress (within the budget); the seconds waited.

        ``refresh(timeout)`` asks the monitor for a fresh status.
        """
        if not self.holding():
            return 0.0
        started = self._clock()
        while self.holding():
            refresh(_POLL)
            with self._cond:
                if self.holding():
                    self._cond.wait(_POLL)
        return self._count(self._clock() - started)

    async def hold_async(self, nudge: Callable[[], object]) -> float:
        """`hold` for the event loop: ``nudge()`` asks the monitor for a refresh without
        waiting for it."""
        if not self.holding():
            return 0.0
        started = self._clock()
        while self.holding():
            nudge()
            await asyncio.sleep(_POLL)
        return self._count(self._clock() - started)

    def _count(self, waited: float) -> float:
        with self._cond:
            self._held += 1
            self._held_seconds += waited
            if self.phase is Phase.IN_PROGRESS:
                self._timeouts += 1
        return waited

    def rewrite(self, found: Resolution) -> Resolution:
        """`found` as the deployment says it should be (`substitute`); the resolver's hook.

        Raises `ResolveError` when it leads only to old blue instances (`refused`): a writer
        then waits as for a name that does not resolve, a reader goes elsewhere.
        """
        phase = self.phase
        if phase is None or phase < Phase.IN_PROGRESS:
            return found
        book = self.book
        addresses = substitute(book, phase, found.host, found.addresses)
        if refused(book, phase, addresses):
            with self._cond:
                self._refused += 1
            raise ResolveError(
                f"{found.host} still leads to {', '.join(addresses)}, replaced by the Blue/Green"
                " switchover (DNS has not caught up, and no green address was learned before)"
            )
        if addresses == found.addresses:
            return found
        with self._cond:
            self._substituted += 1
        return replace(found, addresses=addresses)

    def stats(self) -> GateStats:
        return GateStats(
            phase=_name(self.phase),
            held=self._held,
            held_seconds=round(self._held_seconds, 3),
            hold_timeouts=self._timeouts,
            substituted=self._substituted,
            refused=self._refused,
        )


def _name(phase: Phase | None) -> str | None:
    return None if phase is None else phase.name.lower()
