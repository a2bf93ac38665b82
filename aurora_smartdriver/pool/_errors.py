"""The errors a pool raises, and the masking of connection errors they carry.

The connection layer maps them onto the wrapped driver's exception classes; here they are
plain library errors so the pool does not depend on which driver is in use.
"""

from __future__ import annotations

import re

from aurora_smartdriver.errors import AuroraSmartDriverError

__all__ = [
    "HostDown",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "describe_error",
    "mask_secrets",
]


class PoolError(AuroraSmartDriverError):
    """Base of the pool's errors."""


class PoolTimeout(PoolError):
    """No connection could be lent within the borrow timeout: every one allowed is in use."""


class PoolClosed(PoolError):
    """The pool was closed (its host left the cluster, or its owner shut down)."""


class HostDown(PoolError):
    """The host is known to be unreachable: go elsewhere, or try again in `retry_in` seconds.

    Raised by `HostPool.borrow` instead of dialling a host whose last connection attempt failed
    and whose backoff has not elapsed (or that another borrower is probing), so that callers
    learn at once instead of joining a connection storm.
    """

    instance_id: str
    retry_in: float
    """Seconds until the pool will try the host again (0: a probe is under way now)."""
    last_error: str | None
    """The last connection error, as text with secrets masked."""
    auth: bool
    """True when the last attempt failed because the server refused the credentials."""

    def __init__(
        self, instance_id: str, *, retry_in: float, last_error: str | None, auth: bool = False
    ) -> None:
        why = "refused the credentials" if auth else "is unreachable"
        detail = f": {last_error}" if last_error else ""
        super().__init__(
            f"instance {instance_id} {why}{detail}; the pool tries it again in {retry_in:.2f}s"
        )
        self.instance_id = instance_id
        self.retry_in = retry_in
        self.last_error = last_error
        self.auth = auth


_SECRET_PATTERNS = (
    # libpq keyword form: password=xyz or password='x y'
    (re.compile(r"(?i)\b(password|passwd|pwd)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)"), r"\1=***"),
    # URL userinfo: scheme://user:secret@host
    (re.compile(r"(://[^:/@\s]*):[^@\s]*@"), r"\1:***@"),
)


def describe_error(exc: BaseException) -> str:
    """`exc` as one line of text for logs, events and `HostDown`, passwords masked.

    The drivers do not put passwords in their connection errors, but a DSN echoed back by a
    driver or an opener would, so anything that looks like one is masked regardless.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {mask_secrets(text)}"


def mask_secrets(text: str) -> str:
    """``text`` with anything that looks like a password (``password=``, URL userinfo) masked."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
