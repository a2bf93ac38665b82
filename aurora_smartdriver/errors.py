"""The errors aurora_smartdriver raises itself.

`AuroraSmartDriverError` is the base of every error the library defines. Configuration mistakes
are `ConfigError`, which is also a `ValueError` so code that already guards against bad
arguments catches it.

The errors a database operation can end in (`NoHostAvailable`, `FailoverSucceeded`,
`TransactionOutcomeUnknown`, `NoWriterAvailable`, and the pool's) are declared here once, and
raised as per-driver subclasses that also derive from the wrapped driver's `OperationalError`
(see `aurora_smartdriver._dbapi.error_class`): `except aurora_smartdriver.FailoverSucceeded`
and an existing `except psycopg.OperationalError` both catch them.
"""

from __future__ import annotations

__all__ = [
    "AuroraSmartDriverError",
    "AuthenticationFailed",
    "ConfigError",
    "FailoverSucceeded",
    "InstanceResumeTimeout",
    "NoHostAvailable",
    "NoWriterAvailable",
    "TransactionOutcomeUnknown",
]


class AuroraSmartDriverError(Exception):
    """Base of the errors defined by aurora_smartdriver."""


class ConfigError(AuroraSmartDriverError, ValueError):
    """A DSN, parameter or keyword argument the library cannot accept.

    The message names what was wrong, shows the offending value (secrets masked) and, when there
    is one, says what to do instead; the same facts are kept as attributes so tools can show them
    without parsing the message.
    """

    parameter: str | None
    """The parameter at fault, when one is."""
    value: str | None
    """The offending value as text, already masked when the parameter is secret."""
    suggestion: str | None
    """What to do instead (e.g. "did you mean 'pool_max_size'?"), also part of the message."""

    def __init__(
        self,
        message: str,
        *,
        parameter: str | None = None,
        value: str | None = None,
        suggestion: str | None = None,
    ) -> None:
        super().__init__(f"{message}; {suggestion}" if suggestion else message)
        self.parameter = parameter
        self.value = value
        self.suggestion = suggestion


class NoHostAvailable(AuroraSmartDriverError):
    """No instance can serve the request: no writer known, or no reader qualifies and
    ``reader_fallback=fail``, or every candidate is down. The message says which and why."""


class NoWriterAvailable(NoHostAvailable):
    """No node answered as the writer within ``failover_timeout``."""


class InstanceResumeTimeout(NoHostAvailable):
    """An instance accepted the connection but did not complete the handshake within
    ``resume_timeout``: a paused Aurora Serverless v2 instance (0 ACUs) still resuming, or a
    hung one. Nothing was sent to it; the work can be run again once it answers."""


class FailoverSucceeded(AuroraSmartDriverError):
    """The connection was lost and the library reconnected to the right node: re-run the work.

    ``transaction_rolled_back`` is True when a transaction was open: the server rolled it back,
    so everything since ``BEGIN`` must be done again.
    """

    def __init__(self, message: str, *, transaction_rolled_back: bool = False) -> None:
        super().__init__(message)
        self.transaction_rolled_back = transaction_rolled_back


class AuthenticationFailed(AuroraSmartDriverError):
    """The server refused the login (also after the credentials were refreshed once), or no
    credentials could be obtained (IAM token, Secrets Manager, your provider).

    The message names the user and the host, never the password; the driver's error is the
    cause. No failover follows, and the host's pool waits ``backoff_max`` before another try.
    """

    def __init__(
        self,
        message: str,
        *,
        user: str | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(message)
        self.user = user
        self.host = host
        self.port = port


class TransactionOutcomeUnknown(AuroraSmartDriverError):
    """The connection died during COMMIT: the transaction may or may not have been committed.

    The library never re-sends a COMMIT; only the application can tell whether re-running the
    transaction is safe.
    """
