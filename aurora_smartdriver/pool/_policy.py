"""The pool's decisions, as pure functions over small immutable values.

Three questions are answered here, with no clock, lock or socket in sight:

- recycling: is this idle connection still good to lend, should it be checked first, or closed
  (`RecyclePolicy`, `expiry`, `recycle`, `due_at`)?
- backing off: after the n-th failed connection attempt in a row, how long before the next
  (`BackoffPolicy`)?
- admission: may a borrower dial the host now, must it wait, or is the host known down
  (`HostHealth`, `after_failure`, `admit`)?

`HostPool` holds the values under its lock and asks; the answers are tested exhaustively with
hypothesis and can serve an asyncio pool later without a rewrite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import tenacity

if TYPE_CHECKING:
    from aurora_smartdriver.settings import Settings

__all__ = [
    "HEALTHY",
    "Admission",
    "BackoffPolicy",
    "ConnState",
    "ConnTimes",
    "HostHealth",
    "RecyclePolicy",
    "Verdict",
    "admit",
    "after_failure",
    "due_at",
    "expiry",
    "recycle",
]

# -- recycling ------------------------------------------------------------------------------

Verdict = Literal["keep", "validate", "expired", "idle"]
"""What to do with an idle connection about to be lent: lend it as is, check it first with a
ping, or close it because it outlived its lifetime ("expired") or sat idle too long ("idle")."""


class ConnTimes(Protocol):
    """The three instants (monotonic seconds) recycling decides on."""

    @property
    def created_at(self) -> float: ...

    @property
    def expires_at(self) -> float: ...

    @property
    def last_used(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ConnState:
    """An immutable `ConnTimes`, for deciding about a connection without holding it."""

    created_at: float
    expires_at: float
    last_used: float


@dataclass(frozen=True, slots=True)
class RecyclePolicy:
    """When a pooled connection is replaced (the pool settings of the same names).

    A connection is closed once `max_lifetime` (shortened by its own jitter, see `expiry`) has
    passed since it was opened, or once it sat idle for longer than `max_idle`; one idle for
    longer than `validate_after_idle` is pinged before it is lent.
    """

    max_lifetime: float = 3600.0
    max_lifetime_jitter: float = 0.1
    max_idle: float = 600.0
    validate_after_idle: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> RecyclePolicy:
        return cls(
            max_lifetime=settings.max_lifetime,
            max_lifetime_jitter=settings.max_lifetime_jitter,
            max_idle=settings.max_idle,
            validate_after_idle=settings.validate_after_idle,
        )

    @property
    def check_after(self) -> float:
        """Idle time after which `recycle` may answer anything but "keep" (see `due_at`)."""
        return min(self.validate_after_idle, self.max_idle)


def expiry(created_at: float, policy: RecyclePolicy, u: float) -> float:
    """When a connection opened at `created_at` expires, `u` drawn uniformly from [0, 1).

    Its lifetime is `max_lifetime * (1 - U(0, max_lifetime_jitter))`: never longer than
    `max_lifetime`, and spread so that connections opened together (a pool filled at start,
    or refilled after a failover) do not all expire, and reconnect, together.
    """
    return created_at + policy.max_lifetime * (1.0 - policy.max_lifetime_jitter * u)


def recycle(
    conn: ConnTimes, now: float, policy: RecyclePolicy, *, host_suspect: bool = False
) -> Verdict:
    """What to do with the idle connection `conn` before lending it at `now`.

    Expiry comes first (an expired connection is closed however fresh its last use), then
    idleness, then validation. `host_suspect` (a connection attempt to the host failed since)
    validates every connection that is not closed: idle connections to a crashed server are
    dead, and a ping finds out more cheaply than the borrower's first statement. Sums rather
    than differences are compared so that `due_at`'s shortcut agrees with this function to the
    last bit.
    """
    if now >= conn.expires_at:
        return "expired"
    if now > conn.last_used + policy.max_idle:
        return "idle"
    if host_suspect or now > conn.last_used + policy.validate_after_idle:
        return "validate"
    return "keep"


def due_at(conn: ConnTimes, policy: RecyclePolicy) -> float:
    """The instant before which `recycle(conn, now, policy)` is surely "keep" (the host not
    being suspect).

    The pool stores it on each connection when the connection goes idle, so lending one is a
    single comparison until something is due.
    """
    return min(conn.expires_at, conn.last_used + policy.check_after)


# -- backing off ----------------------------------------------------------------------------

_RETRYING = tenacity.Retrying()
"""Only there to build the `RetryCallState` tenacity's wait strategies read the attempt from."""


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Exponential backoff with full jitter between connection attempts to one host.

    The n-th failure in a row (n >= 1) waits a uniformly random time in
    [0, min(maximum, initial * 2**(n-1))]: the window doubles with each failure, and the
    randomness spreads many processes' retries apart instead of synchronising them (AWS's
    "full jitter"). The window is tenacity's `wait_exponential`, the jitter its
    `wait_random_exponential` formula with the random draw passed in, so a schedule is a value.
    """

    initial: float = 0.05
    maximum: float = 2.0
    _window: tenacity.wait_exponential = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        window = tenacity.wait_exponential(multiplier=self.initial, max=self.maximum)
        object.__setattr__(self, "_window", window)

    @classmethod
    def from_settings(cls, settings: Settings) -> BackoffPolicy:
        return cls(initial=settings.backoff_initial, maximum=settings.backoff_max)

    def ceiling(self, failures: int) -> float:
        """The longest delay after `failures` failures in a row (at least 1)."""
        state = tenacity.RetryCallState(_RETRYING, None, (), {})
        state.attempt_number = max(1, failures)
        return float(self._window(state))

    def delay(self, failures: int, u: float) -> float:
        """The delay after `failures` failures in a row, `u` drawn uniformly from [0, 1)."""
        return self.ceiling(failures) * u

    def schedule(self, draws: Sequence[float]) -> tuple[float, ...]:
        """The delays after the 1st, 2nd, ... failure, one uniform draw from [0, 1) each."""
        return tuple(self.delay(n, u) for n, u in enumerate(draws, start=1))


# -- admission ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostHealth:
    """What the pool knows about reaching its host.

    `failures` counts connection attempts that failed in a row (0: the host is reachable as
    far as anyone knows); `retry_at` is the monotonic instant before which nobody dials it
    again; `last_error` describes the last failure (secrets masked); `auth` says the server
    refused the credentials, which waiting a little will not fix.
    """

    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = None
    auth: bool = False

    @property
    def down(self) -> bool:
        """True from a failed attempt until one succeeds."""
        return self.failures > 0

    def retry_in(self, now: float) -> float:
        """Seconds from `now` until the host may be dialled again (0 when it may be now)."""
        return max(0.0, self.retry_at - now)


HEALTHY = HostHealth()


def after_failure(
    health: HostHealth,
    *,
    now: float,
    seen_failures: int,
    auth: bool,
    error: str,
    policy: BackoffPolicy,
    u: float,
) -> HostHealth:
    """The health after an attempt that started when `failures` was `seen_failures` failed.

    Attempts started together fail together when a host dies: only the first to report counts
    as a failure and sets the backoff; later ones bring no news beyond their error text. A
    refused login backs off for the longest delay at once (`policy.maximum`): retrying wrong
    credentials quickly only floods the server with failed logins.
    """
    if health.failures > seen_failures:
        return HostHealth(health.failures, health.retry_at, error, health.auth)
    failures = health.failures + 1
    delay = policy.maximum if auth else policy.delay(failures, u)
    return HostHealth(failures, now + delay, error, auth)


Admission = Literal["dial", "probe", "busy", "down"]
"""Whether a borrower needing a new connection may open one: "dial" (the host is healthy),
"probe" (it is down but its backoff has elapsed: this borrower tries for everyone), "busy"
(`max_concurrent_connects` attempts are already in progress: wait for one to end), or "down"
(known down and either in backoff or being probed: wait for the outcome, or go elsewhere)."""


def admit(health: HostHealth, now: float, *, connecting: int, cap: int, probing: bool) -> Admission:
    """Whether one more connection attempt may start now (see `Admission`)."""
    if health.failures == 0:
        return "dial" if connecting < cap else "busy"
    if probing or now < health.retry_at:
        return "down"
    return "probe" if connecting < cap else "busy"
